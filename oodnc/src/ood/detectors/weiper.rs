//! WeiPer+KLD: weight perturbations of the class projections, and the
//! divergence of each sample's activation histogram from the training one.

use super::{feats, Head};
use crate::error::{Error, Result};
use crate::features::{FeatureId, FeatureSet};
use crate::ood::detector::{FitData, GridContext, ParamReader, ParamValue, Registered, Scorer};
use crate::util::SplitMix64;
use tch::{Kind, Tensor};

/// **WeiPer+KLD** (Granz, Heurich & Landgraf, NeurIPS 2024, "WeiPer: OOD
/// detection using weight perturbations of class projections", arXiv
/// 2405.17164; OpenOOD's `weiper_kldiv` postprocessor):
///
/// ```text
/// W~ = [W + P_1; ...; W + P_r],  P_k[c] = delta ||W_c|| g_kc / ||g_kc||,  g_kc ~ N(0, I_D)   ([rC, D]; b~ = b repeated r times)
/// q_h(x), q_z(x) = histograms (bins equal bins on the training range, fractions of D and rC) of the D values of h
///                  and of the rC values of z~ = W~ h + b~
/// p_h, p_z       = their means over the ID training features
/// KL_s(p, q, eps) = sum_i (p'_i - q'_i)(ln p'_i - ln q'_i),  p' = (p + eps) / sum, q' = (smooth_s(q) + eps) / sum
/// score(x) = -( KL_s1(p_h, q_h(x), eps1) + lambda1 KL_s2(p_z, q_z(x), eps2) - lambda2 mean_k max softmax(z~_k) )
/// ```
///
/// smooth_s is a moving average over s bins with replicated edges (PyTorch's
/// `Conv1d(padding="same", padding_mode="replicate")`: (s - 1) / 2 bins before,
/// the rest after); only the sample's histogram is smoothed, as OpenOOD does.
/// The training range is the minimum and maximum of the training values (each
/// space its own; the upper edge moved up by 1e-8, OpenOOD's `exact_minmax`);
/// values outside it count in the fraction's denominator only.
///
/// Defaults: OpenOOD's function defaults (bins 100, delta 2.1, r = 100, s1 = s2 =
/// 20, eps1 = 0.01, eps2 = 0.025, lambda1 = lambda2 = 1); grid lambda1 in {0.1,
/// 1, 2.5, 5} x lambda2 in {0.1, 1, 5} x s1 = s2 in {10, 20, 40} (scoring-only
/// parameters: the grid shares one fit). The perturbation is drawn once from
/// `seed` (SplitMix64, Box-Muller) and is the same at fit and at scoring:
/// OpenOOD draws a fresh one for every batch it scores. f64 throughout (a bin
/// edge must not move with the device's rounding).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weiper {
    /// Histogram bins, >= 2.
    pub bins: i64,
    /// Perturbation length relative to each class row, >= 0 (delta).
    pub delta: f64,
    /// Perturbed copies of the head, >= 1 (r).
    pub r: i64,
    /// Smoothing window of the feature histogram, in bins (1..=bins).
    pub s1: i64,
    /// Smoothing window of the perturbed-logit histogram, in bins (1..=bins).
    pub s2: i64,
    /// Floor added to the feature densities, > 0.
    pub eps1: f64,
    /// Floor added to the perturbed-logit densities, > 0.
    pub eps2: f64,
    /// Weight of the perturbed-logit divergence, >= 0.
    pub lambda1: f64,
    /// Weight of the mean perturbed MSP, >= 0.
    pub lambda2: f64,
    /// Seed of the perturbation, >= 0.
    pub seed: i64,
}

impl Default for Weiper {
    fn default() -> Self {
        Weiper { bins: 100, delta: 2.1, r: 100, s1: 20, s2: 20, eps1: 0.01, eps2: 0.025, lambda1: 1.0, lambda2: 1.0, seed: 0 }
    }
}

/// What `fit` estimates: the perturbed head, the two training ranges and the
/// two mean training histograms.
#[derive(Debug)]
pub struct FittedWeiper {
    pub params: Weiper,
    /// The fit shared by every parameter set with the same bins, delta, r and seed.
    pub core: WeiperCore,
}

/// The part of a WeiPer fit that does not depend on the scoring parameters.
#[derive(Debug)]
pub struct WeiperCore {
    /// W~ `[rC, D]` (f64): the r perturbed copies of the classifier, stacked.
    pub weight: Tensor,
    /// b~ `[rC]`.
    pub bias: Tensor,
    /// Classes C.
    pub classes: i64,
    /// The training range of the features (min, max).
    pub range_h: (f64, f64),
    /// The training range of the perturbed logits (min, max).
    pub range_z: (f64, f64),
    /// Mean training histogram of the features `[bins]` (fractions).
    pub mean_h: Tensor,
    /// Mean training histogram of the perturbed logits `[bins]`.
    pub mean_z: Tensor,
    /// Unique for the process: the key of the histograms memoised on scored sets.
    id: u64,
    key: CoreKey,
}

