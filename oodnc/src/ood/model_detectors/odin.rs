//! ODIN (Liang, Li & Srikant, "Enhancing the reliability of out-of-distribution
//! image detection in neural networks", ICLR 2018): temperature scaling plus a
//! small input perturbation that raises the softmax score, more for ID inputs than
//! for OOD ones. And **i-ODIN** (Regmi et al., ASCOOD, arXiv 2503.08023; OpenOOD's
//! `iodin`): the same step applied to the single input element whose gradient is
//! largest in magnitude, every other element left as it is.
//!
//! ```text
//! S(x; T)  = max_c softmax(f(x) / T)_c
//! g        = grad_x log S(x; T)                        (x: the normalised input)
//! x~       = x + eps * sign(g) / std_c                 (ODIN: every element)
//! x~       = x + eps * sign(g) / std_c * 1[i = argmax_i |g_i|]   (i-ODIN: one element per image)
//! score(x) = log S(x~; T)                              (higher = more in-distribution)
//! ```
//!
//! The network sees per-channel normalised images, so a step of `eps` pixels is
//! `eps / std_c` in its input (ODIN's code divides the gradient by the std for the
//! same reason). The score is returned as the log of S, a monotone transform like
//! oodnc's MSP (same metrics, no saturation at 1.0). The model runs in eval mode.
//! The gradient of log S equals minus the gradient of the cross-entropy with the
//! predicted class that ODIN's and OpenOOD's code take; `sign(0) = 0` here where
//! their `ge(grad, 0)` moves a zero-gradient element by +eps (measure zero).
//!
//! Unlike the feature-based detectors they need the model and the images: per
//! image one forward and backward pass, then one forward pass per `eps`. `T` and
//! `eps` are chosen on ID-val against the OOD validation set (never a test set),
//! ODIN over [`TEMPERATURES`] x [`EPSILONS`] (the paper's range of eps is
//! 0..0.004), i-ODIN over [`TEMPERATURES`] x [`IODIN_EPSILONS`] (OpenOOD's sweep).

use super::{known_only, FitImages, ModelDetector, ModelScorer, Params};
use crate::data::{BatchLoader, Dataset};
use crate::error::{Error, Result};
use crate::model::ResNet18;
use tch::{Device, Kind, Tensor};

/// Temperatures tried by [`select`] and both grids.
pub const TEMPERATURES: [f64; 4] = [1.0, 10.0, 100.0, 1000.0];
/// Perturbation sizes (pixel units) tried by [`select`] and ODIN's grid.
pub const EPSILONS: [f64; 5] = [0.0, 0.0005, 0.001, 0.002, 0.004];
/// i-ODIN's perturbation sizes (pixel units): OpenOOD's sweep.
pub const IODIN_EPSILONS: [f64; 2] = [0.0014, 0.0028];

/// Where the perturbation goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perturb {
    /// Every input element (ODIN).
    All,
    /// Only the element with the largest |gradient| of each image (i-ODIN).
    Single,
}

/// ODIN: its name and parameters in tables (`t`, `epsilon`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Odin;

/// i-ODIN: ODIN's step on the single most sensitive input element.
#[derive(Debug, Clone, Copy, Default)]
pub struct IOdin;

impl Odin {
    /// Parameters from a by-name map (`t` default 1000, `epsilon` default 0.0014, the paper's).
    pub fn from_map(m: &Params) -> Result<OdinParams> {
        from_map("odin", m)
    }
}

fn from_map(name: &str, m: &Params) -> Result<OdinParams> {
    if let Some(k) = m.keys().find(|k| !["t", "epsilon"].contains(&k.as_str())) {
        return Err(Error::param(format!("{name}.{k}"), "unknown hyperparameter (known: epsilon, t)"));
    }
    OdinParams::new(m.get("t").copied().unwrap_or(1000.0), m.get("epsilon").copied().unwrap_or(0.0014))
}

fn grid(eps: &[f64]) -> Vec<Params> {
    TEMPERATURES.iter().flat_map(|&t| eps.iter().map(move |&e| OdinParams { temperature: t, epsilon: e }.to_map())).collect()
}

