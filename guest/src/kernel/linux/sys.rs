//! # Linux's system calls
//!
//! `syscall` from user mode raises #UD here (EFER.SCE stays clear, under
//! Umbra and natively); the trap handler sees the `0f 05`, steps over it,
//! puts the return address and flags in rcx and r11 as the instruction
//! would, and calls [`syscall`]: the number in rax, the arguments in rdi,
//! rsi, rdx, r10, r8 and r9, the result (or -errno) back in rax.
//!
//! Each call is a function returning `Result<u64, i64>` (the error a
//! positive errno). Calls not in the table return ENOSYS and are counted
//! by number (printed at shutdown under `log=debug`).

use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;

use umbra_abi as abi;

use super::super::fs::{self as vfs, Ino, Kind, ROOT};
use super::super::mem::{self, LINUX_USER_BASE, LINUX_USER_TOP, PAGE};
use super::super::proc::{self, MAX_PROCS, State, k};
use super::super::trap::{self, TrapFrame};
use super::exec::{self, STACK_SIZE, STACK_TOP};
use super::mm::{self, get, get_cstring, get_u64, put, put_u32, put_u64};
use super::signal::{self, SIGCHLD, SIGKILL, SIGPIPE, SIGSTOP, UNBLOCKABLE, bit};
use super::task::{
    Backing, Fd, File, Object, OpenFile, PIPE_CAPACITY, PROT_EXEC, PROT_READ, PROT_WRITE, Pipe, SigAction,
    Task, Vma, task, task_slot,
};
use super::terminal;
use super::*;
use crate::platform;

const AT_FDCWD: u64 = (-100i64) as u64;
const AT_SYMLINK_NOFOLLOW: u64 = 0x100;
const AT_REMOVEDIR: u64 = 0x200;
const AT_SYMLINK_FOLLOW: u64 = 0x400;
const AT_EMPTY_PATH: u64 = 0x1000;

const O_ACCMODE: u32 = 3;
const O_WRONLY: u32 = 1;
const O_RDWR: u32 = 2;
const O_CREAT: u32 = 0o100;
const O_EXCL: u32 = 0o200;
const O_TRUNC: u32 = 0o1000;
const O_APPEND: u32 = 0o2000;
const O_NONBLOCK: u32 = 0o4000;
const O_DIRECTORY: u32 = 0o200000;
const O_NOFOLLOW: u32 = 0o400000;
const O_CLOEXEC: u32 = 0o2000000;
const O_PATH: u32 = 0o10000000;

const PATH_MAX: usize = 4096;
/// What /proc/self/exe names: the running program.
const SELF_EXE: &[u8] = b"/proc/self/exe";
/// Channels for sleeps that no object names.
use super::POLL_CHANNEL;
const SLEEP_CHANNEL: usize = 2;
const PAUSE_CHANNEL: usize = 3;
/// A child's wait channel is its parent's slot plus this.
const WAIT_CHANNEL: usize = 0x100;

type R = Result<u64, i64>;

fn errno(e: i64) -> i64 {
    e.abs()
}

fn me() -> usize {
    k().current
}

fn cur() -> &'static mut Task {
    task(me())
}

/// The registers a Linux program starts with.
pub fn user_frame(entry: u64, stack: u64) -> TrapFrame {
    TrapFrame {
        rip: entry,
        cs: u64::from(abi::GUEST_USER_CS),
        rflags: trap::RFLAGS_IF | 2,
        rsp: stack,
        ss: u64::from(abi::GUEST_USER_SS),
        ..TrapFrame::default()
    }
}

/// The command name of a program at `path` (its last component).
pub fn comm_of(path: &[u8]) -> [u8; 16] {
    let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
    let mut comm = [0u8; 16];
    let n = name.len().min(15);
    comm[..n].copy_from_slice(&name[..n]);
    comm
}

/// The system-call entry, from the trap handler.
pub fn syscall(frame: &mut TrapFrame) {
    let number = frame.rax;
    let args = [frame.rdi, frame.rsi, frame.rdx, frame.r10, frame.r8, frame.r9];
    cur().restart = None;
    let result = dispatch(number, args, frame);
    if super::tracing() {
        let pid = k().procs[me()].pid;
        say!(
            "linux: [{pid}] call {number}({:#x}, {:#x}, {:#x}, {:#x}) = {result:?}",
            args[0],
            args[1],
            args[2],
            args[3]
        );
    }
    frame.rax = match result {
        Ok(value) => value,
        Err(ERESTART) => {
            cur().restart = Some(number);
            (-EINTR) as u64
        }
        Err(e) => (-e) as u64,
    };
}

fn dispatch(number: u64, a: [u64; 6], frame: &mut TrapFrame) -> R {
    match number {
        0 => read(a[0], a[1], a[2]),
        1 => write(a[0], a[1], a[2]),
        2 => openat(AT_FDCWD, a[0], a[1] as u32, a[2] as u32),
        3 => close(a[0]),
        4 => stat_at(AT_FDCWD, a[0], a[1], 0),
        5 => fstat(a[0], a[1]),
        6 => stat_at(AT_FDCWD, a[0], a[1], AT_SYMLINK_NOFOLLOW),
        7 => poll(
            a[0],
            a[1],
            if (a[2] as i32) < 0 { None } else { Some(a[2] as i32 as u64 * 1_000_000) },
            None,
        ),
        8 => lseek(a[0], a[1] as i64, a[2]),
        9 => mmap(a[0], a[1], a[2] as u32, a[3] as u32, a[4], a[5]),
        10 => mprotect(a[0], a[1], a[2] as u32),
        11 => munmap(a[0], a[1]),
        12 => brk(a[0]),
        13 => rt_sigaction(a[0], a[1], a[2], a[3]),
        14 => rt_sigprocmask(a[0], a[1], a[2], a[3]),
        15 => signal::sigreturn(frame),
        16 => ioctl(a[0], a[1], a[2]),
        17 => pread(a[0], a[1], a[2], a[3]),
        18 => pwrite(a[0], a[1], a[2], a[3]),
        19 => readv(a[0], a[1], a[2]),
        20 => writev(a[0], a[1], a[2]),
        21 => faccessat(AT_FDCWD, a[0], a[1], 0),
        22 => pipe2(a[0], 0),
        23 => select(a[0], a[1], a[2], a[3], timeval_timeout(a[4])?, None),
        24 => {
            proc::yield_now();
            Ok(0)
        }
        25 => mremap(a[0], a[1], a[2], a[3], a[4]),
        28 => madvise(a[0], a[1], a[2]),
        32 => dup(a[0]),
        33 => dup2(a[0], a[1]),
        34 => pause(),
        35 => nanosleep(0, 0, a[0], a[1]),
        39 => Ok(k().procs[me()].pid),
        40 => sendfile(a[0], a[1], a[2], a[3]),
        56 => clone(a[0], a[1], a[2], a[3], frame),
        57 | 58 => fork(frame, 0, 0, 0, 0),
        59 => execve(a[0], a[1], a[2], frame),
        60 | 231 => exit_process_status(a[0]),
        61 => wait4(a[0] as i32 as i64, a[1], a[2], a[3]),
        62 => kill(a[0] as i32 as i64, a[1]),
        63 => uname(a[0]),
        72 => fcntl(a[0], a[1], a[2]),
        74 | 75 => cur().fd(a[0]).map(|_| 0),
        76 => truncate(a[0], a[1]),
        77 => ftruncate(a[0], a[1]),
        79 => getcwd(a[0], a[1]),
        80 => chdir(a[0]),
        81 => fchdir(a[0]),
        82 => renameat2(AT_FDCWD, a[0], AT_FDCWD, a[1], 0),
        83 => mkdirat(AT_FDCWD, a[0], a[1]),
        84 => unlinkat(AT_FDCWD, a[0], AT_REMOVEDIR),
        85 => openat(AT_FDCWD, a[0], O_CREAT | O_WRONLY | O_TRUNC, a[1] as u32),
        86 => linkat(AT_FDCWD, a[0], AT_FDCWD, a[1], 0),
        87 => unlinkat(AT_FDCWD, a[0], 0),
        88 => symlinkat(a[0], AT_FDCWD, a[1]),
        89 => readlinkat(AT_FDCWD, a[0], a[1], a[2]),
        90 => fchmodat(AT_FDCWD, a[0], a[1]),
        91 => fchmod(a[0], a[1]),
        92 | 94 => fchownat(AT_FDCWD, a[0], 0),
        93 => cur().fd(a[0]).map(|_| 0),
        95 => {
            let t = cur();
            let old = t.umask;
            t.umask = a[0] as u32 & 0o777;
            Ok(u64::from(old))
        }
        96 => gettimeofday(a[0]),
        97 => prlimit(0, a[0], 0, a[1]),
        98 => getrusage(a[1]),
        99 => sysinfo(a[0]),
        100 => times(a[0]),
        102 | 104 | 107 | 108 => Ok(0),
        105 | 106 => {
            if a[0] == 0 {
                Ok(0)
            } else {
                Err(EPERM)
            }
        }
        109 => setpgid(a[0], a[1]),
        110 => Ok(parent_pid(me())),
        111 => Ok(cur().pgid),
        112 => setsid(),
        115 => Ok(0),
        121 => getpgid(a[0]),
        124 => getsid(a[0]),
        127 => put_u64(a[0], cur().pending & cur().mask).map(|_| 0),
        130 => sigsuspend(a[0], a[1]),
        131 => sigaltstack(a[0], a[1]),
        157 => prctl(a[0], a[1]),
        158 => arch_prctl(a[0], a[1]),
        160 => prlimit(0, a[0], a[1], 0),
        162 => Ok(0),
        186 => Ok(k().procs[me()].pid),
        201 => time(a[0]),
        202 => futex(a[0], a[1], a[2]),
        217 => getdents64(a[0], a[1], a[2]),
        204 => sched_getaffinity(a[1], a[2]),
        218 => {
            cur().clear_child_tid = a[0];
            Ok(k().procs[me()].pid)
        }
        228 => clock_gettime(a[0], a[1]),
        229 => clock_getres(a[0], a[1]),
        230 => nanosleep(a[0], a[1], a[2], a[3]),
        234 => {
            if a[0] as i32 <= 0 || a[1] as i32 <= 0 {
                return Err(EINVAL);
            }
            kill(a[1] as i32 as i64, a[2])
        }
        247 => waitid(a[0], a[1], a[2], a[3]),
        257 => openat(a[0], a[1], a[2] as u32, a[3] as u32),
        258 => mkdirat(a[0], a[1], a[2]),
        260 => fchownat(a[0], a[1], a[4]),
        262 => stat_at(a[0], a[1], a[2], a[3]),
        263 => unlinkat(a[0], a[1], a[2]),
        264 => renameat2(a[0], a[1], a[2], a[3], 0),
        265 => linkat(a[0], a[1], a[2], a[3], a[4]),
        266 => symlinkat(a[0], a[1], a[2]),
        267 => readlinkat(a[0], a[1], a[2], a[3]),
        268 => fchmodat(a[0], a[1], a[2]),
        269 => faccessat(a[0], a[1], a[2], 0),
        270 => {
            let mask = sigmask_arg(a[5])?;
            select(a[0], a[1], a[2], a[3], timespec_timeout(a[4])?, mask)
        }
        271 => {
            let mask = if a[3] == 0 { None } else { Some(get_u64(a[3])?) };
            poll(a[0], a[1], timespec_timeout(a[2])?, mask)
        }
        273 => Ok(0), // set_robust_list: a single thread's list needs no walk
        280 => utimensat(a[0], a[1], a[2], a[3]),
        292 => dup3(a[0], a[1], a[2] as u32),
        293 => pipe2(a[0], a[1] as u32),
        302 => prlimit(a[0], a[1], a[2], a[3]),
        309 => {
            if a[0] != 0 {
                put_u32(a[0], 0)?;
            }
            if a[1] != 0 {
                put_u32(a[1], 0)?;
            }
            Ok(0)
        }
        316 => renameat2(a[0], a[1], a[2], a[3], a[4]),
        318 => getrandom(a[0], a[1]),
        332 => statx(a[0], a[1], a[2], a[4]),
        439 => faccessat(a[0], a[1], a[2], a[3]),
        _ => {
            count_enosys(number);
            Err(ENOSYS)
        }
    }
}

