//! Exports libtorch's C wrapper (torch-sys's `libtch`, a static library inside
//! this shared library) from it, so that notebook cells can call generic tch
//! functions.
//!
//! A cell that calls a generic tch function with new type arguments
//! (`Tensor::from_slice(&v)`, `t.mean(Kind::Double)`, ...) compiles its own
//! instance of it, which calls libtch's C functions (`at_tensor_of_data`,
//! `atg_mean`, `get_and_reset_last_err`) directly. rustc's version script exports
//! only Rust symbols from a `dylib`, so without this the cell's shared object
//! fails to load ("dlopen failed"). A second version script lists libtch's
//! functions as global: lld (rustc's default linker on x86_64 Linux since 1.90,
//! and what evcxr asks for when `lld` is on PATH) merges it with rustc's and gives
//! `local: *` the lowest priority, so these names are exported. GNU ld refuses two
//! anonymous version scripts, so with any other linker nothing is added and a
//! warning says what is lost.
use std::path::PathBuf;
use std::process::Command;

/// Whether this dylib is linked by lld: `-fuse-ld=lld` in the flags, or rustc's
/// own rust-lld (the default for x86_64-unknown-linux-gnu from Rust 1.90 on).
fn links_with_lld() -> bool {
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let flags: Vec<&str> = flags.split('\x1f').collect();
    if let Some(ld) = flags.iter().rev().find_map(|f| f.split("-fuse-ld=").nth(1)) {
        return ld == "lld" || ld.ends_with("/ld.lld");
    }
    if flags.iter().any(|f| f.contains("linker-features=-lld") || f.contains("linker-flavor")) || std::env::var_os("RUSTC_LINKER").is_some()
    {
        return false;
    }
    let target = std::env::var("TARGET").unwrap_or_default();
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let minor = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|v| v.split_whitespace().nth(1).and_then(|v| v.split('.').nth(1)).and_then(|m| m.parse::<u32>().ok()));
    target == "x86_64-unknown-linux-gnu" && minor.is_some_and(|m| m >= 90)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    if !links_with_lld() {
        println!(
            "cargo:warning=oodnc_nb: not linked by lld, so libtorch's C wrapper is not exported: a notebook cell that calls a generic tch \
             function oodnc has not instantiated (e.g. Tensor::from_slice on a new element type) fails to load. Install lld (Debian: apt install lld) or use Rust >= 1.90."
        );
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let map = out.join("export-libtch.map");
    // Every C function libtch defines starts with `at` (at_, atg_, ati_, atm_, ato_,
    // ats_, atc_), plus its error slot get_and_reset_last_err.
    let script = "{\n  global:\n    at*;\n    get_and_reset_last_err;\n};\n";
    std::fs::write(&map, script).unwrap_or_else(|e| panic!("cannot write {}: {e}", map.display()));
    println!("cargo:rustc-link-arg=-Wl,--version-script={}", map.display());
}
