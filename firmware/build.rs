//! Link the image as a static ET_EXEC at the addresses in layout.ld, and
//! embed the default guest.
//!
//! The x86_64-unknown-none target defaults to a static PIE, which would
//! make the image ET_DYN and turn the PVH note's entry into a relocation
//! the VMM never applies. Host builds (the library's tests) are untouched.
//!
//! The default guest (`guest/`) is built here, by a nested cargo with its
//! own target directory (the outer build holds the main one's lock), and
//! its path handed to the image as `UMBRA_DEFAULT_GUEST`.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("the firmware lives in the workspace").to_path_buf();
    let layout = root.join("layout.ld");
    println!("cargo:rerun-if-changed={}", layout.display());
    println!("cargo:rerun-if-changed=src/boot.s");
    println!("cargo:rerun-if-changed=src/traps.s");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    println!("cargo:rustc-link-arg-bins=-T{}", layout.display());
    println!("cargo:rustc-link-arg-bins=--no-pie");
    println!("cargo:rustc-link-arg-bins=-static");

    for input in ["guest", "hv-core", "paging", "switcher-asm"] {
        println!("cargo:rerun-if-changed={}", root.join(input).display());
    }
    let target_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("guest-build");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--release", "--target", "x86_64-unknown-none", "-p", "guest", "--target-dir"])
        .arg(&target_dir)
        // Not clippy's wrapper, nor the outer build's target directory.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("could not run cargo to build the default guest");
    assert!(status.success(), "building the default guest (guest/) failed");
    let guest = target_dir.join("x86_64-unknown-none/release/guest");
    println!("cargo:rustc-env=UMBRA_DEFAULT_GUEST={}", guest.display());
}
