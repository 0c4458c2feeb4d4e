//! GradNorm, in closed form.

use super::{feats, Head};
use crate::error::Result;
use crate::features::FeatureSet;
use crate::ood::detector::{FitData, ParamReader, ParamValue, Registered, Scorer};
use tch::{Kind, Tensor};

/// **GradNorm** (Huang, Geng & Li, NeurIPS 2021, "On the importance of gradients
/// for detecting distributional shifts in the wild"): the L1 norm of the
/// gradient, with respect to the last layer's weight W, of the KL divergence
/// between the uniform distribution and softmax(z / T). It needs no backward
/// pass: with L = -(1/C) sum_c log softmax(z / T)_c (the KL up to a constant)
/// and z = W h + b,
///
/// ```text
/// dL/dz_j    = (p_j - 1/C) / T,           p = softmax(z / T)
/// dL/dW_jk   = (p_j - 1/C) h_k / T
/// score(h)   = ||dL/dW||_1 = ||h||_1 * sum_j |p_j - 1/C| / T
/// ```
///
/// (checked against autograd on a small model in the tests). The paper's and
/// pytorch-ood's scale; OpenOOD sums -log p_c instead of averaging (targets of
/// ones), which multiplies every score by C: the same ranking. Default T = 1
/// (the paper's); no grid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradNorm {
    /// Softmax temperature, > 0.
    pub t: f64,
}

impl Default for GradNorm {
    fn default() -> Self {
        GradNorm { t: 1.0 }
    }
}

/// The head and the temperature.
#[derive(Debug)]
pub struct FittedGradNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub t: f64,
}

impl Registered for GradNorm {
    const NAME: &'static str = "gradnorm";
    const SUMMARY: &'static str = "L1 norm of the last-layer gradient of KL(uniform || softmax), closed form (Huang et al. 2021)";
    type Fitted = FittedGradNorm;
    fn read(r: &mut ParamReader) -> Result<Self> {
        Ok(GradNorm { t: r.f64("t", Self::default().t)? })
    }
    fn params(&self) -> Vec<(&'static str, ParamValue)> {
        vec![("t", ParamValue::Float(self.t))]
    }
    fn check(&self) -> Result<()> {
        if self.t <= 0.0 {
            return Err(super::bad_param(Self::NAME, "t", self.t, "must be > 0"));
        }
        Ok(())
    }
    fn fit(&self, data: &FitData) -> Result<FittedGradNorm> {
        let h = Head::of(data, Self::NAME)?;
        Ok(FittedGradNorm { weight: h.w, bias: h.b, t: self.t })
    }
}

impl Scorer for FittedGradNorm {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        let (c, d) = (self.weight.size()[0], self.weight.size()[1]);
        let x = feats(f, d, "gradnorm score")?;
        let p = ((x.matmul(&self.weight.tr()) + &self.bias) / self.t).softmax(1, Kind::Double);
        let dev = (p - 1.0 / c as f64).abs().sum_dim_intlist(&[1i64][..], false, Kind::Double);
        Ok(x.abs().sum_dim_intlist(&[1i64][..], false, Kind::Double) * dev / self.t)
    }
}
