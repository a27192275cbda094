//! Link the guest as a static ET_EXEC at the addresses in link.ld.
//!
//! As for the firmware: the x86_64-unknown-none target defaults to a static
//! PIE, which would make the image ET_DYN, and Umbra's loader applies no
//! relocations. Host builds (the stub `main`) are left alone.
fn main() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/link.ld");
    println!("cargo:rerun-if-changed={script}");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg-bins=-T{script}");
        println!("cargo:rustc-link-arg-bins=--no-pie");
    }
}
