//! Post-hoc OOD detectors and their evaluation.
//!
//! **Sign convention: every score is "higher = more in-distribution".** (The
//! original project used "higher = more OOD"; AUROC is unchanged, the FPR@95
//! conventions are named explicitly in [`metrics`].)
//!
//! The API follows linfa: a [`DetectorSpec`] (name + hyperparameters, validated
//! once) is fitted on ID training features and the classifier head, giving a
//! [`Fitted`] detector that scores any [`FeatureSet`]. Every detector is
//! registered by name in [`DETECTORS`], so the notebooks and the CLI share them.
//! Formulas and papers are documented on each constructor in [`detectors`].
//! ODIN, which needs the model and the images rather than features, is in
//! [`odin`]; [`pipeline::run`] takes it by the name `odin`.

pub mod detectors;
pub mod eval;
pub mod knn;
pub mod linalg;
pub mod metrics;
pub mod odin;
pub mod pipeline;

use crate::error::{Error, Result};
use crate::features::FeatureSet;
use std::collections::BTreeMap;
use tch::Tensor;

pub use eval::{evaluate, select_hyperparameters, EvalInputs, Selection};
pub use metrics::{ood_metrics, OodMetrics};

/// What a detector is fitted on.
pub struct FitData<'a> {
    /// ID training features (unaugmented), with labels.
    pub train: &'a FeatureSet,
    /// ID validation features (for detectors that calibrate, e.g. TempScale).
    pub val: Option<&'a FeatureSet>,
    /// Classifier weight `[C, D]` and bias `[C]`.
    pub weight: &'a Tensor,
    pub bias: &'a Tensor,
}

/// The scoring function of a fitted detector.
type Scorer = Box<dyn Fn(&FeatureSet) -> Result<Tensor> + Send>;

/// A fitted detector: scores `[N]` (f64, higher = more ID) for a feature set.
pub struct Fitted {
    pub name: String,
    pub params: BTreeMap<String, f64>,
    scorer: Scorer,
}

impl std::fmt::Debug for Fitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fitted({} {:?})", self.name, self.params)
    }
}

impl Fitted {
    pub(crate) fn new(
        spec: &DetectorSpec,
        scorer: impl Fn(&FeatureSet) -> Result<Tensor> + Send + 'static,
    ) -> Self {
        Fitted {
            name: spec.name.clone(),
            params: spec.params.clone(),
            scorer: Box::new(scorer),
        }
    }

    /// Scores of every sample of `f`.
    pub fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        if f.is_empty() {
            return Err(Error::data(format!("{} scores for {}", self.name, f.name), "the feature set is empty"));
        }
        let s = (self.scorer)(f)?;
        if !bool::try_from(s.isfinite().all()).unwrap_or(false) {
            return Err(Error::numerical(format!("{} scores for {}", self.name, f.name), "non-finite scores (NaN/inf in the features?)"));
        }
        Ok(s)
    }

    /// Scores as a `Vec<f64>`.
    pub fn score_vec(&self, f: &FeatureSet) -> Result<Vec<f64>> {
        Ok(Vec::<f64>::try_from(self.score(f)?.to_kind(tch::Kind::Double))?)
    }
}

/// A detector name with its hyperparameters.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DetectorSpec {
    pub name: String,
    pub params: BTreeMap<String, f64>,
}

/// Registered detectors: (name, hyperparameter names, one-line description).
pub const DETECTORS: &[(&str, &[&str], &str)] = &[
    ("msp", &[], "maximum softmax probability (Hendrycks & Gimpel 2017), returned as log-MSP"),
    ("maxlogit", &[], "maximum logit (Hendrycks et al. 2022)"),
    ("energy", &["t"], "free energy T logsumexp(z/T) (Liu et al. 2020)"),
    ("entropy", &[], "negative predictive entropy"),
    ("gen", &["gamma", "m"], "generalized entropy over the top-M probabilities (Liu et al. 2023)"),
    ("tempscale", &[], "log-MSP after temperature scaling fitted on ID val (Guo et al. 2017)"),
    ("klm", &[], "KL matching to class-conditional mean softmax (Hendrycks et al. 2022)"),
    ("mahalanobis", &[], "min class-conditional Mahalanobis distance, tied covariance (Lee et al. 2018)"),
    ("rmds", &[], "relative Mahalanobis distance (Ren et al. 2021)"),
    ("knn", &["k"], "distance to the k-th nearest normalised train feature (Sun et al. 2022)"),
    ("vim", &["dim"], "virtual-logit matching (Wang et al. 2022)"),
    ("residual", &["dim"], "norm of the residual outside the principal subspace (Wang et al. 2022)"),
    ("neco", &["d", "maxlogit"], "neural-collapse-inspired PCA norm ratio (Ammar et al. 2024)"),
    ("neco_seed", &["d"], "the original project's NECO variant (no scaler, uncentred), for comparison"),
    ("react", &["p"], "energy after clipping features at the p-th percentile (Sun et al. 2021)"),
    ("ash_p", &["p"], "activation shaping, prune (Djurisic et al. 2023)"),
    ("ash_b", &["p"], "activation shaping, binarise (Djurisic et al. 2023)"),
    ("ash_s", &["p"], "activation shaping, scale (Djurisic et al. 2023)"),
    ("dice", &["p"], "energy with sparsified class weights (Sun & Li 2022)"),
    ("she", &[], "simplified Hopfield energy with class patterns (Zhang et al. 2023)"),
    ("fdbd", &[], "feature distance to decision boundaries (Liu & Qin 2024)"),
];

