//! fDBD.

use super::{feats, Head};
use crate::error::Result;
use crate::features::FeatureSet;
use crate::numerics::check_2d;
use crate::ood::detector::{FitData, ParamReader, Registered, Scorer};
use tch::{Kind, Tensor};

/// **fDBD** (Liu & Qin, ICML 2024), feature distance to decision boundaries:
/// the mean over j != c of |(w_c - w_j) h + b_c - b_j| / ||w_c - w_j||,
/// divided by ||h - mean_train(h)||, c the predicted class. No hyperparameters.
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
    type Fitted = FittedFdbd;
    fn read(_: &mut ParamReader) -> Result<Self> {
        Ok(Fdbd)
    }
    fn fit(&self, data: &FitData) -> Result<FittedFdbd> {
        let h = Head::of(data, Self::NAME)?;
        check_2d(&data.train.penultimate, Some(h.d), &h.ctx)?;
        // The mean only: the full moments (a D x D covariance) are not needed here.
        let mu = data.train.penultimate_f64(&h.ctx)?.mean_dim(&[0i64][..], false, tch::Kind::Double);
        let w = h.w;
        // ||w_c - w_j||^2 = |w_c|^2 + |w_j|^2 - 2 w_c.w_j, for all pairs once.
        let wn = w.square().sum_dim_intlist(&[1i64][..], false, Kind::Double);
        let dist_w = (wn.unsqueeze(1) + wn.unsqueeze(0) - w.matmul(&w.tr()) * 2.0).clamp_min(1e-12).sqrt();
        Ok(FittedFdbd { weight: w, bias: h.b, train_mean: mu, weight_distances: dist_w })
    }
}

impl Scorer for FittedFdbd {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        let (c, d) = (self.weight.size()[0], self.weight.size()[1]);
        let x = feats(f, d, "fdbd score")?;
        let z = x.matmul(&self.weight.tr()) + &self.bias;
        let pred = z.argmax(1, false);
        let zc = z.gather(1, &pred.unsqueeze(1), false);
        // ||w_c - w_j|| for the predicted c: a row of the [C, C] table.
        let num = (&zc - &z).abs() / self.weight_distances.index_select(0, &pred);
        let mask = Tensor::ones_like(&num).scatter_value(1, &pred.unsqueeze(1), 0.0);
        let mean = (num * &mask).sum_dim_intlist(&[1i64][..], false, Kind::Double) / (c - 1).max(1) as f64;
        Ok(mean / (x - &self.train_mean).norm_scalaropt_dim(2, &[1i64][..], false).clamp_min(1e-12))
    }
}
