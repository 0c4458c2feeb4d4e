//! Model-based detectors: they need the network and the images, not only the
//! cached features (ODIN, i-ODIN and the noisy multi-layer Mahalanobis perturb
//! the input along a gradient, RankFeat edits an inner feature map and runs the
//! rest of the network, Gram reads every layer's full spatial maps, NAC needs
//! each layer's gradient, AdaSCALE perturbs the input and runs it again).
//!
//! Each one is a file here implementing [`ModelDetector`] (its name,
//! hyperparameters with defaults, search grid, and how it fits and scores) plus
//! one line in [`REGISTRY`]. [`study`] runs any of them like the feature-based
//! detectors: every grid candidate and the defaults scored on ID-val, each
//! protocol's OOD-val, ID test and every OOD test set, then chosen by
//! [`super::protocol::choose`] on held-out data only.
//!
//! ```no_run
//! use oodnc::ood::model_detectors::{self, ModelSets};
//! # fn demo(model: &oodnc::model::ResNet18, sets: &ModelSets) -> oodnc::Result<()> {
//! let gram = model_detectors::lookup("gram")?;
//! let cands = model_detectors::candidates(gram, model, sets, tch::Device::Cpu, 256)?;
//! println!("{} candidates, defaults {}", cands.0.len(), cands.0[cands.1].spec.label());
//! # Ok(()) }
//! ```

pub mod adascale;
pub mod gram;
pub mod mahalanobis_noise;
pub mod nac;
pub mod odin;
pub mod rankfeat;

use super::protocol::{Candidate, Protocol};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::ResNet18;
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

/// Hyperparameters by name (booleans as 0 / 1), as in tables and `selection.json`.
pub type Params = BTreeMap<String, f64>;

/// A detector that needs the network and the images.
pub trait ModelDetector: Sync {
    /// Registry name.
    fn name(&self) -> &'static str;
    /// Hyperparameter names, as in tables.
    fn param_names(&self) -> &'static [&'static str];
    /// One line: what it computes, and the paper.
    fn summary(&self) -> &'static str;
    /// The hyperparameters checked (unknown names and out-of-range values are
    /// typed errors), missing ones filled with their defaults.
    fn check(&self, given: &Params) -> Result<Params>;
    /// The search grid (each entry checked), chosen from on held-out data.
    fn grid(&self) -> Vec<Params>;
    /// Fits whatever statistics it keeps on ID images (ODIN and RankFeat keep
    /// none; Gram keeps per-class bounds from the training images, AdaSCALE an
    /// ECDF over the validation images).
    fn fit(&self, model: &ResNet18, data: FitImages, device: Device, batch: usize) -> Result<Box<dyn ModelScorer>>;
    /// The defaults: [`check`](Self::check) of nothing.
    fn defaults(&self) -> Params {
        self.check(&Params::new()).expect("a detector's defaults are valid")
    }
}

/// The ID images a model-based detector may fit on (never OOD ones).
#[derive(Clone, Copy)]
pub struct FitImages<'a> {
    /// ID training images (class statistics, bounds, coverage).
    pub id_train: &'a Dataset,
    /// ID validation images, for the detectors that calibrate on them (AdaSCALE,
    /// as OpenOOD); the others ignore them.
    pub id_val: Option<&'a Dataset>,
}

impl<'a> FitImages<'a> {
    /// Training and (optionally) validation images.
    pub fn new(id_train: &'a Dataset, id_val: Option<&'a Dataset>) -> Self {
        FitImages { id_train, id_val }
    }
    /// Training images only.
    pub fn train(id_train: &'a Dataset) -> Self {
        FitImages { id_train, id_val: None }
    }
}

/// A fitted model-based detector.
pub trait ModelScorer {
    /// Scores (f64 `[N]`, higher = more in-distribution) of `data` for each of
    /// `params` (checked), in order; work shared between them is done once.
    fn scores(&self, model: &ResNet18, data: &Dataset, params: &[Params], device: Device, batch: usize) -> Result<Vec<Tensor>>;
    /// The fitted state, for inspection (`scorer.as_any().downcast_ref::<FittedGram>()`).
    fn as_any(&self) -> &dyn std::any::Any;
}

/// Every model-based detector, in table order.
pub static REGISTRY: &[&dyn ModelDetector] = &[
    &odin::Odin,
    &odin::IOdin,
    &rankfeat::RankFeat,
    &gram::Gram,
    &mahalanobis_noise::MahalanobisNoise,
    &nac::Nac,
    &adascale::AdaScale(adascale::Variant::A),
    &adascale::AdaScale(adascale::Variant::L),
];

/// The model-based detector named `name` (`None` when it is not one).
pub fn find(name: &str) -> Option<&'static dyn ModelDetector> {
    REGISTRY.iter().copied().find(|d| d.name() == name)
}

/// The model-based detector named `name`, or an error listing them.
pub fn lookup(name: &str) -> Result<&'static dyn ModelDetector> {
    find(name).ok_or_else(|| Error::Unknown { kind: "model-based detector".into(), name: name.into(), known: names().join(", ") })
}

/// Every model-based name.
pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().map(|d| d.name()).collect()
}

/// The by-name checks shared by the detectors: `given` may hold only `known`
/// names, each finite.
pub(crate) fn known_only(detector: &str, given: &Params, known: &[&str]) -> Result<()> {
    for (k, v) in given {
        if !known.contains(&k.as_str()) {
            return Err(Error::param(format!("{detector}.{k}"), format!("unknown hyperparameter (known: {})", known.join(", "))));
        }
        if !v.is_finite() {
            return Err(Error::param(format!("{detector}.{k}"), format!("{v} must be a finite number")));
        }
    }
    Ok(())
}