impl Clone for WeiperCore {
    fn clone(&self) -> Self {
        WeiperCore {
            weight: self.weight.shallow_clone(),
            bias: self.bias.shallow_clone(),
            classes: self.classes,
            range_h: self.range_h,
            range_z: self.range_z,
            mean_h: self.mean_h.shallow_clone(),
            mean_z: self.mean_z.shallow_clone(),
            id: self.id,
            key: self.key.clone(),
        }
    }
}

/// What a core is computed from.
#[derive(Debug, Clone, PartialEq)]
struct CoreKey {
    train: FeatureId,
    weight: FeatureId,
    bias: FeatureId,
    bins: i64,
    delta: u64,
    r: i64,
    seed: i64,
}

/// A scored set's histograms and mean perturbed MSP, for one core.
struct SetMemo {
    core: u64,
    set: FeatureId,
    q_h: Tensor,
    q_z: Tensor,
    msp: Tensor,
}

impl Clone for SetMemo {
    fn clone(&self) -> Self {
        SetMemo {
            core: self.core,
            set: self.set.clone(),
            q_h: self.q_h.shallow_clone(),
            q_z: self.q_z.shallow_clone(),
            msp: self.msp.shallow_clone(),
        }
    }
}

static NEXT_CORE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Rows per step: a `[ROWS, rC]` f64 block of perturbed logits is live at a time
/// (82 MB at rC = 10,000).
const ROWS: i64 = 1024;

impl Registered for Weiper {
    const NAME: &'static str = "weiper";
    const SUMMARY: &'static str =
        "KL of activation histograms under perturbed class projections + perturbed MSP (WeiPer+KLD, Granz et al. 2024)";
    type Fitted = FittedWeiper;
    fn read(p: &mut ParamReader) -> Result<Self> {
        let d = Self::default();
        Ok(Weiper {
            bins: p.int("bins", d.bins)?,
            delta: p.f64("delta", d.delta)?,
            r: p.int("r", d.r)?,
            s1: p.int("s1", d.s1)?,
            s2: p.int("s2", d.s2)?,
            eps1: p.f64("eps1", d.eps1)?,
            eps2: p.f64("eps2", d.eps2)?,
            lambda1: p.f64("lambda1", d.lambda1)?,
            lambda2: p.f64("lambda2", d.lambda2)?,
            seed: p.int("seed", d.seed)?,
        })
    }
    fn params(&self) -> Vec<(&'static str, ParamValue)> {
        vec![
            ("bins", ParamValue::Int(self.bins)),
            ("delta", ParamValue::Float(self.delta)),
            ("r", ParamValue::Int(self.r)),
            ("s1", ParamValue::Int(self.s1)),
            ("s2", ParamValue::Int(self.s2)),
            ("eps1", ParamValue::Float(self.eps1)),
            ("eps2", ParamValue::Float(self.eps2)),
            ("lambda1", ParamValue::Float(self.lambda1)),
            ("lambda2", ParamValue::Float(self.lambda2)),
            ("seed", ParamValue::Int(self.seed)),
        ]
    }
    fn check(&self) -> Result<()> {
        let bad = |k: &str, v: String, why: &str| Err(super::bad_param(Self::NAME, k, v, why));
        if !(2..=100_000).contains(&self.bins) {
            return bad("bins", self.bins.to_string(), "must be in 2..=100000");
        }
        if self.delta.is_nan() || self.delta < 0.0 {
            return bad("delta", self.delta.to_string(), "must be >= 0");
        }
        if !(1..=10_000).contains(&self.r) {
            return bad("r", self.r.to_string(), "must be in 1..=10000");
        }
        for (k, s) in [("s1", self.s1), ("s2", self.s2)] {
            if s < 1 || s > self.bins {
                return bad(k, s.to_string(), "must be in 1..=bins");
            }
        }
        for (k, e) in [("eps1", self.eps1), ("eps2", self.eps2)] {
            if e.is_nan() || e <= 0.0 {
                return bad(k, e.to_string(), "must be > 0");
            }
        }
        for (k, l) in [("lambda1", self.lambda1), ("lambda2", self.lambda2)] {
            if l.is_nan() || l < 0.0 {
                return bad(k, l.to_string(), "must be >= 0");
            }
        }
        if self.seed < 0 {
            return bad("seed", self.seed.to_string(), "must be >= 0");
        }
        Ok(())
    }
    fn grid(_: &GridContext) -> Vec<Self> {
        let mut g = Vec::new();
        for &s in &[10, 20, 40] {
            for &lambda1 in &[0.1, 1.0, 2.5, 5.0] {
                for &lambda2 in &[0.1, 1.0, 5.0] {
                    g.push(Weiper { s1: s, s2: s, lambda1, lambda2, ..Self::default() });
                }
            }
        }
        g
    }
    fn fit(&self, data: &FitData) -> Result<FittedWeiper> {
        let key = CoreKey {
            train: data.train.penultimate_id(),
            weight: FeatureId::of(data.weight),
            bias: FeatureId::of(data.bias),
            bins: self.bins,
            delta: self.delta.to_bits(),
            r: self.r,
            seed: self.seed,
        };
        if let Some(core) = data.train.memo_get::<WeiperCore>("weiper.core") {
            if core.key == key {
                return Ok(FittedWeiper { params: *self, core });
            }
        }
        let core = fit_core(self, data, key)?;
        data.train.memo_put("weiper.core", core.clone());
        Ok(FittedWeiper { params: *self, core })
    }
}

