//! **AdaSCALE-A** and **AdaSCALE-L** (Regmi, "AdaSCALE: Adaptive Scaling for OOD
//! Detection", arXiv 2503.08023, 2025; OpenOOD's `adascale_a` / `adascale_l`):
//! SCALE and LTS with a percentile chosen per input. An ID input's features
//! barely move when the input elements the prediction is least sensitive to are
//! perturbed; an OOD input's move more. The more they move (relative to ID
//! validation images), the lower the percentile, the milder the scaling, the
//! lower the energy.
//!
//! ```text
//! g        = grad_x z_yhat(x)                               (yhat = argmax z; x the normalised input)
//! x~       = x + 0.5 sign(g) on the floor(o 3 H W) elements of smallest |g|, x elsewhere
//! Q'(x)    = sum_{top k1% of h} relu(h~) + lambda sum_{top k2% of h} |h - h~|     (h = h(x), h~ = h(x~); indices by h)
//! p(x)     = p_min + (1 - ECDF_val(Q'(x))) (p_max - p_min)
//! s(x)     = sum relu(h) / (sum of the largest D - round(D p(x) / 100) entries of relu(h))
//! A:  score = E(W (h exp(s)) + b)                           (SCALE with p(x))
//! L:  score = E((W h + b) s^2)                              (LTS-style logit scaling with p(x))
//! ```
//!
//! `ECDF_val` is the empirical distribution function (fraction `<=`) of `Q'` over
//! the ID **validation** images (at most [`MAX_VAL`], evenly spaced in dataset
//! order; OpenOOD draws 5,000 at random), so the detector needs them at fit time:
//! [`super::FitImages::id_val`]. The top-k counts are `floor(D k / 100)` as there.
//!
//! Defaults: OpenOOD's `percentile: [75, 85]`, `k1 = 5`, `k2 = 1`, `lambda = 10`,
//! `o = 0.05` (floor(0.05 x 3072) = 153 elements moved). Grid: its sweep, the 36
//! pairs `p_min < p_max` of {60, 65, 70, 75, 80, 85, 90, 95, 99}, the rest fixed.
//! The validation statistics depend on `o` only; they are computed once per
//! distinct `o` and kept.
//!
//! **Precision**: the network in f32 (as OpenOOD); `Q'`, the scale and the logits
//! in f64. Not in pytorch-ood 0.4.0.

use super::{known_only, FitImages, ModelDetector, ModelScorer, Params};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::ResNet18;
use std::cell::RefCell;
use tch::{Device, Kind, Tensor};

/// At most this many ID validation images give the ECDF (OpenOOD's `num_samples`).
pub const MAX_VAL: usize = 5000;
/// How far (normalised units) each chosen input element moves.
pub const STEP: f64 = 0.5;
/// The percentiles of OpenOOD's sweep.
pub const PERCENTILES: [f64; 9] = [60.0, 65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0, 99.0];

/// Which scaling the adaptive percentile drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Features times `exp(s)` (SCALE).
    A,
    /// Logits times `s^2` (LTS).
    L,
}

/// AdaSCALE (`adascale_a` or `adascale_l`).
#[derive(Debug, Clone, Copy)]
pub struct AdaScale(pub Variant);

/// Checked parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaScaleParams {
    /// Percentile range (0, 100), `pmin < pmax`.
    pub pmin: f64,
    pub pmax: f64,
    /// Top-k percentages of `h` for the two terms of `Q'`.
    pub k1: f64,
    pub k2: f64,
    /// Weight of the feature shift in `Q'`.
    pub lambda: f64,
    /// Fraction of the input elements moved.
    pub o: f64,
}