// ---- processes ----

fn parent_pid(index: usize) -> u64 {
    let parent = k().procs[index].parent;
    if parent == 0 { 0 } else { k().procs[parent].pid }
}

fn slot_of(pid: u64) -> Option<usize> {
    (1..MAX_PROCS).find(|&i| {
        let p = &k().procs[i];
        p.pid == pid && p.state != State::Free && p.linux
    })
}

fn alive(index: usize) -> bool {
    matches!(k().procs[index].state, State::Runnable | State::Running | State::Waiting)
}

fn fork(frame: &TrapFrame, flags: u64, stack: u64, ptid: u64, ctid: u64) -> R {
    let child_task = cur().clone();
    let Some(pid) = proc::fork(frame) else { return Err(EAGAIN) };
    let child = slot_of(pid).expect("the child was just made");
    let mut child_task = child_task;
    child_task.pending = 0;
    child_task.channel = 0;
    child_task.wake_at = 0;
    child_task.restart = None;
    child_task.saved_mask = None;
    child_task.start_ns = platform::now_ns();
    const CLONE_PARENT_SETTID: u64 = 0x0010_0000;
    const CLONE_CHILD_CLEARTID: u64 = 0x0020_0000;
    const CLONE_CHILD_SETTID: u64 = 0x0100_0000;
    if flags & CLONE_CHILD_CLEARTID != 0 {
        child_task.clear_child_tid = ctid;
    }
    let child_root = k().procs[child].root;
    if flags & CLONE_CHILD_SETTID != 0 {
        let _ = mm::copy_out_to(child_root, &child_task.vmas, ctid, &(pid as u32).to_le_bytes());
    }
    if flags & CLONE_PARENT_SETTID != 0 {
        let _ = put_u32(ptid, pid as u32);
        let _ = mm::copy_out_to(child_root, &child_task.vmas, ptid, &(pid as u32).to_le_bytes());
    }
    *task_slot(child) = Some(alloc::boxed::Box::new(child_task));
    if stack != 0 {
        proc::set_user_stack(child, stack);
    }
    Ok(pid)
}

fn clone(flags: u64, stack: u64, ptid: u64, ctid: u64, frame: &TrapFrame) -> R {
    const CLONE_VM: u64 = 0x100;
    const CLONE_VFORK: u64 = 0x4000;
    const CLONE_THREAD: u64 = 0x10000;
    if flags & CLONE_THREAD != 0 || (flags & CLONE_VM != 0 && flags & CLONE_VFORK == 0) {
        // Threads share an address space: not supported.
        count_enosys(56);
        return Err(EINVAL);
    }
    fork(frame, flags, stack, ptid, ctid)
}

/// Ends the current process with exit code `code`.
fn exit_process_status(code: u64) -> R {
    finish_process((code & 0xff) << 8)
}

/// Ends the current process killed by `sig`.
pub fn exit_process(sig: u64) -> ! {
    match finish_process(sig & 0x7f) {
        Ok(_) | Err(_) => unreachable!("an exited process ran on"),
    }
}

fn finish_process(wait_status: u64) -> R {
    let me = me();
    let t = cur();
    if t.clear_child_tid != 0 {
        let _ = put_u32(t.clear_child_tid, 0);
    }
    // Closing the files wakes pipe peers; the mappings let go of their
    // files. The rest stays until the parent reaps the zombie: wait4
    // matches children by process group.
    let fds = core::mem::take(&mut t.fds);
    let vmas = core::mem::take(&mut t.vmas);
    drop(fds);
    drop(vmas);
    t.pending = 0;
    let parent = k().procs[me].parent;
    if parent != 0 {
        signal::send(parent, SIGCHLD);
        super::wake(WAIT_CHANNEL + parent);
    }
    proc::exit(wait_status)
}

fn execve(path: u64, argv: u64, envp: u64, frame: &mut TrapFrame) -> R {
    let mut path = get_cstring(path, PATH_MAX)?;
    let argv = string_array(argv)?;
    let envp = string_array(envp)?;
    if path == SELF_EXE {
        path = cur().exe.clone();
    }
    let (image, exe) = exec::load(cur().cwd, &path, argv, envp)?;
    let me = me();
    let kernel = k();
    let old = kernel.procs[me].root;
    // The old space goes while still current, so no stale translation of
    // it survives; the kernel half and the image page stay mapped.
    mem::free_space(&mut kernel.frames, old);
    platform::flush_user();
    kernel.procs[me].root = image.root;
    // SAFETY: a Linux space maps the kernel half and the image's page.
    unsafe { platform::switch_root(image.root) };
    mem::free_root(&mut kernel.frames, old);
    let t = cur();
    t.vmas = image.vmas;
    t.brk_start = image.brk;
    t.brk = image.brk;
    t.comm = comm_of(&exe);
    t.exe = exe;
    t.altstack = (0, 0, 2);
    t.clear_child_tid = 0;
    for fd in t.fds.iter_mut() {
        if fd.as_ref().is_some_and(|f| f.cloexec) {
            *fd = None;
        }
    }
    for action in t.actions.iter_mut() {
        if action.handler != task::SIG_IGN {
            *action = SigAction::default();
        }
    }
    kernel.procs[me].fs_base = 0;
    platform::set_fs_base(0);
    let fpu = platform::FpuArea::initial();
    platform::fpu_restore(&fpu);
    *frame = user_frame(image.entry, image.stack);
    Ok(0)
}

fn string_array(at: u64) -> Result<Vec<Vec<u8>>, i64> {
    let mut out = Vec::new();
    if at == 0 {
        return Ok(out);
    }
    let mut total = 0;
    for i in 0.. {
        let pointer = get_u64(at + 8 * i)?;
        if pointer == 0 {
            break;
        }
        let s = get_cstring(pointer, 128 * 1024)?;
        total += s.len() + 1;
        if total > 256 * 1024 || i > 16384 {
            return Err(E2BIG);
        }
        out.try_reserve(1).map_err(|_| ENOMEM)?;
        out.push(s);
    }
    Ok(out)
}

/// Whether the child in slot `index` matches wait's `pid` argument.
fn wait_matches(index: usize, pid: i64, my_pgid: u64) -> bool {
    let p = &k().procs[index];
    let pgid = task_slot(index).as_ref().map(|t| t.pgid);
    match pid {
        -1 => true,
        0 => pgid == Some(my_pgid),
        p_id if p_id > 0 => p.pid == p_id as u64,
        group => pgid == Some(group.unsigned_abs()),
    }
}

/// Frees a reaped zombie's slot.
fn reap(index: usize) {
    let kernel = k();
    mem::free_root(&mut kernel.frames, kernel.procs[index].root);
    kernel.procs[index] = proc::Proc::vacant();
    *task_slot(index) = None;
}

fn wait4(pid: i64, status: u64, options: u64, rusage: u64) -> R {
    const WNOHANG: u64 = 1;
    let me = me();
    loop {
        let my_pgid = cur().pgid;
        let mut any = false;
        for index in 1..MAX_PROCS {
            if k().procs[index].parent != me
                || k().procs[index].state == State::Free
                || !wait_matches(index, pid, my_pgid)
            {
                continue;
            }
            any = true;
            if k().procs[index].state == State::Zombie {
                let (child_pid, child_status) = (k().procs[index].pid, k().procs[index].status);
                if status != 0 {
                    put_u32(status, child_status as u32)?;
                }
                if rusage != 0 {
                    put(rusage, &[0u8; 144])?;
                }
                reap(index);
                return Ok(child_pid);
            }
        }
        if !any {
            return Err(ECHILD);
        }
        if options & WNOHANG != 0 {
            return Ok(0);
        }
        sleep_on(WAIT_CHANNEL + me)?;
    }
}

