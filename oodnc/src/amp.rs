//! Mixed precision and memory layout for training: bf16 autocast on any device
//! type, and the channels-last (NHWC) layout of convolution tensors.
//!
//! **Autocast** (PyTorch's `torch.autocast(device_type, dtype=torch.bfloat16)`):
//! inside [`autocast`], libtorch runs matmuls and convolutions in bf16 and keeps
//! reductions, softmax and losses in f32; parameters stay f32 ("master weights")
//! and their gradients are f32. bf16 has f32's exponent range, so no loss scaling
//! is needed (float16 would need a grad scaler, which we do not offer). tch 0.26
//! only toggles CUDA float16 autocast, so the per-device state is reached through
//! a small C shim (`csrc/amp.cpp`).
//!
//! **Channels-last**: a 4-D tensor whose strides are those of NHWC while its
//! shape stays NCHW (`x.contiguous(memory_format=torch.channels_last)`). cuDNN's
//! fastest bf16 convolutions (tensor cores) want this layout. Values and shapes are
//! unchanged, so checkpoints are identical; [`crate::tensor_io`] writes every
//! tensor in the standard contiguous layout.

use crate::error::{Error, Result};
use std::os::raw::c_int;
use tch::{Device, Kind, Tensor};

extern "C" {
    fn oodnc_autocast_is_enabled(device_type: c_int) -> c_int;
    fn oodnc_autocast_set_enabled(device_type: c_int, enabled: c_int);
    fn oodnc_autocast_get_dtype(device_type: c_int) -> c_int;
    fn oodnc_autocast_set_dtype(device_type: c_int, dtype: c_int);
    fn oodnc_autocast_increment_nesting() -> c_int;
    fn oodnc_autocast_decrement_nesting() -> c_int;
    fn oodnc_autocast_clear_cache();
}

/// Numeric precision of the training forward/backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 autocast on CUDA (when `gpu_fast_path` is on), f32 elsewhere.
    #[default]
    Auto,
    /// bf16 autocast on every device (on a CPU it only pays off with bf16
    /// matrix units, e.g. AMX; it is mainly there to test the path).
    Bf16,
    /// Plain f32.
    Fp32,
}

impl Precision {
    /// The autocast dtype on `device`, or `None` for plain f32.
    pub fn autocast_kind(self, device: Device, gpu_fast_path: bool) -> Option<Kind> {
        match self {
            Precision::Bf16 => Some(Kind::BFloat16),
            Precision::Auto if device.is_cuda() && gpu_fast_path => Some(Kind::BFloat16),
            _ => None,
        }
    }
}

/// c10::DeviceType of a tch device (only the device types autocast supports here).
fn device_type(device: Device) -> Result<c_int> {
    match device {
        Device::Cpu => Ok(0),
        Device::Cuda(_) => Ok(1),
        other => Err(Error::param("autocast device", format!("{other:?} is not supported (CPU and CUDA are)"))),
    }
}

/// c10::ScalarType of the reduced precisions autocast can use.
fn scalar_type(kind: Kind) -> Result<c_int> {
    match kind {
        Kind::BFloat16 => Ok(15),
        Kind::Half => Ok(5),
        other => Err(Error::param("autocast dtype", format!("{other:?} (use BFloat16 or Half)"))),
    }
}

/// Whether autocast is on for `device`'s type right now.
pub fn is_enabled(device: Device) -> Result<bool> {
    let dt = device_type(device)?;
    Ok(unsafe { oodnc_autocast_is_enabled(dt) } != 0)
}

/// Enables autocast to `kind` on `device`'s type until dropped, then restores
/// the previous state (nesting like `torch.autocast`; the cast cache is cleared
/// when the outermost region ends).
pub struct AutocastGuard {
    device_type: c_int,
    prev_enabled: c_int,
    prev_dtype: c_int,
}

impl AutocastGuard {
    pub fn new(device: Device, kind: Kind) -> Result<Self> {
        let device_type = device_type(device)?;
        let dtype = scalar_type(kind)?;
        // SAFETY: plain getters/setters of libtorch's thread-local autocast state.
        unsafe {
            let guard = AutocastGuard {
                device_type,
                prev_enabled: oodnc_autocast_is_enabled(device_type),
                prev_dtype: oodnc_autocast_get_dtype(device_type),
            };
            oodnc_autocast_set_dtype(device_type, dtype);
            oodnc_autocast_set_enabled(device_type, 1);
            oodnc_autocast_increment_nesting();
            Ok(guard)
        }
    }
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        // SAFETY: as in `new`.
        unsafe {
            if oodnc_autocast_decrement_nesting() == 0 {
                oodnc_autocast_clear_cache();
            }
            oodnc_autocast_set_enabled(self.device_type, self.prev_enabled);
            oodnc_autocast_set_dtype(self.device_type, self.prev_dtype);
        }
    }
}

/// Runs `f` under autocast to `kind` on `device` when `kind` is `Some`, plainly
/// otherwise. The previous autocast state is restored even when `f` fails.
pub fn autocast<T>(device: Device, kind: Option<Kind>, f: impl FnOnce() -> T) -> Result<T> {
    match kind {
        None => Ok(f()),
        Some(k) => {
            let _guard = AutocastGuard::new(device, k)?;
            Ok(f())
        }
    }
}

/// `x` (4-D, NCHW shape) with channels-last strides; other ranks unchanged.
/// Same values and shape: only the memory order differs.
pub fn channels_last(x: &Tensor) -> Tensor {
    if x.dim() != 4 {
        return x.shallow_clone();
    }
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// Whether `x` is a 4-D tensor laid out channels-last (NHWC strides).
pub fn is_channels_last(x: &Tensor) -> bool {
    if x.dim() != 4 {
        return false;
    }
    let (s, st) = (x.size(), x.stride());
    // Strides of a dense NHWC layout (size-1 dims are ignored, as PyTorch does).
    let expect = [s[1] * s[2] * s[3], 1, s[3] * s[1], s[1]];
    (0..4).all(|i| s[i] == 1 || st[i] == expect[i])
}

/// Converts every 4-D variable of `vs` (the convolution weights) to channels-last
/// in place; the variables keep their identity, so modules and optimizers built
/// on them see the new layout.
pub fn convert_channels_last(vs: &tch::nn::VarStore) {
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            if v.dim() == 4 && !is_channels_last(&v) {
                let cl = channels_last(&v);
                v.set_data(&cl);
            }
        }
    });
}
