//! # ACPI: which CPUs there are, and how to switch off
//!
//! The firmware asks ACPI two questions. The MADT answers "which CPUs
//! exist" (their local APIC IDs). The FADT answers "how do I power off":
//! a hardware-reduced platform (Cloud Hypervisor, QEMU's microvm) has a
//! sleep-control register; a legacy one (QEMU's pc and q35) wants the S5
//! sleep type from the DSDT's `\_S5_` object written into PM1a control.
//!
//! The `acpi` crate finds the tables and checks their checksums. It maps
//! them through [`IdentityHandler`], which sees every physical range the
//! crate reads; those ranges are remembered so the frame pool never hands
//! an ACPI table out. The RSDP comes from start_info, or, where the VMM
//! does not say (microvm), from a scan of the BIOS areas. A machine with
//! no usable ACPI at all (`-machine microvm,acpi=off`) still boots: with
//! the boot CPU only, and no way to power off but QEMU's exit device.

use core::fmt;
use core::ptr::NonNull;

use acpi::address::{AddressSpace, GenericAddress};
use acpi::fadt::Fadt;
use acpi::madt::Madt;
use acpi::{AcpiError, AcpiHandler, AcpiTable, AcpiTables, PhysicalMapping};
use heapless::Vec;
use spin::Mutex;
use umbra_abi::acpi::FadtPower;
use umbra_firmware::PhysRange;
use umbra_firmware::aml::{self, SleepTypes};
use umbra_firmware::madt::{self, Cpus};
use x86_64::instructions::port::Port;

use crate::memory::BOOT_MAPPED;

/// Every physical range the ACPI code has read.
static TOUCHED: Mutex<Vec<PhysRange, 48>> = Mutex::new(Vec::new());

/// What a bogus table address reads as: zeros fail every signature check.
#[repr(C, align(4096))]
struct ZeroPage([u8; 4096]);
static ZERO_PAGE: ZeroPage = ZeroPage([0; 4096]);

/// Physical memory is identity-mapped below 4 GiB, so "mapping" a table
/// is just a bounds check.
#[derive(Clone)]
struct IdentityHandler;

impl AcpiHandler for IdentityHandler {
    unsafe fn map_physical_region<T>(&self, physical: usize, size: usize) -> PhysicalMapping<Self, T> {
        let range = PhysRange::from_len(physical as u64, size as u64);
        let reachable = physical != 0 && range.is_some_and(|r| r.end <= BOOT_MAPPED);
        let (virtual_start, length) = match range {
            Some(range) if reachable => {
                let _ = TOUCHED.lock().push(range);
                (physical, size)
            }
            _ => {
                log::warn!("acpi: table at {physical:#x} (+{size}) is out of reach; reading zeros");
                (ZERO_PAGE.0.as_ptr() as usize, size.min(ZERO_PAGE.0.len()))
            }
        };
        // SAFETY: virtual_start is either identity-mapped memory below
        // 4 GiB or the static zero page; neither is null.
        unsafe {
            PhysicalMapping::new(
                physical,
                NonNull::new_unchecked(virtual_start as *mut T),
                length,
                length,
                self.clone(),
            )
        }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// The bytes of a mapped table, header included.
fn table_bytes<T>(mapping: &PhysicalMapping<IdentityHandler, T>) -> &[u8] {
    // SAFETY: the mapping covers region_length readable bytes (identity
    // memory or the zero page), for as long as the mapping lives.
    unsafe {
        core::slice::from_raw_parts(mapping.virtual_start().as_ptr() as *const u8, mapping.region_length())
    }
}

pub use umbra_abi::acpi::{PowerOff, Register, Space};

pub static POWER_OFF: Mutex<Option<PowerOff>> = Mutex::new(None);

pub struct Platform {
    /// Empty when there is no usable ACPI: then only the boot CPU is known.
    pub cpus: Cpus,
    pub oem_id: [u8; 6],
    pub power_off: Option<PowerOff>,
    pub rsdp_found_by_scan: bool,
}

pub enum AcpiProblem {
    Tables(AcpiError),
    Madt(madt::MadtError),
}

impl fmt::Display for AcpiProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tables(AcpiError::NoValidRsdp) => write!(f, "no valid RSDP found"),
            Self::Tables(AcpiError::TableMissing(signature)) => write!(f, "no {signature} table"),
            Self::Tables(error) => write!(f, "bad ACPI tables: {error:?}"),
            Self::Madt(error) => write!(f, "{error}"),
        }
    }
}