fn waitid(idtype: u64, id: u64, info: u64, options: u64) -> R {
    const WNOHANG: u64 = 1;
    const WEXITED: u64 = 4;
    const WNOWAIT: u64 = 0x0100_0000;
    let pid = match idtype {
        0 => -1,
        1 => id as i64,
        2 => -(id as i64),
        _ => return Err(EINVAL),
    };
    if options & WEXITED == 0 {
        return Err(EINVAL);
    }
    let me = me();
    loop {
        let my_pgid = cur().pgid;
        let mut any = false;
        for index in 1..MAX_PROCS {
            if k().procs[index].parent != me
                || k().procs[index].state == State::Free
                || !wait_matches(index, pid, my_pgid)
            {
                continue;
            }
            any = true;
            if k().procs[index].state == State::Zombie {
                let (child_pid, status) = (k().procs[index].pid, k().procs[index].status);
                if info != 0 {
                    let mut si = [0u8; 128];
                    si[0..4].copy_from_slice(&(SIGCHLD as u32).to_le_bytes());
                    let (code, value) =
                        if status & 0x7f == 0 { (1u32, (status >> 8) & 0xff) } else { (2, status & 0x7f) };
                    si[8..12].copy_from_slice(&code.to_le_bytes());
                    si[16..20].copy_from_slice(&(child_pid as u32).to_le_bytes());
                    si[24..28].copy_from_slice(&(value as u32).to_le_bytes());
                    put(info, &si)?;
                }
                if options & WNOWAIT == 0 {
                    reap(index);
                }
                return Ok(0);
            }
        }
        if !any {
            return Err(ECHILD);
        }
        if options & WNOHANG != 0 {
            if info != 0 {
                put(info, &[0u8; 128])?;
            }
            return Ok(0);
        }
        sleep_on(WAIT_CHANNEL + me)?;
    }
}

fn kill(pid: i64, sig: u64) -> R {
    if sig > signal::NSIG {
        return Err(EINVAL);
    }
    let deliver = |index: usize| {
        if sig != 0 {
            signal::send(index, sig);
        }
    };
    match pid {
        p if p > 0 => {
            let index = slot_of(p as u64).filter(|&i| alive(i)).ok_or(ESRCH)?;
            deliver(index);
        }
        0 => {
            signal::send_group(cur().pgid, sig);
        }
        -1 => {
            let me = me();
            for index in 1..MAX_PROCS {
                if index != me && k().procs[index].pid != 1 && k().procs[index].linux && alive(index) {
                    deliver(index);
                }
            }
        }
        group => {
            if !signal::send_group(group.unsigned_abs(), sig) {
                return Err(ESRCH);
            }
        }
    }
    Ok(0)
}

fn setpgid(pid: u64, pgid: u64) -> R {
    let index = if pid == 0 { me() } else { slot_of(pid).ok_or(ESRCH)? };
    let t = task_slot(index).as_deref_mut().ok_or(ESRCH)?;
    t.pgid = if pgid == 0 { k().procs[index].pid } else { pgid };
    Ok(0)
}

fn getpgid(pid: u64) -> R {
    let index = if pid == 0 { me() } else { slot_of(pid).ok_or(ESRCH)? };
    Ok(task_slot(index).as_ref().ok_or(ESRCH)?.pgid)
}

fn getsid(pid: u64) -> R {
    let index = if pid == 0 { me() } else { slot_of(pid).ok_or(ESRCH)? };
    Ok(task_slot(index).as_ref().ok_or(ESRCH)?.sid)
}

fn setsid() -> R {
    let pid = k().procs[me()].pid;
    let t = cur();
    if t.pgid == pid {
        return Err(EPERM);
    }
    t.pgid = pid;
    t.sid = pid;
    Ok(pid)
}

// ---- signals ----

fn rt_sigaction(sig: u64, act: u64, old: u64, size: u64) -> R {
    if sig == 0 || sig > signal::NSIG || size != 8 {
        return Err(EINVAL);
    }
    if act != 0 && (sig == SIGKILL || sig == SIGSTOP) {
        return Err(EINVAL);
    }
    let previous = cur().actions[sig as usize];
    if act != 0 {
        let words: [u64; 4] = mm::get_struct(act)?;
        let action = SigAction { handler: words[0], flags: words[1], restorer: words[2], mask: words[3] };
        cur().actions[sig as usize] = action;
        if action.handler == task::SIG_IGN {
            cur().pending &= !bit(sig);
        }
    }
    if old != 0 {
        let words = [previous.handler, previous.flags, previous.restorer, previous.mask];
        let mut bytes = [0u8; 32];
        for (i, w) in words.iter().enumerate() {
            bytes[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
        }
        put(old, &bytes)?;
    }
    Ok(0)
}

fn rt_sigprocmask(how: u64, set: u64, old: u64, size: u64) -> R {
    if size != 8 {
        return Err(EINVAL);
    }
    let current = cur().mask;
    if set != 0 {
        let value = get_u64(set)?;
        let new = match how {
            0 => current | value,
            1 => current & !value,
            2 => value,
            _ => return Err(EINVAL),
        };
        cur().mask = new & !UNBLOCKABLE;
    }
    if old != 0 {
        put_u64(old, current)?;
    }
    Ok(0)
}

fn sigmask_arg(at: u64) -> Result<Option<u64>, i64> {
    // pselect6's sixth argument: { const sigset_t *ss; size_t ss_len; }.
    if at == 0 {
        return Ok(None);
    }
    let set = get_u64(at)?;
    if set == 0 { Ok(None) } else { Ok(Some(get_u64(set)?)) }
}

fn sigsuspend(set: u64, size: u64) -> R {
    if size != 8 {
        return Err(EINVAL);
    }
    let mask = get_u64(set)?;
    let t = cur();
    t.saved_mask = Some(t.mask);
    t.mask = mask & !UNBLOCKABLE;
    loop {
        if sleep_on(PAUSE_CHANNEL).is_err() {
            return Err(EINTR);
        }
    }
}

fn pause() -> R {
    loop {
        if sleep_on(PAUSE_CHANNEL).is_err() {
            return Err(EINTR);
        }
    }
}

fn sigaltstack(new: u64, old: u64) -> R {
    let (sp, size, flags) = cur().altstack;
    if old != 0 {
        let mut bytes = [0u8; 24];
        bytes[0..8].copy_from_slice(&sp.to_le_bytes());
        bytes[8..12].copy_from_slice(&flags.to_le_bytes());
        bytes[16..24].copy_from_slice(&size.to_le_bytes());
        put(old, &bytes)?;
    }
    if new != 0 {
        let words: [u64; 3] = mm::get_struct(new)?;
        let flags = words[1] as u32;
        if flags & 2 != 0 {
            cur().altstack = (0, 0, 2);
        } else {
            if words[2] < 2048 {
                return Err(ENOMEM);
            }
            cur().altstack = (words[0], words[2], 0);
        }
    }
    Ok(0)
}

// ---- memory ----

fn brk(addr: u64) -> R {
    let me = me();
    let root = k().procs[me].root;
    let t = cur();
    let (start, old) = (t.brk_start, t.brk);
    if addr < start || addr > start + proc::HEAP_MAX {
        return Ok(old);
    }
    let (old_end, new_end) = (old.next_multiple_of(PAGE), addr.next_multiple_of(PAGE));
    if new_end > old_end {
        let clash = t.vmas.iter().any(|v| v.start != start && v.start < new_end && v.end > old_end);
        if clash || (new_end - old_end) / PAGE > k().frames.available() {
            return Ok(old);
        }
    } else if new_end < old_end {
        for page in (new_end..old_end).step_by(PAGE as usize) {
            mem::unmap_user(&mut k().frames, root, page);
        }
        platform::sync();
    }
    if let Some(heap) = t.vmas.iter_mut().find(|v| v.start == start) {
        heap.end = new_end;
    }
    t.brk = addr;
    Ok(addr)
}

const MAP_SHARED: u32 = 1;
const MAP_PRIVATE: u32 = 2;
const MAP_FIXED: u32 = 0x10;
const MAP_ANONYMOUS: u32 = 0x20;
const MAP_FIXED_NOREPLACE: u32 = 0x10_0000;
/// Where mmap looks for room: below the stack, with a gap.
const MMAP_TOP: u64 = STACK_TOP - STACK_SIZE - (1 << 30);

fn mmap(addr: u64, len: u64, prot: u32, flags: u32, fd: u64, offset: u64) -> R {
    if len == 0 || !offset.is_multiple_of(PAGE) || flags & (MAP_SHARED | MAP_PRIVATE) == 0 {
        return Err(EINVAL);
    }
    let len = len.checked_next_multiple_of(PAGE).ok_or(ENOMEM)?;
    let backing = if flags & MAP_ANONYMOUS != 0 {
        Backing::Anonymous
    } else {
        let file = cur().file(fd)?;
        let file = file.borrow();
        let Object::Inode(ino) = file.object else { return Err(ENODEV) };
        if fs().kind(ino) != Kind::Regular || file.flags & O_ACCMODE == O_WRONLY {
            return Err(EACCES);
        }
        if flags & MAP_SHARED != 0 && prot & PROT_WRITE != 0 {
            // Shared writable file mappings would need write-back.
            return Err(ENODEV);
        }
        let size = fs().stat(ino).size;
        fs().open_ref(ino);
        // Until the mapping's start is known, `zero_from` counts from it:
        // the bytes past the file's end read as zeros.
        Backing::File { ino, offset, zero_from: size.saturating_sub(offset) }
    };
    let me = me();
    let root = k().procs[me].root;
    let t = cur();
    let fixed = flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) != 0;
    let in_range = |a: u64| {
        a.is_multiple_of(PAGE)
            && a >= LINUX_USER_BASE
            && a.checked_add(len).is_some_and(|e| e <= LINUX_USER_TOP)
    };
    let start = if fixed {
        if !in_range(addr) {
            return Err(EINVAL);
        }
        if flags & MAP_FIXED_NOREPLACE != 0 && t.vmas.iter().any(|v| v.start < addr + len && v.end > addr) {
            return Err(EEXIST);
        }
        mm::unmap_range(root, t, addr, addr + len);
        addr
    } else if addr != 0 && in_range(addr) && !t.vmas.iter().any(|v| v.start < addr + len && v.end > addr) {
        addr
    } else {
        mm::find_free(t, len, MMAP_TOP).ok_or(ENOMEM)?
    };
    let backing = match backing {
        Backing::File { ino, offset, zero_from } => {
            Backing::File { ino, offset, zero_from: start + zero_from }
        }
        anonymous => anonymous,
    };
    let prot = prot & (PROT_READ | PROT_WRITE | PROT_EXEC);
    mm::insert(t, Vma { start, end: start + len, prot, backing })?;
    Ok(start)
}

