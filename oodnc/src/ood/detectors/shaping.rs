//! Feature shaping composed with a logit score: ReAct, ASH, SCALE, VRA, LTS.
//!
//! Each detector here reshapes the penultimate features ([`Shaping`]) (or, LTS,
//! rescales the logits), runs them through the classifier head and scores the
//! new logits with a [`LogitScore`]: energy with T = 1 by default, as in the
//! papers. The two parts compose, as in oodeel: every detector of this file has
//! the hyperparameter `score` (0 = energy, 1 = log MSP, 2 = max-logit), e.g.
//! `DetectorSpec::new("react", &[("score", 2.0)])` is ReAct with max-logit.
//! The search grids keep the paper's score (energy).
//!
//! Precision: f32 under [`Precision::Auto`](crate::ood::Precision) (each
//! shaping is a clip, a selection or a per-row rescaling; percentiles are order
//! statistics of the f32 features, interpolated in f64 either way), f64 under `F64`.

use super::{energy_of, feats_in, log_msp, max_dim1, Head};
use crate::error::Result;
use crate::features::FeatureSet;
use crate::numerics::{check_2d, check_finite, cpu_kernels, percentile, row_top_k, RowShaping};
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

/// The `score` hyperparameter's codes.
pub const SCORE_CODES: &str = "0 = energy, 1 = log MSP, 2 = max-logit";

impl LogitScore {
    /// From the `score` hyperparameter (0 energy with T = 1, 1 log MSP, 2 max-logit).
    pub fn from_code(detector: &str, code: i64) -> Result<Self> {
        match code {
            0 => Ok(LogitScore::Energy { t: 1.0 }),
            1 => Ok(LogitScore::Msp),
            2 => Ok(LogitScore::MaxLogit),
            _ => Err(super::bad_param(detector, "score", code, &format!("is not a logit score ({SCORE_CODES})"))),
        }
    }

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
    /// SCALE: per sample, h exp(s1 / s2), s2 the sum of the k = D - round(D p / 100)
    /// largest activations (numpy's round, half to even, as OpenOOD and pytorch-ood); nothing pruned.
    Scale { p: f64 },
    /// VRA (OpenOOD's variant): clip every activation to [lo, hi].
    ClipRange { lo: f64, hi: f64 },
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
    /// Shaped copy of `h` (`[N, D]`, in the working precision: f32 or f64); `h32`
    /// is the same features in f32 (ASH selects its thresholds on them: same
    /// values, at most half the memory traffic).
    pub fn apply(&self, h: &Tensor, h32: &Tensor) -> Tensor {
        let kind = h.kind();
        if kind == Kind::Float && cpu_kernels(h.device()) {
            if let Some(shaped) = self.apply_rows(h) {
                return shaped;
            }
        }
        match *self {
            Shaping::Clip { clip } => h.clamp_max(clip),
            Shaping::Ash { p, variant } => {
                let d = h.size()[1];
                let k = ((d as f64) * (1.0 - p / 100.0)).round().max(1.0) as i64;
                let (top, _) = h32.topk(k, 1, true, false);
                let thresh = top.min_dim(1, true).0.to_kind(kind);
                let keep = h.ge_tensor(&thresh).to_kind(kind);
                let s1 = h.sum_dim_intlist(&[1i64][..], true, kind);
                let pruned = h * &keep;
                match variant {
                    AshVariant::Prune => pruned,
                    AshVariant::Binarize => {
                        // The k largest, ties to the lower index (what a stable descending sort
                        // gives), without sorting: every unit above the k-th largest value t,
                        // then the first (k - that many) units equal to t.
                        let t = top.min_dim(1, true).0;
                        let gt = h32.gt_tensor(&t);
                        let eq = h32.eq_tensor(&t);
                        let need = gt.sum_dim_intlist(&[1i64][..], true, Kind::Int64).neg() + k;
                        let rank = eq.cumsum(1, Kind::Int64);
                        let exact = gt.logical_or(&eq.logical_and(&rank.le_tensor(&need))).to_kind(kind);
                        exact * (s1 / k as f64)
                    }
                    AshVariant::Scale => {
                        let s2 = pruned.sum_dim_intlist(&[1i64][..], true, kind).clamp_min(1e-12);
                        &pruned * (s1 / s2).exp()
                    }
                }
            }
            Shaping::Scale { p } => {
                let d = h.size()[1];
                let k = scale_k(d, p);
                let (top, _) = h.topk(k, 1, true, false);
                let s1 = h.sum_dim_intlist(&[1i64][..], true, kind);
                let s2 = top.sum_dim_intlist(&[1i64][..], true, kind);
                h * (s1 / s2).exp()
            }
            Shaping::ClipRange { lo, hi } => h.clamp(lo, hi),
        }
    }
}

