//! # A Linux process's state, beside the kernel's `Proc`
//!
//! The process kernel's table (`proc.rs`) knows slots, address spaces and
//! the scheduler; a Linux program needs much more: open files, a working
//! directory, its memory map, signal actions. That lives here, in a
//! `Task` per slot, boxed on the heap so the table itself stays small.
//!
//! Open files follow Linux's split: a descriptor (per process, with its
//! close-on-exec flag) points to an open-file description (shared by
//! `dup` and `fork`, holding the offset and status flags), reference
//! counted with `Rc`. Dropping the last reference closes it: a pipe end
//! wakes whoever waits on the other end, an inode loses an open reference.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::{RefCell, UnsafeCell};

use super::super::fs::{Ino, ROOT};
use super::super::proc::MAX_PROCS;
use super::fs;

pub const MAX_FDS: usize = 1024;
pub const PIPE_CAPACITY: usize = 65536;

/// What an open file is.
pub enum Object {
    /// A file, directory or symlink of the filesystem.
    Inode(Ino),
    /// /dev/console and /dev/tty.
    Console,
    /// /dev/null.
    Null,
    /// /dev/zero.
    Zero,
    /// /dev/random and /dev/urandom.
    Random,
    PipeRead(Rc<RefCell<Pipe>>),
    PipeWrite(Rc<RefCell<Pipe>>),
}

pub struct Pipe {
    pub buffer: VecDeque<u8>,
    pub readers: usize,
    pub writers: usize,
}

impl Pipe {
    /// What sleepers on this pipe wait for: its address.
    pub fn channel(pipe: &Rc<RefCell<Pipe>>) -> usize {
        Rc::as_ptr(pipe) as usize
    }
}

/// An open-file description.
pub struct OpenFile {
    pub object: Object,
    pub offset: u64,
    /// O_ACCMODE, O_APPEND, O_NONBLOCK... as given to open.
    pub flags: u32,
    /// The inode behind a device, for fstat.
    pub ino: Option<Ino>,
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        if let Some(ino) = self.ino {
            fs().close_ref(ino);
        }
        match &self.object {
            // The other end's sleepers, and pollers: a closed end is news
            // to both (EOF, EPIPE).
            Object::PipeRead(pipe) => {
                pipe.borrow_mut().readers -= 1;
                super::wake(Pipe::channel(pipe));
                super::wake(super::POLL_CHANNEL);
            }
            Object::PipeWrite(pipe) => {
                pipe.borrow_mut().writers -= 1;
                super::wake(Pipe::channel(pipe));
                super::wake(super::POLL_CHANNEL);
            }
            _ => {}
        }
    }
}

pub type File = Rc<RefCell<OpenFile>>;

#[derive(Clone)]
pub struct Fd {
    pub file: File,
    pub cloexec: bool,
}

/// Where a mapping's pages come from.
pub enum Backing {
    Anonymous,
    /// A private mapping of file `ino`: the page at `vma.start` is the
    /// file's bytes from `offset`; bytes at or past `zero_from` (a user
    /// address) are zero (a segment's .bss).
    File {
        ino: Ino,
        offset: u64,
        zero_from: u64,
    },
}

pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub prot: u32,
    pub backing: Backing,
}

pub const PROT_READ: u32 = 1;
pub const PROT_WRITE: u32 = 2;
pub const PROT_EXEC: u32 = 4;

impl Clone for Vma {
    fn clone(&self) -> Vma {
        let backing = match self.backing {
            Backing::Anonymous => Backing::Anonymous,
            Backing::File { ino, offset, zero_from } => {
                fs().open_ref(ino);
                Backing::File { ino, offset, zero_from }
            }
        };
        Vma { start: self.start, end: self.end, prot: self.prot, backing }
    }
}

impl Drop for Vma {
    fn drop(&mut self) {
        if let Backing::File { ino, .. } = self.backing {
            fs().close_ref(ino);
        }
    }
}

impl Vma {
    /// The part of this mapping from `at` on, as a mapping of its own.
    pub fn tail(&self, at: u64) -> Vma {
        let mut tail = self.clone();
        tail.start = at;
        if let Backing::File { offset, .. } = &mut tail.backing {
            *offset += at - self.start;
        }
        tail
    }
}

#[derive(Clone, Copy, Default)]
pub struct SigAction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

pub const SIG_DFL: u64 = 0;
pub const SIG_IGN: u64 = 1;

