//! **Gram** (Sastry & Oore, "Detecting out-of-distribution examples with Gram
//! matrices", ICML 2020): the higher-order correlations between a layer's
//! channels stay inside per-class bounds seen in training for ID inputs and
//! leave them for OOD ones. Layer-wise by construction, so it sits beside the
//! layer-wise Neural Collapse study.
//!
//! ```text
//! F_l      = the map of tap l as a C_l x HW matrix (the stem and the 8 BasicBlocks)
//! g_{l,p}  = row sums of (F_l^p F_l^p^T), then sign(.) |.|^(1/p)      (F^p elementwise; p = 1..P)
//! bounds   = per class c, layer l, pole p, entry i: min and max of g_{l,p,i} over the
//!            training images of class c (the fitting part, below)
//! dev_{l,p}(x) = sum_i relu(min - g_i) / |min + 1e-6| + relu(g_i - max) / |max + 1e-6|
//!                (bounds of the predicted class)
//! score(x) = - sum_l (sum_{p <= P} dev_{l,p}(x)) / E_l,    E_l = mean over held-out ID images of the same sum
//! ```
//!
//! Fitting splits the ID training images deterministically: in each class, every
//! tenth image (the 10th, 20th, ... in dataset order) is held out for `E_l`, the
//! rest give the bounds (pytorch-ood holds out a random 10 % per class; the paper
//! uses validation data). A class with fewer than ten images holds out none; a
//! layer whose mean held-out deviation is 0 (or that has no held-out image) gets
//! `E_l = 1`, as in pytorch-ood. The bounds are kept per pole, so every `P` of the
//! grid is scored from one pass.
//!
//! Defaults: `P = 10`, the paper's. Grid: `P` in {1, 2, 5, 10}.
//!
//! The row sums are computed as `F^p (F^p^T 1)`, `O(C HW)` per pole instead of the
//! `O(C^2 HW)` of forming the Gram matrix (same numbers: a sum re-associated), in
//! f32 on each image's map divided by its largest entry (powers in [0, 1]: no
//! overflow at p = 10), the scale put back in f64; bounds and deviations in f64.
//! The `1e-6` inside `|min + 1e-6|` is pytorch-ood's guard, kept so that the two agree.

use super::{known_only, FitImages, ModelDetector, ModelScorer, Params};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::ResNet18;
use tch::{Device, Kind, Tensor};

/// The largest pole.
pub const MAX_POLES: i64 = 10;
/// The grid of `P`.
pub const POLES: [i64; 4] = [1, 2, 5, 10];
/// One image in this many of each class is held out for the layer normalisers.
pub const HOLDOUT_EVERY: usize = 10;

/// Gram: `poles` (`P`, 1..=10, default 10).
#[derive(Debug, Clone, Copy, Default)]
pub struct Gram;

fn poles_of(given: &Params) -> Result<i64> {
    known_only("gram", given, Gram.param_names())?;
    let p = given.get("poles").copied().unwrap_or(MAX_POLES as f64);
    if p.fract() != 0.0 || !(1.0..=MAX_POLES as f64).contains(&p) {
        return Err(Error::param("gram.poles", format!("{p} must be a whole number in 1..={MAX_POLES}")));
    }
    Ok(p as i64)
}

impl ModelDetector for Gram {
    fn name(&self) -> &'static str {
        "gram"
    }
    fn param_names(&self) -> &'static [&'static str] {
        &["poles"]
    }
    fn summary(&self) -> &'static str {
        "deviation of every layer's Gram matrices from per-class bounds (Sastry & Oore 2020), model-based"
    }
    fn check(&self, given: &Params) -> Result<Params> {
        Ok([("poles".to_string(), poles_of(given)? as f64)].into_iter().collect())
    }
    fn grid(&self) -> Vec<Params> {
        POLES.iter().map(|&p| [("poles".to_string(), p as f64)].into_iter().collect()).collect()
    }
    fn fit(&self, model: &ResNet18, data: FitImages, device: Device, batch: usize) -> Result<Box<dyn ModelScorer>> {
        Ok(Box::new(FittedGram::fit(model, data.id_train, device, batch)?))
    }
}