impl AdaScaleParams {
    pub fn from_map(name: &str, given: &Params) -> Result<Self> {
        known_only(name, given, &NAMES)?;
        let g = |k: &str, d: f64| given.get(k).copied().unwrap_or(d);
        let p = AdaScaleParams {
            pmin: g("pmin", 75.0),
            pmax: g("pmax", 85.0),
            k1: g("k1", 5.0),
            k2: g("k2", 1.0),
            lambda: g("lambda", 10.0),
            o: g("o", 0.05),
        };
        let bad = |k: &str, v: f64, why: &str| Err(Error::param(format!("{name}.{k}"), format!("{v} {why}")));
        if !(p.pmin > 0.0 && p.pmin < 100.0) {
            return bad("pmin", p.pmin, "must be in (0, 100)");
        }
        if !(p.pmax > p.pmin && p.pmax < 100.0) {
            return bad("pmax", p.pmax, &format!("must be in (pmin = {}, 100)", p.pmin));
        }
        for (k, v) in [("k1", p.k1), ("k2", p.k2)] {
            if !(0.0..=100.0).contains(&v) {
                return bad(k, v, "must be a percentage in [0, 100]");
            }
        }
        if p.lambda < 0.0 {
            return bad("lambda", p.lambda, "must be >= 0");
        }
        if !(p.o > 0.0 && p.o <= 1.0) {
            return bad("o", p.o, "must be a fraction in (0, 1]");
        }
        Ok(p)
    }

    pub fn to_map(self) -> Params {
        [("pmin", self.pmin), ("pmax", self.pmax), ("k1", self.k1), ("k2", self.k2), ("lambda", self.lambda), ("o", self.o)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }
}

const NAMES: [&str; 6] = ["k1", "k2", "lambda", "o", "pmax", "pmin"];

impl ModelDetector for AdaScale {
    fn name(&self) -> &'static str {
        match self.0 {
            Variant::A => "adascale_a",
            Variant::L => "adascale_l",
        }
    }
    fn param_names(&self) -> &'static [&'static str] {
        &NAMES
    }
    fn summary(&self) -> &'static str {
        match self.0 {
            Variant::A => "SCALE with a per-input percentile from the feature shift under a small input perturbation (AdaSCALE-A, Regmi 2025), model-based",
            Variant::L => "logits scaled by (sum / top-k sum)^2 with a per-input percentile (AdaSCALE-L, Regmi 2025), model-based",
        }
    }
    fn check(&self, given: &Params) -> Result<Params> {
        Ok(AdaScaleParams::from_map(self.name(), given)?.to_map())
    }
    fn grid(&self) -> Vec<Params> {
        let mut out = Vec::new();
        for (i, &pmin) in PERCENTILES.iter().enumerate() {
            for &pmax in &PERCENTILES[i + 1..] {
                out.push(AdaScaleParams { pmin, pmax, k1: 5.0, k2: 1.0, lambda: 10.0, o: 0.05 }.to_map());
            }
        }
        out
    }
    fn fit(&self, _model: &ResNet18, data: FitImages, _device: Device, _batch: usize) -> Result<Box<dyn ModelScorer>> {
        let val = data.id_val.ok_or_else(|| {
            Error::param(self.name(), "fits its ECDF on ID validation images, and none were given (FitImages::new(train, Some(val)))")
        })?;
        if val.is_empty() {
            return Err(Error::data(val.name.clone(), format!("{} needs ID validation images; the set is empty", self.name())));
        }
        let n = val.len();
        let idx: Vec<i64> = if n <= MAX_VAL { (0..n as i64).collect() } else { (0..MAX_VAL).map(|i| (i * n / MAX_VAL) as i64).collect() };
        let val = val.subset(&idx, format!("{}-adascale-val", val.name))?;
        Ok(Box::new(FittedAdaScale { variant: self.0, val, stats: RefCell::new(Vec::new()) }))
    }
}

/// Penultimate features of `x` and of its perturbation `x~`, and the logits (f32).
pub struct Views {
    /// `h(x)`, `[N, D]`.
    pub h: Tensor,
    /// `h(x~)`, `[N, D]`.
    pub h_tilde: Tensor,
    /// `z(x)`, `[N, C]`.
    pub logits: Tensor,
}

