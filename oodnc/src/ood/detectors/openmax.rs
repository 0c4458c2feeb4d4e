//! OpenMax and its Weibull tail model.

use super::{logits, Head};
use crate::error::{Error, Result};
use crate::features::FeatureSet;
use crate::numerics::check_labels;
use crate::ood::detector::{FitData, GridContext, ParamReader, ParamValue, Registered, Scorer};
use tch::{Kind, Tensor};

/// **OpenMax** (Bendale & Boult, CVPR 2016), on the logits z.
///
/// Fit, per class c: the mean activation vector mu_c (the mean logits of the ID
/// training samples of c that the network classifies correctly, as the paper and
/// OpenOOD; all of them with `correct = 0`, as pytorch-ood, and for a class without a
/// correct prediction), the distance of each of those samples to mu_c,
/// d_c(z) = w ||z - mu_c|| + (1 - w) (1 - cos(z, mu_c)), and a Weibull fitted by
/// maximum likelihood to the `tail` largest distances, translated as libMR does
/// (x = d + 10000 - min of the tail): W_c(d) = 1 - exp(-(x / lambda_c)^k_c).
///
/// Score: the top `alpha` classes r_1..r_alpha of z get
/// s_{r_i} = W_{r_i}(d_{r_i}(z)) (alpha + 1 - i) / alpha (every other class s = 0); the revised activations are
/// z'_c = z_c (1 - s_c) and, for the unknown class, z'_0 = sum_c z_c s_c (both capped at
/// 709, as pytorch-ood, so that exp stays finite); the score is -softmax(z')_0, minus the
/// probability of "unknown" (higher = more in-distribution).
///
/// Defaults: tail 20 (the paper's and OpenOOD's), alpha 10 (the paper's, pytorch-ood's;
/// at most C), w = 1 (Euclidean, pytorch-ood's; the paper's "eucos" is d/200 + cosine).
/// Grid: tail in {10, 20, 50} x alpha in {1, 3, 10} (those <= C) x w in {0.5, 1}.
/// f64 throughout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenMax {
    /// Number of largest distances per class the Weibull is fitted to, >= 2.
    pub tail: i64,
    /// Number of top classes whose activation is revised, >= 1 (at most C is used).
    pub alpha: i64,
    /// Weight of the Euclidean distance in [0, 1]; the cosine distance gets 1 - w.
    pub w: f64,
    /// Class means and tails from the correctly classified samples only (the paper).
    pub correct: bool,
}

impl Default for OpenMax {
    fn default() -> Self {
        OpenMax { tail: 20, alpha: 10, w: 1.0, correct: true }
    }
}

/// libMR's translation of the tail before the fit ("it only makes small numerical differences").
pub const TRANSLATION: f64 = 10_000.0;

/// A Weibull fitted to the upper tail of a sample of distances (libMR's `FitHigh`
/// with location 0), by maximum likelihood.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeibullTail {
    /// Smallest distance of the tail (the translation subtracts it).
    pub min: f64,
    /// Shape k (`None` when every distance of the tail is the same: a step at it).
    pub shape: Option<f64>,
    /// Scale lambda (the translated common value when `shape` is `None`).
    pub scale: f64,
}