fn user_range(addr: u64, len: u64) -> Result<(u64, u64), i64> {
    if !addr.is_multiple_of(PAGE) {
        return Err(EINVAL);
    }
    let len = len.checked_next_multiple_of(PAGE).ok_or(EINVAL)?;
    let end = addr.checked_add(len).ok_or(EINVAL)?;
    if addr < LINUX_USER_BASE || end > LINUX_USER_TOP {
        return Err(EINVAL);
    }
    Ok((addr, end))
}

fn munmap(addr: u64, len: u64) -> R {
    let (start, end) = user_range(addr, len)?;
    if len == 0 {
        return Err(EINVAL);
    }
    let root = k().procs[me()].root;
    mm::unmap_range(root, cur(), start, end);
    Ok(0)
}

fn mprotect(addr: u64, len: u64, prot: u32) -> R {
    let (start, end) = user_range(addr, len)?;
    if start == end {
        return Ok(0);
    }
    let root = k().procs[me()].root;
    mm::protect_range(root, cur(), start, end, prot & 7)?;
    Ok(0)
}

fn madvise(addr: u64, len: u64, advice: u64) -> R {
    const MADV_DONTNEED: u64 = 4;
    let (start, end) = user_range(addr, len)?;
    if advice == MADV_DONTNEED {
        // Private pages read back as their original contents: drop ours.
        let root = k().procs[me()].root;
        for page in (start..end).step_by(PAGE as usize) {
            if cur().vma_at(page).is_some() {
                mem::unmap_user(&mut k().frames, root, page);
            }
        }
        platform::sync();
    }
    Ok(0)
}

fn mremap(old: u64, old_len: u64, new_len: u64, flags: u64, _new: u64) -> R {
    const MREMAP_MAYMOVE: u64 = 1;
    if !old.is_multiple_of(PAGE) || new_len == 0 || flags & !MREMAP_MAYMOVE != 0 {
        return Err(EINVAL);
    }
    let old_len = old_len.next_multiple_of(PAGE);
    let new_len = new_len.checked_next_multiple_of(PAGE).ok_or(ENOMEM)?;
    let root = k().procs[me()].root;
    let t = cur();
    let index = t.vmas.iter().position(|v| v.start <= old && old + old_len <= v.end).ok_or(EFAULT)?;
    if new_len <= old_len {
        mm::unmap_range(root, t, old + new_len, old + old_len);
        return Ok(old);
    }
    let vma_end = t.vmas[index].end;
    let grow_end = old + new_len;
    let free_after = grow_end <= MMAP_TOP.max(vma_end)
        && !t.vmas.iter().any(|v| v.start < grow_end && v.end > old + old_len && v.start >= vma_end);
    if vma_end == old + old_len && free_after && grow_end <= LINUX_USER_TOP {
        t.vmas[index].end = grow_end;
        return Ok(old);
    }
    if flags & MREMAP_MAYMOVE == 0 {
        return Err(ENOMEM);
    }
    let start = mm::find_free(t, new_len, MMAP_TOP).ok_or(ENOMEM)?;
    let mut moved = t.vmas[index].tail(old);
    moved.start = start;
    moved.end = start + new_len;
    if let Backing::File { zero_from, .. } = &mut moved.backing {
        *zero_from = zero_from.saturating_sub(old) + start;
    }
    // Move the pages that exist.
    let frames = &mut k().frames;
    for offset in (0..old_len).step_by(PAGE as usize) {
        if let Some(entry) = mem::leaf(frames, root, old + offset) {
            // SAFETY: a slot of our own tables.
            let pte = unsafe { entry.read_volatile() };
            if pte & mem::PRESENT != 0 {
                // SAFETY: as above.
                unsafe { entry.write_volatile(0) };
                platform::set_pte(root, old + offset, 0, false);
                let flags = pte & !mem::ADDRESS & !(mem::PRESENT | mem::USER);
                if mem::map_user(frames, root, start + offset, pte & mem::ADDRESS, flags).is_none() {
                    frames.put(pte & mem::ADDRESS);
                }
            }
        }
    }
    platform::sync();
    mm::unmap_range(root, t, old, old + old_len);
    mm::insert(t, moved)?;
    Ok(start)
}

// ---- files ----

fn new_file(object: Object, flags: u32, ino: Option<Ino>) -> File {
    if let Some(ino) = ino {
        fs().open_ref(ino);
    }
    Rc::new(RefCell::new(OpenFile { object, offset: 0, flags, ino }))
}

/// The directory `dirfd` names for an *at call.
fn dir_of(dirfd: u64) -> Result<Ino, i64> {
    if dirfd == AT_FDCWD || dirfd as u32 == AT_FDCWD as u32 {
        return Ok(cur().cwd);
    }
    let file = cur().file(dirfd)?;
    let file = file.borrow();
    match file.object {
        Object::Inode(ino) if fs().kind(ino) == Kind::Directory => Ok(ino),
        _ => Err(ENOTDIR),
    }
}

fn user_path(at: u64) -> Result<Vec<u8>, i64> {
    let path = get_cstring(at, PATH_MAX)?;
    if path.is_empty() {
        return Err(ENOENT);
    }
    Ok(path)
}

fn resolve_at(dirfd: u64, path: &[u8], follow: bool) -> Result<Ino, i64> {
    if path == SELF_EXE {
        let exe = cur().exe.clone();
        return fs().resolve(ROOT, &exe, follow).map_err(errno);
    }
    let dir = if path.starts_with(b"/") { ROOT } else { dir_of(dirfd)? };
    fs().resolve(dir, path, follow).map_err(errno)
}

fn parent_at(dirfd: u64, path: &[u8]) -> Result<(Ino, &[u8]), i64> {
    let dir = if path.starts_with(b"/") { ROOT } else { dir_of(dirfd)? };
    fs().resolve_parent(dir, path).map_err(errno)
}

/// The open-file object for inode `ino`: devices by their numbers.
fn object_for(ino: Ino) -> Result<Object, i64> {
    if fs().kind(ino) != Kind::CharDevice {
        return Ok(Object::Inode(ino));
    }
    let rdev = fs().stat(ino).rdev;
    let (major, minor) = ((rdev >> 8) & 0xfff, (rdev & 0xff) | ((rdev >> 12) & 0xfff00));
    match (major, minor) {
        (5, 0) | (5, 1) | (4, _) => Ok(Object::Console),
        (1, 3) => Ok(Object::Null),
        (1, 5) => Ok(Object::Zero),
        (1, 8) | (1, 9) => Ok(Object::Random),
        _ => Err(ENXIO),
    }
}

fn openat(dirfd: u64, path: u64, flags: u32, mode: u32) -> R {
    let path = user_path(path)?;
    let follow = flags & O_NOFOLLOW == 0;
    let ino = match resolve_at(dirfd, &path, follow) {
        Ok(ino) => {
            if flags & O_CREAT != 0 && flags & O_EXCL != 0 {
                return Err(EEXIST);
            }
            ino
        }
        Err(ENOENT) if flags & O_CREAT != 0 => {
            let (dir, name) = parent_at(dirfd, &path)?;
            if name.is_empty() || path.ends_with(b"/") {
                return Err(EISDIR);
            }
            let umask = cur().umask;
            fs().create(dir, name, (mode & 0o7777) & !umask, now()).map_err(errno)?
        }
        Err(e) => return Err(e),
    };
    let kind = fs().kind(ino);
    if kind == Kind::Symlink {
        return Err(ELOOP);
    }
    if flags & O_DIRECTORY != 0 && kind != Kind::Directory {
        return Err(ENOTDIR);
    }
    let access = flags & O_ACCMODE;
    if kind == Kind::Directory && (access != 0 || flags & O_CREAT != 0) && flags & O_PATH == 0 {
        return Err(EISDIR);
    }
    if flags & O_TRUNC != 0 && kind == Kind::Regular && access != 0 {
        fs().truncate(ino, 0, now()).map_err(errno)?;
    }
    let object = if flags & O_PATH != 0 { Object::Inode(ino) } else { object_for(ino)? };
    let file = new_file(object, flags & !(O_CREAT | O_EXCL | O_TRUNC | O_CLOEXEC), Some(ino));
    cur().install(file, flags & O_CLOEXEC != 0, 0)
}

fn close(fd: u64) -> R {
    let t = cur();
    t.fd(fd)?;
    t.fds[fd as usize] = None;
    Ok(0)
}

fn readable(file: &OpenFile) -> bool {
    file.flags & O_ACCMODE != O_WRONLY
}

fn writable(file: &OpenFile) -> bool {
    matches!(file.flags & O_ACCMODE, O_WRONLY | O_RDWR)
}

/// A kernel buffer for `len` bytes of a transfer, at most 64 KiB.
fn buffer(len: u64) -> Result<Vec<u8>, i64> {
    crate::kernel::fs::zeroed(len.min(64 * 1024) as usize).ok_or(ENOMEM)
}