/// `x~` for normalised images `x`: the `floor(o 3 H W)` elements of smallest
/// `|grad_x z_yhat|` moved by `0.5 sign(grad)`; also `h(x)` and `z(x)`.
pub fn perturb(model: &ResNet18, x: &Tensor, o: f64) -> Result<(Tensor, Tensor, Tensor)> {
    let x = x.detach().set_requires_grad(true);
    let (h, z) = model.features_t(&x, false)?;
    let yhat = z.argmax(1, true);
    let grads = Tensor::f_run_backward(&[z.gather(1, &yhat, false).sum(Kind::Float)], &[&x], false, false)?;
    let g = grads[0].flatten(1, -1);
    let n = g.size()[1];
    let k = (n as f64 * o).floor() as i64;
    let x = x.detach();
    let moved = if k == 0 {
        x.shallow_clone()
    } else {
        let idx = g.abs().topk(k, 1, false, true).1;
        let mask = Tensor::zeros_like(&g).scatter_value(1, &idx, 1.0);
        &x + (g.sign() * mask * STEP).view_as(&x)
    };
    Ok((moved, h.detach(), z.detach()))
}

/// [`Views`] of normalised images `x` (one batch).
pub fn views_of(model: &ResNet18, x: &Tensor, o: f64) -> Result<Views> {
    let (moved, h, logits) = perturb(model, x, o)?;
    let h_tilde = tch::no_grad(|| model.features_t(&moved, false))?.0;
    Ok(Views { h, h_tilde, logits })
}

/// [`Views`] of every image of `data`.
pub fn views(model: &ResNet18, data: &Dataset, o: f64, device: Device, batch: usize) -> Result<Views> {
    let mut parts = super::per_batch(data, device, batch, 3, |x| {
        let v = views_of(model, x, o)?;
        Ok(vec![v.h, v.h_tilde, v.logits])
    })?;
    let logits = parts.pop().expect("3 outputs");
    let h_tilde = parts.pop().expect("3 outputs");
    let h = parts.pop().expect("3 outputs");
    Ok(Views { h, h_tilde, logits })
}

/// `Q'` (f64 `[N]`) of the views for `k1`, `k2` (percentages of `D`) and `lambda`.
pub fn q_prime(v: &Views, k1: f64, k2: f64, lambda: f64) -> Tensor {
    let h = v.h.to_kind(Kind::Double);
    let d = h.size()[1];
    let top = |pct: f64| (d as f64 * pct / 100.0).floor() as i64;
    let sum_at = |k: i64, of: &Tensor| {
        if k == 0 {
            Tensor::zeros([h.size()[0]], (Kind::Double, h.device()))
        } else {
            of.gather(1, &h.topk(k, 1, true, true).1, false).sum_dim_intlist(&[1i64][..], false, Kind::Double)
        }
    };
    let ht = v.h_tilde.to_kind(Kind::Double);
    sum_at(top(k1), &ht.relu()) + sum_at(top(k2), &(&h - &ht).abs()) * lambda
}

/// The fraction of `sorted` (ascending) that is `<= q`, for each `q` (statsmodels' ECDF, OpenOOD's).
pub fn ecdf(sorted: &[f64], q: &[f64]) -> Vec<f64> {
    q.iter().map(|&v| sorted.partition_point(|&s| s <= v) as f64 / sorted.len() as f64).collect()
}

/// `s = sum relu(h) / (sum of the largest D - round(D p / 100) of relu(h))` per row (f64), `p` per row.
pub fn ada_scale(h: &Tensor, percentiles: &[f64]) -> Result<Tensor> {
    let h = h.to_kind(Kind::Double).relu();
    let (n, d) = (h.size()[0], h.size()[1]);
    if percentiles.len() as i64 != n {
        return Err(Error::shape("adascale percentiles", format!("{} for {n} rows", percentiles.len())));
    }
    let ks: Vec<i64> = percentiles.iter().map(|&p| d - (d as f64 * p / 100.0).round_ties_even() as i64).collect();
    if let Some(bad) = ks.iter().position(|&k| k < 1) {
        return Err(Error::param("adascale percentile", format!("{} keeps no feature of {d}", percentiles[bad])));
    }
    let cs = h.sort(1, true).0.cumsum(1, Kind::Double);
    let idx = Tensor::from_slice(&ks).to_device(h.device()).view([n, 1]) - 1;
    let top = cs.gather(1, &idx, false).squeeze_dim(1);
    Ok(cs.select(1, d - 1) / top)
}

