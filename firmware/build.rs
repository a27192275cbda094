//! Link the image as a static ET_EXEC at the addresses in layout.ld.
//!
//! The x86_64-unknown-none target defaults to a static PIE, which would
//! make the image ET_DYN and turn the PVH note's entry into a relocation
//! the VMM never applies. Host builds (the library's tests) are untouched.
fn main() {
    let layout = concat!(env!("CARGO_MANIFEST_DIR"), "/../layout.ld");
    println!("cargo:rerun-if-changed={layout}");
    println!("cargo:rerun-if-changed=src/boot.s");
    println!("cargo:rerun-if-changed=src/traps.s");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg-bins=-T{layout}");
        println!("cargo:rustc-link-arg-bins=--no-pie");
        println!("cargo:rustc-link-arg-bins=-static");
    }
}
