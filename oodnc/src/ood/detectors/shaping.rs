//! Feature shaping composed with a logit score: ReAct and ASH.
//!
//! Each detector here reshapes the penultimate features ([`Shaping`]), runs
//! them through the classifier head and scores the new logits with a
//! [`LogitScore`] (energy with T = 1, as in the papers). The two parts compose:
//! set [`FittedShaped::score`] to score the shaped logits another way.

use super::{energy_of, feats, log_msp, max_dim1, Head};
use crate::error::Result;
use crate::features::FeatureSet;
use crate::numerics::{check_2d, percentile};
use crate::ood::detector::{FitData, GridContext, ParamReader, ParamValue, Registered, Scorer};
use tch::{Kind, Tensor};

/// What is computed from the (shaped) logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LogitScore {
    /// T logsumexp(z / T).
    Energy { t: f64 },
    /// log max-softmax.
    Msp,
    /// max_c z_c.
    MaxLogit,
}

impl LogitScore {
    /// The score of each row of `z`.
    pub fn apply(&self, z: &Tensor) -> Tensor {
        match *self {
            LogitScore::Energy { t } => energy_of(z, t),
            LogitScore::Msp => log_msp(z),
            LogitScore::MaxLogit => max_dim1(z),
        }
    }
}

/// How features are reshaped before the head (fitted values included).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shaping {
    /// ReAct: min(h, clip).
    Clip { clip: f64 },
    /// ASH: per sample, keep the activations >= the k-th largest (k = round(D (1 - p/100)), >= 1).
    Ash { p: f64, variant: AshVariant },
}

/// What ASH does with the kept activations (s1 / s2: the sums before / after pruning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AshVariant {
    /// Prune the rest.
    Prune,
    /// Exactly the k largest activations (ties broken by the lower index) are set
    /// to s1 / k, the rest to 0: the paper's code (`scatter` of `topk` indices).
    /// Until oodnc 0.1's fix (issue #15) every activation >= the k-th largest was
    /// kept at s1 / (number kept), which differs when ties at the threshold (e.g.
    /// zeros, for a sample with fewer than k non-zero activations) make more than
    /// k units.
    Binarize,
    /// Scale the kept ones by exp(s1 / s2).
    Scale,
}

impl Shaping {
    /// Shaped copy of `h` (f64 `[N, D]`); `h32` is the same features in f32
    /// (ASH selects its thresholds on them: same values, half the memory traffic).
    pub fn apply(&self, h: &Tensor, h32: &Tensor) -> Tensor {
        match *self {
            Shaping::Clip { clip } => h.clamp_max(clip),
            Shaping::Ash { p, variant } => {
                let d = h.size()[1];
                let k = ((d as f64) * (1.0 - p / 100.0)).round().max(1.0) as i64;
                let (top, _) = h32.topk(k, 1, true, false);
                let thresh = top.min_dim(1, true).0.to_kind(Kind::Double);
                let keep = h.ge_tensor(&thresh).to_kind(Kind::Double);
                let s1 = h.sum_dim_intlist(&[1i64][..], true, Kind::Double);
                let pruned = h * &keep;
                match variant {
                    AshVariant::Prune => pruned,
                    AshVariant::Binarize => {
                        // The k largest, ties to the lower index (a stable descending sort).
                        let (_, order) = h32.sort_stable(true, 1, true);
                        let top_k = order.narrow(1, 0, k);
                        let exact = h.zeros_like().scatter_value(1, &top_k, 1.0);
                        exact * (s1 / k as f64)
                    }
                    AshVariant::Scale => {
                        let s2 = pruned.sum_dim_intlist(&[1i64][..], true, Kind::Double).clamp_min(1e-12);
                        &pruned * (s1 / s2).exp()
                    }
                }
            }
        }
    }
}

/// A shaping, the head, and the score of the shaped logits.
#[derive(Debug)]
pub struct FittedShaped {
    pub shaping: Shaping,
    pub score: LogitScore,
    pub weight: Tensor,
    pub bias: Tensor,
    /// Name for error messages.
    pub name: &'static str,
}

impl Scorer for FittedShaped {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        let d = self.weight.size()[1];
        let h = self.shaping.apply(&feats(f, d, &format!("{} score", self.name))?, &f.penultimate);
        Ok(self.score.apply(&(h.matmul(&self.weight.tr()) + &self.bias)))
    }
    fn fitted_values(&self) -> Vec<(&'static str, f64)> {
        match self.shaping {
            Shaping::Clip { clip } => vec![("clip", clip)],
            Shaping::Ash { .. } => vec![],
        }
    }
}

