//! Build script: give every binary and test of this crate an rpath to
//! libtorch's `lib/` folder, so that they run without LD_LIBRARY_PATH.
//!
//! torch-sys (a direct dependency for this reason) exports the folder it
//! linked against as `DEP_TCH_LIBTORCH_LIB`.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(lib) if Path::new(&lib).is_dir() => {
            // Kept as given (through the clone's `.libtorch` link), so that a venv
            // recreated elsewhere by `make setup` is picked up without a rebuild.
            println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
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