impl Shaping {
    /// The f32 CPU path of the per-sample shapings: one selection per row
    /// ([`row_top_k`]) instead of `topk` and the masks built from it. The same
    /// rules as [`apply`](Self::apply) (which stays the f64 reference); `None`
    /// for the shapings without a per-row selection.
    fn apply_rows(&self, h: &Tensor) -> Option<Tensor> {
        let (n, d) = (h.size()[0], h.size()[1]);
        let from = |v: Vec<f64>| Tensor::from_slice(&v).to_kind(Kind::Float).view([n, 1]);
        match *self {
            Shaping::Ash { p, variant } => {
                let k = ((d as f64) * (1.0 - p / 100.0)).round().max(1.0) as usize;
                let rows = match variant {
                    AshVariant::Prune => RowShaping::Prune,
                    AshVariant::Binarize => RowShaping::Binarize,
                    AshVariant::Scale => RowShaping::PruneScale,
                };
                let r = row_top_k(h, k, rows);
                r.shaped
            }
            Shaping::Scale { p } => {
                let r = row_top_k(h, scale_k(d, p) as usize, RowShaping::None);
                let factor: Vec<f64> = r.sum.iter().zip(&r.top_sum).map(|(s1, s2)| (s1 / s2).exp()).collect();
                Some(h * from(factor))
            }
            Shaping::Clip { .. } | Shaping::ClipRange { .. } => None,
        }
    }
}

/// SCALE's and LTS's number of top activations: D - round(D p / 100), at least 1
/// (numpy's round, half to even).
pub fn scale_k(d: i64, p: f64) -> i64 {
    (d - (d as f64 * p / 100.0).round_ties_even() as i64).max(1)
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
        let h = self.shaping.apply(&feats_in(f, d, &format!("{} score", self.name), self.weight.kind())?, &f.penultimate);
        Ok(self.score.apply(&(h.matmul(&self.weight.tr()) + &self.bias)))
    }
    fn fitted_values(&self) -> Vec<(&'static str, f64)> {
        match self.shaping {
            Shaping::Clip { clip } => vec![("clip", clip)],
            Shaping::ClipRange { lo, hi } => vec![("clip_low", lo), ("clip_high", hi)],
            Shaping::Ash { .. } | Shaping::Scale { .. } => vec![],
        }
    }
}

fn check_score(name: &str, score: i64) -> Result<()> {
    LogitScore::from_code(name, score).map(|_| ())
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
    /// The logit score of the clipped logits ([`SCORE_CODES`]; 0 = energy, the paper's).
    pub score: i64,
}

impl Default for React {
    fn default() -> Self {
        React { p: 90.0, score: 0 }
    }
}

impl Registered for React {
    const NAME: &'static str = "react";
    const SUMMARY: &'static str = "energy after clipping features at the p-th percentile (Sun et al. 2021)";
    const AUTO_F32: bool = true;
    type Fitted = FittedShaped;
    fn read(r: &mut ParamReader) -> Result<Self> {
        Ok(React { p: r.f64("p", Self::default().p)?, score: r.int("score", 0)? })
    }
    fn params(&self) -> Vec<(&'static str, ParamValue)> {
        vec![("p", ParamValue::Float(self.p)), ("score", ParamValue::Int(self.score))]
    }
    fn check(&self) -> Result<()> {
        check_p(Self::NAME, self.p)?;
        check_score(Self::NAME, self.score)
    }
    fn grid(_: &GridContext) -> Vec<Self> {
        [80.0, 85.0, 90.0, 95.0, 99.0].iter().map(|&p| React { p, score: 0 }).collect()
    }
    fn fit(&self, data: &FitData) -> Result<FittedShaped> {
        let h = Head::of_kind(data, Self::NAME, data.precision.kind())?;
        check_2d(&data.train.penultimate, Some(h.d), &h.ctx)?;
        check_finite(&data.train.penultimate, &h.ctx)?;
        let clip = percentile(&data.train.penultimate, self.p);
        Ok(FittedShaped {
            shaping: Shaping::Clip { clip },
            score: LogitScore::from_code(Self::NAME, self.score)?,
            weight: h.w,
            bias: h.b,
            name: Self::NAME,
        })
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
            /// The logit score of the shaped logits ([`SCORE_CODES`]; 0 = energy, the paper's).
            pub score: i64,
        }