/// Gram vectors `g_{l,p}` (f64 `[B, C_l]`) of one map `[B, C, H, W]` for p = 1..=`poles`.
///
/// Each image's map is first divided by its largest |entry| `s`, so that its
/// powers stay in [0, 1] and f32 neither overflows (the 10th power of an
/// activation of 30 would) nor loses the large entries:
/// `g_p(F) = s^2 g_p(F / s)`, since the row sums of `F^p F^p^T` are of degree `2p`.
pub fn gram_vectors(map: &Tensor, poles: i64) -> Vec<Tensor> {
    let s = map.size();
    let f = map.to_kind(Kind::Float).reshape([s[0], s[1], s[2] * s[3]]);
    let scale = f.abs().amax(&[1i64, 2][..], true).clamp_min(f32::MIN_POSITIVE as f64);
    let f = &f / &scale;
    let scale2 = scale.to_kind(Kind::Double).squeeze_dim(2).square();
    let mut fp = f.copy(); // its own storage: it is multiplied in place below
    (1..=poles)
        .map(|p| {
            if p > 1 {
                fp *= &f; // F^p by one product per pole, not a pow
            }
            // Row sums of F^p F^p^T = F^p (column sums of F^p).
            let rows = fp.matmul(&fp.sum_dim_intlist(&[1i64][..], true, Kind::Float).transpose(1, 2)).squeeze_dim(2).to_kind(Kind::Double);
            let g = if p == 1 { rows } else { rows.sign() * rows.abs().pow_tensor_scalar(1.0 / p as f64) };
            g * &scale2
        })
        .collect()
}

/// `dev` of `g` (`[B, C]`) against per-sample bounds `[B, C]`, summed over entries (`[B]`).
pub fn deviation(g: &Tensor, mins: &Tensor, maxs: &Tensor) -> Tensor {
    let below = (mins - g).relu() / (mins + 1e-6).abs();
    let above = (g - maxs).relu() / (maxs + 1e-6).abs();
    (below + above).sum_dim_intlist(&[1i64][..], false, Kind::Double)
}

/// Which training images are held out for the layer normalisers (every
/// [`HOLDOUT_EVERY`]-th of each class, in dataset order).
pub fn heldout_mask(labels: &[i64]) -> Vec<bool> {
    let mut seen = std::collections::HashMap::new();
    labels
        .iter()
        .map(|&c| {
            let k = seen.entry(c).or_insert(0usize);
            *k += 1;
            *k % HOLDOUT_EVERY == 0
        })
        .collect()
}

/// Gram fitted on ID training images: per-class bounds per layer and pole,
/// and the mean held-out deviation per layer and pole.
#[derive(Debug)]
pub struct FittedGram {
    /// `[layer][pole - 1]`: `[K, C_l]` f64 minimum and maximum per class.
    pub mins: Vec<Vec<Tensor>>,
    pub maxs: Vec<Vec<Tensor>>,
    /// `[layer][pole - 1]`: mean over the held-out images of `dev_{l,p}`.
    pub heldout_dev: Vec<Vec<f64>>,
    /// Images that gave the bounds and that were held out.
    pub n_fit: usize,
    pub n_heldout: usize,
}

impl FittedGram {
    /// Fits on `id_train` (its labels are the true classes).
    pub fn fit(model: &ResNet18, id_train: &Dataset, device: Device, batch: usize) -> Result<Self> {
        let ctx = format!("gram fit on {}", id_train.name);
        let k = model.config.num_classes;
        let labels = Vec::<i64>::try_from(&id_train.labels)?;
        if let Some(bad) = labels.iter().find(|&&c| c < 0 || c >= k) {
            return Err(Error::data(ctx, format!("label {bad} is outside the model's {k} classes")));
        }
        let held = heldout_mask(&labels);
        let idx = |want: bool| (0..labels.len() as i64).filter(|&i| held[i as usize] == want).collect::<Vec<_>>();
        // The fitting part in class order, so that each batch holds a few runs of one class.
        let mut fit_idx = idx(false);
        fit_idx.sort_by_key(|&i| (labels[i as usize], i));
        let fit_part = id_train.subset(&fit_idx, format!("{}-gram-fit", id_train.name))?;
        let fit_labels: Vec<i64> = fit_idx.iter().map(|&i| labels[i as usize]).collect();
        let mut counts = vec![0usize; k as usize];
        for &c in &fit_labels {
            counts[c as usize] += 1;
        }
        if let Some(c) = counts.iter().position(|&n| n == 0) {
            return Err(Error::data(ctx, format!("class {c} has no training image left to bound it: Gram needs every class")));
        }
        // Pass 1: running per-class min / max of every (layer, pole), one class run at a time.
        let mut mins: Vec<Vec<Tensor>> = Vec::new();
        let mut maxs: Vec<Vec<Tensor>> = Vec::new();
        let loader = crate::data::BatchLoader::new(&fit_part, batch, device)?;
        let mut start = 0usize;
        for b in loader.epoch(0) {
            let b = b?;
            let n = b.images.size()[0] as usize;
            let ys = &fit_labels[start..start + n];
            start += n;
            let mut runs: Vec<(i64, i64, i64)> = Vec::new(); // (class, from, len)
            for (i, &c) in ys.iter().enumerate() {
                match runs.last_mut() {
                    Some(r) if r.0 == c => r.2 += 1,
                    _ => runs.push((c, i as i64, 1)),
                }
            }
            let taps = tch::no_grad(|| model.forward_taps(&b.images, false))?;
            for (l, map) in taps.maps.iter().enumerate() {
                let gs = gram_vectors(map, MAX_POLES);
                if mins.len() <= l {
                    let c = gs[0].size()[1];
                    mins.push((0..MAX_POLES).map(|_| Tensor::full([k, c], f64::INFINITY, (Kind::Double, device))).collect());
                    maxs.push((0..MAX_POLES).map(|_| Tensor::full([k, c], f64::NEG_INFINITY, (Kind::Double, device))).collect());
                }
                for (p, g) in gs.iter().enumerate() {
                    for &(c, from, len) in &runs {
                        let part = g.narrow(0, from, len);
                        let (mut lo, mut hi) = (mins[l][p].get(c), maxs[l][p].get(c));
                        lo.copy_(&lo.minimum(&part.amin(0, false)));
                        hi.copy_(&hi.maximum(&part.amax(0, false)));
                    }
                }
            }
        }
        let mut fitted =
            FittedGram { heldout_dev: vec![vec![0.0; MAX_POLES as usize]; mins.len()], mins, maxs, n_fit: fit_idx.len(), n_heldout: 0 };
        // Pass 2: the held-out images' mean deviation (bounds of their true class, as pytorch-ood).
        let held_part = id_train.subset(&idx(true), format!("{}-gram-heldout", id_train.name))?;
        if !held_part.is_empty() {
            let loader = crate::data::BatchLoader::new(&held_part, batch, device)?;
            let mut sums = vec![vec![0.0; MAX_POLES as usize]; fitted.mins.len()];
            for b in loader.epoch(0) {
                let b = b?;
                let devs = tch::no_grad(|| fitted.deviations(model, &b.images, &b.labels.to_device(device)))?;
                for (l, per_pole) in devs.iter().enumerate() {
                    for (p, d) in per_pole.iter().enumerate() {
                        sums[l][p] += d.sum(Kind::Double).double_value(&[]);
                    }
                }
            }
            fitted.n_heldout = held_part.len();
            for (l, row) in sums.iter().enumerate() {
                for (p, s) in row.iter().enumerate() {
                    fitted.heldout_dev[l][p] = s / held_part.len() as f64;
                }
            }
        }
        Ok(fitted)
    }