/// `r` perturbations of `[c, d]` standard normal draws from `seed` (SplitMix64,
/// Box-Muller, row-major `[r, c, d]`): the raw directions of WeiPer's
/// perturbation, before each row is scaled to length delta ||W_c||.
pub fn perturbation_draws(seed: u64, r: i64, c: i64, d: i64) -> Tensor {
    let mut g = SplitMix64::new(seed);
    let v: Vec<f64> = (0..r * c * d).map(|_| g.normal()).collect();
    Tensor::from_slice(&v).view([r, c, d])
}

fn fit_core(p: &Weiper, data: &FitData, key: CoreKey) -> Result<WeiperCore> {
    let h = Head::of(data, Weiper::NAME)?;
    let x = feats(data.train, h.d, &h.ctx)?;
    let dev = x.device();
    let (w, b) = (h.w.to_device(dev), h.b.to_device(dev));
    // W + delta ||W_c|| g / ||g||, per class row and copy.
    let g = perturbation_draws(p.seed as u64, p.r, h.c, h.d).to_device(dev);
    let unit = &g / g.norm_scalaropt_dim(2, &[2i64][..], true).clamp_min(1e-300);
    let norms = w.norm_scalaropt_dim(2, &[1i64][..], true).unsqueeze(0);
    let weight = (w.unsqueeze(0) + unit * norms * p.delta).reshape([p.r * h.c, h.d]);
    let bias = b.repeat([p.r]);
    let range_h = (x.min().double_value(&[]), x.max().double_value(&[]));
    // The perturbed logits' range: one pass over the training rows.
    let n = x.size()[0];
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for start in (0..n).step_by(ROWS as usize) {
        let z = x.narrow(0, start, ROWS.min(n - start)).matmul(&weight.tr()) + &bias;
        lo = lo.min(z.min().double_value(&[]));
        hi = hi.max(z.max().double_value(&[]));
    }
    if !(lo.is_finite() && hi.is_finite()) {
        return Err(Error::numerical(&h.ctx, "the perturbed logits are not finite (a classifier row or delta too large?)"));
    }
    let range_z = (lo, hi);
    // The mean histograms, summed block by block.
    let mut sum_h = Tensor::zeros([p.bins], (Kind::Double, dev));
    let mut sum_z = Tensor::zeros([p.bins], (Kind::Double, dev));
    for start in (0..n).step_by(ROWS as usize) {
        let xb = x.narrow(0, start, ROWS.min(n - start));
        let z = xb.matmul(&weight.tr()) + &bias;
        sum_h += histograms(&xb, range_h, p.bins).sum_dim_intlist(&[0i64][..], false, Kind::Double);
        sum_z += histograms(&z, range_z, p.bins).sum_dim_intlist(&[0i64][..], false, Kind::Double);
    }
    Ok(WeiperCore {
        weight,
        bias,
        classes: h.c,
        range_h,
        range_z,
        mean_h: sum_h / n as f64,
        mean_z: sum_z / n as f64,
        id: NEXT_CORE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        key,
    })
}

/// Each row's histogram of its values over `bins` equal bins of
/// `[lo, hi + 1e-8)` (OpenOOD's edges), as fractions of the row's length:
/// values outside the range count in the denominator only. `[B, bins]` f64.
pub fn histograms(v: &Tensor, (lo, hi): (f64, f64), bins: i64) -> Tensor {
    let (rows, len) = (v.size()[0], v.size()[1]);
    let scale = bins as f64 / (hi + 1e-8 - lo);
    if crate::numerics::cpu_kernels(v.device()) {
        // The same bins in one pass per row.
        return crate::numerics::row_histograms(v, lo, scale, bins as usize);
    }
    let idx = ((v - lo) * scale).floor_();
    // Bin `bins` collects everything outside [lo, hi + 1e-8): dropped below.
    let outside = idx.lt(0.0).logical_or(&idx.ge(bins as f64));
    let idx = idx.masked_fill(&outside, bins as f64).to_kind(Kind::Int64);
    let ones = Tensor::ones([rows, len], (Kind::Double, v.device()));
    let counts = Tensor::zeros([rows, bins + 1], (Kind::Double, v.device())).scatter_add(1, &idx, &ones);
    counts.narrow(1, 0, bins) / len as f64
}