impl WeibullTail {
    /// Fits the `tail` largest of `dists` (all of them when fewer). The maximum-likelihood
    /// shape k solves sum x^k ln x / sum x^k - 1/k - mean ln x = 0 (increasing in k), found
    /// by bisection on x / max x (the equation does not depend on the scale), and then
    /// lambda = (mean x^k)^(1/k).
    pub fn fit_high(dists: &[f64], tail: usize, ctx: &str) -> Result<Self> {
        if dists.is_empty() || tail == 0 {
            return Err(Error::data(ctx, "no distances to fit a Weibull tail to"));
        }
        if dists.iter().any(|d| !d.is_finite()) {
            return Err(Error::data(ctx, "a distance to a class mean is not finite (an all-zero logit row with a cosine weight?)"));
        }
        let mut sorted = dists.to_vec();
        sorted.sort_by(f64::total_cmp);
        let t = &sorted[sorted.len() - tail.min(sorted.len())..];
        let min = t[0];
        let x: Vec<f64> = t.iter().map(|d| d + TRANSLATION - min).collect();
        let top = x[x.len() - 1];
        let ly: Vec<f64> = x.iter().map(|v| (v / top).ln()).collect();
        let mean_ly = ly.iter().sum::<f64>() / ly.len() as f64;
        if ly.iter().all(|&l| l == 0.0) {
            return Ok(WeibullTail { min, shape: None, scale: top });
        }
        let g = |k: f64| {
            let (mut s, mut sl) = (0.0, 0.0);
            for &l in &ly {
                let e = (k * l).exp();
                s += e;
                sl += e * l;
            }
            sl / s - 1.0 / k - mean_ly
        };
        let (mut lo, mut hi) = (1e-12, 1.0);
        while g(hi) < 0.0 {
            lo = hi;
            hi *= 2.0;
            if hi > 1e300 {
                return Err(Error::Numerical { context: ctx.into(), reason: "the Weibull shape does not converge".into() });
            }
        }
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if g(mid) < 0.0 {
                lo = mid;
            } else {
                hi = mid;
            }
            if hi - lo <= 1e-15 * hi {
                break;
            }
        }
        let k = 0.5 * (lo + hi);
        let mean_yk = ly.iter().map(|l| (k * l).exp()).sum::<f64>() / ly.len() as f64;
        Ok(WeibullTail { min, shape: Some(k), scale: top * mean_yk.powf(1.0 / k) })
    }

    /// The fitted CDF at distance `d` (0 below the translated origin).
    pub fn cdf(&self, d: f64) -> f64 {
        let x = d + TRANSLATION - self.min;
        if x <= 0.0 {
            return 0.0;
        }
        match self.shape {
            Some(k) => -(-(x / self.scale).powf(k)).exp_m1(),
            None => f64::from(x >= self.scale),
        }
    }
}

/// The class means and their tail models.
#[derive(Debug)]
pub struct FittedOpenMax {
    /// mu_c, `[C, C]` (f64; a row of zeros for a class without training samples).
    pub centres: Tensor,
    /// One per class (`None` for a class without training samples: W = 1, as pytorch-ood).
    pub tails: Vec<Option<WeibullTail>>,
    pub alpha: i64,
    pub w: f64,
    pub classes: i64,
}

/// d_c(z) for every row of `z` `[N, C]` and every centre `[K, C]`: `[N, K]`.
fn distances(z: &Tensor, centres: &Tensor, w: f64) -> Tensor {
    let mut d = Tensor::zeros([z.size()[0], centres.size()[0]], (Kind::Double, z.device()));
    if w > 0.0 {
        // Direct differences (compute mode 2), not the |a|^2 + |b|^2 - 2ab shortcut that
        // loses the small distances of the tail to cancellation.
        d += Tensor::cdist(z, centres, 2.0, Some(2)) * w;
    }
    if w < 1.0 {
        // An all-zero row gives NaN here, as in pytorch-ood (refused at fit, NaN at scoring).
        let zn = z / z.norm_scalaropt_dim(2.0, &[1i64][..], true);
        let cn = centres / centres.norm_scalaropt_dim(2.0, &[1i64][..], true);
        d += (zn.matmul(&cn.tr()).neg() + 1.0) * (1.0 - w);
    }
    d
}