impl ModelDetector for Odin {
    fn name(&self) -> &'static str {
        "odin"
    }
    fn param_names(&self) -> &'static [&'static str] {
        &["epsilon", "t"]
    }
    fn summary(&self) -> &'static str {
        "input perturbation and temperature scaling (Liang et al. 2018), model-based"
    }
    fn check(&self, given: &Params) -> Result<Params> {
        known_only(self.name(), given, self.param_names())?;
        Ok(from_map(self.name(), given)?.to_map())
    }
    fn grid(&self) -> Vec<Params> {
        grid(&EPSILONS)
    }
    fn fit(&self, _: &ResNet18, _: FitImages, _: Device, _: usize) -> Result<Box<dyn ModelScorer>> {
        Ok(Box::new(OdinScorer(Perturb::All)))
    }
}

impl ModelDetector for IOdin {
    fn name(&self) -> &'static str {
        "iodin"
    }
    fn param_names(&self) -> &'static [&'static str] {
        &["epsilon", "t"]
    }
    fn summary(&self) -> &'static str {
        "ODIN's step on the single most sensitive input element (Regmi et al. 2025, ASCOOD), model-based"
    }
    fn check(&self, given: &Params) -> Result<Params> {
        known_only(self.name(), given, self.param_names())?;
        Ok(from_map(self.name(), given)?.to_map())
    }
    fn grid(&self) -> Vec<Params> {
        grid(&IODIN_EPSILONS)
    }
    fn fit(&self, _: &ResNet18, _: FitImages, _: Device, _: usize) -> Result<Box<dyn ModelScorer>> {
        Ok(Box::new(OdinScorer(Perturb::Single)))
    }
}

/// ODIN / i-ODIN keep no statistics: the scorer only knows where to perturb.
#[derive(Debug, Clone, Copy)]
pub struct OdinScorer(pub Perturb);

impl ModelScorer for OdinScorer {
    fn scores(&self, model: &ResNet18, data: &Dataset, params: &[Params], device: Device, batch: usize) -> Result<Vec<Tensor>> {
        let ps: Vec<OdinParams> = params.iter().map(|p| from_map("odin", p)).collect::<Result<_>>()?;
        let mut out: Vec<Option<Tensor>> = (0..ps.len()).map(|_| None).collect();
        // One gradient pass per temperature serves every eps.
        let mut temps: Vec<f64> = ps.iter().map(|p| p.temperature).collect();
        temps.sort_by(f64::total_cmp);
        temps.dedup();
        for t in temps {
            let idx: Vec<usize> = (0..ps.len()).filter(|&i| ps[i].temperature == t).collect();
            let eps: Vec<f64> = idx.iter().map(|&i| ps[i].epsilon).collect();
            for (i, s) in idx.into_iter().zip(perturbed_scores(model, data, t, &eps, self.0, device, batch)?) {
                out[i] = Some(s);
            }
        }
        Ok(out.into_iter().map(|s| s.expect("every parameter set scored")).collect())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// ODIN's two hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OdinParams {
    pub temperature: f64,
    /// Perturbation size in pixel units ([0, 1] scale).
    pub epsilon: f64,
}

impl OdinParams {
    /// As a by-name map (`t`, `epsilon`), as in tables and `selection.json`.
    pub fn to_map(&self) -> Params {
        [("t".to_string(), self.temperature), ("epsilon".to_string(), self.epsilon)].into_iter().collect()
    }

    /// Checked once: `temperature > 0`, `0 <= epsilon <= 1`, both finite.
    pub fn new(temperature: f64, epsilon: f64) -> Result<Self> {
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(Error::param("odin.t", format!("{temperature} must be a finite number > 0")));
        }
        if !(epsilon.is_finite() && (0.0..=1.0).contains(&epsilon)) {
            return Err(Error::param("odin.epsilon", format!("{epsilon} must be in [0, 1] (pixel units)")));
        }
        Ok(OdinParams { temperature, epsilon })
    }
}

/// ODIN scores (f64 `[N]`, higher = more ID) of `data` at temperature `t` for
/// each of `epsilons` (one gradient pass shared by all of them), batched on `device`
/// (where `model` lives).
pub fn scores(model: &ResNet18, data: &Dataset, t: f64, epsilons: &[f64], device: Device, batch: usize) -> Result<Vec<Tensor>> {
    perturbed_scores(model, data, t, epsilons, Perturb::All, device, batch)
}

