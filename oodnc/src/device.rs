//! Device selection: CUDA when libtorch can use it, CPU otherwise.

use std::sync::Once;
use tch::Device;

static CUDA_BACKEND: Once = Once::new();

/// Loads `libtorch_cuda.so` once, before the first CUDA query.
///
/// rustc links with `--as-needed`, which drops `libtorch_cuda.so` because no
/// symbol of it is referenced directly; the CUDA backend then never registers
/// and every CUDA op fails with "Could not run ... 'CUDA' backend". Loading the
/// library at run time registers it. On CPU-only installs the library is
/// absent (or has no driver) and the failure is ignored.
///
/// The library is looked for first next to the `libtorch_cpu.so` this process
/// actually loaded ([`loaded_libtorch_dir`]), so that a binary run against
/// another install than the one it was built with (the GPU bundle, which uses
/// the machine's own PyTorch) never mixes two libtorch builds; then in the
/// build-time libtorch folder; then by name through the loader's search path.
pub fn ensure_cuda_backend() {
    CUDA_BACKEND.call_once(|| {
        for name in ["libtorch_cuda.so", "libc10_cuda.so"] {
            for cand in cuda_candidates(name, loaded_libtorch_dir().as_deref(), env!("OODNC_LIBTORCH_LIB")) {
                let Ok(c) = std::ffi::CString::new(cand) else {
                    continue;
                };
                // SAFETY: dlopen with a valid NUL-terminated string; the handle
                // is deliberately leaked so the library stays loaded.
                let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
                if !handle.is_null() {
                    break;
                }
            }
        }
    });
}

/// Where to look for `name`, in order: the folder of the loaded libtorch, the
/// build-time libtorch folder (`build_lib`, may be empty), the bare name.
pub fn cuda_candidates(name: &str, loaded_dir: Option<&std::path::Path>, build_lib: &str) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(d) = loaded_dir {
        v.push(d.join(name).to_string_lossy().into_owned());
    }
    if !build_lib.is_empty() {
        let p = format!("{build_lib}/{name}");
        if !v.contains(&p) {
            v.push(p);
        }
    }
    v.push(name.to_string());
    v
}

/// The folder of the `libtorch_cpu.so` mapped into this process (from
/// `/proc/self/maps`), or `None` where that cannot be read.
pub fn loaded_libtorch_dir() -> Option<std::path::PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    libtorch_dir_in_maps(&maps)
}

/// The folder of `libtorch_cpu.so` in the text of a `/proc/<pid>/maps` file.
pub fn libtorch_dir_in_maps(maps: &str) -> Option<std::path::PathBuf> {
    // The path is the rest of the line from its first '/' (it may hold spaces).
    maps.lines()
        .filter_map(|l| l.find('/').map(|i| std::path::Path::new(l[i..].trim_end())))
        .find(|p| p.file_name().is_some_and(|f| f == "libtorch_cpu.so"))
        .and_then(|p| p.parent().map(|d| d.to_path_buf()))
}

/// The best available device: `cuda:0` when CUDA works, else CPU.
///
/// `OODNC_DEVICE=cpu` forces the CPU (useful for exact CPU reproducibility).
pub fn best_device() -> Device {
    if std::env::var("OODNC_DEVICE").map(|v| v == "cpu").unwrap_or(false) {
        return Device::Cpu;
    }
    ensure_cuda_backend();
    if tch::Cuda::is_available() {
        Device::Cuda(0)
    } else {
        Device::Cpu
    }
}

/// Whether CUDA is usable from this process.
pub fn cuda_available() -> bool {
    ensure_cuda_backend();
    tch::Cuda::is_available()
}

/// Number of visible CUDA devices (0 on CPU-only machines).
pub fn cuda_device_count() -> i64 {
    ensure_cuda_backend();
    tch::Cuda::device_count()
}
