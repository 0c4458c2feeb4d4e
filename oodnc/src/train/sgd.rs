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

use crate::error::{Error, Result};
use tch::Tensor;

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
    /// `params`: trainable (name, tensor) pairs. With `decay_bn_and_bias` false,
    /// 1-D parameters (BN gamma/beta and biases) get no weight decay.
    pub fn new(mut params: Vec<(String, Tensor)>, momentum: f64, weight_decay: f64, nesterov: bool, decay_bn_and_bias: bool) -> Self {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let decay = params.iter().map(|(_, p)| decay_bn_and_bias || p.dim() > 1).collect();
        let n = params.len();
        Sgd {
            params,
            decay,
            buffers: (0..n).map(|_| None).collect(),
            momentum,
            weight_decay,
            nesterov,
            steps: 0,
        }
    }

    /// Clears gradients.
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// One update with learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        tch::no_grad(|| {
            for (i, (_, p)) in self.params.iter_mut().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut d = if self.weight_decay > 0.0 && self.decay[i] {
                    &g + &*p * self.weight_decay
                } else {
                    g.shallow_clone()
                };
                if self.momentum > 0.0 {
                    let buf = match self.buffers[i].take() {
                        None => d.detach().copy(),
                        Some(mut b) => {
                            let _ = b.g_mul_scalar_(self.momentum).g_add_(&d);
                            b
                        }
                    };
                    d = if self.nesterov { d + &buf * self.momentum } else { buf.shallow_clone() };
                    self.buffers[i] = Some(buf);
                }
                let _ = p.g_sub_(&(d * lr));
            }
        });
        self.steps += 1;
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
                    self.buffers[i] = Some(b.to_device(p.device()).to_kind(p.kind()));
                }
                None => self.buffers[i] = None,
            }
        }
        self.steps = steps;
        Ok(())
    }
}
