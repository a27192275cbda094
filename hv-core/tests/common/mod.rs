//! Simulated guest memory, shadow frame pool and host console, shared by
//! the hv-core tests: plain vectors and maps, so every check is exact.

#![allow(dead_code)]

use std::collections::BTreeMap;

use hv_core::vcpu::{self, Host};
use paging::{FramePool, GuestMemory};

pub const MEMORY: u64 = 4 << 20;
/// Shadow frames live far above guest memory, as host frames would.
pub const POOL_BASE: u64 = 1 << 40;

pub struct Ram {
    pub bytes: Vec<u8>,
}

impl GuestMemory for Ram {
    fn limit(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_u64(&self, gpa: u64) -> Option<u64> {
        let at = usize::try_from(gpa).ok()?;
        let bytes = self.bytes.get(at..at.checked_add(8)?)?;
        Some(u64::from_le_bytes(bytes.try_into().unwrap()))
    }
    fn write_u64(&mut self, gpa: u64, value: u64) -> bool {
        vcpu::GuestRam::write_bytes(self, gpa, &value.to_le_bytes())
    }
    fn guest_to_host(&self, gpa: u64) -> u64 {
        0x1000_0000 + gpa
    }
}

impl vcpu::GuestRam for Ram {
    fn read_bytes(&self, gpa: u64, buf: &mut [u8]) -> bool {
        let Ok(at) = usize::try_from(gpa) else { return false };
        match self.bytes.get(at..at.saturating_add(buf.len())) {
            Some(src) if at + buf.len() <= self.bytes.len() => {
                buf.copy_from_slice(src);
                true
            }
            _ => false,
        }
    }
    fn write_bytes(&mut self, gpa: u64, bytes: &[u8]) -> bool {
        let Ok(at) = usize::try_from(gpa) else { return false };
        if at.saturating_add(bytes.len()) > self.bytes.len() {
            return false;
        }
        self.bytes[at..at + bytes.len()].copy_from_slice(bytes);
        true
    }
}

#[derive(Default)]
pub struct Pool {
    frames: BTreeMap<u64, [u64; 512]>,
    next: u64,
    /// Added to every frame's address, so that several pools' frames
    /// never meet (and a frame tells which pool it came from).
    offset: u64,
}

impl Pool {
    /// A pool whose frames start `offset` bytes above [`POOL_BASE`].
    pub fn at(offset: u64) -> Pool {
        Pool { offset, ..Pool::default() }
    }
}

impl FramePool for Pool {
    fn alloc_zeroed(&mut self) -> Option<u64> {
        let frame = POOL_BASE + self.offset + self.next * 4096;
        self.next += 1;
        self.frames.insert(frame, [0; 512]);
        Some(frame)
    }
    fn free(&mut self, frame: u64) {
        self.frames.remove(&frame);
    }
    fn read_entry(&self, frame: u64, index: usize) -> u64 {
        self.frames[&frame][index]
    }
    fn write_entry(&mut self, frame: u64, index: usize, value: u64) {
        self.frames.get_mut(&frame).unwrap()[index] = value;
    }
    fn capacity(&self) -> usize {
        1024
    }
    fn in_use(&self) -> usize {
        self.frames.len()
    }
}

#[derive(Default)]
pub struct Console {
    pub printed: Vec<u8>,
}

impl Host for Console {
    fn console_write(&mut self, bytes: &[u8]) {
        self.printed.extend_from_slice(bytes);
    }
    fn now_ns(&self) -> u64 {
        42
    }
    fn tsc_khz(&self) -> u64 {
        2_600_000
    }
}

/// Queue call `number` in slot `slot` of the async ring of the shared page
/// at guest-physical `shared`, as a guest does: arguments first, `ready`
/// last.
pub fn queue_async(ram: &mut Ram, shared: u64, slot: u64, number: u64, args: [u64; 5]) {
    let base = shared
        + std::mem::offset_of!(umbra_abi::SharedPage, async_ring) as u64
        + slot * std::mem::size_of::<umbra_abi::AsyncCall>() as u64;
    ram.write_u64(base + 8, number);
    for (i, arg) in args.iter().enumerate() {
        ram.write_u64(base + 16 + i as u64 * 8, *arg);
    }
    ram.write_u64(base, 1);
}