impl Registered for OpenMax {
    const NAME: &'static str = "openmax";
    const SUMMARY: &'static str = "Weibull-recalibrated logits, probability of the unknown class (Bendale & Boult 2016)";
    type Fitted = FittedOpenMax;
    fn read(p: &mut ParamReader) -> Result<Self> {
        let d = Self::default();
        Ok(OpenMax {
            tail: p.int("tail", d.tail)?,
            alpha: p.int("alpha", d.alpha)?,
            w: p.f64("w", d.w)?,
            correct: p.bool("correct", d.correct)?,
        })
    }
    fn params(&self) -> Vec<(&'static str, ParamValue)> {
        vec![
            ("tail", ParamValue::Int(self.tail)),
            ("alpha", ParamValue::Int(self.alpha)),
            ("w", ParamValue::Float(self.w)),
            ("correct", ParamValue::Bool(self.correct)),
        ]
    }
    fn check(&self) -> Result<()> {
        if self.tail < 2 {
            return Err(super::bad_param(Self::NAME, "tail", self.tail, "must be at least 2 (a Weibull has two parameters)"));
        }
        if self.alpha < 1 {
            return Err(super::bad_param(Self::NAME, "alpha", self.alpha, "must be a positive integer"));
        }
        if !(0.0..=1.0).contains(&self.w) {
            return Err(super::bad_param(Self::NAME, "w", self.w, "must lie in [0, 1]"));
        }
        Ok(())
    }
    fn grid(ctx: &GridContext) -> Vec<Self> {
        let mut g = Vec::new();
        for tail in [10, 20, 50] {
            for alpha in [1, 3, 10].into_iter().filter(|&a| a <= ctx.c.max(1)) {
                for w in [0.5, 1.0] {
                    g.push(OpenMax { tail, alpha, w, correct: true });
                }
            }
        }
        g
    }
    fn defaults(ctx: &GridContext) -> Self {
        OpenMax { alpha: Self::default().alpha.min(ctx.c.max(1)), ..Self::default() }
    }
    fn fit(&self, data: &FitData) -> Result<FittedOpenMax> {
        let head = Head::of(data, Self::NAME)?;
        let (c, ctx) = (head.c, head.ctx);
        let z = logits(data.train, c, &ctx)?;
        let n = z.size()[0];
        let y = check_labels(&data.train.labels, n, c, &ctx)?;
        let correct = z.argmax(1, false).eq_tensor(&y);
        let centres = Tensor::zeros([c, c], (Kind::Double, z.device()));
        let mut tails = Vec::with_capacity(c as usize);
        for k in 0..c {
            let of_class = y.eq(k);
            let mut rows = of_class.logical_and(&correct).nonzero().squeeze_dim(1);
            if !self.correct || rows.size()[0] == 0 {
                rows = of_class.nonzero().squeeze_dim(1);
            }
            if rows.size()[0] == 0 {
                tails.push(None);
                continue;
            }
            let zk = z.index_select(0, &rows);
            let mu = zk.mean_dim(&[0i64][..], true, Kind::Double);
            centres.get(k).copy_(&mu.squeeze_dim(0));
            let d = Vec::<f64>::try_from(distances(&zk, &mu, self.w).squeeze_dim(1))
                .map_err(|e| Error::data(&ctx, format!("distances of class {k}: {e}")))?;
            tails.push(Some(WeibullTail::fit_high(&d, self.tail as usize, &format!("{ctx}, class {k}"))?));
        }
        Ok(FittedOpenMax { centres, tails, alpha: self.alpha.min(c), w: self.w, classes: c })
    }
}

impl Scorer for FittedOpenMax {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        let z = logits(f, self.classes, "openmax score")?;
        let (n, c, a) = (z.size()[0], self.classes as usize, self.alpha as usize);
        let dist = Vec::<f64>::try_from(distances(&z, &self.centres, self.w).reshape([-1]))
            .map_err(|e| Error::data("openmax score", e.to_string()))?;
        let top = Vec::<i64>::try_from(z.topk(self.alpha, 1, true, true).1.reshape([-1]))
            .map_err(|e| Error::data("openmax score", e.to_string()))?;
        // s[i, c]: the recalibration weight of class c for sample i (0 outside the top alpha).
        let mut s = vec![0.0f64; n as usize * c];
        for i in 0..n as usize {
            for (rank, &cls) in top[i * a..(i + 1) * a].iter().enumerate() {
                let cls = cls as usize;
                let w = self.tails[cls].as_ref().map_or(1.0, |t| t.cdf(dist[i * c + cls]));
                s[i * c + cls] = (a - rank) as f64 / a as f64 * w;
            }
        }
        let s = Tensor::from_slice(&s).reshape([n, self.classes]).to_device(z.device());
        let revised = (&z * (s.neg() + 1.0)).clamp_max(709.0);
        let unknown = (&z * &s).sum_dim_intlist(&[1i64][..], true, Kind::Double).clamp_max(709.0);
        let all = Tensor::cat(&[unknown, revised], 1);
        Ok(all.softmax(1, Kind::Double).select(1, 0).neg())
    }

    fn fitted_values(&self) -> Vec<(&'static str, f64)> {
        let shapes: Vec<f64> = self.tails.iter().flatten().filter_map(|t| t.shape).collect();
        let mean = |v: &[f64]| if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 };
        vec![("mean_weibull_shape", mean(&shapes)), ("classes_with_tail", self.tails.iter().flatten().count() as f64)]
    }
}