/// [`scores`] with the perturbation on every element ([`Perturb::All`], ODIN)
/// or on each image's most sensitive one ([`Perturb::Single`], i-ODIN).
pub fn perturbed_scores(
    model: &ResNet18,
    data: &Dataset,
    t: f64,
    epsilons: &[f64],
    perturb: Perturb,
    device: Device,
    batch: usize,
) -> Result<Vec<Tensor>> {
    for &e in epsilons {
        OdinParams::new(t, e)?;
    }
    if data.is_empty() {
        return Err(Error::data(format!("odin scores for {}", data.name), "the dataset is empty"));
    }
    let loader = BatchLoader::new(data, batch, device)?;
    let std = Tensor::from_slice(&loader.normalize.std.map(|v| v as f32)).to_device(device).view([1, 3, 1, 1]);
    let mut out: Vec<Vec<Tensor>> = epsilons.iter().map(|_| Vec::new()).collect();
    for b in loader.epoch(0) {
        let b = b?;
        let x = b.images.detach().set_requires_grad(true);
        let logits = model.forward_t(&x, false)?;
        let log_s = (logits.to_kind(Kind::Double) / t).log_softmax(1, Kind::Double).max_dim(1, false).0;
        let grads = Tensor::f_run_backward(&[log_s.sum(Kind::Double)], &[&x], false, false)?;
        let g = &grads[0];
        // x~ = x + eps * sign(grad log S) / std_c (the step that raises S).
        let mut step = g.sign() / &std;
        if perturb == Perturb::Single {
            let n = g.size()[0];
            let at = g.abs().view([n, -1]).argmax(1, true);
            let mask = Tensor::zeros([n, g.numel() as i64 / n.max(1)], (step.kind(), device)).scatter_value(1, &at, 1.0);
            step *= mask.view_as(g);
        }
        tch::no_grad(|| -> Result<()> {
            for (i, &e) in epsilons.iter().enumerate() {
                let xt = if e == 0.0 { x.detach() } else { x.detach() + &step * e };
                let z = model.forward_t(&xt, false)?.to_kind(Kind::Double) / t;
                out[i].push(z.log_softmax(1, Kind::Double).max_dim(1, false).0.to_device(Device::Cpu));
            }
            Ok(())
        })?;
    }
    let scores: Vec<Tensor> = out.iter().map(|parts| Tensor::cat(parts, 0)).collect();
    for s in &scores {
        if !bool::try_from(s.isfinite().all()).unwrap_or(false) {
            return Err(Error::numerical(format!("odin scores for {}", data.name), "non-finite scores (NaN/inf in the model or images?)"));
        }
    }
    Ok(scores)
}

/// ODIN scores of `data` with `p`.
pub fn score(model: &ResNet18, data: &Dataset, p: OdinParams, device: Device, batch: usize) -> Result<Tensor> {
    Ok(scores(model, data, p.temperature, &[p.epsilon], device, batch)?.remove(0))
}

/// The chosen hyperparameters and every candidate's AUROC of ID-val against OOD-val.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OdinSelection {
    pub chosen: OdinParams,
    pub candidates: Vec<(OdinParams, f64)>,
}

/// Chooses `(T, eps)` over [`TEMPERATURES`] x [`EPSILONS`] by the AUROC of
/// `id_val` against `ood_val` (the first best on ties).
pub fn select(model: &ResNet18, id_val: &Dataset, ood_val: &Dataset, device: Device, batch: usize) -> Result<OdinSelection> {
    let mut candidates = Vec::new();
    for &t in &TEMPERATURES {
        let id = scores(model, id_val, t, &EPSILONS, device, batch)?;
        let ood = scores(model, ood_val, t, &EPSILONS, device, batch)?;
        for (i, &e) in EPSILONS.iter().enumerate() {
            let auc = crate::ood::metrics::ood_metrics(&to_vec(&id[i])?, &to_vec(&ood[i])?)?.auroc;
            candidates.push((OdinParams::new(t, e)?, auc));
        }
    }
    let mut best = candidates[0];
    for c in &candidates {
        if c.1 > best.1 {
            best = *c;
        }
    }
    Ok(OdinSelection { chosen: best.0, candidates })
}

/// A score tensor as a `Vec<f64>`.
pub fn to_vec(t: &Tensor) -> Result<Vec<f64>> {
    Ok(Vec::<f64>::try_from(t.to_kind(Kind::Double))?)
}
