//! `oodnc info`: what this build runs on.

use std::fmt;
use std::path::PathBuf;

/// The tch version this build is pinned to: 0.26.0 (see `oodnc/Cargo.toml`), or
/// 0.24.0 in the torch 2.11 build variant (set by `build.rs`).
pub const TCH_VERSION: &str = env!("OODNC_TCH_VERSION");
/// The libtorch / PyPI `torch` version that [`TCH_VERSION`] requires.
pub const TORCH_VERSION: &str = env!("OODNC_TORCH_VERSION");

/// Versions, library paths and devices of the running build.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Info {
    pub oodnc_version: String,
    pub tch_version: String,
    pub torch_version_expected: String,
    /// The version of the libtorch in use (from the wheel's `version.py` next to its `lib/`).
    pub libtorch_version: Option<String>,
    /// The `lib/` folder of the `libtorch_cpu.so` this process loaded (the build-time
    /// folder where that cannot be read).
    pub libtorch_lib: Option<PathBuf>,
    /// The `lib/` folder the binary was linked against (rpath); differs from
    /// `libtorch_lib` when run on another install (the GPU bundle).
    pub libtorch_lib_build: Option<PathBuf>,
    pub cuda_available: bool,
    pub cuda_device_count: i64,
    pub cudnn_available: bool,
    pub threads: i32,
    pub default_device: String,
}

/// Collects [`Info`] for this process.
pub fn info() -> Info {
    let lib = env!("OODNC_LIBTORCH_LIB");
    let libtorch_lib_build = (!lib.is_empty()).then(|| PathBuf::from(lib));
    let libtorch_lib = crate::device::loaded_libtorch_dir().or_else(|| libtorch_lib_build.clone());
    let libtorch_version = libtorch_lib.as_ref().and_then(|l| read_torch_version(l));
    Info {
        oodnc_version: env!("CARGO_PKG_VERSION").to_string(),
        tch_version: TCH_VERSION.to_string(),
        torch_version_expected: TORCH_VERSION.to_string(),
        libtorch_version,
        libtorch_lib,
        libtorch_lib_build,
        cuda_available: crate::device::cuda_available(),
        cuda_device_count: crate::device::cuda_device_count(),
        cudnn_available: tch::Cuda::cudnn_is_available(),
        threads: tch::get_num_threads(),
        default_device: format!("{:?}", crate::device::best_device()),
    }
}

/// Reads `__version__` from the wheel's `torch/version.py`, next to `lib/`.
fn read_torch_version(lib: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(lib.parent()?.join("version.py")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("__version__"))
        .map(|rest| rest.trim_start_matches([' ', '=']).trim().trim_matches(['\'', '"']).to_string())
}

impl fmt::Display for Info {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "oodnc            {}", self.oodnc_version)?;
        writeln!(f, "tch              {} (requires libtorch {})", self.tch_version, self.torch_version_expected)?;
        writeln!(f, "libtorch         {}", self.libtorch_version.as_deref().unwrap_or("unknown"))?;
        writeln!(
            f,
            "libtorch lib     {}",
            self.libtorch_lib.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "unknown".into())
        )?;
        let canon = |p: &Option<PathBuf>| p.as_ref().map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()));
        if self.libtorch_lib_build.is_some() && canon(&self.libtorch_lib_build) != canon(&self.libtorch_lib) {
            writeln!(
                f,
                "built against    {} (another install: the libraries above are used)",
                self.libtorch_lib_build.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
            )?;
        }
        writeln!(
            f,
            "CUDA             {} ({} device(s)), cuDNN {}",
            if self.cuda_available { "available" } else { "not available" },
            self.cuda_device_count,
            if self.cudnn_available { "yes" } else { "no" }
        )?;
        writeln!(f, "threads          {}", self.threads)?;
        write!(f, "default device   {}", self.default_device)
    }
}
