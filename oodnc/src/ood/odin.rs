//! ODIN (Liang, Li & Srikant, "Enhancing the reliability of out-of-distribution
//! image detection in neural networks", ICLR 2018): temperature scaling plus a
//! small input perturbation that raises the softmax score, more for ID inputs than
//! for OOD ones.
//!
//! ```text
//! S(x; T)  = max_c softmax(f(x) / T)_c
//! x~       = x - eps * sign(-grad_x log S(x; T))       (eps in pixel units, [0, 1] scale)
//! score(x) = log S(x~; T)                              (higher = more in-distribution)
//! ```
//!
//! The network sees per-channel normalised images, so a step of `eps` pixels is
//! `eps / std_c` in its input (ODIN's code divides the gradient by the std for the
//! same reason). The score is returned as the log of S, a monotone transform like
//! oodnc's MSP (same metrics, no saturation at 1.0). The model runs in eval mode.
//!
//! Unlike the feature-based detectors ODIN needs the model and the images: per
//! image one forward and backward pass, then one forward pass per `eps`. `T` and
//! `eps` are chosen on ID-val against the OOD validation set (never a test set),
//! over [`TEMPERATURES`] x [`EPSILONS`] (the paper's range of eps is 0..0.004).

use crate::data::{BatchLoader, Dataset};
use crate::error::{Error, Result};
use crate::model::ResNet18;
use tch::{Device, Kind, Tensor};

/// Temperatures tried by [`select`].
pub const TEMPERATURES: [f64; 4] = [1.0, 10.0, 100.0, 1000.0];
/// Perturbation sizes (pixel units) tried by [`select`].
pub const EPSILONS: [f64; 5] = [0.0, 0.0005, 0.001, 0.002, 0.004];

/// ODIN as a [`ModelDetector`](super::ModelDetector): its name and parameters
/// in tables (`t`, `epsilon`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Odin;

impl super::ModelDetector for Odin {
    const NAME: &'static str = "odin";
    const PARAMS: &'static [&'static str] = &["epsilon", "t"];
    const SUMMARY: &'static str = "input perturbation and temperature scaling (Liang et al. 2018), model-based";
}

impl Odin {
    /// Parameters from a by-name map (`t` default 1000, `epsilon` default 0.0014, the paper's).
    pub fn from_map(m: &std::collections::BTreeMap<String, f64>) -> Result<OdinParams> {
        if let Some(k) = m.keys().find(|k| !["t", "epsilon"].contains(&k.as_str())) {
            return Err(Error::param(format!("odin.{k}"), "unknown hyperparameter (known: epsilon, t)"));
        }
        OdinParams::new(m.get("t").copied().unwrap_or(1000.0), m.get("epsilon").copied().unwrap_or(0.0014))
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
    pub fn to_map(&self) -> std::collections::BTreeMap<String, f64> {
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
    for &e in epsilons {
        OdinParams::new(t, e)?;
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
        // x~ = x + eps * sign(grad log S) / std_c (the step that raises S).
        let step = grads[0].sign() / &std;
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
            let auc = super::metrics::ood_metrics(&to_vec(&id[i])?, &to_vec(&ood[i])?)?.auroc;
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

/// Every candidate of ODIN's grid ([`TEMPERATURES`] x [`EPSILONS`]), then the
/// paper's defaults (T = 1000, eps = 0.0014; out of the grid), each scored on
/// ID-val, the validation OOD set of each of `val` (protocol, set), ID test and
/// every OOD test set: what [`super::protocol::choose`] needs. One gradient pass
/// per (temperature, set) serves every eps.
pub fn candidates(
    model: &ResNet18,
    id_val: &Dataset,
    val: &[(super::Protocol, &Dataset)],
    id_test: &Dataset,
    ood: &[Dataset],
    device: Device,
    batch: usize,
) -> Result<Vec<super::protocol::Candidate>> {
    let spec = |t: f64, e: f64| super::DetectorSpec::new(<Odin as super::ModelDetector>::NAME, &[("t", t), ("epsilon", e)]);
    let mut out = Vec::new();
    let d = OdinParams::new(1000.0, 0.0014)?;
    let runs: Vec<(f64, Vec<f64>, bool)> = TEMPERATURES
        .iter()
        .map(|&t| (t, EPSILONS.to_vec(), true))
        .chain(std::iter::once((d.temperature, vec![d.epsilon], false)))
        .collect();
    for (t, eps, in_grid) in runs {
        let all = |data: &Dataset| -> Result<Vec<Vec<f64>>> { scores(model, data, t, &eps, device, batch)?.iter().map(to_vec).collect() };
        let v = all(id_val)?;
        let vs: Vec<(super::Protocol, Vec<Vec<f64>>)> = val.iter().map(|(p, s)| Ok((*p, all(s)?))).collect::<Result<_>>()?;
        let id = all(id_test)?;
        let oo: Vec<(String, Vec<Vec<f64>>)> = ood.iter().map(|o| Ok((o.name.clone(), all(o)?))).collect::<Result<_>>()?;
        for (k, &e) in eps.iter().enumerate() {
            let vrefs: Vec<(super::Protocol, &[f64], &[f64])> = vs.iter().map(|(p, s)| (*p, &v[k][..], &s[k][..])).collect();
            let ood_k = oo.iter().map(|(n, s)| (n.clone(), s[k].clone())).collect();
            out.push(super::protocol::Candidate::new(spec(t, e)?, in_grid, &vrefs, id[k].clone(), ood_k)?);
        }
    }
    Ok(out)
}

/// A score tensor as a `Vec<f64>`.
pub fn to_vec(t: &Tensor) -> Result<Vec<f64>> {
    Ok(Vec::<f64>::try_from(t.to_kind(Kind::Double))?)
}
