//! Detectors on the logits alone: MSP, MaxLogit, Energy, Entropy, GEN.
//!
//! Precision: MSP, MaxLogit, Energy and Entropy compute in f32 under
//! [`Precision::Auto`](crate::ood::Precision) (one softmax or log-sum-exp per
//! row of C values: the f32 rounding is ~1e-7 relative, far below the gaps
//! between samples' scores), f64 under `F64`. GEN is always f64 (see its `fit`).
//! In f32 on a CPU the four read the logits once, in place, through one fused
//! row kernel ([`crate::numerics::logit_rows`]) whose max pass also rejects
//! NaN and infinite logits, so no separate finiteness pass is made.

use super::{energy_of, log_msp, logits_in, max_dim1, Head};
use crate::error::{Error, Result};
use crate::features::FeatureSet;
use crate::numerics::{check_2d, cpu_kernels, logit_rows, RowStat};
use crate::ood::detector::{FitData, GridContext, ParamReader, ParamValue, Registered, Scorer};
use tch::{Kind, Tensor};

/// The fitted state of a logit detector: the number of classes (nothing is
/// estimated) and the working precision.
#[derive(Debug, Clone)]
pub struct FittedLogit<T> {
    pub detector: T,
    pub classes: i64,
    pub kind: Kind,
}

fn fit_logit<T: Clone>(d: &T, data: &FitData, name: &str) -> Result<FittedLogit<T>> {
    Ok(FittedLogit { detector: d.clone(), classes: Head::of(data, name)?.c, kind: data.precision.kind() })
}

impl<T> FittedLogit<T> {
    fn logits(&self, f: &FeatureSet, ctx: &str) -> Result<Tensor> {
        logits_in(f, self.classes, ctx, self.kind)
    }

    /// `stat` of each row of `f`'s logits by the fused f32 kernel
    /// ([`logit_rows`]) when this detector computes in f32 on CPU features, else
    /// `None` (the caller's libtorch path). The shape is checked, and the kernel's
    /// one read of the logits also rejects non-finite ones (no separate pass).
    fn fused(&self, f: &FeatureSet, ctx: &str, stat: RowStat) -> Result<Option<Tensor>> {
        if self.kind != Kind::Float || !cpu_kernels(f.logits.device()) {
            return Ok(None);
        }
        check_2d(&f.logits, Some(self.classes), ctx)?;
        let s = logit_rows(&f.logits, stat);
        // NaN marks a row with a NaN or an infinity (an overflow to inf from
        // finite logits is left to the caller's check of the scores).
        if bool::try_from(s.isnan().any()).unwrap_or(true) {
            return Err(Error::data(ctx, "features contain NaN or infinite values"));
        }
        Ok(Some(s))
    }
}

// ------------------------------------------------------------------ MSP

/// **MSP** (Hendrycks & Gimpel, ICLR 2017): max_c softmax(z)_c, returned as
/// its logarithm -log1p(sum_{j != max} exp(z_j - z_max)): a monotone transform
/// (identical metrics) that does not saturate at 1.0 in floating point.
/// No hyperparameters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Msp;

impl Registered for Msp {
    const NAME: &'static str = "msp";
    const SUMMARY: &'static str = "maximum softmax probability (Hendrycks & Gimpel 2017), returned as log-MSP";
    const AUTO_F32: bool = true;
    type Fitted = FittedLogit<Msp>;
    fn read(_: &mut ParamReader) -> Result<Self> {
        Ok(Msp)
    }
    fn fit(&self, data: &FitData) -> Result<Self::Fitted> {
        fit_logit(self, data, Self::NAME)
    }
}

impl Scorer for FittedLogit<Msp> {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        match self.fused(f, "msp score", RowStat::LogMsp)? {
            Some(s) => Ok(s),
            None => Ok(log_msp(&self.logits(f, "msp score")?)),
        }
    }
}

// ------------------------------------------------------------------ MaxLogit

/// **MaxLogit** (Hendrycks et al., ICML 2022): max_c z_c. No hyperparameters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MaxLogit;

impl Registered for MaxLogit {
    const NAME: &'static str = "maxlogit";
    const SUMMARY: &'static str = "maximum logit (Hendrycks et al. 2022)";
    const AUTO_F32: bool = true;
    type Fitted = FittedLogit<MaxLogit>;
    fn read(_: &mut ParamReader) -> Result<Self> {
        Ok(MaxLogit)
    }
    fn fit(&self, data: &FitData) -> Result<Self::Fitted> {
        fit_logit(self, data, Self::NAME)
    }
}

impl Scorer for FittedLogit<MaxLogit> {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        match self.fused(f, "maxlogit score", RowStat::Max)? {
            Some(s) => Ok(s),
            None => Ok(max_dim1(&self.logits(f, "maxlogit score")?)),
        }
    }
}

// ------------------------------------------------------------------ Energy

/// **Energy** (Liu et al., NeurIPS 2020): T logsumexp(z / T), the negative
/// free energy. Default T = 1 (the paper's); grid T in {0.5, 1, 2, 5}.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Energy {
    /// Temperature, > 0.
    pub t: f64,
}

impl Default for Energy {
    fn default() -> Self {
        Energy { t: 1.0 }
    }
}

