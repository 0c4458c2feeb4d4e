//! Build script: give every binary and test of this crate an rpath to
//! libtorch's `lib/` folder, so that they run without LD_LIBRARY_PATH.
//!
//! torch-sys (a direct dependency for this reason) exports the folder it
//! linked against as `DEP_TCH_LIBTORCH_LIB`.
//!
//! It also compiles `csrc/amp.cpp`, the C shim over libtorch's per-device
//! autocast state used by `oodnc::amp` (bf16 mixed precision).

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=csrc/amp.cpp");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .warnings(true)
        .file("csrc/amp.cpp")
        .compile("oodnc_amp");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(lib) if Path::new(&lib).is_dir() => {
            // Kept as given (through the clone's `.libtorch` link), so that a venv
            // recreated elsewhere by `make setup` is picked up without a rebuild.
            println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
            // The shim's symbols live in libtorch_cpu (and c10); name them after it.
            println!("cargo:rustc-link-search=native={lib}");
            println!("cargo:rustc-link-lib=dylib=torch_cpu");
            println!("cargo:rustc-link-lib=dylib=c10");
            println!("cargo:rustc-env=OODNC_LIBTORCH_LIB={lib}");
        }
        _ => {
            println!(
                "cargo:warning=oodnc: torch-sys did not report libtorch's lib folder; \
                 run `make setup` (it creates .libtorch) or set LIBTORCH and LD_LIBRARY_PATH"
            );
            println!("cargo:rustc-env=OODNC_LIBTORCH_LIB=");
        }
    }
}
