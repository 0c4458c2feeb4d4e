//! NECO and the original project's variant.

use super::{feats, logits, max_dim1, Head};
use crate::error::{Error, Result};
use crate::features::FeatureSet;
use crate::numerics::{check_2d, eigh_desc};
use crate::ood::detector::{FitData, GridContext, ParamReader, ParamValue, Registered, Scorer};
use tch::Tensor;

/// **NECO** (Ammar et al., ICLR 2024): ||P_d x|| / ||x||, x the standardised
/// h, P_d the top-d principal directions of the standardised ID training
/// features; optionally times the max logit (the paper's variant for some
/// architectures). Default d = 50, no max logit; grid d in
/// {10, 20, 50, 100, 200, 300, 400, 500} below D, plus d = C - 1 with and
/// without the max logit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neco {
    /// Principal dimension, 1 <= d < D.
    pub d: i64,
    /// Multiply by the max logit.
    pub maxlogit: bool,
}

impl Default for Neco {
    fn default() -> Self {
        Neco { d: 50, maxlogit: false }
    }
}

/// The standardisation and the principal directions.
#[derive(Debug)]
pub struct FittedNeco {
    pub mean: Tensor,
    /// Per-feature std `[1, D]` (1 where it is ~0).
    pub std: Tensor,
    /// Top-d principal directions `[D, d]` of the standardised features.
    pub components: Tensor,
    pub maxlogit: bool,
    pub classes: i64,
    pub dim: i64,
}

impl Registered for Neco {
    const NAME: &'static str = "neco";
    const SUMMARY: &'static str = "neural-collapse-inspired PCA norm ratio (Ammar et al. 2024)";
    type Fitted = FittedNeco;
    fn read(p: &mut ParamReader) -> Result<Self> {
        let d = Self::default();
        Ok(Neco { d: p.int("d", d.d)?, maxlogit: p.bool("maxlogit", d.maxlogit)? })
    }
    fn params(&self) -> Vec<(&'static str, ParamValue)> {
        vec![("d", ParamValue::Int(self.d)), ("maxlogit", ParamValue::Bool(self.maxlogit))]
    }
    fn check(&self) -> Result<()> {
        if self.d < 1 {
            return Err(super::bad_param(Self::NAME, "d", self.d, "must be a positive integer"));
        }
        Ok(())
    }
    fn defaults(ctx: &GridContext) -> Self {
        Neco { d: if 50 < ctx.d { 50 } else { (ctx.d / 2).max(1) }, maxlogit: false }
    }
    fn grid(ctx: &GridContext) -> Vec<Self> {
        let mut v: Vec<Neco> =
            [10, 20, 50, 100, 200, 300, 400, 500].iter().filter(|&&k| k < ctx.d).map(|&d| Neco { d, maxlogit: false }).collect();
        let cm1 = (ctx.c - 1).clamp(1, ctx.d - 1);
        v.push(Neco { d: cm1, maxlogit: false });
        v.push(Neco { d: cm1, maxlogit: true });
        v
    }
    fn fit(&self, data: &FitData) -> Result<FittedNeco> {
        let h = Head::of(data, Self::NAME)?;
        let (c, d, ctx) = (h.c, h.d, h.ctx);
        let dd = self.d;
        if dd >= d {
            return Err(Error::param("neco.d", format!("{dd} must be smaller than the feature dimension {d}")));
        }
        // Standardised features: their covariance is D^-1 Cov(h) D^-1, D = diag(std).
        check_2d(&data.train.penultimate, Some(d), &ctx)?;
        let gm = data.train.global_moments(&ctx)?;
        let mean = gm.mean.shallow_clone();
        let std = gm.cov.diagonal(0, 0, 1).clamp_min(0.0).sqrt().reshape([1, d]);
        let std = std.where_self(&std.gt(1e-12), &std.ones_like());
        let cov = &gm.cov / std.tr().matmul(&std);
        let (_, vecs) = eigh_desc(&cov);
        Ok(FittedNeco { mean, std, components: vecs.narrow(1, 0, dd), maxlogit: self.maxlogit, classes: c, dim: d })
    }
}

impl Scorer for FittedNeco {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        let sc = "neco score";
        let x = (feats(f, self.dim, sc)? - &self.mean) / &self.std;
        let num = x.matmul(&self.components).norm_scalaropt_dim(2, &[1i64][..], false);
        let den = x.norm_scalaropt_dim(2, &[1i64][..], false).clamp_min(1e-12);
        let r = num / den;
        Ok(if self.maxlogit { r * max_dim1(&logits(f, self.classes, sc)?) } else { r })
    }
}

/// The original project's NECO, for comparison (section 8 of its spec lists
/// why it differs from the paper): PCA fitted on centred h, projection of the
/// uncentred h, no standardisation: ||P_d h|| / (||h|| + 1e-8), d capped at D.
/// Default d = 100; grid d = min(C, D - 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NecoSeed {
    /// Principal dimension, >= 1.
    pub d: i64,
}

impl Default for NecoSeed {
    fn default() -> Self {
        NecoSeed { d: 100 }
    }
}

/// The principal directions of the original variant.
#[derive(Debug)]
pub struct FittedNecoSeed {
    pub components: Tensor,
    pub dim: i64,
}

impl Registered for NecoSeed {
    const NAME: &'static str = "neco_seed";
    const SUMMARY: &'static str = "the original project's NECO variant (no scaler, uncentred), for comparison";
    type Fitted = FittedNecoSeed;
    fn read(p: &mut ParamReader) -> Result<Self> {
        Ok(NecoSeed { d: p.int("d", Self::default().d)? })
    }
    fn params(&self) -> Vec<(&'static str, ParamValue)> {
        vec![("d", ParamValue::Int(self.d))]
    }
    fn check(&self) -> Result<()> {
        if self.d < 1 {
            return Err(super::bad_param(Self::NAME, "d", self.d, "must be a positive integer"));
        }
        Ok(())
    }
    fn grid(ctx: &GridContext) -> Vec<Self> {
        vec![NecoSeed { d: ctx.c.min(ctx.d - 1) }]
    }
    fn fit(&self, data: &FitData) -> Result<FittedNecoSeed> {
        let h = Head::of(data, Self::NAME)?;
        let (d, ctx) = (h.d, h.ctx);
        let dd = self.d.min(d);
        check_2d(&data.train.penultimate, Some(d), &ctx)?;
        let (_, vecs) = eigh_desc(&data.train.global_moments(&ctx)?.cov);
        Ok(FittedNecoSeed { components: vecs.narrow(1, 0, dd), dim: d })
    }
}

impl Scorer for FittedNecoSeed {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        let h = feats(f, self.dim, "neco_seed score")?;
        Ok(h.matmul(&self.components).norm_scalaropt_dim(2, &[1i64][..], false) / (h.norm_scalaropt_dim(2, &[1i64][..], false) + 1e-8))
    }
}
