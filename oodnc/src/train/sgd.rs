//! SGD with momentum and weight decay, PyTorch semantics, with inspectable state.
//!
//! For each parameter p with gradient g (PyTorch `torch.optim.SGD`, dampening 0):
//! ```text
//! g   <- g + wd * p                 (if weight decay applies to p)
//! buf <- g                          (first step)
//! buf <- momentum * buf + g         (later steps)
//! d   <- g + momentum * buf         (Nesterov)   or   d <- buf
//! p   <- p - lr * d
//! ```
//! The momentum buffers are plain tensors so that they can be saved and
//! restored exactly (resume), which tch's built-in optimizer does not expose.
//!
//! [`Sgd::step`] runs libtorch's fused kernel (`at::_fused_sgd_`, what
//! `torch.optim.SGD(fused=True)` runs; through the C shim `csrc/optim.cpp`):
//! one multi-tensor kernel per parameter group on CUDA instead of ~6 small
//! kernels per parameter, which on a GPU costs more in launches than the
//! arithmetic. [`Sgd::step_reference`] is the rule above written out per
//! parameter; the tests check that both agree. [`Sgd::zero_grad`] drops the
//! gradients (PyTorch's `set_to_none=True`) rather than zeroing them.

use crate::error::{Error, Result};
use std::ffi::CStr;
use std::os::raw::{c_char, c_int};
use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn oodnc_optim_last_error() -> *const c_char;
    fn oodnc_fused_sgd(
        params: *const *mut C_tensor,
        grads: *const *mut C_tensor,
        n: usize,
        bufs: *const *mut C_tensor,
        n_bufs: usize,
        weight_decay: f64,
        momentum: f64,
        lr: f64,
        nesterov: c_int,
        is_first_step: c_int,
    ) -> c_int;
    fn oodnc_grad_set_to_none(params: *const *mut C_tensor, n: usize) -> c_int;
}

/// Set once the fused kernel has failed and the per-parameter rule took over.
static FALLBACK_WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn shim_result(rc: c_int, what: &str) -> Result<()> {
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: the shim returns a pointer to its thread-local, NUL-terminated message.
    let msg = unsafe { CStr::from_ptr(oodnc_optim_last_error()) }.to_string_lossy().into_owned();
    Err(Error::Torch(tch::TchError::Torch(format!("{what}: {msg}"))))
}

/// Same sizes and the same strides wherever a size is not 1 (the strides of a
/// size-1 dimension do not change which memory holds which element).
fn same_layout(a: &Tensor, b: &Tensor) -> bool {
    let (sa, sb) = (a.size(), b.size());
    sa == sb && a.stride().iter().zip(b.stride()).zip(&sa).all(|((x, y), &n)| n == 1 || *x == y)
}

fn ptrs(ts: &[&Tensor]) -> Vec<*mut C_tensor> {
    ts.iter().map(|t| t.as_ptr() as *mut C_tensor).collect()
}

/// SGD's settings, with the original recipe's values as defaults
/// (momentum 0.9, weight decay 5e-4 on every parameter, no Nesterov).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    /// Apply weight decay to 1-D parameters (BN gamma/beta, biases) too, as the
    /// original does; `false` decays only the >1-D weights.
    pub decay_bn_and_bias: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: false, decay_bn_and_bias: true }
    }
}

/// The optimizer and its state.
pub struct Sgd {
    params: Vec<(String, Tensor)>,
    /// Whether weight decay applies, per parameter.
    decay: Vec<bool>,
    buffers: Vec<Option<Tensor>>,
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    /// Number of steps taken.
    pub steps: i64,
}

impl Sgd {
    /// `params`: trainable (name, tensor) pairs; `cfg`: see [`SgdConfig`]
    /// (`SgdConfig::default()` is the original recipe).
    pub fn new(mut params: Vec<(String, Tensor)>, cfg: SgdConfig) -> Self {
        let SgdConfig { momentum, weight_decay, nesterov, decay_bn_and_bias } = cfg;
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let decay = params.iter().map(|(_, p)| decay_bn_and_bias || p.dim() > 1).collect();
        let n = params.len();
        Sgd { params, decay, buffers: (0..n).map(|_| None).collect(), momentum, weight_decay, nesterov, steps: 0 }
    }

    /// Drops the gradients (PyTorch's `zero_grad(set_to_none=True)`): the next
    /// backward writes them afresh, no zero-fill kernels.
    pub fn zero_grad(&mut self) -> Result<()> {
        let ps: Vec<&Tensor> = self.params.iter().map(|(_, p)| p).collect();
        let raw = ptrs(&ps);
        // SAFETY: `raw` points to live tensors owned by `self.params` for the call.
        shim_result(unsafe { oodnc_grad_set_to_none(raw.as_ptr(), raw.len()) }, "zero_grad")
    }

