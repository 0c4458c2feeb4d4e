//! KL matching.

use super::{logits_in, Head, STEP_ROWS};
use crate::error::{Error, Result};
use crate::features::FeatureSet;
use crate::ood::detector::{FitData, ParamReader, Registered, Scorer};
use tch::Tensor;

/// **KLM** (Hendrycks et al., ICML 2022): -min_c KL(p || d_c), with d_c the
/// mean softmax of the ID training samples predicted as c (classes never
/// predicted have no template). No hyperparameters. f32 under
/// [`Precision::Auto`](crate::ood::Precision), f64 under `F64`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Klm;

/// The class templates.
#[derive(Debug)]
pub struct FittedKlm {
    /// log d_c of the predicted classes, `[C', C]`.
    pub log_templates: Tensor,
    pub classes: i64,
}

impl Registered for Klm {
    const NAME: &'static str = "klm";
    const SUMMARY: &'static str = "KL matching to class-conditional mean softmax (Hendrycks et al. 2022)";
    const AUTO_F32: bool = true;
    type Fitted = FittedKlm;
    fn read(_: &mut ParamReader) -> Result<Self> {
        Ok(Klm)
    }
    fn fit(&self, data: &FitData) -> Result<FittedKlm> {
        let h = Head::of(data, Self::NAME)?;
        let (c, ctx, kind) = (h.c, h.ctx, data.precision.kind());
        let z = logits_in(data.train, c, &ctx, kind)?;
        let mut sums = Tensor::zeros([c, c], (kind, z.device()));
        let mut counts = Tensor::zeros([c], (tch::Kind::Int64, z.device()));
        // STEP_ROWS rows at a time: the probabilities stay in cache.
        for zr in z.split(STEP_ROWS, 0) {
            let p = zr.softmax(-1, kind);
            let pred = p.argmax(1, false);
            counts += pred.bincount::<Tensor>(None, c);
            let _ = sums.index_add_(0, &pred, &p);
        }
        let counts = counts.to_kind(kind);
        let present = counts.gt(0.0).nonzero().squeeze_dim(1);
        if present.size()[0] == 0 {
            return Err(Error::data(&ctx, "no training predictions"));
        }
        let templates = (sums.index_select(0, &present) / counts.index_select(0, &present).unsqueeze(1)).clamp_min(1e-12);
        Ok(FittedKlm { log_templates: templates.log(), classes: c })
    }
}

impl Scorer for FittedKlm {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        let kind = self.log_templates.kind();
        let z = logits_in(f, self.classes, "klm score", kind)?;
        let log_t = self.log_templates.tr();
        let mut scores = Vec::new();
        for zr in z.split(STEP_ROWS, 0) {
            let lp = zr.log_softmax(-1, kind);
            let p = lp.exp();
            // KL(p || d_k) = sum p log p - sum p log d_k; -min_k KL = max_k (sum p log d_k) - sum p log p
            // (the same rounding: a - b is monotone in b).
            let self_term = (&p * &lp).sum_dim_intlist(&[1i64][..], false, kind);
            scores.push(p.matmul(&log_t).amax(&[1i64][..], false) - self_term);
        }
        Ok(Tensor::cat(&scores, 0))
    }
}
