//! KL matching.

use super::{logits_in, Head};
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
        let p = logits_in(data.train, c, &ctx, kind)?.softmax(-1, kind);
        let pred = p.argmax(1, false);
        let counts = pred.bincount::<Tensor>(None, c).to_kind(kind);
        let sums = Tensor::zeros([c, c], (kind, p.device())).index_add(0, &pred, &p);
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
        let lp = logits_in(f, self.classes, "klm score", kind)?.log_softmax(-1, kind);
        let p = lp.exp();
        // KL(p || d_k) = sum p log p - sum p log d_k
        let self_term = (&p * &lp).sum_dim_intlist(&[1i64][..], true, kind);
        let kl = self_term - p.matmul(&self.log_templates.tr());
        Ok(-kl.min_dim(1, false).0)
    }
}