/// Fitted: the ID validation images, and their statistics per distinct `o`.
pub struct FittedAdaScale {
    pub variant: Variant,
    /// The ID validation images the ECDF is built from.
    pub val: Dataset,
    stats: RefCell<Vec<(u64, Views)>>,
}

impl std::fmt::Debug for FittedAdaScale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FittedAdaScale").field("variant", &self.variant).field("val", &self.val.name).finish()
    }
}

impl FittedAdaScale {
    /// Scores of `v` (the views of the scored images) for each of `ps`, with the
    /// validation views `val` for each `o` in `val_views(o)`.
    pub fn scores_of(
        &self,
        model: &ResNet18,
        v: &Views,
        ps: &[AdaScaleParams],
        val_views: impl Fn(f64) -> Result<Views>,
    ) -> Result<Vec<Tensor>> {
        let (w, b) = model.head();
        let (w, b) = (w.to_kind(Kind::Double).to_device(v.h.device()), b.to_kind(Kind::Double).to_device(v.h.device()));
        let h = v.h.to_kind(Kind::Double);
        let mut out = Vec::with_capacity(ps.len());
        for p in ps {
            let vv = val_views(p.o)?;
            let mut sorted = Vec::<f64>::try_from(q_prime(&vv, p.k1, p.k2, p.lambda).to_device(Device::Cpu))?;
            sorted.sort_by(f64::total_cmp);
            let q = Vec::<f64>::try_from(q_prime(v, p.k1, p.k2, p.lambda).to_device(Device::Cpu))?;
            let pct: Vec<f64> = ecdf(&sorted, &q).iter().map(|f| p.pmin + (1.0 - f) * (p.pmax - p.pmin)).collect();
            let s = ada_scale(&h, &pct)?.unsqueeze(1);
            let logits = match self.variant {
                Variant::A => (&h * s.exp()).matmul(&w.tr()) + &b,
                Variant::L => (h.matmul(&w.tr()) + &b) * s.square(),
            };
            out.push(logits.logsumexp([1i64], false));
        }
        Ok(out)
    }
}

impl ModelScorer for FittedAdaScale {
    fn scores(&self, model: &ResNet18, data: &Dataset, params: &[Params], device: Device, batch: usize) -> Result<Vec<Tensor>> {
        let name = AdaScale(self.variant).name();
        let ps: Vec<AdaScaleParams> = params.iter().map(|p| AdaScaleParams::from_map(name, p)).collect::<Result<_>>()?;
        let mut os: Vec<f64> = ps.iter().map(|p| p.o).collect();
        os.sort_by(f64::total_cmp);
        os.dedup();
        // The validation views of every o asked for, computed once and kept.
        for &o in &os {
            if !self.stats.borrow().iter().any(|(k, _)| *k == o.to_bits()) {
                let v = views(model, &self.val, o, device, batch)?;
                self.stats.borrow_mut().push((o.to_bits(), v));
            }
        }
        let stats = self.stats.borrow();
        let val_views = |o: f64| -> Result<Views> {
            let (_, v) = stats.iter().find(|(k, _)| *k == o.to_bits()).expect("computed above");
            Ok(Views { h: v.h.shallow_clone(), h_tilde: v.h_tilde.shallow_clone(), logits: v.logits.shallow_clone() })
        };
        let mut out: Vec<Option<Tensor>> = (0..ps.len()).map(|_| None).collect();
        for &o in &os {
            let v = views(model, data, o, device, batch)?;
            let which: Vec<usize> = (0..ps.len()).filter(|&i| ps[i].o == o).collect();
            let sub: Vec<AdaScaleParams> = which.iter().map(|&i| ps[i]).collect();
            for (i, s) in which.into_iter().zip(self.scores_of(model, &v, &sub, val_views)?) {
                out[i] = Some(s);
            }
        }
        Ok(out.into_iter().map(|s| s.expect("every set scored")).collect())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
