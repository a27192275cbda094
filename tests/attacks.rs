//! # The attack suite
//!
//! Each attack is one small guest scenario (`test=attack:NAME`, in
//! `guest/src/probes/attacks/`) that tries to break Umbra's isolation, and one
//! row of the catalogue below: its name, its group, what it tries, and
//! the outcome Umbra must produce. There are three kinds of outcome:
//!
//! - `Killed(reason)`: Umbra kills the guest with a `guest killed: ...`
//!   line containing `reason`, and exits with the "guest killed" status;
//! - `Handled(line)`: the misdeed is the guest's own business (a
//!   privileged instruction at ring 1 is only a #GP), so its own handler
//!   gets the fault, exactly as on hardware; the guest proves it with
//!   `line` and exits 0;
//! - `Survives(line)`: something legal but tricky that must simply work.
//!
//! Every attack boots microvm under TCG and under KVM (when `/dev/kvm`
//! opens). Besides its outcome, each boot must never show a host crash,
//! never time out, and never print "guest: survived", which the guest
//! says (exiting 98) when an attack that should have been stopped was not.
//!
//! `cargo test -p boot-tests --test attacks -- --list-attacks` prints the
//! catalogue; `-- --attack=NAME` runs only the attacks named; plain words
//! after `--` keep the cases whose names contain them, as in the other
//! boot tests. docs/security.md holds the same catalogue as a table,
//! which `-- --list-attacks --markdown` prints; one case,
//! `attack_catalogue_matches_docs`, runs on the host alone and fails while
//! the page's table differs from it.

use std::time::Duration;

use boot_tests::{Accel, Boot, Case, Exit, Verdict, check, check_exit, run_cases, workspace_root};
use umbra_abi::status::{GUEST_KILLED, SUCCESS};

/// Seconds before a KVM boot counts as hung, as in the boot tests.
const KVM_HANG_GUARD_S: u64 = 300;

