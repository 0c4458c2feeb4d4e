//! Build script: give every binary and test of this crate an rpath to
//! libtorch's `lib/` folder, so that they run without LD_LIBRARY_PATH.
//!
//! torch-sys (a direct dependency for this reason) exports the folder it
//! linked against as `DEP_TCH_LIBTORCH_LIB`.
//!
//! It also compiles three small C shims over libtorch: `csrc/amp.cpp`, the
//! per-device autocast state used by `oodnc::amp` (bf16 mixed precision,
//! declared without headers), `csrc/optim.cpp`, the fused SGD kernel and
//! set-to-none gradient clearing used by `oodnc::train::Sgd`, and
//! `csrc/parallel.cpp`, libtorch's `at::parallel_for` for the Rust row kernels
//! of `oodnc::numerics` (the last two against libtorch's headers, found beside
//! the `lib/` folder torch-sys reports).

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=csrc/amp.cpp");
    cc::Build::new().cpp(true).std("c++17").warnings(true).file("csrc/amp.cpp").compile("oodnc_amp");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").unwrap_or_default();
    let include = Path::new(&lib).join("..").join("include");
    if !include.join("ATen").join("ops").join("_fused_sgd.h").is_file() {
        panic!(
            "oodnc: libtorch's headers were not found at {} (torch-sys reported lib folder {lib:?}); \
             run `make setup` (it creates .libtorch) or set LIBTORCH to a libtorch 2.13 with include/",
            include.display()
        );
    }
    // libtorch 2.13's headers need C++17 and use a few C++20 extensions; they are
    // included as system headers (their own warnings are not ours).
    let against_headers = |file: &str, name: &str, flags: &[&str]| {
        println!("cargo:rerun-if-changed={file}");
        let mut build = cc::Build::new();
        build.cpp(true).std("c++20").flag("-isystem").flag(include.to_string_lossy().as_ref());
        for f in flags {
            build.flag(f);
        }
        build.file(file).compile(name);
    };
    against_headers("csrc/optim.cpp", "oodnc_optim", &[]);
    // at::parallel_for's OpenMP backend is inline in the headers: compiled with
    // -fopenmp, against the libgomp that libtorch itself loads (below).
    against_headers("csrc/parallel.cpp", "oodnc_parallel", &["-fopenmp"]);
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
            // The OpenMP runtime of csrc/parallel.cpp: the very file libtorch
            // loads (pip wheels ship it beside libtorch_cpu), so that there is one
            // thread pool; the system's otherwise.
            if Path::new(&lib).join("libgomp.so.1").is_file() {
                println!("cargo:rustc-link-lib=dylib:+verbatim=libgomp.so.1");
            } else {
                println!("cargo:rustc-link-lib=dylib=gomp");
            }
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
