//! fDBD.

use super::{feats_in, logits_in, Head};
use crate::error::Result;
use crate::features::FeatureSet;
use crate::numerics::{centred_rows, cpu_kernels};
use crate::ood::detector::{FitData, ParamReader, Registered, Scorer};
use tch::{Kind, Tensor};

/// **fDBD** (Liu & Qin, ICML 2024), feature distance to decision boundaries:
/// the mean over j != c of |(w_c - w_j) h + b_c - b_j| / ||w_c - w_j||,
/// divided by ||h - mean_train(h)||, c the predicted class. No hyperparameters.
/// f32 under [`Precision::Auto`](crate::ood::Precision) (the training mean
/// included: libtorch's f32 sums are pairwise; the logits are the feature set's
/// own, the network's W h + b), f64 under `F64` (the head applied to the f64
/// features).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Fdbd;

/// The head, the training mean and the table of ||w_c - w_j||.
#[derive(Debug)]
pub struct FittedFdbd {
    pub weight: Tensor,
    pub bias: Tensor,
    pub train_mean: Tensor,
    /// `[C, C]`.
    pub weight_distances: Tensor,
}

impl Registered for Fdbd {
    const NAME: &'static str = "fdbd";
    const SUMMARY: &'static str = "feature distance to decision boundaries (Liu & Qin 2024)";
    const AUTO_F32: bool = true;
    type Fitted = FittedFdbd;
    fn read(_: &mut ParamReader) -> Result<Self> {
        Ok(Fdbd)
    }
    fn fit(&self, data: &FitData) -> Result<FittedFdbd> {
        let kind = data.precision.kind();
        let h = Head::of_kind(data, Self::NAME, kind)?;
        // The mean only: the full moments (a D x D covariance) are not needed here.
        let mu = feats_in(data.train, h.d, &h.ctx, kind)?.mean_dim(&[0i64][..], false, kind);
        let w = h.w;
        // ||w_c - w_j||^2 = |w_c|^2 + |w_j|^2 - 2 w_c.w_j, for all pairs once.
        let wn = w.square().sum_dim_intlist(&[1i64][..], false, kind);
        let dist_w = (wn.unsqueeze(1) + wn.unsqueeze(0) - w.matmul(&w.tr()) * 2.0).clamp_min(1e-12).sqrt();
        Ok(FittedFdbd { weight: w, bias: h.b, train_mean: mu, weight_distances: dist_w })
    }
}

impl Scorer for FittedFdbd {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        let (c, d) = (self.weight.size()[0], self.weight.size()[1]);
        let kind = self.weight.kind();
        let x = feats_in(f, d, "fdbd score", kind)?;
        // In f32 the network's own logits (W h + b of the same checkpoint: no product to redo);
        // in f64 the head on the f64 features, exact.
        let z = if kind == Kind::Float { logits_in(f, c, "fdbd score", kind)? } else { x.matmul(&self.weight.tr()) + &self.bias };
        let pred = z.argmax(1, false);
        let zc = z.gather(1, &pred.unsqueeze(1), false);
        // ||w_c - w_j|| for the predicted c: a row of the [C, C] table.
        // The j = c term is exactly 0 (z_c - z_c = 0 over a distance clamped above 0):
        // summing over every j is the sum over j != c, with no mask.
        let num = (&zc - &z).abs() / self.weight_distances.index_select(0, &pred);
        let mean = num.sum_dim_intlist(&[1i64][..], false, kind) / (c - 1).max(1) as f64;
        let dist = if kind == Kind::Float && cpu_kernels(x.device()) {
            // One pass per row (f64 sums), no [N, D] temporary.
            Tensor::from_slice(&centred_rows(&x, &self.train_mean, None).dist).to_kind(kind)
        } else {
            (x - &self.train_mean).norm_scalaropt_dim(2, &[1i64][..], false)
        };
        Ok(mean / dist.clamp_min(1e-12))
    }
}
