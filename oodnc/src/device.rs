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
pub fn ensure_cuda_backend() {
    CUDA_BACKEND.call_once(|| {
        for name in ["libtorch_cuda.so", "libc10_cuda.so"] {
            let mut candidates = vec![name.to_string()];
            let lib = env!("OODNC_LIBTORCH_LIB");
            if !lib.is_empty() {
                candidates.insert(0, format!("{lib}/{name}"));
            }
            for cand in candidates {
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