/// The moving average over `s` bins with replicated edges, as a `[bins, bins]`
/// matrix M (smoothed = q M): output bin i averages input bins
/// clamp(i - (s - 1) / 2 + j, 0, bins - 1), j = 0..s.
pub fn smoothing_matrix(bins: i64, s: i64, device: tch::Device) -> Tensor {
    let mut m = vec![0.0f64; (bins * bins) as usize];
    let left = (s - 1) / 2;
    for i in 0..bins {
        for j in 0..s {
            let src = (i - left + j).clamp(0, bins - 1);
            m[(src * bins + i) as usize] += 1.0 / s as f64;
        }
    }
    Tensor::from_slice(&m).view([bins, bins]).to_device(device)
}

/// Symmetric KL between the training histogram `p` `[bins]` and each row of `q`
/// `[N, bins]` after smoothing `q` over `s` bins, adding `eps` to both and
/// normalising: sum_i (p'_i - q'_i)(ln p'_i - ln q'_i).
pub fn symmetric_kl(p: &Tensor, q: &Tensor, s: i64, eps: f64) -> Tensor {
    let bins = p.size()[0];
    let qs = q.matmul(&smoothing_matrix(bins, s, q.device())) + eps;
    let qs = &qs / qs.sum_dim_intlist(&[1i64][..], true, Kind::Double);
    let ps = p + eps;
    let ps = (&ps / ps.sum(Kind::Double)).unsqueeze(0);
    ((&ps - &qs) * (ps.log() - qs.log())).sum_dim_intlist(&[1i64][..], false, Kind::Double)
}

impl WeiperCore {
    /// `f`'s feature and perturbed-logit histograms and mean perturbed MSP
    /// (memoised on `f`, so that a grid of scoring parameters reads them once).
    fn set_stats(&self, f: &FeatureSet) -> Result<(Tensor, Tensor, Tensor)> {
        let set = f.penultimate_id();
        if let Some(m) = f.memo_get::<SetMemo>("weiper.set") {
            if m.core == self.id && m.set == set {
                return Ok((m.q_h, m.q_z, m.msp));
            }
        }
        let d = self.weight.size()[1];
        let x = feats(f, d, "weiper score")?;
        let w = self.weight.to_device(x.device());
        let b = self.bias.to_device(x.device());
        let (n, c) = (x.size()[0], self.classes);
        let r = w.size()[0] / c;
        let bins = self.mean_h.size()[0];
        let (mut qh, mut qz, mut msp) = (Vec::new(), Vec::new(), Vec::new());
        for start in (0..n).step_by(ROWS as usize) {
            let rows = ROWS.min(n - start);
            let xb = x.narrow(0, start, rows);
            let z = xb.matmul(&w.tr()) + &b;
            qh.push(histograms(&xb, self.range_h, bins));
            qz.push(histograms(&z, self.range_z, bins));
            // max softmax = exp(max - logsumexp), per perturbed copy; mean over the copies.
            let zk = z.view([rows, r, c]);
            let top = (zk.amax(&[2i64][..], false) - zk.logsumexp(&[2i64][..], false)).exp();
            msp.push(top.mean_dim(&[1i64][..], false, Kind::Double));
        }
        let (q_h, q_z, msp) = (Tensor::cat(&qh, 0), Tensor::cat(&qz, 0), Tensor::cat(&msp, 0));
        f.memo_put(
            "weiper.set",
            SetMemo { core: self.id, set, q_h: q_h.shallow_clone(), q_z: q_z.shallow_clone(), msp: msp.shallow_clone() },
        );
        Ok((q_h, q_z, msp))
    }
}

impl Scorer for FittedWeiper {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        let p = &self.params;
        let (q_h, q_z, msp) = self.core.set_stats(f)?;
        let dev = q_h.device();
        let kl_h = symmetric_kl(&self.core.mean_h.to_device(dev), &q_h, p.s1, p.eps1);
        let kl_z = symmetric_kl(&self.core.mean_z.to_device(dev), &q_z, p.s2, p.eps2);
        Ok(-(kl_h + kl_z * p.lambda1 - msp * p.lambda2))
    }
    fn fitted_values(&self) -> Vec<(&'static str, f64)> {
        vec![("h_min", self.core.range_h.0), ("h_max", self.core.range_h.1), ("z_min", self.core.range_z.0), ("z_max", self.core.range_z.1)]
    }
}
