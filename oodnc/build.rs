//! Build script: give every binary and test of this crate an rpath to
//! libtorch's `lib/` folder, so that they run without LD_LIBRARY_PATH.
//!
//! torch-sys (a direct dependency for this reason) exports the folder it
//! linked against as `DEP_TCH_LIBTORCH_LIB`.
//!
//! It also compiles two small C shims over libtorch: `csrc/amp.cpp`, the
//! per-device autocast state used by `oodnc::amp` (bf16 mixed precision,
//! declared without headers), and `csrc/optim.cpp`, the fused SGD kernel and
//! set-to-none gradient clearing used by `oodnc::train::Sgd` (against
//! libtorch's headers, found beside the `lib/` folder torch-sys reports).

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=csrc/amp.cpp");
    cc::Build::new().cpp(true).std("c++17").warnings(true).file("csrc/amp.cpp").compile("oodnc_amp");
    println!("cargo:rerun-if-changed=csrc/optim.cpp");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").unwrap_or_default();
    let include = Path::new(&lib).join("..").join("include");
    if !include.join("ATen").join("ops").join("_fused_sgd.h").is_file() {
        panic!(
            "oodnc: libtorch's headers were not found at {} (torch-sys reported lib folder {lib:?}); \
             run `make setup` (it creates .libtorch) or set LIBTORCH to a libtorch 2.13 with include/",
            include.display()
        );
    }
    cc::Build::new()
        .cpp(true)
        // libtorch 2.13's headers need C++17 and use a few C++20 extensions.
        .std("c++20")
        // As system headers: their own warnings are not ours.
        .flag("-isystem")
        .flag(include.to_string_lossy().as_ref())
        .file("csrc/optim.cpp")
        .compile("oodnc_optim");
    // The tch / libtorch pair this build is for, shown by `oodnc info`: the main
    // manifest's pin unless a build variant (scripts/torch211_variant.sh) says otherwise.
    for (key, default) in [("OODNC_TCH_VERSION", "0.26.0"), ("OODNC_TORCH_VERSION", "2.13.0")] {
        println!("cargo:rerun-if-env-changed={key}");
        let value = std::env::var(key).unwrap_or_else(|_| default.to_string());
        println!("cargo:rustc-env={key}={value}");
    }
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