/// Read the MADT and the FADT (and the DSDT's `\_S5_`).
pub fn init(rsdp: Option<u64>) -> Result<Platform, AcpiProblem> {
    // SAFETY: the handler bounds-checks every address it is given, so even
    // a bogus RSDP address reads only mapped memory.
    let tables = unsafe {
        match rsdp {
            Some(address) => AcpiTables::from_rsdp(IdentityHandler, address as usize).or_else(|error| {
                log::warn!("acpi: RSDP at {address:#x} from start_info is invalid ({error:?}); scanning");
                AcpiTables::search_for_rsdp_bios(IdentityHandler)
            }),
            None => AcpiTables::search_for_rsdp_bios(IdentityHandler),
        }
    }
    .map_err(AcpiProblem::Tables)?;

    let madt = tables.find_table::<Madt>().map_err(AcpiProblem::Tables)?;
    let cpus = madt::parse(table_bytes(&madt)).map_err(AcpiProblem::Madt)?;

    let fadt = tables.find_table::<Fadt>().map_err(AcpiProblem::Tables)?;
    let oem_id = fadt.header().oem_id;
    if let Ok(facs) = fadt.facs_address() {
        let _ = TOUCHED.lock().push(PhysRange { start: facs as u64, end: facs as u64 + 64 });
    }
    let s5 = find_s5(&tables);
    let power_off = power_off_method(&fadt, s5);
    *POWER_OFF.lock() = power_off;
    Ok(Platform { cpus, oem_id, power_off, rsdp_found_by_scan: rsdp.is_none() })
}

fn find_s5(tables: &AcpiTables<IdentityHandler>) -> Option<SleepTypes> {
    let dsdt = tables.dsdt().ok()?;
    // SAFETY: the handler bounds-checks the range.
    let mapping = unsafe { IdentityHandler.map_physical_region::<u8>(dsdt.address, dsdt.length as usize) };
    aml::find_s5(table_bytes(&mapping))
}

/// The FADT's power-off fields, as the `acpi` crate read them, for the
/// method `umbra_abi::acpi` chooses (the guest's native backend chooses
/// with the same function).
fn power_off_method(fadt: &Fadt, s5: Option<SleepTypes>) -> Option<PowerOff> {
    let register = |gas: GenericAddress| Register {
        space: match gas.address_space {
            AddressSpace::SystemMemory => Space::Memory,
            AddressSpace::SystemIo => Space::Io,
            _ => Space::Other(0xff),
        },
        bit_width: gas.bit_width,
        address: gas.address,
    };
    let flags = fadt.flags;
    let fields = FadtPower {
        hw_reduced: flags.system_is_hw_reduced_acpi(),
        sleep_control: fadt.sleep_control_register().ok().flatten().map(register),
        pm1a_control: fadt.pm1a_control_block().ok().map(register),
        pm1b_control: fadt.pm1b_control_block().ok().flatten().map(register),
    };
    umbra_abi::acpi::power_off_method(&fields, s5)
}

/// Ranges the ACPI code read, for the frame pool to keep out.
pub fn touched_ranges() -> Vec<PhysRange, 48> {
    TOUCHED.lock().clone()
}

/// Write `value` to an ACPI register, I/O port or memory.
fn write_register(register: &Register, value: u32) {
    let width = register.bit_width;
    match register.space {
        Space::Io => {
            let port = register.address as u16;
            // SAFETY: the FADT names this port as a power-management register.
            unsafe {
                match width {
                    0..=8 => Port::<u8>::new(port).write(value as u8),
                    9..=16 => Port::<u16>::new(port).write(value as u16),
                    _ => Port::<u32>::new(port).write(value),
                }
            }
        }
        Space::Memory if register.address + 4 <= BOOT_MAPPED => {
            let address = register.address as usize;
            // SAFETY: the FADT names this identity-mapped address as a
            // power-management register.
            unsafe {
                match width {
                    0..=8 => core::ptr::write_volatile(address as *mut u8, value as u8),
                    9..=16 => core::ptr::write_volatile(address as *mut u16, value as u16),
                    _ => core::ptr::write_volatile(address as *mut u32, value),
                }
            }
        }
        _ => {}
    }
}

/// Switch off: the writes `umbra_abi::acpi` computes for the method.
pub fn perform(power_off: &PowerOff) {
    for (register, value) in power_off.writes().into_iter().flatten() {
        write_register(&register, value);
    }
}