impl Registered for Energy {
    const NAME: &'static str = "energy";
    const SUMMARY: &'static str = "free energy T logsumexp(z/T) (Liu et al. 2020)";
    const AUTO_F32: bool = true;
    type Fitted = FittedLogit<Energy>;
    fn read(p: &mut ParamReader) -> Result<Self> {
        Ok(Energy { t: p.f64("t", Self::default().t)? })
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
    fn grid(_: &GridContext) -> Vec<Self> {
        [0.5, 1.0, 2.0, 5.0].iter().map(|&t| Energy { t }).collect()
    }
    fn fit(&self, data: &FitData) -> Result<Self::Fitted> {
        fit_logit(self, data, Self::NAME)
    }
}

impl Scorer for FittedLogit<Energy> {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        let t = self.detector.t;
        match self.fused(f, "energy score", RowStat::LogSumExp { t })? {
            Some(s) => Ok(s),
            None => Ok(energy_of(&self.logits(f, "energy score")?, t)),
        }
    }
}

// ------------------------------------------------------------------ Entropy

/// **Entropy**: the negative predictive entropy sum_c p_c log p_c. No hyperparameters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Entropy;

impl Registered for Entropy {
    const AUTO_F32: bool = true;
    const NAME: &'static str = "entropy";
    const SUMMARY: &'static str = "negative predictive entropy";
    type Fitted = FittedLogit<Entropy>;
    fn read(_: &mut ParamReader) -> Result<Self> {
        Ok(Entropy)
    }
    fn fit(&self, data: &FitData) -> Result<Self::Fitted> {
        fit_logit(self, data, Self::NAME)
    }
}

impl Scorer for FittedLogit<Entropy> {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        // With s_j = z_j - z_max, e_j = exp(s_j) and S = sum_{j != argmax} e_j (so the
        // partition sum is 1 + S, the top class's e being exactly 1):
        //   sum_j p_j log p_j = (sum_j e_j s_j) / (1 + S) - log1p(S).
        // Exact in f32 for confident samples: log1p(S) keeps the top class's term
        // -(1 - p_max), which log_softmax rounds to 0 there; both parts are <= 0,
        // so nothing cancels. One exp per entry, no second softmax pass.
        // In f32 on a CPU: the same formula in one fused pass per row (numerics::row_entropy).
        if let Some(s) = self.fused(f, "entropy score", RowStat::Entropy)? {
            return Ok(s);
        }
        let z = self.logits(f, "entropy score")?;
        let (zmax, arg) = z.max_dim(1, true);
        let shifted = &z - &zmax;
        // The top class's e (exactly 1) zeroed in place: it is not in S, and its
        // e_j s_j is 0 anyway (s = 0 there).
        let mut e = shifted.exp();
        let _ = e.scatter_value_(1, &arg, 0.0);
        let s = e.sum_dim_intlist(&[1i64][..], false, self.kind);
        let es = (&e * &shifted).sum_dim_intlist(&[1i64][..], false, self.kind);
        Ok(es / (&s + 1.0) - s.log1p())
    }
}

// ------------------------------------------------------------------ GEN

/// **GEN** (Liu et al., CVPR 2023): -sum over the top-M probabilities of
/// p^gamma (1 - p)^gamma. Defaults gamma = 0.1, M = 100 (the paper's, capped at
/// C); grid gamma in {0.01, 0.1, 0.5} x M in {min(10, C), C}. Unlike
/// pytorch-ood, probabilities are not clamped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gen {
    /// Exponent in (0, 1].
    pub gamma: f64,
    /// Number of top probabilities, >= 1 (capped at C when fitted).
    pub m: i64,
}

impl Default for Gen {
    fn default() -> Self {
        Gen { gamma: 0.1, m: 100 }
    }
}

impl Registered for Gen {
    const NAME: &'static str = "gen";
    const SUMMARY: &'static str = "generalized entropy over the top-M probabilities (Liu et al. 2023)";
    type Fitted = FittedLogit<Gen>;
    fn read(p: &mut ParamReader) -> Result<Self> {
        let d = Self::default();
        Ok(Gen { gamma: p.f64("gamma", d.gamma)?, m: p.int("m", d.m)? })
    }
    fn params(&self) -> Vec<(&'static str, ParamValue)> {
        vec![("gamma", ParamValue::Float(self.gamma)), ("m", ParamValue::Int(self.m))]
    }
    fn check(&self) -> Result<()> {
        if !(self.gamma > 0.0 && self.gamma <= 1.0) {
            return Err(super::bad_param(Self::NAME, "gamma", self.gamma, "must be in (0, 1]"));
        }
        if self.m < 1 {
            return Err(super::bad_param(Self::NAME, "m", self.m, "must be a positive integer"));
        }
        Ok(())
    }
    fn grid(ctx: &GridContext) -> Vec<Self> {
        let mut v = Vec::new();
        for gamma in [0.01, 0.1, 0.5] {
            for m in [10.min(ctx.c), ctx.c] {
                v.push(Gen { gamma, m });
            }
        }
        v.dedup();
        v
    }
    fn fit(&self, data: &FitData) -> Result<Self::Fitted> {
        // Always f64: 1 - p of a confident sample (p within 1e-8 of 1) is 0 in f32,
        // and (1 - p)^gamma is far from 0 there.
        Ok(FittedLogit { kind: Kind::Double, ..fit_logit(self, data, Self::NAME)? })
    }
}

impl Scorer for FittedLogit<Gen> {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        let c = self.classes;
        let (g, m) = (self.detector.gamma, self.detector.m.min(c));
        let p = self.logits(f, "gen score")?.softmax(-1, self.kind);
        // All classes: no need to select (the sum is order-free).
        let top = if m >= c { p } else { p.topk(m, 1, true, true).0 };
        let one_minus: Tensor = 1.0 - &top;
        Ok(-(top.pow_tensor_scalar(g) * one_minus.pow_tensor_scalar(g)).sum_dim_intlist(&[1i64][..], false, self.kind))
    }
}
