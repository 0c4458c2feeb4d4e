//! Temperature scaling.

use super::{log_msp, logits, Head};
use crate::error::{Error, Result};
use crate::features::FeatureSet;
use crate::ood::detector::{FitData, ParamReader, Registered, Scorer};
use tch::{Kind, Tensor};

/// **TempScale** (Guo et al., ICML 2017): log-MSP of z / T, with T minimising
/// the NLL of the ID validation split (golden-section search on log T over
/// [0.05, 20], 60 steps). No hyperparameters; fitted on ID val.
/// pytorch-ood stops after one LBFGS step, short of the NLL minimum.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TempScale;

/// The fitted temperature.
#[derive(Debug, Clone)]
pub struct FittedTempScale {
    pub temperature: f64,
    pub classes: i64,
}

impl Registered for TempScale {
    const NAME: &'static str = "tempscale";
    const SUMMARY: &'static str = "log-MSP after temperature scaling fitted on ID val (Guo et al. 2017)";
    type Fitted = FittedTempScale;
    fn read(_: &mut ParamReader) -> Result<Self> {
        Ok(TempScale)
    }
    fn fit(&self, data: &FitData) -> Result<FittedTempScale> {
        let h = Head::of(data, Self::NAME)?;
        let (c, ctx) = (h.c, h.ctx);
        let val = data.val.ok_or_else(|| Error::data(&ctx, "needs ID validation features"))?;
        let zv = logits(val, c, &ctx)?;
        let yv = val.labels.to_kind(Kind::Int64);
        let nll = |t: f64| -> f64 { (&zv / t).log_softmax(-1, Kind::Double).nll_loss(&yv).double_value(&[]) };
        let (mut a, mut bb) = ((0.05f64).ln(), (20.0f64).ln());
        let phi = (5f64.sqrt() - 1.0) / 2.0;
        for _ in 0..60 {
            let (x1, x2) = (bb - phi * (bb - a), a + phi * (bb - a));
            if nll(x1.exp()) < nll(x2.exp()) {
                bb = x2;
            } else {
                a = x1;
            }
        }
        Ok(FittedTempScale { temperature: ((a + bb) / 2.0).exp(), classes: c })
    }
}

impl Scorer for FittedTempScale {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        Ok(log_msp(&(logits(f, self.classes, "tempscale score")? / self.temperature)))
    }
    fn fitted_values(&self) -> Vec<(&'static str, f64)> {
        vec![("t_fitted", self.temperature)]
    }
}
