//! Link the guest as a static ET_EXEC at the addresses in link.ld, and
//! build the user programs it carries.
//!
//! As for the firmware: the x86_64-unknown-none target defaults to a static
//! PIE, which would make the image ET_DYN, and Umbra's loader applies no
//! relocations. Host builds (the stub `main`) are left alone.
//!
//! The user programs (`user/*.rs`, one file each, sharing `user/ulib.rs`)
//! are tiny `no_std` binaries. Each is compiled here by a direct `rustc`
//! call for the same target, into `OUT_DIR`, and linked with
//! `user/user.ld` as a static ELF at the user half's base. The kernel
//! embeds them with `include_bytes!` and loads them with its own ELF
//! loader. A direct `rustc` call, not a nested cargo: the programs need no
//! crates but `core`, and the guest is itself built by a nested cargo
//! inside the firmware's build, so one more level of cargo (and its locks)
//! buys nothing.
use std::path::{Path, PathBuf};
use std::process::Command;

/// The user programs, by file name in `user/`.
const PROGRAMS: [&str; 6] = ["hello", "forktree", "crash", "spinner", "memtest", "bench"];

fn main() {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = manifest.join("link.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed={}", manifest.join("user").display());
    println!("cargo:rerun-if-changed={}", manifest.join("src/kernel/syscall_numbers.rs").display());
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    println!("cargo:rustc-link-arg-bins=--no-pie");

    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for program in PROGRAMS {
        build_user_program(&manifest.join("user"), program, &out);
    }
}

/// Compiles `user/NAME.rs` into `OUT_DIR/NAME`.
fn build_user_program(user: &Path, name: &str, out: &Path) {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let status = Command::new(rustc)
        .arg(user.join(format!("{name}.rs")))
        .args(["--target", "x86_64-unknown-none", "--edition", "2024", "--crate-type", "bin"])
        .args([
            "--crate-name",
            name,
            "-C",
            "opt-level=2",
            "-C",
            "panic=abort",
            "-C",
            "debuginfo=0",
            "-C",
            "strip=symbols",
        ])
        .arg(format!("-Clink-arg=-T{}", user.join("user.ld").display()))
        // --nmagic: segments packed in the file, not each on a page of
        // its own (a program went from 12.8 KB, mostly padding, to 5 KB):
        // the kernel's loader copies by virtual address, and the image
        // that embeds them has a size limit.
        .args(["-C", "link-arg=--no-pie", "-C", "link-arg=-static", "-C", "link-arg=--nmagic", "-o"])
        .arg(out.join(name))
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("could not run rustc to build a user program");
    assert!(status.success(), "building the user program {name} failed");
}