/// Reads up to `len` bytes from `file` at `offset` (None: the file's own
/// offset, advanced) to user `buf`.
fn read_file(file: &File, buf: u64, len: u64, offset: Option<u64>) -> R {
    if !readable(&file.borrow()) {
        return Err(EBADF);
    }
    if len == 0 {
        return Ok(0);
    }
    let pipe = match &file.borrow().object {
        Object::PipeRead(pipe) => Some(pipe.clone()),
        _ => None,
    };
    if let Some(pipe) = pipe {
        if offset.is_some() {
            return Err(ESPIPE);
        }
        loop {
            let available = pipe.borrow().buffer.len();
            if available > 0 {
                let n = available.min(len as usize).min(64 * 1024);
                let mut data = buffer(n as u64)?;
                for (i, byte) in pipe.borrow_mut().buffer.drain(..n).enumerate() {
                    data[i] = byte;
                }
                super::wake(Pipe::channel(&pipe));
                super::wake(POLL_CHANNEL);
                put(buf, &data)?;
                return Ok(n as u64);
            }
            if pipe.borrow().writers == 0 {
                return Ok(0);
            }
            if file.borrow().flags & O_NONBLOCK != 0 {
                return Err(EAGAIN);
            }
            sleep_on(Pipe::channel(&pipe))?;
        }
    }
    if matches!(file.borrow().object, Object::Console) {
        if offset.is_some() {
            return Err(ESPIPE);
        }
        // Not under the open file's borrow: the read may sleep, and others
        // share the description.
        let nonblocking = file.borrow().flags & O_NONBLOCK != 0;
        return terminal::read(buf, len, nonblocking);
    }
    let mut f = file.borrow_mut();
    match f.object {
        Object::Null => Ok(0),
        // Both fill the whole request, in kernel-buffer-sized steps, as
        // Linux does (dd counts a short read as a partial record).
        Object::Zero | Object::Random => {
            let mut done = 0;
            while done < len {
                let mut data = buffer(len - done)?;
                if matches!(f.object, Object::Random) {
                    random_bytes(&mut data);
                }
                put(buf + done, &data)?;
                done += data.len() as u64;
            }
            Ok(len)
        }
        Object::Inode(ino) => {
            if fs().kind(ino) == Kind::Directory {
                return Err(EISDIR);
            }
            let start = offset.unwrap_or(f.offset);
            let mut done = 0u64;
            while done < len {
                let mut data = buffer(len - done)?;
                let n = fs().read(ino, start + done, &mut data).map_err(errno)?;
                if let Err(e) = put(buf + done, &data[..n]) {
                    if done == 0 {
                        return Err(e);
                    }
                    break;
                }
                done += n as u64;
                if n < data.len() {
                    break;
                }
            }
            if offset.is_none() {
                f.offset = start + done;
            }
            Ok(done)
        }
        _ => Err(EBADF),
    }
}

fn write_file(file: &File, buf: u64, len: u64, offset: Option<u64>) -> R {
    if !writable(&file.borrow()) {
        return Err(EBADF);
    }
    if len == 0 {
        return Ok(0);
    }
    let pipe = match &file.borrow().object {
        Object::PipeWrite(pipe) => Some(pipe.clone()),
        _ => None,
    };
    if let Some(pipe) = pipe {
        if offset.is_some() {
            return Err(ESPIPE);
        }
        let mut done = 0u64;
        while done < len {
            if pipe.borrow().readers == 0 {
                signal::send(me(), SIGPIPE);
                return if done > 0 { Ok(done) } else { Err(EPIPE) };
            }
            let room = PIPE_CAPACITY - pipe.borrow().buffer.len();
            if room == 0 {
                if file.borrow().flags & O_NONBLOCK != 0 {
                    return if done > 0 { Ok(done) } else { Err(EAGAIN) };
                }
                match sleep_on(Pipe::channel(&pipe)) {
                    Ok(()) => continue,
                    Err(e) => return if done > 0 { Ok(done) } else { Err(e) },
                }
            }
            let n = room.min((len - done) as usize);
            let mut data = buffer(n as u64)?;
            let n = data.len();
            get(buf + done, &mut data)?;
            pipe.borrow_mut().buffer.try_reserve(n).map_err(|_| ENOMEM)?;
            pipe.borrow_mut().buffer.extend(data.iter());
            done += n as u64;
            super::wake(Pipe::channel(&pipe));
            super::wake(POLL_CHANNEL);
        }
        return Ok(done);
    }
    let mut f = file.borrow_mut();
    match f.object {
        Object::Null | Object::Zero | Object::Random => Ok(len),
        Object::Console => {
            let mut done = 0;
            while done < len {
                let mut data = buffer(len - done)?;
                get(buf + done, &mut data)?;
                terminal::write(&data);
                done += data.len() as u64;
            }
            Ok(len)
        }
        Object::Inode(ino) => {
            if fs().kind(ino) != Kind::Regular {
                return Err(EISDIR);
            }
            let mut at = match offset {
                Some(at) => at,
                None if f.flags & O_APPEND != 0 => fs().stat(ino).size,
                None => f.offset,
            };
            let mut done = 0u64;
            while done < len {
                let mut data = buffer(len - done)?;
                get(buf + done, &mut data)?;
                let n = match fs().write(ino, at, &data, now()) {
                    Ok(n) => n,
                    Err(e) if done == 0 => return Err(errno(e)),
                    Err(_) => break,
                };
                done += n as u64;
                at += n as u64;
                if n < data.len() {
                    break;
                }
            }
            if offset.is_none() {
                f.offset = at;
            }
            Ok(done)
        }
        _ => Err(EBADF),
    }
}

fn read(fd: u64, buf: u64, len: u64) -> R {
    let file = cur().file(fd)?;
    read_file(&file, buf, len, None)
}

fn write(fd: u64, buf: u64, len: u64) -> R {
    let file = cur().file(fd)?;
    write_file(&file, buf, len, None)
}

fn pread(fd: u64, buf: u64, len: u64, offset: u64) -> R {
    let file = cur().file(fd)?;
    if (offset as i64) < 0 {
        return Err(EINVAL);
    }
    read_file(&file, buf, len, Some(offset))
}

fn pwrite(fd: u64, buf: u64, len: u64, offset: u64) -> R {
    let file = cur().file(fd)?;
    if (offset as i64) < 0 {
        return Err(EINVAL);
    }
    write_file(&file, buf, len, Some(offset))
}

fn iovecs(iov: u64, count: u64) -> Result<Vec<(u64, u64)>, i64> {
    if count > 1024 {
        return Err(EINVAL);
    }
    let mut out = Vec::new();
    for i in 0..count {
        let pair: [u64; 2] = mm::get_struct(iov + 16 * i)?;
        out.push((pair[0], pair[1]));
    }
    Ok(out)
}

fn readv(fd: u64, iov: u64, count: u64) -> R {
    vectored(fd, iov, count, read_file)
}

fn writev(fd: u64, iov: u64, count: u64) -> R {
    vectored(fd, iov, count, write_file)
}

/// readv and writev: `transfer` over each buffer in turn, stopping at the
/// first short one; an error counts only if nothing moved before it.
fn vectored(fd: u64, iov: u64, count: u64, transfer: fn(&File, u64, u64, Option<u64>) -> R) -> R {
    let file = cur().file(fd)?;
    let mut total = 0;
    for (base, len) in iovecs(iov, count)? {
        let n = match transfer(&file, base, len, None) {
            Ok(n) => n,
            Err(e) if total == 0 => return Err(e),
            Err(_) => break,
        };
        total += n;
        if n < len {
            break;
        }
    }
    Ok(total)
}

fn lseek(fd: u64, offset: i64, whence: u64) -> R {
    let file = cur().file(fd)?;
    let mut f = file.borrow_mut();
    let ino = match f.object {
        Object::Inode(ino) => ino,
        Object::Null | Object::Console | Object::Zero | Object::Random => return Ok(0),
        _ => return Err(ESPIPE),
    };
    let base = match whence {
        0 => 0,
        1 => f.offset as i64,
        2 => fs().stat(ino).size as i64,
        _ => return Err(EINVAL),
    };
    let new = base.checked_add(offset).filter(|&n| n >= 0).ok_or(EINVAL)?;
    f.offset = new as u64;
    Ok(new as u64)
}

fn dup(fd: u64) -> R {
    let file = cur().file(fd)?;
    cur().install(file, false, 0)
}

fn dup2(old: u64, new: u64) -> R {
    let file = cur().file(old)?;
    if old == new {
        return Ok(new);
    }
    dup_to(file, new, false)
}

fn dup3(old: u64, new: u64, flags: u32) -> R {
    if old == new || flags & !O_CLOEXEC != 0 {
        return Err(EINVAL);
    }
    let file = cur().file(old)?;
    dup_to(file, new, flags & O_CLOEXEC != 0)
}

fn dup_to(file: File, new: u64, cloexec: bool) -> R {
    if new as usize >= task::MAX_FDS {
        return Err(EBADF);
    }
    let t = cur();
    if new as usize >= t.fds.len() {
        t.fds.try_reserve(new as usize + 1 - t.fds.len()).map_err(|_| ENOMEM)?;
        t.fds.resize(new as usize + 1, None);
    }
    t.fds[new as usize] = Some(Fd { file, cloexec });
    Ok(new)
}

fn pipe2(fds: u64, flags: u32) -> R {
    if flags & !(O_CLOEXEC | O_NONBLOCK) != 0 {
        return Err(EINVAL);
    }
    let pipe = Rc::new(RefCell::new(Pipe { buffer: Default::default(), readers: 1, writers: 1 }));
    let status = flags & O_NONBLOCK;
    let reader = new_file(Object::PipeRead(pipe.clone()), status, None);
    let writer = new_file(Object::PipeWrite(pipe), O_WRONLY | status, None);
    let cloexec = flags & O_CLOEXEC != 0;
    let r = cur().install(reader, cloexec, 0)?;
    let w = match cur().install(writer, cloexec, 0) {
        Ok(w) => w,
        Err(e) => {
            cur().fds[r as usize] = None;
            return Err(e);
        }
    };
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&(r as u32).to_le_bytes());
    bytes[4..].copy_from_slice(&(w as u32).to_le_bytes());
    if let Err(e) = put(fds, &bytes) {
        cur().fds[r as usize] = None;
        cur().fds[w as usize] = None;
        return Err(e);
    }
    Ok(0)
}

fn fcntl(fd: u64, command: u64, arg: u64) -> R {
    let entry = cur().fd(fd)?.clone();
    match command {
        0 => cur().install(entry.file, false, arg as usize),
        1030 => cur().install(entry.file, true, arg as usize),
        1 => Ok(u64::from(entry.cloexec)),
        2 => {
            if let Some(Some(e)) = cur().fds.get_mut(fd as usize) {
                e.cloexec = arg & 1 != 0;
            }
            Ok(0)
        }
        3 => Ok(u64::from(entry.file.borrow().flags)),
        4 => {
            let mut f = entry.file.borrow_mut();
            let changeable = O_APPEND | O_NONBLOCK;
            f.flags = (f.flags & !changeable) | (arg as u32 & changeable);
            Ok(0)
        }
        _ => Err(EINVAL),
    }
}

