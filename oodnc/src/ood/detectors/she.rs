//! SHE.

use super::{feats, logits, Head};
use crate::error::Result;
use crate::features::FeatureSet;
use crate::numerics::{check_labels, class_means};
use crate::ood::detector::{FitData, ParamReader, Registered, Scorer};
use tch::{Kind, Tensor};

/// **SHE** (Zhang et al., ICLR 2023), simplified Hopfield energy:
/// <h, pattern of the predicted class>, the patterns being the mean feature of
/// the correctly classified ID training samples of each class (a class with
/// none, e.g. at initialisation, falls back to the mean of all its samples).
/// No hyperparameters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct She;

/// The class patterns.
#[derive(Debug)]
pub struct FittedShe {
    /// `[C, D]`.
    pub patterns: Tensor,
    pub classes: i64,
    pub dim: i64,
}

impl Registered for She {
    const NAME: &'static str = "she";
    const SUMMARY: &'static str = "simplified Hopfield energy with class patterns (Zhang et al. 2023)";
    type Fitted = FittedShe;
    fn read(_: &mut ParamReader) -> Result<Self> {
        Ok(She)
    }
    fn fit(&self, data: &FitData) -> Result<FittedShe> {
        let head = Head::of(data, Self::NAME)?;
        let (c, d, ctx) = (head.c, head.d, head.ctx);
        let train = data.train;
        let h = feats(train, d, &ctx)?;
        let y = check_labels(&train.labels, h.size()[0], c, &ctx)?;
        // Misclassified samples go to an extra row C that is then dropped: one
        // pass over the features, no masked copy of them.
        let ok = logits(train, c, &ctx)?.argmax(1, false).eq_tensor(&y);
        let bucket = y.where_self(&ok, &Tensor::full([1], c, (Kind::Int64, y.device())));
        let counts = bucket.bincount::<Tensor>(None, c + 1).narrow(0, 0, c).to_kind(Kind::Double);
        let sums = Tensor::zeros([c + 1, d], (Kind::Double, h.device())).index_add(0, &bucket, &h).narrow(0, 0, c);
        let has = counts.gt(0.0);
        let mut patterns = sums / counts.clamp_min(1.0).unsqueeze(1);
        if !bool::try_from(has.all()).unwrap_or(false) {
            // Only the class means are needed (not the covariance of class_moments).
            let (all_means, _) = class_means(&h, &y, c, &ctx)?;
            patterns = patterns.where_self(&has.unsqueeze(1), &all_means);
        }
        Ok(FittedShe { patterns, classes: c, dim: d })
    }
}

impl Scorer for FittedShe {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        let sc = "she score";
        let x = feats(f, self.dim, sc)?;
        let pred = logits(f, self.classes, sc)?.argmax(1, false);
        // <x, pattern_pred> as one [N, C] product and a gather: no [N, D] temporaries.
        Ok(x.matmul(&self.patterns.tr()).gather(1, &pred.unsqueeze(1), false).squeeze_dim(1))
    }
}