    /// One update with learning rate `lr` through libtorch's fused SGD kernel:
    /// parameters without a gradient are skipped, the others go in at most four
    /// calls (weight decay or not, momentum buffer new or not).
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let grads: Vec<Tensor> = self.params.iter().map(|(_, p)| p.grad()).collect();
        let use_momentum = self.momentum > 0.0;
        // Taken before any buffer is created below.
        let new_buffer: Vec<bool> = self.buffers.iter().map(Option::is_none).collect();
        for decayed in [true, false] {
            for first in [true, false] {
                if first && !use_momentum {
                    continue;
                }
                let members: Vec<usize> = (0..self.params.len())
                    .filter(|&i| grads[i].defined())
                    .filter(|&i| (self.weight_decay > 0.0 && self.decay[i]) == decayed)
                    .filter(|&i| !use_momentum || new_buffer[i] == first)
                    .collect();
                if members.is_empty() {
                    continue;
                }
                if first {
                    for &i in &members {
                        // Overwritten by the kernel with the (decayed) gradient.
                        self.buffers[i] = Some(self.params[i].1.zeros_like());
                    }
                }
                for &i in &members {
                    // The kernel walks the three tensors' memory in step (it does
                    // not check this on the CPU): their strides must agree.
                    let (name, p) = &self.params[i];
                    let buf_ok = self.buffers[i].as_ref().is_none_or(|b| same_layout(b, p));
                    if !same_layout(&grads[i], p) || !buf_ok {
                        return Err(Error::shape(
                            "fused SGD step",
                            format!(
                                "{name}: gradient or momentum buffer laid out differently from the parameter (strides {:?})",
                                p.stride()
                            ),
                        ));
                    }
                }
                let ps: Vec<&Tensor> = members.iter().map(|&i| &self.params[i].1).collect();
                let gs: Vec<&Tensor> = members.iter().map(|&i| &grads[i]).collect();
                let bs: Vec<&Tensor> = if use_momentum {
                    members.iter().map(|&i| self.buffers[i].as_ref().expect("buffer set above")).collect()
                } else {
                    Vec::new()
                };
                let (rp, rg, rb) = (ptrs(&ps), ptrs(&gs), ptrs(&bs));
                let wd = if decayed { self.weight_decay } else { 0.0 };
                // SAFETY: all pointers refer to tensors alive for the whole call
                // (`self.params`, `grads`, `self.buffers`); the shim copies the handles.
                let rc = unsafe {
                    oodnc_fused_sgd(
                        rp.as_ptr(),
                        rg.as_ptr(),
                        rp.len(),
                        rb.as_ptr(),
                        rb.len(),
                        wd,
                        self.momentum,
                        lr,
                        self.nesterov as c_int,
                        (first && use_momentum) as c_int,
                    )
                };
                if let Err(e) = shim_result(rc, "fused SGD step") {
                    // The kernel checks its inputs before touching them, so nothing
                    // was updated: apply the same rule per parameter instead (and say so
                    // once), rather than stopping a long training run.
                    if !FALLBACK_WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        eprintln!("warning: {e}; using the per-parameter SGD update instead");
                    }
                    for &i in &members {
                        if first {
                            self.buffers[i] = None;
                        }
                        self.reference_update(i, &grads[i], lr);
                    }
                }
            }
        }
        self.steps += 1;
        Ok(())
    }

    /// The same update as [`step`](Self::step), written out per parameter with
    /// plain tensor operations (the rule in the module docs): the independent
    /// formulation the fused kernel is tested against.
    pub fn step_reference(&mut self, lr: f64) {
        for i in 0..self.params.len() {
            let g = self.params[i].1.grad();
            if g.defined() {
                self.reference_update(i, &g, lr);
            }
        }
        self.steps += 1;
    }

    /// The rule of the module docs for parameter `i` with gradient `g`.
    fn reference_update(&mut self, i: usize, g: &Tensor, lr: f64) {
        tch::no_grad(|| {
            let p = &mut self.params[i].1;
            let mut d = if self.weight_decay > 0.0 && self.decay[i] { g + &*p * self.weight_decay } else { g.shallow_clone() };
            if self.momentum > 0.0 {
                let buf = match self.buffers[i].take() {
                    // In the parameter's layout, like the fused path's buffers.
                    None => {
                        let mut b = p.zeros_like();
                        b.copy_(&d);
                        b
                    }
                    Some(mut b) => {
                        let _ = b.g_mul_scalar_(self.momentum).g_add_(&d);
                        b
                    }
                };
                d = if self.nesterov { d + &buf * self.momentum } else { buf.shallow_clone() };
                self.buffers[i] = Some(buf);
            }
            let _ = p.g_sub_(&(d * lr));
        });
    }

    /// State tensors for a checkpoint: `momentum_buffer.<param name>`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.buffers)
            .filter_map(|((n, _), b)| b.as_ref().map(|b| (format!("momentum_buffer.{n}"), b.shallow_clone())))
            .collect()
    }

    /// Restores buffers written by [`state`](Self::state).
    pub fn load_state(&mut self, mut tensors: std::collections::BTreeMap<String, Tensor>, steps: i64) -> Result<()> {
        for (i, (n, p)) in self.params.iter().enumerate() {
            match tensors.remove(&format!("momentum_buffer.{n}")) {
                Some(b) => {
                    if b.size() != p.size() {
                        return Err(Error::shape("optimizer state", format!("buffer of {n} is {:?}, parameter {:?}", b.size(), p.size())));
                    }
                    // In the parameter's memory layout (a channels-last weight gets a
                    // channels-last buffer): the fused kernel walks parameter, gradient
                    // and buffer memory in step, so their strides must agree.
                    let mut buf = p.zeros_like();
                    tch::no_grad(|| buf.f_copy_(&b.to_device(p.device()).to_kind(p.kind())))?;
                    self.buffers[i] = Some(buf);
                }
                None => self.buffers[i] = None,
            }
        }
        self.steps = steps;
        Ok(())
    }
}