fn ioctl(fd: u64, request: u64, arg: u64) -> R {
    let file = cur().file(fd)?;
    let f = file.borrow();
    const FIONREAD: u64 = 0x541b;
    match (&f.object, request) {
        (Object::Console, _) => terminal::ioctl(request, arg),
        (Object::PipeRead(pipe), FIONREAD) => put_u32(arg, pipe.borrow().buffer.len() as u32).map(|_| 0),
        _ => Err(ENOTTY),
    }
}

fn sendfile(out: u64, input: u64, offset_at: u64, count: u64) -> R {
    let source = cur().file(input)?;
    let sink = cur().file(out)?;
    let ino = match source.borrow().object {
        Object::Inode(ino) if fs().kind(ino) == Kind::Regular => ino,
        _ => return Err(EINVAL),
    };
    if !readable(&source.borrow()) || !writable(&sink.borrow()) {
        return Err(EBADF);
    }
    let mut offset = if offset_at != 0 { get_u64(offset_at)? } else { source.borrow().offset };
    let mut done = 0u64;
    // Through a kernel buffer: the sink's own write path does the rest.
    while done < count {
        let mut data = buffer(count - done)?;
        let n = fs().read(ino, offset, &mut data).map_err(errno)?;
        if n == 0 {
            break;
        }
        let written = write_kernel(&sink, &data[..n]);
        let written = match written {
            Ok(w) => w,
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        };
        done += written;
        offset += written;
        if written < n as u64 {
            break;
        }
    }
    if offset_at != 0 {
        put_u64(offset_at, offset)?;
    } else {
        source.borrow_mut().offset = offset;
    }
    Ok(done)
}

/// Writes kernel bytes to an open file (sendfile's sink).
fn write_kernel(file: &File, data: &[u8]) -> R {
    let pipe = match &file.borrow().object {
        Object::PipeWrite(pipe) => Some(pipe.clone()),
        _ => None,
    };
    if let Some(pipe) = pipe {
        let mut done = 0;
        while done < data.len() {
            if pipe.borrow().readers == 0 {
                signal::send(me(), SIGPIPE);
                return if done > 0 { Ok(done as u64) } else { Err(EPIPE) };
            }
            let room = PIPE_CAPACITY - pipe.borrow().buffer.len();
            if room == 0 {
                match sleep_on(Pipe::channel(&pipe)) {
                    Ok(()) => continue,
                    Err(e) => return if done > 0 { Ok(done as u64) } else { Err(e) },
                }
            }
            let n = room.min(data.len() - done);
            pipe.borrow_mut().buffer.try_reserve(n).map_err(|_| ENOMEM)?;
            pipe.borrow_mut().buffer.extend(data[done..done + n].iter());
            done += n;
            super::wake(Pipe::channel(&pipe));
            super::wake(POLL_CHANNEL);
        }
        return Ok(done as u64);
    }
    let mut f = file.borrow_mut();
    match f.object {
        Object::Null | Object::Zero | Object::Random => Ok(data.len() as u64),
        Object::Console => {
            terminal::write(data);
            Ok(data.len() as u64)
        }
        Object::Inode(ino) if fs().kind(ino) == Kind::Regular => {
            let at = if f.flags & O_APPEND != 0 { fs().stat(ino).size } else { f.offset };
            let n = fs().write(ino, at, data, now()).map_err(errno)?;
            f.offset = at + n as u64;
            Ok(n as u64)
        }
        _ => Err(EINVAL),
    }
}

// ---- poll and select ----

const POLLIN: u16 = 1;
const POLLOUT: u16 = 4;
const POLLERR: u16 = 8;
const POLLHUP: u16 = 0x10;
const POLLNVAL: u16 = 0x20;

/// What `fd` is ready for now.
fn readiness(fd: u64) -> u16 {
    let Ok(file) = cur().file(fd) else { return POLLNVAL };
    let f = file.borrow();
    match &f.object {
        Object::PipeRead(pipe) => {
            let p = pipe.borrow();
            (if p.buffer.is_empty() { 0 } else { POLLIN })
                | (if p.writers == 0 { POLLHUP | POLLIN } else { 0 })
        }
        Object::PipeWrite(pipe) => {
            let p = pipe.borrow();
            if p.readers == 0 {
                POLLERR | POLLOUT
            } else if p.buffer.len() < PIPE_CAPACITY {
                POLLOUT
            } else {
                0
            }
        }
        Object::Console => (if terminal::readable() { POLLIN } else { 0 }) | POLLOUT,
        _ => POLLIN | POLLOUT,
    }
}

/// Sleeps until woken or `deadline` (ns, 0 for none); Err on a signal.
fn wait_a_while(deadline: u64) -> Result<(), i64> {
    super::set_wake_at(deadline);
    let outcome = sleep_on(POLL_CHANNEL);
    super::set_wake_at(0);
    outcome
}

fn with_mask<T>(mask: Option<u64>, body: impl FnOnce() -> Result<T, i64>) -> Result<T, i64> {
    let Some(mask) = mask else { return body() };
    let t = cur();
    let old = t.mask;
    t.mask = mask & !UNBLOCKABLE;
    let result = body();
    let t = cur();
    if matches!(result, Err(ERESTART) | Err(EINTR)) {
        // The handler runs with the temporary mask; the old one comes back
        // with sigreturn.
        t.saved_mask = Some(old);
    } else {
        t.mask = old;
    }
    result
}

fn poll(fds: u64, count: u64, timeout_ns: Option<u64>, mask: Option<u64>) -> R {
    if count > task::MAX_FDS as u64 {
        return Err(EINVAL);
    }
    let deadline = timeout_ns.map(|t| platform::now_ns().saturating_add(t).max(1));
    with_mask(mask, || {
        loop {
            let mut ready = 0;
            for i in 0..count {
                let entry: [u8; 8] = mm::get_struct(fds + 8 * i)?;
                let fd = i32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]);
                let events = u16::from_le_bytes([entry[4], entry[5]]);
                let revents =
                    if fd < 0 { 0 } else { readiness(fd as u64) & (events | POLLERR | POLLHUP | POLLNVAL) };
                put(fds + 8 * i + 6, &revents.to_le_bytes())?;
                if revents != 0 {
                    ready += 1;
                }
            }
            if ready > 0 || deadline.is_some_and(|d| platform::now_ns() >= d) {
                return Ok(ready);
            }
            wait_a_while(deadline.unwrap_or(0)).map_err(|_| EINTR)?;
        }
    })
}

fn select(
    count: u64,
    readfds: u64,
    writefds: u64,
    exceptfds: u64,
    timeout_ns: Option<u64>,
    mask: Option<u64>,
) -> R {
    if count > task::MAX_FDS as u64 {
        return Err(EINVAL);
    }
    let words = count.div_ceil(64) as usize;
    let load = |at: u64| -> Result<Vec<u64>, i64> {
        let mut v = alloc::vec![0u64; words];
        if at != 0 {
            for (i, w) in v.iter_mut().enumerate() {
                *w = get_u64(at + 8 * i as u64)?;
            }
        }
        Ok(v)
    };
    let (want_read, want_write) = (load(readfds)?, load(writefds)?);
    let deadline = timeout_ns.map(|t| platform::now_ns().saturating_add(t).max(1));
    with_mask(mask, || {
        loop {
            let mut got_read = alloc::vec![0u64; words];
            let mut got_write = alloc::vec![0u64; words];
            let mut ready = 0;
            for fd in 0..count {
                let (w, b) = ((fd / 64) as usize, 1u64 << (fd % 64));
                if (want_read[w] | want_write[w]) & b == 0 {
                    continue;
                }
                let r = readiness(fd);
                if r & POLLNVAL != 0 {
                    return Err(EBADF);
                }
                if want_read[w] & b != 0 && r & (POLLIN | POLLHUP) != 0 {
                    got_read[w] |= b;
                    ready += 1;
                }
                if want_write[w] & b != 0 && r & (POLLOUT | POLLERR) != 0 {
                    got_write[w] |= b;
                    ready += 1;
                }
            }
            if ready > 0 || deadline.is_some_and(|d| platform::now_ns() >= d) {
                for (at, set) in
                    [(readfds, &got_read), (writefds, &got_write), (exceptfds, &alloc::vec![0u64; words])]
                {
                    if at != 0 {
                        for (i, w) in set.iter().enumerate() {
                            put_u64(at + 8 * i as u64, *w)?;
                        }
                    }
                }
                return Ok(ready);
            }
            wait_a_while(deadline.unwrap_or(0)).map_err(|_| EINTR)?;
        }
    })
}

fn timespec_timeout(at: u64) -> Result<Option<u64>, i64> {
    if at == 0 {
        return Ok(None);
    }
    let [sec, nsec]: [u64; 2] = mm::get_struct(at)?;
    if (sec as i64) < 0 || nsec >= 1_000_000_000 {
        return Err(EINVAL);
    }
    Ok(Some(sec.saturating_mul(1_000_000_000).saturating_add(nsec)))
}

fn timeval_timeout(at: u64) -> Result<Option<u64>, i64> {
    if at == 0 {
        return Ok(None);
    }
    let [sec, usec]: [u64; 2] = mm::get_struct(at)?;
    if (sec as i64) < 0 || usec >= 1_000_000 {
        return Err(EINVAL);
    }
    Ok(Some(sec.saturating_mul(1_000_000_000).saturating_add(usec * 1000)))
}

// ---- paths ----