/// All registered names.
pub fn detector_names() -> Vec<&'static str> {
    DETECTORS.iter().map(|d| d.0).collect()
}

/// The original project's six (done right).
pub const SEED_SIX: [&str; 6] = ["msp", "maxlogit", "energy", "mahalanobis", "vim", "neco"];

impl DetectorSpec {
    /// A detector with hyperparameters; unknown names, unknown or out-of-range
    /// parameters are errors. Missing parameters take their defaults.
    pub fn new(name: &str, params: &[(&str, f64)]) -> Result<Self> {
        let entry = DETECTORS
            .iter()
            .find(|d| d.0 == name)
            .ok_or_else(|| Error::Unknown {
                kind: "detector".into(),
                name: name.into(),
                known: detector_names().join(", "),
            })?;
        let mut p: BTreeMap<String, f64> = detectors::defaults(name).into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        for &(k, v) in params {
            if !entry.1.contains(&k) {
                return Err(Error::param(
                    format!("{name}.{k}"),
                    format!("unknown hyperparameter (known: {})", if entry.1.is_empty() { "none".to_string() } else { entry.1.join(", ") }),
                ));
            }
            p.insert(k.to_string(), v);
        }
        let spec = DetectorSpec { name: name.to_string(), params: p };
        detectors::validate(&spec)?;
        Ok(spec)
    }

    /// A hyperparameter's value.
    pub fn get(&self, key: &str) -> f64 {
        self.params.get(key).copied().unwrap_or(f64::NAN)
    }

    /// Fits on ID training features and the head.
    pub fn fit(&self, data: &FitData) -> Result<Fitted> {
        detectors::fit(self, data)
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

    /// Candidate hyperparameters to choose from on held-out data, for features of
    /// dimension `d`, `c` classes and `n` training samples.
    pub fn grid(name: &str, d: i64, c: i64, n: i64) -> Result<Vec<DetectorSpec>> {
        let vals: Vec<Vec<(&str, f64)>> = match name {
            "energy" => [0.5, 1.0, 2.0, 5.0].iter().map(|&t| vec![("t", t)]).collect(),
            "gen" => {
                let mut v = Vec::new();
                for g in [0.01, 0.1, 0.5] {
                    for m in [10.min(c), c] {
                        v.push(vec![("gamma", g), ("m", m as f64)]);
                    }
                }
                v.dedup();
                v
            }
            "vim" | "residual" => {
                let mut v: Vec<Vec<(&str, f64)>> = [10, 20, 50, 64, 100, 128, 256, 300]
                    .iter()
                    .filter(|&&k| k < d)
                    .map(|&k| vec![("dim", k as f64)])
                    .collect();
                if v.is_empty() {
                    v.push(vec![("dim", (d / 2).max(1) as f64)]);
                }
                v
            }
            "neco" => {
                let mut v: Vec<Vec<(&str, f64)>> = [10, 20, 50, 100, 200, 300, 400, 500]
                    .iter()
                    .filter(|&&k| k < d)
                    .map(|&k| vec![("d", k as f64), ("maxlogit", 0.0)])
                    .collect();
                v.push(vec![("d", (c - 1).clamp(1, d - 1) as f64), ("maxlogit", 0.0)]);
                v.push(vec![("d", (c - 1).clamp(1, d - 1) as f64), ("maxlogit", 1.0)]);
                v
            }
            "knn" => [1, 5, 10, 50, 100, 200].iter().filter(|&&k| k <= n).map(|&k| vec![("k", k as f64)]).collect(),
            "react" => [80.0, 85.0, 90.0, 95.0, 99.0].iter().map(|&p| vec![("p", p)]).collect(),
            "ash_p" | "ash_b" | "ash_s" => [60.0, 70.0, 80.0, 85.0, 90.0, 95.0].iter().map(|&p| vec![("p", p)]).collect(),
            "dice" => [10.0, 30.0, 50.0, 70.0, 90.0].iter().map(|&p| vec![("p", p)]).collect(),
            "neco_seed" => vec![vec![("d", c.min(d - 1) as f64)]],
            _ => vec![vec![]],
        };
        vals.iter().map(|p| DetectorSpec::new(name, p)).collect()
    }
}
