//! Post-hoc OOD detectors and their evaluation.
//!
//! **Sign convention: every score is "higher = more in-distribution".** (The
//! original project used "higher = more OOD"; AUROC is unchanged, the FPR@95
//! conventions are named explicitly in [`metrics`].)
//!
//! The API follows linfa (see [`detector`]): each detector is a typed struct of
//! checked hyperparameters ([`Registered`], one file per detector under
//! [`detectors`], with its formula, paper, defaults and search grid) that is
//! fitted on ID training features and the classifier head into an inspectable
//! fitted type. The registry ([`detectors::REGISTRY`], one line per detector)
//! serves the by-name [`DetectorSpec`] that the CLI, notebooks and tables use.
//! The detectors that need the model and the images rather than features
//! (ODIN, i-ODIN, RankFeat, Gram) are [`ModelDetector`]s in [`model_detectors`],
//! with their own registry; [`pipeline::run`] takes them by name too.
//!
//! ```no_run
//! use oodnc::ood::{detectors::vim::{FittedVim, Vim}, Detector, FitData, Fitted};
//! # fn demo(data: &FitData, test: &oodnc::features::FeatureSet) -> oodnc::Result<()> {
//! let fitted = Fitted::fit(Box::new(Vim { dim: 32 }), data)?;
//! println!("alpha = {}", fitted.fitted::<FittedVim>().unwrap().alpha);
//! let scores = fitted.score(test)?; // higher = more in-distribution
//! # Ok(()) }
//! ```

pub mod detector;
pub mod detectors;
pub mod eval;
/// The numerics helpers, at their old path (they live in [`crate::numerics`]).
pub use crate::numerics as linalg;
pub mod metrics;
pub mod model_detectors;
/// ODIN and i-ODIN, at their old path (they live in [`model_detectors::odin`]).
pub use model_detectors::odin;
pub mod pipeline;
pub mod protocol;
pub mod significance;

use crate::error::{Error, Result};
use std::collections::BTreeMap;

pub use detector::{Detector, FitData, Fitted, GridContext, ParamValue, Precision, Registered, Scorer};
pub use detectors::knn;
pub use eval::{evaluate, select_hyperparameters, EvalInputs, Selection};
pub use metrics::{ood_metrics, OodMetrics};
pub use model_detectors::{ModelDetector, ModelScorer};
pub use protocol::{OodConfig, Protocol};

/// A detector by name with its hyperparameters, checked: what the CLI,
/// notebooks and result tables use (`selection.json` holds these). Built only
/// through [`DetectorSpec::new`] (or a grid), so it is always valid; the typed
/// detector behind it is [`DetectorSpec::detector`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DetectorSpec {
    name: String,
    /// Every hyperparameter (defaults filled in), as numbers (`true` = 1).
    params: BTreeMap<String, f64>,
}

/// All registered feature-based names (table order).
pub fn detector_names() -> Vec<&'static str> {
    detectors::REGISTRY.iter().map(|e| e.name).collect()
}

/// (name, hyperparameter names, one-line description) of every feature-based
/// detector, then of the model-based ones.
pub fn detector_summaries() -> Vec<(&'static str, Vec<&'static str>, &'static str)> {
    let mut v: Vec<_> = detectors::REGISTRY.iter().map(|e| (e.name, (e.param_names)(), e.summary)).collect();
    v.extend(model_detectors::REGISTRY.iter().map(|d| (d.name(), d.param_names().to_vec(), d.summary())));
    v
}

/// A comma-separated detector list as the CLI takes it, expanded and checked:
/// `all` (every feature-based detector), `seed` (the original's six) and
/// `model` (every model-based one) expand in place; repeats are dropped (first
/// kept); an unknown name is an error listing the valid ones.
pub fn expand_detector_list(list: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for d in list.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let names: Vec<&str> = match d {
            "all" => detector_names(),
            "seed" => SEED_SIX.to_vec(),
            "model" => model_detectors::names(),
            other => {
                if model_detectors::find(other).is_none() {
                    detectors::lookup(other).map_err(|_| Error::Unknown {
                        kind: "detector".into(),
                        name: other.into(),
                        known: format!("all, seed, model, {}, {}", detector_names().join(", "), model_detectors::names().join(", ")),
                    })?;
                }
                vec![other]
            }
        };
        for n in names {
            if !out.iter().any(|o| o == n) {
                out.push(n.to_string());
            }
        }
    }
    if out.is_empty() {
        return Err(Error::param("--detectors", "is empty; name at least one: all, seed, model, or a detector"));
    }
    Ok(out)
}