fn write_stat(at: u64, st: &vfs::Stat) -> R {
    let mut b = [0u8; 144];
    let mut set = |offset: usize, value: u64| b[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
    set(0, 1); // st_dev
    set(8, st.ino as u64);
    set(16, u64::from(st.nlink));
    set(24, u64::from(st.mode) | u64::from(st.uid) << 32);
    set(32, u64::from(st.gid));
    set(40, st.rdev);
    set(48, st.size);
    set(56, 4096);
    set(64, st.blocks);
    set(72, st.atime.0 as u64);
    set(80, u64::from(st.atime.1));
    set(88, st.mtime.0 as u64);
    set(96, u64::from(st.mtime.1));
    set(104, st.ctime.0 as u64);
    set(112, u64::from(st.ctime.1));
    put(at, &b)?;
    Ok(0)
}

/// The inode an open file stands for, for fstat and friends.
fn inode_of(file: &File) -> Option<Ino> {
    let f = file.borrow();
    match f.object {
        Object::Inode(ino) => Some(ino),
        _ => f.ino,
    }
}

/// A stat for an inode-less open file (a pipe).
fn pipe_stat() -> vfs::Stat {
    vfs::Stat {
        ino: 0,
        mode: 0o010600,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        size: 0,
        blocks: 0,
        atime: now(),
        mtime: now(),
        ctime: now(),
    }
}

fn fstat(fd: u64, at: u64) -> R {
    let file = cur().file(fd)?;
    let st = match inode_of(&file) {
        Some(ino) => fs().stat(ino),
        None => pipe_stat(),
    };
    write_stat(at, &st)
}

/// The stat of what (dirfd, path, flags) names, AT_EMPTY_PATH included.
fn stat_target(dirfd: u64, path: u64, flags: u64) -> Result<vfs::Stat, i64> {
    let name = get_cstring(path, PATH_MAX)?;
    if name.is_empty() {
        if flags & AT_EMPTY_PATH == 0 {
            return Err(ENOENT);
        }
        if dirfd == AT_FDCWD || dirfd as u32 == AT_FDCWD as u32 {
            return Ok(fs().stat(cur().cwd));
        }
        let file = cur().file(dirfd)?;
        return Ok(match inode_of(&file) {
            Some(ino) => fs().stat(ino),
            None => pipe_stat(),
        });
    }
    let ino = resolve_at(dirfd, &name, flags & AT_SYMLINK_NOFOLLOW == 0)?;
    Ok(fs().stat(ino))
}

fn stat_at(dirfd: u64, path: u64, at: u64, flags: u64) -> R {
    let st = stat_target(dirfd, path, flags)?;
    write_stat(at, &st)
}

fn statx(dirfd: u64, path: u64, flags: u64, at: u64) -> R {
    let st = stat_target(dirfd, path, flags)?;
    let mut b = [0u8; 256];
    let mut set = |offset: usize, bytes: &[u8]| b[offset..offset + bytes.len()].copy_from_slice(bytes);
    set(0, &0x7ffu32.to_le_bytes()); // STATX_BASIC_STATS
    set(4, &4096u32.to_le_bytes());
    set(16, &st.nlink.to_le_bytes());
    set(20, &st.uid.to_le_bytes());
    set(24, &st.gid.to_le_bytes());
    set(28, &(st.mode as u16).to_le_bytes());
    set(32, &(st.ino as u64).to_le_bytes());
    set(40, &st.size.to_le_bytes());
    set(48, &st.blocks.to_le_bytes());
    for (offset, time) in [(64, st.atime), (96, st.ctime), (112, st.mtime)] {
        set(offset, &time.0.to_le_bytes());
        set(offset + 8, &time.1.to_le_bytes());
    }
    let (major, minor) = ((st.rdev >> 8) & 0xfff, (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00));
    set(128, &(major as u32).to_le_bytes());
    set(132, &(minor as u32).to_le_bytes());
    put(at, &b)?;
    Ok(0)
}

fn getdents64(fd: u64, buf: u64, len: u64) -> R {
    let file = cur().file(fd)?;
    let ino = match file.borrow().object {
        Object::Inode(ino) => ino,
        _ => return Err(ENOTDIR),
    };
    if fs().kind(ino) != Kind::Directory {
        return Err(ENOTDIR);
    }
    let start = file.borrow().offset as usize;
    let mut out = buffer(len)?;
    let mut used = 0usize;
    let mut next_cookie = start;
    for (cookie, entry) in fs().entries(ino, start) {
        let reclen = (19 + entry.name.len() + 1).next_multiple_of(8);
        if used + reclen > out.len() {
            break;
        }
        let record = &mut out[used..used + reclen];
        record.fill(0);
        record[0..8].copy_from_slice(&(entry.ino as u64).to_le_bytes());
        record[8..16].copy_from_slice(&(cookie as u64).to_le_bytes());
        record[16..18].copy_from_slice(&(reclen as u16).to_le_bytes());
        record[18] = entry.kind.dirent_type();
        record[19..19 + entry.name.len()].copy_from_slice(entry.name);
        used += reclen;
        next_cookie = cookie;
    }
    if used == 0 && fs().entries(ino, start).next().is_some() {
        return Err(EINVAL);
    }
    put(buf, &out[..used])?;
    file.borrow_mut().offset = next_cookie as u64;
    Ok(used as u64)
}

fn faccessat(dirfd: u64, path: u64, mode: u64, flags: u64) -> R {
    let name = user_path(path)?;
    let ino = resolve_at(dirfd, &name, flags & AT_SYMLINK_NOFOLLOW == 0)?;
    // Root may read and write anything; executing needs an x bit.
    if mode & 1 != 0 && fs().kind(ino) != Kind::Directory && fs().stat(ino).mode & 0o111 == 0 {
        return Err(EACCES);
    }
    Ok(0)
}

fn readlinkat(dirfd: u64, path: u64, buf: u64, size: u64) -> R {
    let name = user_path(path)?;
    if (size as i64) <= 0 {
        return Err(EINVAL);
    }
    let target = if name == SELF_EXE {
        cur().exe.clone()
    } else {
        let ino = resolve_at(dirfd, &name, false)?;
        Vec::from(fs().readlink(ino).map_err(errno)?)
    };
    let n = target.len().min(size as usize);
    put(buf, &target[..n])?;
    Ok(n as u64)
}

fn getcwd(buf: u64, size: u64) -> R {
    let mut path = fs().path_of(cur().cwd).map_err(errno)?;
    path.push(0);
    if path.len() as u64 > size {
        return Err(ERANGE);
    }
    put(buf, &path)?;
    Ok(path.len() as u64)
}

fn chdir(path: u64) -> R {
    let name = user_path(path)?;
    let ino = resolve_at(AT_FDCWD, &name, true)?;
    if fs().kind(ino) != Kind::Directory {
        return Err(ENOTDIR);
    }
    cur().cwd = ino;
    Ok(0)
}

fn fchdir(fd: u64) -> R {
    let dir = dir_of(fd)?;
    cur().cwd = dir;
    Ok(0)
}

fn mkdirat(dirfd: u64, path: u64, mode: u64) -> R {
    let name = user_path(path)?;
    let (dir, last) = parent_at(dirfd, &name)?;
    if last.is_empty() {
        return Err(EEXIST);
    }
    let umask = cur().umask;
    fs().mkdir(dir, last, (mode as u32 & 0o7777) & !umask, now()).map_err(errno)?;
    Ok(0)
}

fn unlinkat(dirfd: u64, path: u64, flags: u64) -> R {
    let name = user_path(path)?;
    let (dir, last) = parent_at(dirfd, &name)?;
    if flags & AT_REMOVEDIR != 0 {
        if last.is_empty() {
            return Err(EBUSY);
        }
        fs().rmdir(dir, last, now()).map_err(errno)?;
    } else {
        if last.is_empty() || name.ends_with(b"/") {
            return Err(EISDIR);
        }
        fs().unlink(dir, last, now()).map_err(errno)?;
    }
    Ok(0)
}

fn renameat2(old_dir: u64, old: u64, new_dir: u64, new: u64, flags: u64) -> R {
    const RENAME_NOREPLACE: u64 = 1;
    if flags & !RENAME_NOREPLACE != 0 {
        return Err(EINVAL);
    }
    let (old_name, new_name) = (user_path(old)?, user_path(new)?);
    let (from_dir, from) = parent_at(old_dir, &old_name)?;
    let (to_dir, to) = parent_at(new_dir, &new_name)?;
    if from.is_empty() || to.is_empty() {
        return Err(EBUSY);
    }
    if flags & RENAME_NOREPLACE != 0 && fs().lookup(to_dir, to).is_ok() {
        return Err(EEXIST);
    }
    fs().rename(from_dir, from, to_dir, to, now()).map_err(errno)?;
    Ok(0)
}

fn linkat(old_dir: u64, old: u64, new_dir: u64, new: u64, flags: u64) -> R {
    let (old_name, new_name) = (user_path(old)?, user_path(new)?);
    let ino = resolve_at(old_dir, &old_name, flags & AT_SYMLINK_FOLLOW != 0)?;
    let (dir, last) = parent_at(new_dir, &new_name)?;
    if last.is_empty() {
        return Err(EEXIST);
    }
    fs().link(dir, last, ino, now()).map_err(errno)?;
    Ok(0)
}

fn symlinkat(target: u64, dirfd: u64, path: u64) -> R {
    let target = user_path(target)?;
    let name = user_path(path)?;
    let (dir, last) = parent_at(dirfd, &name)?;
    if last.is_empty() {
        return Err(EEXIST);
    }
    fs().symlink(dir, last, &target, now()).map_err(errno)?;
    Ok(0)
}

fn fchmodat(dirfd: u64, path: u64, mode: u64) -> R {
    let name = user_path(path)?;
    let ino = resolve_at(dirfd, &name, true)?;
    fs().chmod(ino, mode as u32 & 0o7777, now()).map_err(errno)?;
    Ok(0)
}

fn fchmod(fd: u64, mode: u64) -> R {
    let file = cur().file(fd)?;
    let ino = inode_of(&file).ok_or(EINVAL)?;
    fs().chmod(ino, mode as u32 & 0o7777, now()).map_err(errno)?;
    Ok(0)
}

/// chown and friends: every file belongs to root, the only user; the
/// target must exist.
fn fchownat(dirfd: u64, path: u64, flags: u64) -> R {
    let name = get_cstring(path, PATH_MAX)?;
    if name.is_empty() && flags & AT_EMPTY_PATH != 0 {
        return dir_of(dirfd).map(|_| 0).or_else(|_| cur().fd(dirfd).map(|_| 0));
    }
    resolve_at(dirfd, &name, flags & AT_SYMLINK_NOFOLLOW == 0)?;
    Ok(0)
}

fn utimensat(dirfd: u64, path: u64, times: u64, flags: u64) -> R {
    const UTIME_NOW: u64 = (1 << 30) - 1;
    const UTIME_OMIT: u64 = (1 << 30) - 2;
    let ino = if path == 0 {
        inode_of(&cur().file(dirfd)?).ok_or(EINVAL)?
    } else {
        let name = user_path(path)?;
        resolve_at(dirfd, &name, flags & AT_SYMLINK_NOFOLLOW == 0)?
    };
    let stamp = now();
    let (atime, mtime) = if times == 0 {
        (Some(stamp), Some(stamp))
    } else {
        let t: [u64; 4] = mm::get_struct(times)?;
        let pick = |sec: u64, nsec: u64| -> Result<Option<(i64, u32)>, i64> {
            match nsec {
                UTIME_NOW => Ok(Some(stamp)),
                UTIME_OMIT => Ok(None),
                n if n < 1_000_000_000 => Ok(Some((sec as i64, n as u32))),
                _ => Err(EINVAL),
            }
        };
        (pick(t[0], t[1])?, pick(t[2], t[3])?)
    };
    fs().set_times(ino, atime, mtime, stamp).map_err(errno)?;
    Ok(0)
}

fn truncate(path: u64, size: u64) -> R {
    let name = user_path(path)?;
    let ino = resolve_at(AT_FDCWD, &name, true)?;
    match fs().kind(ino) {
        Kind::Directory => Err(EISDIR),
        Kind::Regular => fs().truncate(ino, size, now()).map(|_| 0).map_err(errno),
        _ => Err(EINVAL),
    }
}

fn ftruncate(fd: u64, size: u64) -> R {
    let file = cur().file(fd)?;
    if !writable(&file.borrow()) {
        return Err(EINVAL);
    }
    match file.borrow().object {
        Object::Inode(ino) if fs().kind(ino) == Kind::Regular => {
            fs().truncate(ino, size, now()).map(|_| 0).map_err(errno)
        }
        _ => Err(EINVAL),
    }
}

// ---- the rest ----

fn uname(at: u64) -> R {
    let mut b = [0u8; 65 * 6];
    for (i, field) in
        [b"Linux".as_slice(), b"umbra", b"6.1.0-umbra", b"#1 SMP", b"x86_64", b"(none)"].iter().enumerate()
    {
        b[65 * i..65 * i + field.len()].copy_from_slice(field);
    }
    put(at, &b)?;
    Ok(0)
}

fn sysinfo(at: u64) -> R {
    let mut b = [0u8; 112];
    let uptime = platform::now_ns() / 1_000_000_000;
    let (used, heap) = super::super::heap::HEAP.usage();
    let free = k().frames.available() * PAGE + (heap - used.min(heap)) as u64;
    let procs = k().procs.iter().filter(|p| p.state != State::Free).count() as u16;
    b[0..8].copy_from_slice(&uptime.to_le_bytes());
    b[32..40].copy_from_slice(&(free + used as u64).to_le_bytes());
    b[40..48].copy_from_slice(&free.to_le_bytes());
    b[80..82].copy_from_slice(&procs.to_le_bytes());
    b[104..108].copy_from_slice(&1u32.to_le_bytes());
    put(at, &b)?;
    Ok(0)
}

fn prlimit(pid: u64, resource: u64, new: u64, old: u64) -> R {
    if pid != 0 && pid != k().procs[me()].pid {
        return Err(ESRCH);
    }
    let t = cur();
    let entry = t.limits.get_mut(resource as usize).ok_or(EINVAL)?;
    let previous = *entry;
    if new != 0 {
        let [soft, hard]: [u64; 2] = mm::get_struct(new)?;
        if soft > hard {
            return Err(EINVAL);
        }
        *entry = (soft, hard);
    }
    if old != 0 {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&previous.0.to_le_bytes());
        b[8..].copy_from_slice(&previous.1.to_le_bytes());
        put(old, &b)?;
    }
    Ok(0)
}