/// What an attack must end in.
#[derive(Clone, Copy)]
enum Expect {
    /// A substring of the `guest killed: ...` line.
    Killed(&'static str),
    /// The guest's own line after `guest: attack NAME: `: its handler got
    /// the fault.
    Handled(&'static str),
    /// The same, for legal things that must work.
    Survives(&'static str),
}

impl Expect {
    fn describe(self) -> String {
        match self {
            Expect::Killed(reason) => format!("killed: {reason}"),
            Expect::Handled(line) => format!("handled: {line}"),
            Expect::Survives(line) => format!("survives: {line}"),
        }
    }
}

struct Attack {
    name: &'static str,
    category: &'static str,
    does: &'static str,
    expect: Expect,
    /// Firmware words before the guest's `--`.
    firmware: &'static str,
    /// A line the boot must also print.
    also: Option<AlsoLine>,
    /// Seconds before the boot counts as hung.
    timeout: u64,
    /// Where this machine's KVM does something else than TCG (which does
    /// what the manuals say), what it does.
    kvm: Option<Expect>,
}

/// A line's prefix, a test of the whole line, and what the test wants.
type AlsoLine = (&'static str, fn(&str) -> bool, &'static str);

const fn attack(name: &'static str, category: &'static str, does: &'static str, expect: Expect) -> Attack {
    Attack { name, category, does, expect, firmware: "", also: None, timeout: 60, kvm: None }
}

use Expect::{Handled, Killed, Survives};

/// An attack run as two guests at once, one per CPU, that look for each
/// other through their CPUs' switcher pages. `second` starts the second
/// guest's report, which must say it saw nothing either.
const fn other_cpu(name: &'static str, second: &'static str, does: &'static str) -> Attack {
    Attack {
        firmware: "guests=2 guest_mem=16M",
        also: Some((
            second,
            |l| l.ends_with(" exits, no other guest's registers in this CPU's switcher pages"),
            "the second guest, on the other CPU at the same time, saw nothing of the first either",
        )),
        ..attack(name, "switcher", does, Killed("touched the switcher region at 0xffffffffffc05000"))
    }
}

const GP: &str = "#GP delivered to our handler (error 0x0)";

const SSE_AT_RING3: &str = "SSE ran at ring 3: xmm3 holds 0x0000000000000000ffffffffffffffff";

const FS_BASE_KEPT: &str = "fs:0 intact after 40 hypercalls, 40 traps and 40 clock ticks";

const CATALOGUE: &[Attack] = &[
    // Privilege: from ring 1, every privileged instruction is a #GP for
    // the guest's own handler; the roads to ring 0 are closed.
    attack("hlt", "privilege", "hlt at ring 1", Handled(GP)),
    attack("cli", "privilege", "cli at ring 1", Handled(GP)),
    attack("sti", "privilege", "sti at ring 1", Handled(GP)),
    attack("lgdt", "privilege", "lgdt of a GDT of its own", Handled(GP)),
    attack("lidt", "privilege", "lidt of an IDT of its own", Handled(GP)),
    attack("ltr", "privilege", "ltr 0x38, the guest TSS", Handled(GP)),
    attack("read-cr0", "privilege", "mov from CR0", Handled(GP)),
    attack("write-cr0", "privilege", "mov to CR0", Handled(GP)),
    attack("read-cr3", "privilege", "mov from CR3 (the shadow root)", Handled(GP)),
    attack("write-cr3", "privilege", "mov to CR3", Handled(GP)),
    attack("read-cr4", "privilege", "mov from CR4", Handled(GP)),
    attack("write-cr4", "privilege", "mov to CR4", Handled(GP)),
    attack("rdmsr", "privilege", "rdmsr EFER", Handled(GP)),
    attack("wrmsr", "privilege", "wrmsr LSTAR", Handled(GP)),
    attack("port-in", "privilege", "in from port 0xf4", Handled(GP)),
    attack("port-out", "privilege", "out to port 0xf4, QEMU's exit device", Handled(GP)),
    attack("invlpg", "privilege", "invlpg", Handled(GP)),
    attack("wbinvd", "privilege", "wbinvd", Handled(GP)),
    attack("swapgs", "privilege", "swapgs", Handled(GP)),
    Attack {
        kvm: Some(Killed("page fault (#PF) from user mode before SET_STACK")),
        ..attack(
            "sysretq",
            "privilege",
            "sysretq (EFER.SCE is off: an invalid opcode that is not ud2, so not a hypercall)",
            Handled("#UD delivered to our handler"),
        )
    },
    attack(
        "iretq-ring0",
        "privilege",
        "iretq through a frame it built with CS=0x08, SS=0x10",
        Handled("#GP delivered to our handler (error 0x8)"),
    ),
    attack(
        "ljmp-ring0",
        "privilege",
        "far jump to 0x08:addr",
        Handled("#GP delivered to our handler (error 0x8)"),
    ),
    attack(
        "lret-ring0",
        "privilege",
        "far return to 0x08:addr",
        Handled("#GP delivered to our handler (error 0x8)"),
    ),
    attack(
        "mov-ss-ring0",
        "privilege",
        "mov 0x10 (ring-0 data) into SS",
        Handled("#GP delivered to our handler (error 0x10)"),
    ),
    attack(
        "mov-ds-ring0",
        "privilege",
        "mov 0x10 (ring-0 data) into DS",
        Handled("#GP delivered to our handler (error 0x10)"),
    ),
    attack("noncanonical-rip", "privilege", "jmp to 0x0000_8000_0000_0000", Handled(GP)),
    attack("popf-iopl", "privilege", "popfq with IOPL=3, then out to port 0xf4", Handled(GP)),
    attack(
        "xrstor",
        "privilege",
        "xrstor of all-ones data (XSAVE is off: #UD, not a hypercall)",
        Handled("#UD delivered to our handler"),
    ),
    attack("fxrstor-misaligned", "privilege", "fxrstor64 from a misaligned image", Handled(GP)),
    Attack {
        kvm: Some(Handled(GP)),
        ..attack(
            "fxrstor-bad-image",
            "privilege",
            "fxrstor64 of an all-ones image (reserved MXCSR bits set: a #GP on hardware; TCG does not check them)",
            Survives("no fault: the garbage x87/SSE state is the guest's own"),
        )
    },
    attack(
        "cli-no-handler",
        "privilege",
        "cli with no #GP handler installed",
        Killed("general protection fault (#GP) (vector 13, error code 0x0) at rip"),
    ),
    // Hypercalls: bad numbers and arguments kill, naming the call.
    attack(
        "hypercall-max",
        "hypercall",
        "call number u64::MAX",
        Killed("unknown hypercall 0xffffffffffffffff"),
    ),
    attack(
        "hypercall-first-free",
        "hypercall",
        "call number 18, one past the last",
        Killed("unknown hypercall 0x12"),
    ),
    attack("init-twice", "hypercall", "INIT again", Killed("INIT called twice")),
    attack(
        "init-at-switcher",
        "hypercall",
        "INIT naming the switcher's state page (after the real INIT)",
        Killed("INIT called twice"),
    ),
    attack(
        "console-huge",
        "hypercall",
        "CONSOLE_WRITE of u64::MAX bytes",
        Killed("CONSOLE_WRITE: length 18446744073709551615 is over the limit of 4096"),
    ),
    attack(
        "console-wrapping",
        "hypercall",
        "CONSOLE_WRITE of 4096 bytes at 0xffff_ffff_ffff_f000, wrapping past 2^64",
        Killed("CONSOLE_WRITE: buffer 0xfffffffffffff000 (+4096) is not the guest's memory"),
    ),
    attack(
        "console-unmapped",
        "hypercall",
        "CONSOLE_WRITE of an address its tables do not map",
        Killed("CONSOLE_WRITE: buffer 0x500000000000 (+16) is not the guest's memory"),
    ),
    attack(
        "console-switcher",
        "hypercall",
        "CONSOLE_WRITE of the switcher's state page (host CR3, host RSP)",
        Killed("guest asked the host to access the switcher region"),
    ),
    attack(
        "idt-switcher",
        "hypercall",
        "LOAD_IDT_ENTRY with a handler in the switcher code",
        Killed("LOAD_IDT_ENTRY: vector 13, handler 0xffffffffffc01000: handler in the switcher"),
    ),
    attack(
        "idt-noncanonical",
        "hypercall",
        "LOAD_IDT_ENTRY with a non-canonical handler",
        Killed("LOAD_IDT_ENTRY: vector 13, handler 0x800000000000: non-canonical handler"),
    ),
    attack(
        "idt-user-half",
        "hypercall",
        "LOAD_IDT_ENTRY with a handler below the kernel boundary",
        Killed("handler outside the guest kernel"),
    ),
    attack(
        "idt-bad-type",
        "hypercall",
        "LOAD_IDT_ENTRY with unknown type bits (a DPL, say)",
        Killed("unknown type bits"),
    ),
    attack(
        "idt-user-gp",
        "hypercall",
        "LOAD_IDT_ENTRY letting user mode raise vector 13 (IDT_USER)",
        Killed("user mode may not raise this vector"),
    ),
    attack("idt-vector-256", "hypercall", "LOAD_IDT_ENTRY for vector 256", Killed("vector 256")),
    attack(
        "stack-unmapped",
        "hypercall",
        "SET_STACK on a kernel-half address its tables do not map",
        Killed("guest kernel stack page not mapped writable by the guest"),
    ),
    attack(
        "stack-switcher",
        "hypercall",
        "SET_STACK on the registers and state pages",
        Killed("SET_STACK: 8192 bytes below 0xffffffffffc04000: not a kernel address"),
    ),
    attack(
        "stack-noncanonical",
        "hypercall",
        "SET_STACK on a non-canonical address",
        Killed("SET_STACK: 4096 bytes below 0x800000001000: not a kernel address"),
    ),
    attack(
        "stack-too-big",
        "hypercall",
        "SET_STACK of 32 KiB, twice the limit",
        Killed("SET_STACK: 32768 bytes below 0xffff800000800000: length or alignment"),
    ),
    attack(
        "async-bad-number",
        "hypercall",
        "an async slot with call number 0xdead",
        Killed("async ring slot 0 holds call 0xdead, which cannot be queued"),
    ),
    attack(
        "async-shutdown",
        "hypercall",
        "SHUTDOWN queued in the async ring",
        Killed("async ring slot 0 holds call 0x1, which cannot be queued"),
    ),
    attack(
        "async-bad-pointer",
        "hypercall",
        "a queued CONSOLE_WRITE of the switcher's state page",
        Killed("guest asked the host to access the switcher region"),
    ),
    attack(
        "async-bad-ready",
        "hypercall",
        "an async slot whose ready word is 0xdeadbeef, then a good one after it",
        Survives("garbage ready word left alone; the ring went on"),
    ),
    attack(
        "async-full-ring",
        "hypercall",
        "all 64 slots ready at once, drained, then all rewritten and drained again",
        Survives("two full rings of 64 drained, each slot once"),
    ),
    attack(
        "clock-extremes",
        "hypercall",
        "SET_CLOCKEVENT u64::MAX, 0, u64::MAX, then 1 ms and HALT",
        Survives("u64::MAX and 0 accepted; a 1 ms event still ticked once"),
    ),
    attack(
        "bogus-pending",
        "hypercall",
        "all 256 irq_pending bits set in the shared page, then SEND_INTERRUPTS, ten times",
        Survives("nothing delivered for bogus pending bits"),
    ),
    attack(
        "user-hypercall",
        "hypercall",
        "ud2 at ring 3 with rax=SHUTDOWN, rdi=98, a #UD handler and SET_STACK",
        Handled("#UD from ring 3 delivered to our handler, not taken as a hypercall"),
    ),
    attack(
        "user-hypercall-no-stack",
        "hypercall",
        "the same without SET_STACK",
        Killed("invalid opcode (#UD) from user mode before SET_STACK"),
    ),
    // Paging: the guest's tables are read, never trusted.
    attack(
        "map-switcher-pte",
        "paging",
        "a PTE of its own over the switcher, announced with SET_PTE",
        Killed("guest set a page-table entry in the switcher region"),
    ),
    attack(
        "map-switcher-demand",
        "paging",
        "the same PTE, not announced, then written through",
        Killed("touched the switcher region at 0xffffffffffc05000"),
    ),
    attack(
        "map-switcher-2m",
        "paging",
        "a 2 MiB PDE over PD[511] of the switcher region, touched",
        Killed("touched the switcher region at 0xffffffffffe01000"),
    ),
    attack(
        "map-switcher-2m-announced",
        "paging",
        "the same 2 MiB PDE, announced with SET_PMD",
        Killed("guest invalidated a table entry of the switcher region"),
    ),
    attack(
        "map-switcher-1g",
        "paging",
        "a 1 GiB PDPTE over the whole last GiB, touched in the switcher",
        Killed("touched the switcher region at 0xffffffffffc05000"),
    ),
    attack(
        "pte-beyond-memory",
        "paging",
        "a PTE naming the first frame past guest memory",
        Killed("guest PTE frame beyond guest memory"),
    ),
    attack(
        "pde-beyond-memory",
        "paging",
        "a PDE naming a page table past guest memory",
        Killed("guest page-table walk left guest memory (PDE points beyond it)"),
    ),
    attack(
        "pml4e-beyond-memory",
        "paging",
        "a PML4E naming a PDPT at 1 TiB",
        Killed("guest page-table walk left guest memory (PML4E points beyond it)"),
    ),
    attack(
        "pte-reserved",
        "paging",
        "a PTE with bit 51 set, touched",
        Killed("reserved bits set in guest PTE"),
    ),
    attack(
        "pte-reserved-announced",
        "paging",
        "the same PTE, announced with SET_PTE",
        Killed("reserved bits set in guest PTE"),
    ),
    attack(
        "pde-reserved",
        "paging",
        "a 2 MiB PDE that is not 2 MiB-aligned",
        Killed("reserved bits set in guest PDE"),
    ),
    attack(
        "pml4e-huge",
        "paging",
        "the page-size bit in a PML4E",
        Killed("reserved bits set in guest PML4E"),
    ),
    Attack {
        firmware: "guest_mem=65M",
        ..attack(
            "large-2m-crosses-end",
            "paging",
            "a 2 MiB page at 64 MiB in a 65 MiB guest",
            Killed("guest 2 MiB page extends beyond guest memory"),
        )
    },
    attack(
        "large-1g-crosses-end",
        "paging",
        "a 1 GiB page from 0 in a 64 MiB guest",
        Killed("guest 1 GiB page extends beyond guest memory"),
    ),
    attack(
        "cr3-beyond-memory",
        "paging",
        "NEW_PGTABLE at the end of guest memory",
        Killed("CR3 beyond guest memory"),
    ),
    attack("cr3-unaligned", "paging", "NEW_PGTABLE at its PML4 + 8", Killed("CR3 not page-aligned")),
    attack(
        "recursive-tables",
        "paging",
        "PML4[510] pointing at the PML4; read PML4, PDPT, PD through it, write a PTE through it",
        Survives("read PML4, PDPT and PD through the self-map, and mapped a page through it"),
    ),
    Attack {
        also: Some((
            "stats: paging: ",
            |line| line.contains(" evicted ") && !line.contains(" evicted 0,"),
            "shadow roots evicted",
        )),
        // Under this nested KVM its 18000 exits take about two minutes,
        // nine tenths of it in the host; under TCG, seconds.
        timeout: 360,
        ..attack(
            "shadow-pool",
            "paging",
            "2000 NEW_PGTABLEs over 2000 address spaces (4000 table pages), a page touched in each",
            Survives("switched through 2000 address spaces and back"),
        )
    },
    // Switcher: the top 4 MiB are Umbra's.
    attack(
        "write-state-page",
        "switcher",
        "write the read-only state page",
        Killed("wrote the switcher's read-only state at 0xffffffffffc03000"),
    ),
    attack(
        "write-idt-page",
        "switcher",
        "write the #GP gate in the read-only IDT page",
        Killed("wrote the switcher's read-only state at 0xffffffffffc040d0"),
    ),
    attack(
        "write-switcher-code",
        "switcher",
        "write the switcher's code",
        Killed("touched the switcher region at 0xffffffffffc01000"),
    ),
    other_cpu(
        "other-cpu-pages",
        "[g2] guest: attack other-cpu-pages: ",
        "two guests, one per CPU at once, each leaving a marker in its CPU's registers page and reading \
         all its switcher pages for the other's; then past its own, where another CPU's would be",
    ),
    other_cpu(
        "other-cpu-pages-write",
        "[g2] guest: attack other-cpu-pages-write: ",
        "two guests, one per CPU at once, each leaving a marker in its CPU's registers page and reading \
         all its switcher pages for the other's; then writes past its own, where another CPU's would be",
    ),
    attack(
        "read-past-our-pages",
        "switcher",
        "read past this CPU's pages, where another CPU's would be",
        Killed("touched the switcher region at 0xffffffffffc05000"),
    ),
    attack(
        "read-pd511",
        "switcher",
        "read PD[511] of the region, never mapped",
        Killed("touched the switcher region at 0xffffffffffe00000"),
    ),
    attack(
        "stack-on-registers-page",
        "switcher",
        "rsp at the top of the registers page, then cli with a #GP handler",
        Killed("guest asked the host to access the switcher region"),
    ),
    attack(
        "stack-on-switcher-code",
        "switcher",
        "rsp inside the switcher code, then cli with a #GP handler",
        Killed("guest asked the host to access the switcher region"),
    ),
    attack(
        "push-on-state-page",
        "switcher",
        "rsp at the top of the state page, then push",
        Killed("wrote the switcher's read-only state at 0xffffffffffc03ff8"),
    ),
    attack(
        "scribble-registers-page",
        "switcher",
        "fill its own registers page with 0x08 and all-ones, then a hypercall",
        Survives("registers page scribbled; back at ring 1 (cs 0x19, ss 0x21)"),
    ),
    // Faults of the guest's own.
    attack(
        "double-fault",
        "fault",
        "cli with rsp on an unmapped page and a #GP handler",
        Killed(
            "double fault while delivering general protection fault (#GP): the guest stack at 0x4ffffffffff8",
        ),
    ),
    attack(
        "double-fault-noncanonical",
        "fault",
        "cli with a non-canonical rsp and a #GP handler",
        Killed("non-canonical address"),
    ),
    attack(
        "handler-unmapped",
        "fault",
        "a #GP handler at an unmapped kernel address, then cli",
        Killed("unhandled page fault at 0xffff800040000000 (error code 0x10, rip 0xffff800040000000)"),
    ),
    attack(
        "trap-flag-storm",
        "fault",
        "TF set over 2000 instructions and a hypercall, with a #DB handler",
        Handled("at least 2000 single-step traps delivered to our handler"),
    ),
    attack(
        "trap-flag-no-handler",
        "fault",
        "TF set, no #DB handler",
        Killed("debug trap (#DB) (vector 1, error code 0x0) at rip"),
    ),
    attack(
        "divide-no-handler",
        "fault",
        "divide by zero, no #DE handler",
        Killed("divide error (#DE) (vector 0, error code 0x0) at rip"),
    ),
    attack(
        "page-fault-no-handler",
        "fault",
        "read an unmapped address, no #PF handler",
        Killed("unhandled page fault at 0x500000000000 (error code 0x0"),
    ),
    Attack {
        firmware: "guest_timeout=2",
        also: Some(("stats: exits ", |line| line.contains(" irq239="), "exits for the host timer, irq239")),
        ..attack(
            "spin-interrupts-off",
            "fault",
            "virtual interrupts off, then spin for ever without a trap",
            Killed("watchdog: still running after guest_timeout=2 seconds"),
        )
    },
    // Flags: what a ring-1 guest leaves in RFLAGS when it exits must not
    // reach the host, and must come back to it as it was (NT and RF
    // aside: Umbra never enters with them).
    Attack {
        also: Some((
            "guest: std-console text: ",
            |line| line == STD_CONSOLE_TEXT,
            "the text written with DF set, whole",
        )),
        ..attack(
            "std-console",
            "flags",
            "std, then CONSOLE_WRITE; DF checked after",
            Survives("DF still set after CONSOLE_WRITE, which wrote all 90 bytes"),
        )
    },
    attack(
        "std-page-fault",
        "flags",
        "std, then a read of an untouched page of its kernel alias, which Umbra fills",
        Survives("DF still set after a demand-filled page fault"),
    ),
    attack(
        "std-trap",
        "flags",
        "std, then cli with a #GP handler",
        Survives("DF set in the #GP frame our handler got, and still set after its iretq"),
    ),
    Attack {
        firmware: "guest_timeout=2",
        also: Some(("stats: exits ", |line| line.contains(" irq239="), "exits for the host timer, irq239")),
        ..attack(
            "std-watchdog",
            "flags",
            "std, virtual interrupts off, then spin for ever",
            Killed("watchdog: still running after guest_timeout=2 seconds"),
        )
    },
    Attack {
        also: Some((
            "guest shutdown: ",
            |line| line == "guest shutdown: DF set at SHUTDOWN; this message must arrive whole",
            "the SHUTDOWN message given with DF set, whole",
        )),
        ..attack(
            "std-shutdown",
            "flags",
            "std, then SHUTDOWN with status 0 and a message",
            Survives("shutting down with DF set"),
        )
    },
    attack(
        "ac-hypercall",
        "flags",
        "popfq with AC set, then a hypercall",
        Survives("AC still set after a hypercall"),
    ),
    attack(
        "nt-hypercall",
        "flags",
        "popfq with NT set, then a hypercall",
        Survives("NT set by popfq, clear after a hypercall (Umbra clears it at every entry)"),
    ),
    attack(
        "tf-hypercall",
        "flags",
        "popfq with TF set, then a hypercall, with a #DB handler",
        Handled("#DB traps delivered to our handler before and after a hypercall"),
    ),
    Attack {
        // Hardware sets RF in the frame of every fault, so there the frame
        // cannot tell: the guest sees RF set whatever Umbra entered with.
        kvm: Some(Survives("hypercall made with RF set; RF set in the next #GP frame")),
        ..attack(
            "rf-hypercall",
            "flags",
            "iretq to itself with RF set, onto a hypercall; then cli, whose #GP frame shows RF",
            Survives("hypercall made with RF set; RF clear in the next #GP frame"),
        )
    },
    attack(
        "flags-round-trip",
        "flags",
        "CF PF AF ZF SF DF OF AC ID set across a hypercall, a page fault, a #GP and a host timer interrupt",
        Survives(
            "CF PF AF ZF SF DF OF AC ID kept across a hypercall, a demand-filled page fault, a #GP to our handler \
             and a host timer interrupt",
        ),
    ),
    // Vectors: 0xe0-0xff are the host's, never a guest's direct gate.
    Attack {
        firmware: "guest_timeout=2",
        also: Some((
            "guest killed: ",
            |line| line.contains("LOAD_IDT_ENTRY: vector 239, handler "),
            "the kill at LOAD_IDT_ENTRY for vector 239, before any spin",
        )),
        ..attack(
            "host-vector-timer",
            "vectors",
            "LOAD_IDT_ENTRY making 0xef, the host's timer, a direct gate (IDT_USER); then spin, interrupts off",
            Killed(HOST_VECTOR),
        )
    },
    attack(
        "host-vector-spurious",
        "vectors",
        "LOAD_IDT_ENTRY making 0xff, the APIC's spurious vector, a direct gate",
        Killed(HOST_VECTOR),
    ),
    attack(
        "host-vector-first",
        "vectors",
        "LOAD_IDT_ENTRY making 0xe0, the first host vector, a direct gate",
        Killed(HOST_VECTOR),
    ),
    attack(
        "host-vector-pic",
        "vectors",
        "LOAD_IDT_ENTRY making 0xf7, the master PIC's spurious IRQ, a direct gate",
        Killed(HOST_VECTOR),
    ),
    Attack {
        firmware: "guest_timeout=2",
        also: Some(("stats: exits ", |line| line.contains(" irq239="), "exits for the host timer, irq239")),
        ..attack(
            "host-vector-plain",
            "vectors",
            "a plain entry on 0xef; 20 exits with virtual interrupts on, none delivered there; then spin with them off",
            Killed("watchdog: still running after guest_timeout=2 seconds"),
        )
    },
    attack(
        "into-user",
        "vectors",
        "into (0xce) at ring 3, with a user gate on vector 4 and a #UD handler",
        Handled("#UD from ring 3 delivered to our handler, not vector 4"),
    ),
    attack(
        "int-1f",
        "vectors",
        "int 0x1f at ring 1 (every gate it does not own is DPL 0)",
        Handled("#GP delivered to our handler (error 0xfa)"),
    ),
    // The FS base: SET_FS_BASE's base is the guest's own, through
    // everything, and never another guest's on the same CPU.
    Attack {
        firmware: "guests=2 cpus=1 guest_mem=16M",
        also: Some((
            "[g2] guest: attack fs-base-kept: ",
            |l| l.ends_with(FS_BASE_KEPT),
            "the second guest, taking turns with the first on one CPU, kept its own FS base too",
        )),
        ..attack(
            "fs-base-kept",
            "fs-base",
            "SET_FS_BASE, then hypercalls, #GPs and clock ticks, reading %fs:0 after each, as two guests \
             taking turns on one CPU",
            Survives(FS_BASE_KEPT),
        )
    },
    attack(
        "fs-base-noncanonical",
        "fs-base",
        "SET_FS_BASE 0x0000_8000_0000_0000",
        Killed("SET_FS_BASE: 0x800000000000 is not a canonical address"),
    ),
    attack(
        "fs-base-high-noncanonical",
        "fs-base",
        "SET_FS_BASE 0xfff0_8000_0000_0000",
        Killed("SET_FS_BASE: 0xfff0800000000000 is not a canonical address"),
    ),
    // Ring 3 as Linux programs use it: SSE and #XM work, `syscall` is a
    // #UD for a guest kernel that registered no syscall entry.
    attack(
        "syscall-from-user",
        "user-mode",
        "syscall at ring 3 with no syscall entry (EFER.SCE off; this nested KVM runs it to LSTAR; Umbra turns \
         the fault into the #UD)",
        Handled("#UD from ring 3 delivered to our handler, at the syscall: EFER.SCE is off"),
    ),
    Attack {
        firmware: "guests=2 guest_mem=16M",
        also: Some((
            "[g2] guest: attack sse-at-ring3: ",
            |l| l.ends_with(SSE_AT_RING3),
            "the second guest, at the same time on the other CPU, ran SSE too",
        )),
        ..attack(
            "sse-at-ring3",
            "user-mode",
            "pcmpeqd and psrldq on xmm3 at ring 3, read back with fxsave64 at ring 1, by two guests at once \
             (one per CPU: every CPU has CR4.OSFXSR)",
            Survives(SSE_AT_RING3),
        )
    },
    Attack {
        kvm: Some(Handled("#XM from ring 3 delivered to our handler")),
        ..attack(
            "simd-exception-at-ring3",
            "user-mode",
            "ldmxcsr unmasking divide-by-zero, then divss by 0.0, at ring 3 (TCG raises no SIMD exceptions)",
            Handled("no #XM: divss did not fault, and the ud2 after it came back"),
        )
    },
    // The direct path for `syscall` (SET_SYSCALL_ENTRY): the switcher's
    // ring-0 stub, given the worst a user program can hand it.
    Attack {
        kvm: Some(Survives(
            "the entry got the frame int n pushes at ring 1, rcx and r11 set: made by the host (the CPU did not \
             take the direct path)",
        )),
        ..attack(
            "syscall-direct",
            "syscall",
            "syscall at ring 3 with a syscall entry and a kernel stack (this nested KVM runs it at ring 3 to \
             LSTAR; Umbra makes the call)",
            Survives("the entry got the frame int n pushes at ring 1, rcx and r11 set: no exit"),
        )
    },
    attack(
        "syscall-noncanonical-rsp",
        "syscall",
        "syscall with rsp 0x0000_8000_0000_0000, which the ring-0 stub runs on for one instruction",
        Survives("rsp 0x800000000000 reached the entry in the frame, untouched"),
    ),
    attack(
        "syscall-rsp-at-switcher",
        "syscall",
        "syscall with rsp in the switcher's state page",
        Survives(
            "rsp 0xffffffffffc03800, in the switcher's state page, reached the entry in the frame, untouched",
        ),
    ),
    attack(
        "syscall-trap-flag",
        "syscall",
        "popfq with TF, then syscall (a single-step trap at ring 0 would strike the stub)",
        Survives("TF set in the frame's rflags, and no single-step trap on the way in"),
    ),
    attack(
        "syscall-mov-ss-trap-flag",
        "syscall",
        "TF, then mov ss and syscall: the debug trap mov ss holds back comes due in the stub on hardware",
        Survives("the entry got the frame, TF set in its rflags"),
    ),
    attack(
        "syscall-no-stack",
        "syscall",
        "syscall with a syscall entry but no SET_STACK",
        Killed("syscall from user mode before SET_STACK"),
    ),
    attack(
        "syscall-entry-switcher",
        "syscall",
        "SET_SYSCALL_ENTRY in the switcher's code",
        Killed("SET_SYSCALL_ENTRY: handler 0xffffffffffc01000: handler in the switcher"),
    ),
    attack(
        "syscall-entry-user-half",
        "syscall",
        "SET_SYSCALL_ENTRY below the kernel boundary",
        Killed("SET_SYSCALL_ENTRY: handler 0x100000000000: handler outside the guest kernel"),
    ),
    attack(
        "syscall-entry-noncanonical",
        "syscall",
        "SET_SYSCALL_ENTRY at a non-canonical address",
        Killed("SET_SYSCALL_ENTRY: handler 0x800000000000: non-canonical handler"),
    ),
];

/// The line std-console writes with DF set.
const STD_CONSOLE_TEXT: &str =
    "guest: std-console text: 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ";

const HOST_VECTOR: &str = "the host owns this vector; it may not be a direct gate";

/// Attacks this machine's KVM cannot run, with the reason.
const KVM_SKIPS: &[(&str, &str)] = &[
    (
        "swapgs",
        "this nested KVM runs swapgs at ring 1 without the #GP the CPU owes (the guest swaps GS base \
         with KERNEL_GS_BASE and says 'survived'); under TCG it is a #GP",
    ),
    (
        "xrstor",
        "this nested KVM fails to emulate the #UD and stops the whole VM ('KVM internal error. \
         Suberror: 1', emulation failure), like int n at ring 1",
    ),
    (
        "int-1f",
        "int n at ring 1 stops this nested KVM's whole VM ('KVM internal error', emulation failure) \
         before any exit reaches Umbra",
    ),
    (
        "flags-round-trip",
        "with the guest kernel grown by its Linux layer (the Umbra side unchanged), this nested KVM \
         leaves the ring-1 guest running with the real IF clear after the probe's popfq of every \
         settable flag (QEMU's monitor: CPL 1, RFLAGS 0x240cd7, spinning in the wait for a host \
         tick), which ring 1 cannot do on a CPU (IOPL 0); so no tick comes and the boot hangs. \
         Under TCG the round trip is checked",
    ),
];

fn case(attack: &'static Attack, accel: Accel) -> Case {
    let name = format!("{}_{}", accel.name(), attack.name);
    if accel == Accel::Kvm
        && let Some((_, why)) = KVM_SKIPS.iter().find(|(skip, _)| *skip == attack.name)
    {
        return Case::skip(name, why);
    }
    let mut config =
        Boot::new("microvm", accel).append(format!("{} -- test=attack:{}", attack.firmware, attack.name));
    // Only a hang guard: under this nested KVM a boot's first touch of
    // every guest page is slow, and a loaded machine slower still, so
    // KVM boots get the boot tests' 300 s before they count as hung.
    let hang_guard = match accel {
        Accel::Kvm => attack.timeout.max(KVM_HANG_GUARD_S),
        Accel::Tcg => attack.timeout,
    };
    config.timeout = Duration::from_secs(hang_guard);
    Case::boot(name, config, move |outcome| {
        check!(outcome, outcome.exit_code.is_some(), "timed out: the VMM was killed");
        check!(outcome, outcome.line_starting("umbra: crash").is_none(), "the host crashed");
        check!(outcome, !outcome.serial.contains("guest: survived"), "the attack got through");
        // An attack run as several guests (`guests=2`) prints each line
        // with its guest's `[gN] `; every guest must show the outcome.
        let lines: Vec<&str> = outcome.lines().into_iter().map(without_guest_prefix).collect();
        let has_line = |wanted: &str| lines.contains(&wanted);
        let started = format!("guest: attack {}", attack.name);
        check!(outcome, has_line(&started), "expected the line {started:?}");
        let expect = match accel {
            Accel::Kvm => attack.kvm.unwrap_or(attack.expect),
            Accel::Tcg => attack.expect,
        };
        let status = match expect {
            Expect::Killed(reason) => {
                let killed: Vec<&str> =
                    lines.iter().copied().filter(|l| l.starts_with("guest killed: ")).collect();
                check!(
                    outcome,
                    !killed.is_empty() && killed.iter().all(|l| l.contains(reason)),
                    "expected 'guest killed: ...{reason}...', got {killed:?}"
                );
                GUEST_KILLED
            }
            Expect::Handled(line) | Expect::Survives(line) => {
                let wanted = format!("guest: attack {}: {line}", attack.name);
                check!(outcome, has_line(&wanted), "expected the line {wanted:?}");
                check!(
                    outcome,
                    has_line("guest exited with status 0"),
                    "the guest should exit with status 0"
                );
                SUCCESS
            }
        };
        if let Some((prefix, test, wanted)) = attack.also {
            let line = outcome.line_starting(prefix).unwrap_or("");
            check!(outcome, test(line), "expected a line '{prefix}...' showing {wanted}, got {line:?}");
        }
        check_exit(outcome, status, Exit::DebugExit)
    })
}

/// A line as its guest printed it: without the `[gN] ` that marks it
/// when several guests run.
fn without_guest_prefix(line: &str) -> &str {
    line.strip_prefix("[g")
        .and_then(|rest| rest.split_once("] "))
        .filter(|(number, _)| !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()))
        .map_or(line, |(_, rest)| rest)
}

/// One line per attack: name, group, outcome.
fn list() {
    for attack in CATALOGUE {
        let kvm = match (attack.kvm, KVM_SKIPS.iter().any(|(name, _)| *name == attack.name)) {
            (_, true) => " (skipped under KVM)".to_string(),
            (Some(other), _) => format!(" (under KVM, {})", other.describe()),
            (None, _) => String::new(),
        };
        println!("{:<28} {:<10} {}{kvm}", attack.name, attack.category, attack.expect.describe());
    }
    println!("{} attacks", CATALOGUE.len());
}

/// The catalogue as the Markdown table in docs/security.md, one line a
/// row.
fn markdown() -> Vec<String> {
    let cell = |name: &str, expect: Expect| match expect {
        Expect::Killed(reason) => ("killed", format!("`{reason}`")),
        Expect::Handled(line) => ("handled", format!("`guest: attack {name}: {line}`")),
        Expect::Survives(line) => ("works", format!("`guest: attack {name}: {line}`")),
    };
    let mut table = vec![
        "| attack | group | what it tries | outcome | reason or handler line |".to_string(),
        "| --- | --- | --- | --- | --- |".to_string(),
    ];
    for attack in CATALOGUE {
        let (tcg_outcome, mut text) = cell(attack.name, attack.expect);
        let mut outcome = tcg_outcome.to_string();
        if let Some(other) = attack.kvm {
            let (kvm_outcome, kvm_text) = cell(attack.name, other);
            outcome = format!("{tcg_outcome} (TCG); {kvm_outcome} (KVM)");
            text = format!("TCG: {text}; KVM: {kvm_text}");
        }
        if KVM_SKIPS.iter().any(|(name, _)| *name == attack.name) {
            outcome = format!("{tcg_outcome} (TCG); skipped under KVM");
        }
        let name = match attack.firmware {
            "" => format!("`{}`", attack.name),
            words => format!("`{}` (`{words}`)", attack.name),
        };
        table.push(format!("| {name} | {} | {} | {outcome} | {text} |", attack.category, attack.does));
    }
    table
}

/// docs/security.md's table of attacks is the catalogue's, line for line:
/// the first line that differs fails the case, with both versions.
fn catalogue_matches_docs() -> Verdict {
    let path = workspace_root().join("docs/security.md");
    let page = match std::fs::read_to_string(&path) {
        Ok(page) => page,
        Err(e) => return Verdict::Fail(format!("cannot read {}: {e}", path.display())),
    };
    let generated = markdown();
    // The page's table: the header line and every table line after it.
    let Some(start) = page.lines().position(|line| line == generated[0]) else {
        return Verdict::Fail(format!("docs/security.md has no table headed {:?}", generated[0]));
    };
    let documented: Vec<&str> = page.lines().skip(start).take_while(|line| line.starts_with('|')).collect();
    let rows = documented.len().max(generated.len());
    match (0..rows).find(|&row| documented.get(row).copied() != generated.get(row).map(String::as_str)) {
        None => Verdict::Pass,
        Some(row) => Verdict::Fail(format!(
            "docs/security.md's attack table differs from the catalogue at line {} of the page:\n      \
             page:      {}\n      catalogue: {}\n      \
             (`cargo test -p boot-tests --test attacks -- --list-attacks --markdown` prints the catalogue's)",
            start + row + 1,
            documented.get(row).copied().unwrap_or("(the table has ended)"),
            generated.get(row).map_or("(the catalogue has ended)", String::as_str),
        )),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list-attacks") {
        if std::env::args().any(|a| a == "--markdown") {
            markdown().iter().for_each(|line| println!("{line}"));
        } else {
            list()
        }
        return;
    }
    // `--attack=NAME` (any number of them) runs exactly those attacks;
    // plain words filter case names by substring, as in every boot test.
    let wanted: Vec<String> =
        std::env::args().filter_map(|a| a.strip_prefix("--attack=").map(str::to_owned)).collect();
    if let Some(unknown) = wanted.iter().find(|name| !CATALOGUE.iter().any(|a| a.name == name.as_str())) {
        eprintln!("no attack named {unknown:?}; --list-attacks prints them");
        std::process::exit(2);
    }
    let mut cases = vec![Case::host("attack_catalogue_matches_docs", catalogue_matches_docs)];
    for accel in [Accel::Tcg, Accel::Kvm] {
        for attack in CATALOGUE.iter().filter(|a| wanted.is_empty() || wanted.iter().any(|w| w == a.name)) {
            cases.push(case(attack, accel));
        }
    }
    run_cases(cases, 2)
}