        impl Default for $t {
            fn default() -> Self {
                $t { p: 90.0, score: 0 }
            }
        }

        impl Registered for $t {
            const NAME: &'static str = $name;
            const SUMMARY: &'static str = $summary;
            const AUTO_F32: bool = true;
            type Fitted = FittedShaped;
            fn read(r: &mut ParamReader) -> Result<Self> {
                Ok($t { p: r.f64("p", Self::default().p)?, score: r.int("score", 0)? })
            }
            fn params(&self) -> Vec<(&'static str, ParamValue)> {
                vec![("p", ParamValue::Float(self.p)), ("score", ParamValue::Int(self.score))]
            }
            fn check(&self) -> Result<()> {
                check_p(Self::NAME, self.p)?;
                check_score(Self::NAME, self.score)
            }
            fn grid(_: &GridContext) -> Vec<Self> {
                [60.0, 70.0, 80.0, 85.0, 90.0, 95.0].iter().map(|&p| $t { p, score: 0 }).collect()
            }
            fn fit(&self, data: &FitData) -> Result<FittedShaped> {
                let h = Head::of_kind(data, Self::NAME, data.precision.kind())?;
                Ok(FittedShaped {
                    shaping: Shaping::Ash { p: self.p, variant: $variant },
                    score: LogitScore::from_code(Self::NAME, self.score)?,
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

/// **SCALE** (Xu et al., ICLR 2024, "Scaling for training time and post-hoc
/// out-of-distribution detection enhancement"): per sample, the *whole* feature
/// is scaled by exp(s1 / s2), s1 = sum of all activations, s2 = sum of the k
/// largest (k = D - round(D p / 100)); nothing is pruned (ASH-S prunes). Then
/// energy of the head. Default p = 85 (OpenOOD's CIFAR setting); grid p in
/// {65, 70, 75, 80, 85, 90, 95} (the paper's sweep).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    /// Percentile in [0, 100).
    pub p: f64,
    /// The logit score ([`SCORE_CODES`]; 0 = energy, the paper's).
    pub score: i64,
}

impl Default for Scale {
    fn default() -> Self {
        Scale { p: 85.0, score: 0 }
    }
}

impl Registered for Scale {
    const NAME: &'static str = "scale";
    const SUMMARY: &'static str = "energy after scaling features by exp(s1/s2), no pruning (Xu et al. 2024)";
    const AUTO_F32: bool = true;
    type Fitted = FittedShaped;
    fn read(r: &mut ParamReader) -> Result<Self> {
        Ok(Scale { p: r.f64("p", Self::default().p)?, score: r.int("score", 0)? })
    }
    fn params(&self) -> Vec<(&'static str, ParamValue)> {
        vec![("p", ParamValue::Float(self.p)), ("score", ParamValue::Int(self.score))]
    }
    fn check(&self) -> Result<()> {
        check_p(Self::NAME, self.p)?;
        check_score(Self::NAME, self.score)
    }
    fn grid(_: &GridContext) -> Vec<Self> {
        [65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0].iter().map(|&p| Scale { p, score: 0 }).collect()
    }
    fn fit(&self, data: &FitData) -> Result<FittedShaped> {
        let h = Head::of_kind(data, Self::NAME, data.precision.kind())?;
        Ok(FittedShaped {
            shaping: Shaping::Scale { p: self.p },
            score: LogitScore::from_code(Self::NAME, self.score)?,
            weight: h.w,
            bias: h.b,
            name: Self::NAME,
        })
    }
}

/// **VRA**, OpenOOD's variant (`vra_postprocessor.py`; Xu et al., NeurIPS 2023,
/// "VRA: variational rectified activation for OOD detection"): every activation
/// clipped to [q_lo, q_hi], the `lo`-th and `hi`-th percentiles of all ID
/// *validation* activations (the training ones when no validation split is
/// given), then energy. Not the paper's VRA-P (which also shifts the middle
/// band). With `per_dim = 1` it is pytorch-ood's variant: per-dimension
/// quantiles of the ID *training* features. Defaults lo = 10, hi = 90; grid lo
/// in {1, 5, 10, 15} x hi in {85, 90, 95, 99} (pytorch-ood's space).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Vra {
    /// Lower percentile in [0, 100).
    pub lo: f64,
    /// Upper percentile in (lo, 100].
    pub hi: f64,
    /// Per-dimension thresholds from the training split (pytorch-ood) instead of global ones from ID val (OpenOOD).
    pub per_dim: bool,
    /// The logit score ([`SCORE_CODES`]; 0 = energy).
    pub score: i64,
}

impl Default for Vra {
    fn default() -> Self {
        Vra { lo: 10.0, hi: 90.0, per_dim: false, score: 0 }
    }
}

/// VRA's fitted thresholds (scalars, or `[D]` per dimension) and the head.
#[derive(Debug)]
pub struct FittedVra {
    /// `[1]` (OpenOOD) or `[D]` (per dimension).
    pub low: Tensor,
    pub high: Tensor,
    pub score: LogitScore,
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Registered for Vra {
    const NAME: &'static str = "vra";
    const SUMMARY: &'static str = "energy after clipping features to ID percentiles from both sides (OpenOOD's VRA)";
    const AUTO_F32: bool = true;
    type Fitted = FittedVra;
    fn read(r: &mut ParamReader) -> Result<Self> {
        let d = Self::default();
        Ok(Vra { lo: r.f64("lo", d.lo)?, hi: r.f64("hi", d.hi)?, per_dim: r.bool("per_dim", d.per_dim)?, score: r.int("score", 0)? })
    }
    fn params(&self) -> Vec<(&'static str, ParamValue)> {
        vec![
            ("lo", ParamValue::Float(self.lo)),
            ("hi", ParamValue::Float(self.hi)),
            ("per_dim", ParamValue::Bool(self.per_dim)),
            ("score", ParamValue::Int(self.score)),
        ]
    }
    fn check(&self) -> Result<()> {
        check_p(Self::NAME, self.lo)?;
        if !(self.hi > self.lo && self.hi <= 100.0) {
            return Err(super::bad_param(Self::NAME, "hi", self.hi, &format!("must be in ({}, 100]", self.lo)));
        }
        check_score(Self::NAME, self.score)
    }
    fn grid(_: &GridContext) -> Vec<Self> {
        let mut g = Vec::new();
        for lo in [1.0, 5.0, 10.0, 15.0] {
            for hi in [85.0, 90.0, 95.0, 99.0] {
                g.push(Vra { lo, hi, ..Self::default() });
            }
        }
        g
    }
    fn fit(&self, data: &FitData) -> Result<FittedVra> {
        let kind = data.precision.kind();
        let h = Head::of_kind(data, Self::NAME, kind)?;
        let score = LogitScore::from_code(Self::NAME, self.score)?;
        let (low, high) = if self.per_dim {
            let x = feats_in(data.train, h.d, &h.ctx, kind)?;
            let q = |p: f64| x.quantile_scalar(p / 100.0, Some(0), false, "linear");
            (q(self.lo), q(self.hi))
        } else {
            let src = data.val.unwrap_or(data.train);
            check_2d(&src.penultimate, Some(h.d), &h.ctx)?;
            check_finite(&src.penultimate, &h.ctx)?;
            let f = |p: f64| Tensor::from_slice(&[percentile(&src.penultimate, p)]).to_kind(kind).to_device(src.penultimate.device());
            (f(self.lo), f(self.hi))
        };
        Ok(FittedVra { low, high, score, weight: h.w, bias: h.b })
    }
}

impl Scorer for FittedVra {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        let x = feats_in(f, self.weight.size()[1], "vra score", self.weight.kind())?;
        let clipped = x.maximum(&self.low).minimum(&self.high);
        Ok(self.score.apply(&(clipped.matmul(&self.weight.tr()) + &self.bias)))
    }
    fn fitted_values(&self) -> Vec<(&'static str, f64)> {
        if self.low.numel() == 1 {
            vec![("clip_low", self.low.double_value(&[0])), ("clip_high", self.high.double_value(&[0]))]
        } else {
            vec![]
        }
    }
}

/// **LTS**, logit scaling (Djurisic et al., "Logit scaling for out-of-distribution
/// detection", arXiv 2409.01175): the logits multiplied by S = (s1 / s2)^2, s1
/// the sum of relu(h), s2 the sum of its k largest values (k = D - round(D (100 -
/// p) / 100), at least 1: the top p %), then energy. Default p = 5 (the paper's);
/// grid p in {1, 2.5, 5, 10, 20}. No fitting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lts {
    /// Percent of the largest activations in s2, in (0, 100].
    pub p: f64,
    /// The logit score ([`SCORE_CODES`]; 0 = energy, the paper's).
    pub score: i64,
}

impl Default for Lts {
    fn default() -> Self {
        Lts { p: 5.0, score: 0 }
    }
}

/// LTS's head and score.
#[derive(Debug)]
pub struct FittedLts {
    pub p: f64,
    pub score: LogitScore,
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Registered for Lts {
    const NAME: &'static str = "lts";
    const SUMMARY: &'static str = "energy of logits scaled by (sum / top-p% sum of activations)^2 (LTS, 2024)";
    const AUTO_F32: bool = true;
    type Fitted = FittedLts;
    fn read(r: &mut ParamReader) -> Result<Self> {
        Ok(Lts { p: r.f64("p", Self::default().p)?, score: r.int("score", 0)? })
    }
    fn params(&self) -> Vec<(&'static str, ParamValue)> {
        vec![("p", ParamValue::Float(self.p)), ("score", ParamValue::Int(self.score))]
    }
    fn check(&self) -> Result<()> {
        if !(self.p > 0.0 && self.p <= 100.0) {
            return Err(super::bad_param(Self::NAME, "p", self.p, "must be in (0, 100]"));
        }
        check_score(Self::NAME, self.score)
    }
    fn grid(_: &GridContext) -> Vec<Self> {
        [1.0, 2.5, 5.0, 10.0, 20.0].iter().map(|&p| Lts { p, score: 0 }).collect()
    }
    fn fit(&self, data: &FitData) -> Result<FittedLts> {
        let h = Head::of_kind(data, Self::NAME, data.precision.kind())?;
        Ok(FittedLts { p: self.p, score: LogitScore::from_code(Self::NAME, self.score)?, weight: h.w, bias: h.b })
    }
}

impl Scorer for FittedLts {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        let d = self.weight.size()[1];
        let kind = self.weight.kind();
        let x = feats_in(f, d, "lts score", kind)?;
        let k = scale_k(d, 100.0 - self.p);
        let z = x.matmul(&self.weight.tr()) + &self.bias;
        let factor = if kind == Kind::Float && cpu_kernels(x.device()) {
            // f32 on the CPU: one selection per row (see Shaping::apply_rows), relu taken
            // STEP_ROWS rows at a time (no [N, D] copy).
            let mut f: Vec<f64> = Vec::with_capacity(x.size()[0] as usize);
            for xr in x.split(super::STEP_ROWS, 0) {
                let t = row_top_k(&xr.relu(), k as usize, RowShaping::None);
                f.extend(t.sum.iter().zip(&t.top_sum).map(|(s1, s2)| (s1 / s2.max(1e-12)).powi(2)));
            }
            Tensor::from_slice(&f).to_kind(kind).view([-1, 1])
        } else {
            let r = x.relu();
            let s1 = r.sum_dim_intlist(&[1i64][..], true, kind);
            let s2 = r.topk(k, 1, true, false).0.sum_dim_intlist(&[1i64][..], true, kind).clamp_min(1e-12);
            (s1 / s2).square()
        };
        Ok(self.score.apply(&(z * factor)))
    }
}