fn getrusage(at: u64) -> R {
    let mut b = [0u8; 144];
    let used = platform::now_ns().saturating_sub(cur().start_ns);
    b[0..8].copy_from_slice(&(used / 1_000_000_000).to_le_bytes());
    b[8..16].copy_from_slice(&((used % 1_000_000_000) / 1000).to_le_bytes());
    put(at, &b)?;
    Ok(0)
}

fn times(at: u64) -> R {
    let ticks = platform::now_ns() / 10_000_000;
    if at != 0 {
        let used = platform::now_ns().saturating_sub(cur().start_ns) / 10_000_000;
        let mut b = [0u8; 32];
        b[0..8].copy_from_slice(&used.to_le_bytes());
        put(at, &b)?;
    }
    Ok(ticks)
}

fn clock_ns(clock: u64) -> Result<(u64, u32), i64> {
    let ns = platform::now_ns();
    match clock {
        0 | 5 | 8 => {
            let (s, n) = now();
            Ok((s as u64, n))
        }
        1 | 4 | 6 | 7 | 9 => Ok((ns / 1_000_000_000, (ns % 1_000_000_000) as u32)),
        2 | 3 => {
            let used = ns.saturating_sub(cur().start_ns);
            Ok((used / 1_000_000_000, (used % 1_000_000_000) as u32))
        }
        _ => Err(EINVAL),
    }
}

fn clock_gettime(clock: u64, at: u64) -> R {
    let (s, n) = clock_ns(clock)?;
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&s.to_le_bytes());
    b[8..].copy_from_slice(&u64::from(n).to_le_bytes());
    put(at, &b)?;
    Ok(0)
}

fn clock_getres(clock: u64, at: u64) -> R {
    clock_ns(clock)?;
    if at != 0 {
        let mut b = [0u8; 16];
        b[8..].copy_from_slice(&1u64.to_le_bytes());
        put(at, &b)?;
    }
    Ok(0)
}

fn gettimeofday(at: u64) -> R {
    if at != 0 {
        let (s, n) = now();
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&(s as u64).to_le_bytes());
        b[8..].copy_from_slice(&u64::from(n / 1000).to_le_bytes());
        put(at, &b)?;
    }
    Ok(0)
}

fn time(at: u64) -> R {
    let (s, _) = now();
    if at != 0 {
        put_u64(at, s as u64)?;
    }
    Ok(s as u64)
}

fn nanosleep(clock: u64, flags: u64, request: u64, remain: u64) -> R {
    const TIMER_ABSTIME: u64 = 1;
    if !matches!(clock, 0 | 1 | 7) {
        return Err(EINVAL);
    }
    let [sec, nsec]: [u64; 2] = mm::get_struct(request)?;
    if (sec as i64) < 0 || nsec >= 1_000_000_000 {
        return Err(EINVAL);
    }
    let length = sec.saturating_mul(1_000_000_000).saturating_add(nsec);
    let now_ns = platform::now_ns();
    let deadline = if flags & TIMER_ABSTIME != 0 {
        // An absolute time on this clock, turned into the monotonic one.
        let (clock_s, clock_n) = clock_ns(clock)?;
        let clock_now = clock_s.saturating_mul(1_000_000_000) + u64::from(clock_n);
        now_ns.saturating_add(length.saturating_sub(clock_now))
    } else {
        now_ns.saturating_add(length)
    };
    loop {
        let now_ns = platform::now_ns();
        if now_ns >= deadline {
            return Ok(0);
        }
        super::set_wake_at(deadline);
        let outcome = sleep_on(SLEEP_CHANNEL);
        super::set_wake_at(0);
        if outcome.is_err() {
            if remain != 0 && flags & TIMER_ABSTIME == 0 {
                let left = deadline.saturating_sub(platform::now_ns());
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(&(left / 1_000_000_000).to_le_bytes());
                b[8..].copy_from_slice(&(left % 1_000_000_000).to_le_bytes());
                put(remain, &b)?;
            }
            return Err(EINTR);
        }
    }
}

fn prctl(option: u64, arg: u64) -> R {
    const PR_SET_NAME: u64 = 15;
    const PR_GET_NAME: u64 = 16;
    match option {
        PR_SET_NAME => {
            let mut name = [0u8; 16];
            for (i, slot) in name.iter_mut().take(15).enumerate() {
                let mut byte = [0u8; 1];
                get(arg + i as u64, &mut byte)?;
                if byte[0] == 0 {
                    break;
                }
                *slot = byte[0];
            }
            cur().comm = name;
            Ok(0)
        }
        PR_GET_NAME => {
            let comm = cur().comm;
            put(arg, &comm)?;
            Ok(0)
        }
        _ => Err(EINVAL),
    }
}

fn arch_prctl(code: u64, addr: u64) -> R {
    const ARCH_SET_FS: u64 = 0x1002;
    const ARCH_GET_FS: u64 = 0x1003;
    match code {
        ARCH_SET_FS => {
            if addr >= LINUX_USER_TOP + PAGE {
                return Err(EPERM);
            }
            k().procs[me()].fs_base = addr;
            platform::set_fs_base(addr);
            Ok(0)
        }
        ARCH_GET_FS => put_u64(addr, k().procs[me()].fs_base).map(|_| 0),
        _ => Err(EINVAL),
    }
}

fn futex(addr: u64, op: u64, value: u64) -> R {
    const FUTEX_WAIT: u64 = 0;
    const FUTEX_WAKE: u64 = 1;
    match op & 0x7f {
        // One thread per process: nobody else can be waiting.
        FUTEX_WAKE => Ok(0),
        FUTEX_WAIT => {
            let mut b = [0u8; 4];
            get(addr, &mut b)?;
            if u64::from(u32::from_le_bytes(b)) != value & 0xffff_ffff {
                return Err(EAGAIN);
            }
            // Nobody could ever wake it.
            count_enosys(202);
            Err(ENOSYS)
        }
        _ => {
            count_enosys(202);
            Err(ENOSYS)
        }
    }
}

fn sched_getaffinity(size: u64, at: u64) -> R {
    if size < 8 {
        return Err(EINVAL);
    }
    put_u64(at, 1)?;
    Ok(8)
}

fn getrandom(buf: u64, len: u64) -> R {
    let mut done = 0;
    while done < len {
        let mut data = buffer(len - done)?;
        random_bytes(&mut data);
        put(buf + done, &data)?;
        done += data.len() as u64;
    }
    Ok(len)
}