/// The original project's six (done right).
pub const SEED_SIX: [&str; 6] = ["msp", "maxlogit", "energy", "mahalanobis", "vim", "neco"];

fn to_map(d: &dyn Detector) -> BTreeMap<String, f64> {
    d.params().into_iter().map(|(k, v)| (k.to_string(), v.as_f64())).collect()
}

impl DetectorSpec {
    /// A detector with hyperparameters; unknown names, unknown or out-of-range
    /// parameters are errors listing the valid ones. Missing parameters take
    /// their defaults. Model-based detectors ([`model_detectors`]) are accepted too; they
    /// are run by [`pipeline`], not by [`fit`](Self::fit).
    pub fn new(name: &str, params: &[(&str, f64)]) -> Result<Self> {
        let given: BTreeMap<String, f64> = params.iter().map(|&(k, v)| (k.to_string(), v)).collect();
        if let Some(m) = model_detectors::find(name) {
            return Ok(DetectorSpec { name: name.into(), params: m.check(&given)? });
        }
        let d = (detectors::lookup(name)?.build)(&given)?;
        Ok(DetectorSpec { name: name.into(), params: to_map(d.as_ref()) })
    }

    fn from_detector(d: &dyn Detector) -> Self {
        DetectorSpec { name: d.name().into(), params: to_map(d) }
    }

    /// The detector's registry name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every hyperparameter (defaults filled in).
    pub fn params(&self) -> &BTreeMap<String, f64> {
        &self.params
    }

    /// A hyperparameter's value, or an error naming the known ones.
    pub fn get(&self, key: &str) -> Result<f64> {
        self.params.get(key).copied().ok_or_else(|| {
            Error::param(
                format!("{}.{key}", self.name),
                format!("no such hyperparameter (known: {})", self.params.keys().cloned().collect::<Vec<_>>().join(", ")),
            )
        })
    }

    /// The typed, checked detector behind this spec.
    pub fn detector(&self) -> Result<Box<dyn Detector>> {
        if model_detectors::find(&self.name).is_some() {
            return Err(Error::data(
                self.name.clone(),
                "is model-based (it needs the network and the images): run it through `ood::pipeline` or `ood::model_detectors`",
            ));
        }
        (detectors::lookup(&self.name)?.build)(&self.params)
    }

    /// Fits on ID training features and the head.
    pub fn fit(&self, data: &FitData) -> Result<Fitted> {
        Fitted::fit(self.detector()?, data)
    }

    /// Label for tables: `vim(dim=64)`.
    pub fn label(&self) -> String {
        if self.params.is_empty() {
            self.name.clone()
        } else {
            let p: Vec<String> = self.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{}({})", self.name, p.join(","))
        }
    }

    /// The paper's defaults of `name` fitted to the data's sizes (ViM's `dim`
    /// below `d`, KNN's `k` at most `n`, ...): what the `defaults` protocol uses.
    pub fn defaults(name: &str, d: i64, c: i64, n: i64) -> Result<DetectorSpec> {
        let det = (detectors::lookup(name)?.defaults)(&GridContext { d, c, n })?;
        Ok(DetectorSpec::from_detector(det.as_ref()))
    }

    /// Candidate hyperparameters of `name` to choose from on held-out data, for
    /// features of dimension `d`, `c` classes and `n` training samples (each
    /// detector's grid is defined beside its formula).
    pub fn grid(name: &str, d: i64, c: i64, n: i64) -> Result<Vec<DetectorSpec>> {
        let g = (detectors::lookup(name)?.grid)(&GridContext { d, c, n })?;
        Ok(g.iter().map(|d| DetectorSpec::from_detector(d.as_ref())).collect())
    }
}
