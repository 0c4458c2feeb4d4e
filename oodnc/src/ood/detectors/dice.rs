//! DICE.

use super::{energy_of, feats, Head};
use crate::error::Result;
use crate::features::FeatureSet;
use crate::numerics::{check_2d, percentile};
use crate::ood::detector::{FitData, GridContext, ParamReader, ParamValue, Registered, Scorer};
use tch::{Kind, Tensor};

/// **DICE** (Sun & Li, ECCV 2022): energy of the head with W masked to its
/// top (100 - p) % contributions W_cd * mean_train(h_d). Default p = 90; grid
/// p in {10, 30, 50, 70, 90}.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dice {
    /// Sparsity percentile in [0, 100).
    pub p: f64,
}

impl Default for Dice {
    fn default() -> Self {
        Dice { p: 90.0 }
    }
}

/// The sparsified head.
#[derive(Debug)]
pub struct FittedDice {
    /// W with the pruned contributions zeroed, `[C, D]`.
    pub masked_weight: Tensor,
    pub bias: Tensor,
    pub dim: i64,
}

impl Registered for Dice {
    const NAME: &'static str = "dice";
    const SUMMARY: &'static str = "energy with sparsified class weights (Sun & Li 2022)";
    type Fitted = FittedDice;
    fn read(r: &mut ParamReader) -> Result<Self> {
        Ok(Dice { p: r.f64("p", Self::default().p)? })
    }
    fn params(&self) -> Vec<(&'static str, ParamValue)> {
        vec![("p", ParamValue::Float(self.p))]
    }
    fn check(&self) -> Result<()> {
        if !(0.0..100.0).contains(&self.p) {
            return Err(super::bad_param(Self::NAME, "p", self.p, "must be in [0, 100)"));
        }
        Ok(())
    }
    fn grid(_: &GridContext) -> Vec<Self> {
        [10.0, 30.0, 50.0, 70.0, 90.0].iter().map(|&p| Dice { p }).collect()
    }
    fn fit(&self, data: &FitData) -> Result<FittedDice> {
        let h = Head::of(data, Self::NAME)?;
        let (w, d, ctx) = (h.w, h.d, h.ctx);
        check_2d(&data.train.penultimate, Some(d), &ctx)?;
        let mean_h = data.train.global_mean(&ctx)?.reshape([d]);
        let contrib = &w * mean_h.unsqueeze(0);
        let thresh = percentile(&contrib, self.p);
        let wm = &w * contrib.gt(thresh).to_kind(Kind::Double);
        Ok(FittedDice { masked_weight: wm, bias: h.b, dim: d })
    }
}

impl Scorer for FittedDice {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        Ok(energy_of(&(feats(f, self.dim, "dice score")?.matmul(&self.masked_weight.tr()) + &self.bias), 1.0))
    }
}