    /// `dev_{l,p}` (`[layer][pole - 1]`, each `[B]`) of normalised images `x`
    /// against the bounds of `classes` (`[B]`, on the bounds' device).
    pub fn deviations(&self, model: &ResNet18, x: &Tensor, classes: &Tensor) -> Result<Vec<Vec<Tensor>>> {
        let taps = model.forward_taps(x, false)?;
        self.deviations_of(&taps.maps, classes, MAX_POLES)
    }

    fn deviations_of(&self, maps: &[Tensor], classes: &Tensor, poles: i64) -> Result<Vec<Vec<Tensor>>> {
        if maps.len() != self.mins.len() {
            return Err(Error::shape("gram maps", format!("{} maps, fitted on {}", maps.len(), self.mins.len())));
        }
        Ok(maps
            .iter()
            .enumerate()
            .map(|(l, map)| {
                gram_vectors(map, poles)
                    .iter()
                    .enumerate()
                    .map(|(p, g)| deviation(g, &self.mins[l][p].index_select(0, classes), &self.maxs[l][p].index_select(0, classes)))
                    .collect()
            })
            .collect())
    }

    /// `E_l` for `P` poles: the held-out mean of `sum_{p <= P} dev_{l,p}`, 1 where that is 0.
    pub fn layer_norms(&self, poles: i64) -> Vec<f64> {
        self.heldout_dev
            .iter()
            .map(|row| {
                let e: f64 = row[..poles as usize].iter().sum();
                if e > 0.0 {
                    e
                } else {
                    1.0
                }
            })
            .collect()
    }
}

impl ModelScorer for FittedGram {
    fn scores(&self, model: &ResNet18, data: &Dataset, params: &[Params], device: Device, batch: usize) -> Result<Vec<Tensor>> {
        let poles: Vec<i64> = params.iter().map(poles_of).collect::<Result<_>>()?;
        let norms: Vec<Vec<f64>> = poles.iter().map(|&p| self.layer_norms(p)).collect();
        let most = poles.iter().copied().max().unwrap_or(1);
        super::per_batch(data, device, batch, poles.len(), |x| {
            tch::no_grad(|| {
                let taps = model.forward_taps(x, false)?;
                let pred = taps.logits.argmax(1, false);
                let devs = self.deviations_of(&taps.maps, &pred, most)?;
                Ok(poles
                    .iter()
                    .zip(&norms)
                    .map(|(&p, e)| {
                        let mut total = Tensor::zeros([x.size()[0]], (Kind::Double, x.device()));
                        for (l, per_pole) in devs.iter().enumerate() {
                            let mut layer = Tensor::zeros_like(&total);
                            for d in &per_pole[..p as usize] {
                                layer += d;
                            }
                            total += layer / e[l];
                        }
                        -total
                    })
                    .collect())
            })
        })
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