fn check_p(name: &str, p: f64) -> Result<()> {
    if !(0.0..100.0).contains(&p) {
        return Err(super::bad_param(name, "p", p, "must be in [0, 100)"));
    }
    Ok(())
}

/// **ReAct** (Sun et al., NeurIPS 2021): energy of W min(h, c) + b, c the p-th
/// percentile of all ID training activations. Default p = 90 (the paper's);
/// grid p in {80, 85, 90, 95, 99}.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct React {
    /// Percentile in [0, 100).
    pub p: f64,
}

impl Default for React {
    fn default() -> Self {
        React { p: 90.0 }
    }
}

impl Registered for React {
    const NAME: &'static str = "react";
    const SUMMARY: &'static str = "energy after clipping features at the p-th percentile (Sun et al. 2021)";
    type Fitted = FittedShaped;
    fn read(r: &mut ParamReader) -> Result<Self> {
        Ok(React { p: r.f64("p", Self::default().p)? })
    }
    fn params(&self) -> Vec<(&'static str, ParamValue)> {
        vec![("p", ParamValue::Float(self.p))]
    }
    fn check(&self) -> Result<()> {
        check_p(Self::NAME, self.p)
    }
    fn grid(_: &GridContext) -> Vec<Self> {
        [80.0, 85.0, 90.0, 95.0, 99.0].iter().map(|&p| React { p }).collect()
    }
    fn fit(&self, data: &FitData) -> Result<FittedShaped> {
        let h = Head::of(data, Self::NAME)?;
        check_2d(&data.train.penultimate, Some(h.d), &h.ctx)?;
        let _ = data.train.penultimate_f64(&h.ctx)?; // the finiteness check
        let clip = percentile(&data.train.penultimate, self.p);
        Ok(FittedShaped { shaping: Shaping::Clip { clip }, score: LogitScore::Energy { t: 1.0 }, weight: h.w, bias: h.b, name: Self::NAME })
    }
}

macro_rules! ash {
    ($t:ident, $name:literal, $variant:expr, $summary:literal, $doc:literal) => {
        #[doc = $doc]
        ///
        /// ASH (Djurisic et al., ICLR 2023): per sample, keep the activations
        /// above the sample's p-th percentile, then energy of the head. Default
        /// p = 90; grid p in {60, 70, 80, 85, 90, 95}.
        #[derive(Debug, Clone, Copy, PartialEq)]
        pub struct $t {
            /// Percentile in [0, 100).
            pub p: f64,
        }

        impl Default for $t {
            fn default() -> Self {
                $t { p: 90.0 }
            }
        }

        impl Registered for $t {
            const NAME: &'static str = $name;
            const SUMMARY: &'static str = $summary;
            type Fitted = FittedShaped;
            fn read(r: &mut ParamReader) -> Result<Self> {
                Ok($t { p: r.f64("p", Self::default().p)? })
            }
            fn params(&self) -> Vec<(&'static str, ParamValue)> {
                vec![("p", ParamValue::Float(self.p))]
            }
            fn check(&self) -> Result<()> {
                check_p(Self::NAME, self.p)
            }
            fn grid(_: &GridContext) -> Vec<Self> {
                [60.0, 70.0, 80.0, 85.0, 90.0, 95.0].iter().map(|&p| $t { p }).collect()
            }
            fn fit(&self, data: &FitData) -> Result<FittedShaped> {
                let h = Head::of(data, Self::NAME)?;
                Ok(FittedShaped {
                    shaping: Shaping::Ash { p: self.p, variant: $variant },
                    score: LogitScore::Energy { t: 1.0 },
                    weight: h.w,
                    bias: h.b,
                    name: Self::NAME,
                })
            }
        }
    };
}

ash!(
    AshP,
    "ash_p",
    AshVariant::Prune,
    "activation shaping, prune (Djurisic et al. 2023)",
    "**ASH-P**: prune the activations below the threshold."
);
ash!(
    AshB,
    "ash_b",
    AshVariant::Binarize,
    "activation shaping, binarise (Djurisic et al. 2023)",
    "**ASH-B**: set the kept activations to s1 / (number kept)."
);
ash!(
    AshS,
    "ash_s",
    AshVariant::Scale,
    "activation shaping, scale (Djurisic et al. 2023)",
    "**ASH-S**: scale the kept activations by exp(s1 / s2)."
);
