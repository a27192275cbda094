//! Link the image as a static ET_EXEC at the addresses in layout.ld, and
//! embed the default guest.
//!
//! The x86_64-unknown-none target defaults to a static PIE, which would
//! make the image ET_DYN and turn the PVH note's entry into a relocation
//! the VMM never applies. Host builds (the library's tests) are untouched.
//!
//! The default guest (`guest/`) is built here, by a nested cargo with its
//! own target directory (the outer build holds the main one's lock). Its
//! debug info and symbols are most of its file and the loader reads none
//! of them, so the image embeds it cut down to what the loader reads
//! (`hv_core::elf::strip`), through `UMBRA_DEFAULT_GUEST`. The whole file
//! goes next to the image, as `guest-symbols`, for gdb
//! (`scripts/debug.sh`). Cutting it here rather than with `strip` or
//! `objcopy` needs no tool beyond cargo.
use std::path::{Path, PathBuf};
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
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let stripped = out.join("default-guest");
    let mut image = std::fs::read(&guest).expect("could not read the default guest's ELF");
    let keep = hv_core::elf::strip(&mut image)
        .unwrap_or_else(|error| panic!("the default guest (guest/) is not an image Umbra loads: {error}"));
    image.truncate(keep);
    std::fs::write(&stripped, &image).expect("could not write the stripped default guest");
    println!("cargo:rustc-env=UMBRA_DEFAULT_GUEST={}", stripped.display());
    let symbols = profile_dir(&out).join("guest-symbols");
    std::fs::copy(&guest, &symbols).expect("could not copy the default guest's symbols next to the image");
}

/// The directory the image lands in (`target/x86_64-unknown-none/release`),
/// from this script's `OUT_DIR`, which cargo puts at
/// `<that>/build/umbra-firmware-<hash>/out`.
fn profile_dir(out: &Path) -> PathBuf {
    let build = out.parent().and_then(Path::parent);
    match build.filter(|b| b.file_name().is_some_and(|name| name == "build")).and_then(Path::parent) {
        Some(dir) => dir.to_path_buf(),
        None => panic!("OUT_DIR {} is not where cargo usually puts it", out.display()),
    }
}