/// A 0 / 1 switch from `given` (default `default`).
pub(crate) fn switch(detector: &str, given: &Params, key: &str, default: bool) -> Result<bool> {
    match given.get(key) {
        None => Ok(default),
        Some(v) if *v == 0.0 => Ok(false),
        Some(v) if *v == 1.0 => Ok(true),
        Some(v) => Err(Error::param(format!("{detector}.{key}"), format!("{v} must be 0 or 1"))),
    }
}

/// What a model-based study scores at one checkpoint.
pub struct ModelSets<'a> {
    /// ID training images (fitting, for the detectors that keep statistics).
    pub id_train: &'a Dataset,
    /// ID validation images.
    pub id_val: &'a Dataset,
    /// Each validation protocol's OOD set (`jigsaw`, `heldout`).
    pub val: Vec<(Protocol, &'a Dataset)>,
    pub id_test: &'a Dataset,
    pub ood: &'a [Dataset],
}

/// Every grid candidate of `det`, then its defaults when they are not in the
/// grid, each scored on every set of `sets`: what [`super::protocol::choose`]
/// needs, and the index of the defaults.
pub fn candidates(
    det: &dyn ModelDetector,
    model: &ResNet18,
    sets: &ModelSets,
    device: Device,
    batch: usize,
) -> Result<(Vec<Candidate>, usize)> {
    let mut params = det.grid();
    let defaults = det.defaults();
    let mut in_grid = vec![true; params.len()];
    let defaults_at = match params.iter().position(|p| *p == defaults) {
        Some(i) => i,
        None => {
            params.push(defaults);
            in_grid.push(false);
            params.len() - 1
        }
    };
    let scorer = det.fit(model, FitImages::new(sets.id_train, Some(sets.id_val)), device, batch)?;
    let all = |data: &Dataset| -> Result<Vec<Vec<f64>>> {
        let s = scorer.scores(model, data, &params, device, batch)?;
        s.iter().map(|t| check_scores(det.name(), data, t)).collect()
    };
    let v = all(sets.id_val)?;
    let vs: Vec<(Protocol, Vec<Vec<f64>>)> = sets.val.iter().map(|(p, s)| Ok((*p, all(s)?))).collect::<Result<_>>()?;
    let id = all(sets.id_test)?;
    let oo: Vec<(String, Vec<Vec<f64>>)> = sets.ood.iter().map(|o| Ok((o.name.clone(), all(o)?))).collect::<Result<_>>()?;
    let mut out = Vec::with_capacity(params.len());
    for (k, p) in params.iter().enumerate() {
        let pairs: Vec<(&str, f64)> = p.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        let spec = super::DetectorSpec::new(det.name(), &pairs)?;
        let vrefs: Vec<(Protocol, &[f64], &[f64])> = vs.iter().map(|(pr, s)| (*pr, &v[k][..], &s[k][..])).collect();
        let ood_k = oo.iter().map(|(n, s)| (n.clone(), s[k].clone())).collect();
        out.push(Candidate::new(spec, in_grid[k], &vrefs, id[k].clone(), ood_k)?);
    }
    Ok((out, defaults_at))
}

/// Scores as a `Vec<f64>`, refusing non-finite ones and a wrong length.
fn check_scores(name: &str, data: &Dataset, t: &Tensor) -> Result<Vec<f64>> {
    let v = Vec::<f64>::try_from(t.to_kind(Kind::Double).to_device(Device::Cpu))?;
    if v.len() != data.len() {
        return Err(Error::shape(format!("{name} scores for {}", data.name), format!("{} scores for {} images", v.len(), data.len())));
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(Error::numerical(format!("{name} scores for {}", data.name), "non-finite scores (NaN/inf in the model or images?)"));
    }
    Ok(v)
}

/// `det` at one checkpoint under every protocol: [`candidates`], then chosen
/// like the feature-based detectors.
pub fn study(
    det: &dyn ModelDetector,
    model: &ResNet18,
    sets: &ModelSets,
    protocols: &[Protocol],
    uninformative_below: f64,
    device: Device,
    batch: usize,
) -> Result<super::eval::DetectorStudy> {
    let (candidates, defaults) = candidates(det, model, sets, device, batch)?;
    let choices =
        protocols.iter().map(|&p| super::protocol::choose(p, &candidates, defaults, uninformative_below)).collect::<Result<_>>()?;
    let fitted = candidates.iter().map(|_| None).collect();
    Ok(super::eval::DetectorStudy { name: det.name().into(), candidates, defaults, fitted, choices })
}

/// Runs `f` on every batch of `data` (eval order, normalised, on `device`) and
/// concatenates what it returns per output on the CPU.
pub(crate) fn per_batch(
    data: &Dataset,
    device: Device,
    batch: usize,
    outputs: usize,
    mut f: impl FnMut(&Tensor) -> Result<Vec<Tensor>>,
) -> Result<Vec<Tensor>> {
    if data.is_empty() {
        return Err(Error::data(data.name.clone(), "the dataset is empty"));
    }
    let loader = crate::data::BatchLoader::new(data, batch, device)?;
    let mut parts: Vec<Vec<Tensor>> = (0..outputs).map(|_| Vec::new()).collect();
    for b in loader.epoch(0) {
        let b = b?;
        let outs = f(&b.images)?;
        for (i, o) in outs.into_iter().enumerate() {
            parts[i].push(o.to_device(Device::Cpu));
        }
    }
    Ok(parts.iter().map(|p| Tensor::cat(p, 0)).collect())
}
