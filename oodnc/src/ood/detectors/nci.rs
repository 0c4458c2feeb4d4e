//! NCI.

use super::{feats_in, Head};
use crate::error::Result;
use crate::features::FeatureSet;
use crate::numerics::{centred_rows, cpu_kernels};
use crate::ood::detector::{FitData, GridContext, ParamReader, ParamValue, Registered, Scorer};
use tch::{Kind, Tensor};

/// **NCI**, neural-collapse inspired (Liu & Qin, CVPR 2025, "Detecting
/// out-of-distribution through the lens of neural collapse"):
///
/// ```text
/// score(h) = w_c . (h - mu_G) / ||h - mu_G||_2  +  alpha ||h||_1,   c = argmax_c (W h + b)_c
/// ```
///
/// with mu_G the mean of the ID training features and w_c the (unnormalised)
/// classifier row of the predicted class. The first term is NC1 + NC3 (ID
/// features, centred, point along their class's weight), the second keeps ID
/// features away from the origin. Default alpha = 1e-4 (OpenOOD's); grid alpha
/// in {0, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.25, 0.5, 1} (pytorch-ood's space and OpenOOD's default).
/// f32 under [`Precision::Auto`](crate::ood::Precision) (the training mean
/// included: libtorch's f32 sums are pairwise), f64 under `F64`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Nci {
    /// Weight of the L1 norm, >= 0.
    pub alpha: f64,
}

impl Default for Nci {
    fn default() -> Self {
        Nci { alpha: 1e-4 }
    }
}

/// The head and the ID training mean.
#[derive(Debug)]
pub struct FittedNci {
    pub weight: Tensor,
    pub bias: Tensor,
    /// mu_G `[D]`.
    pub train_mean: Tensor,
    pub alpha: f64,
}

impl Registered for Nci {
    const NAME: &'static str = "nci";
    const SUMMARY: &'static str = "alignment of the centred feature with the predicted class weight + alpha L1 norm (Liu & Qin 2025)";
    const AUTO_F32: bool = true;
    type Fitted = FittedNci;
    fn read(r: &mut ParamReader) -> Result<Self> {
        Ok(Nci { alpha: r.f64("alpha", Self::default().alpha)? })
    }
    fn params(&self) -> Vec<(&'static str, ParamValue)> {
        vec![("alpha", ParamValue::Float(self.alpha))]
    }
    fn check(&self) -> Result<()> {
        if self.alpha < 0.0 {
            return Err(super::bad_param(Self::NAME, "alpha", self.alpha, "must be >= 0"));
        }
        Ok(())
    }
    fn grid(_: &GridContext) -> Vec<Self> {
        [0.0, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.25, 0.5, 1.0].iter().map(|&alpha| Nci { alpha }).collect()
    }
    fn fit(&self, data: &FitData) -> Result<FittedNci> {
        let kind = data.precision.kind();
        let h = Head::of_kind(data, Self::NAME, kind)?;
        // The mean only: the full moments (a D x D covariance) are not needed here.
        let mu = feats_in(data.train, h.d, &h.ctx, kind)?.mean_dim(&[0i64][..], false, kind);
        Ok(FittedNci { weight: h.w, bias: h.b, train_mean: mu, alpha: self.alpha })
    }
}

impl Scorer for FittedNci {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        let kind = self.weight.kind();
        let x = feats_in(f, self.weight.size()[1], "nci score", kind)?;
        let pred = (x.matmul(&self.weight.tr()) + &self.bias).argmax(1, false);
        if kind == Kind::Float && cpu_kernels(x.device()) {
            // One pass per row (f64 sums), no [N, D] temporaries: the centred norm, the
            // alignment with the predicted class's weight and the L1 norm.
            let r = centred_rows(&x, &self.train_mean, Some((&self.weight, &pred)));
            let s: Vec<f64> = r.dot.iter().zip(&r.dist).zip(&r.l1).map(|((dt, di), l1)| dt / di.max(1e-12) + self.alpha * l1).collect();
            return Ok(Tensor::from_slice(&s));
        }
        let centred = &x - &self.train_mean;
        let wc = self.weight.index_select(0, &pred);
        let align =
            (&centred * wc).sum_dim_intlist(&[1i64][..], false, kind) / centred.norm_scalaropt_dim(2, &[1i64][..], false).clamp_min(1e-12);
        Ok(align + x.abs().sum_dim_intlist(&[1i64][..], false, kind) * self.alpha)
    }
    fn fitted_values(&self) -> Vec<(&'static str, f64)> {
        vec![]
    }
}