#[derive(Clone)]
pub struct Task {
    pub fds: Vec<Option<Fd>>,
    pub cwd: Ino,
    pub umask: u32,
    pub brk_start: u64,
    pub brk: u64,
    pub vmas: Vec<Vma>,
    pub pgid: u64,
    pub sid: u64,
    pub actions: [SigAction; 65],
    pub mask: u64,
    pub pending: u64,
    pub altstack: (u64, u64, u32),
    pub clear_child_tid: u64,
    /// The running program's path, for /proc/self/exe.
    pub exe: Vec<u8>,
    pub comm: [u8; 16],
    /// What the task sleeps on (0: nothing in particular).
    pub channel: usize,
    /// When a sleeping task's timer runs out (`platform::now_ns`), or 0.
    pub wake_at: u64,
    /// A system call a signal interrupted (its number), to restart or
    /// fail with EINTR when the signal is delivered.
    pub restart: Option<u64>,
    /// getrlimit/setrlimit's values, by resource.
    pub limits: [(u64, u64); 16],
    /// A signal mask to restore after the next signal frame (ppoll,
    /// pselect6, rt_sigsuspend), or None.
    pub saved_mask: Option<u64>,
    /// rusage-ish: children's times are not kept.
    pub start_ns: u64,
}

impl Task {
    pub fn new() -> Task {
        Task {
            fds: Vec::new(),
            cwd: ROOT,
            umask: 0o022,
            brk_start: 0,
            brk: 0,
            vmas: Vec::new(),
            pgid: 1,
            sid: 1,
            actions: [SigAction::default(); 65],
            mask: 0,
            pending: 0,
            altstack: (0, 0, 2),
            clear_child_tid: 0,
            exe: Vec::new(),
            comm: [0; 16],
            channel: 0,
            wake_at: 0,
            restart: None,
            limits: default_limits(),
            saved_mask: None,
            start_ns: 0,
        }
    }

    pub fn fd(&self, fd: u64) -> Result<&Fd, i64> {
        self.fds.get(fd as usize).and_then(Option::as_ref).ok_or(super::EBADF)
    }

    pub fn file(&self, fd: u64) -> Result<File, i64> {
        Ok(self.fd(fd)?.file.clone())
    }

    /// The lowest free descriptor at or above `from`.
    pub fn install(&mut self, file: File, cloexec: bool, from: usize) -> Result<u64, i64> {
        let slot =
            (from..MAX_FDS).find(|&i| self.fds.get(i).is_none_or(Option::is_none)).ok_or(super::EMFILE)?;
        if slot >= self.fds.len() {
            self.fds.try_reserve(slot + 1 - self.fds.len()).map_err(|_| super::ENOMEM)?;
            self.fds.resize(slot + 1, None);
        }
        self.fds[slot] = Some(Fd { file, cloexec });
        Ok(slot as u64)
    }

    pub fn vma_at(&self, va: u64) -> Option<&Vma> {
        self.vmas.iter().find(|v| v.start <= va && va < v.end)
    }
}

pub const RLIM_INFINITY: u64 = u64::MAX;

fn default_limits() -> [(u64, u64); 16] {
    let mut limits = [(RLIM_INFINITY, RLIM_INFINITY); 16];
    limits[3] = (super::exec::STACK_SIZE, RLIM_INFINITY); // RLIMIT_STACK
    limits[7] = (MAX_FDS as u64, MAX_FDS as u64); // RLIMIT_NOFILE
    limits[6] = (super::super::proc::MAX_PROCS as u64, super::super::proc::MAX_PROCS as u64); // RLIMIT_NPROC
    limits
}

struct Tasks(UnsafeCell<[Option<Box<Task>>; MAX_PROCS]>);

// SAFETY: one CPU, the kernel runs with interrupts off.
unsafe impl Sync for Tasks {}

static TASKS: Tasks = Tasks(UnsafeCell::new([const { None }; MAX_PROCS]));

/// Slot `index`'s task. Callers do not keep it across a switch.
pub fn task_slot(index: usize) -> &'static mut Option<Box<Task>> {
    // SAFETY: see `Tasks`.
    unsafe { &mut (*TASKS.0.get())[index] }
}

/// The task of slot `index`, which must be a Linux process.
pub fn task(index: usize) -> &'static mut Task {
    task_slot(index).as_deref_mut().expect("a Linux process has a task")
}
