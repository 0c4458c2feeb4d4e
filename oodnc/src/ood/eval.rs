//! Hyperparameter selection on held-out data and evaluation into a long-form table.

use super::metrics::{ood_metrics, ood_metrics_ci};
use super::protocol::{choose, Candidate, Choice, Protocol};
use super::{DetectorSpec, FitData};
use crate::error::{Error, Result};
use crate::features::FeatureSet;
use polars::prelude::*;
use std::collections::HashMap;
use std::rc::Rc;
use tch::Tensor;

/// Features of one checkpoint needed to evaluate detectors.
pub struct EvalInputs<'a> {
    pub train: &'a FeatureSet,
    pub val: &'a FeatureSet,
    /// Jigsaw OOD validation set (protocol `jigsaw`; never a test OOD set).
    pub ood_val: &'a FeatureSet,
    /// The held-out OOD validation set (protocol `heldout`), when configured.
    pub heldout: Option<&'a FeatureSet>,
    pub id_test: &'a FeatureSet,
    pub ood: Vec<&'a FeatureSet>,
    pub weight: &'a Tensor,
    pub bias: &'a Tensor,
}

impl EvalInputs<'_> {
    fn fit_data(&self) -> FitData<'_> {
        FitData::new(self.train, Some(self.val), self.weight, self.bias)
    }

    /// The validation OOD set of a validation protocol.
    fn validation_set(&self, p: Protocol) -> Option<&FeatureSet> {
        match p {
            Protocol::Jigsaw => Some(self.ood_val),
            Protocol::Heldout => self.heldout,
            _ => None,
        }
    }

    /// Whether each ID test sample is classified correctly by the network (for CCR).
    pub fn correct(&self) -> Result<Vec<bool>> {
        correct(&self.id_test.logits, &self.id_test.labels)
    }
}

/// Whether `argmax(logits)` equals the label, per sample.
pub fn correct(logits: &Tensor, labels: &Tensor) -> Result<Vec<bool>> {
    Ok(Vec::<bool>::try_from(logits.argmax(-1, false).eq_tensor(labels))?)
}

/// The hyperparameters chosen for one detector (by the `jigsaw` protocol, see
/// [`select_hyperparameters`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Selection {
    pub chosen: DetectorSpec,
    /// Every candidate with its AUROC of ID-val against OOD-val.
    pub candidates: Vec<(DetectorSpec, f64)>,
}

/// Fits every candidate of `name`'s grid on ID train and keeps the one with the
/// best AUROC of ID-val against the jigsaw OOD-val (the first on ties; no
/// fallback): the `jigsaw` protocol alone. Test OOD sets are never looked at.
/// [`study_detector`] runs every protocol.
pub fn select_hyperparameters(name: &str, inputs: &EvalInputs) -> Result<Selection> {
    let (n, d) = (inputs.train.penultimate.size()[0], inputs.train.penultimate.size()[1]);
    let c = inputs.weight.size()[0];
    let entry = super::detectors::lookup(name)?;
    let grid = (entry.grid)(&super::GridContext { d, c, n })?;
    (entry.prepare_grid)(&grid, &inputs.fit_data(), &[inputs.val, inputs.ood_val])?;
    let mut candidates = Vec::new();
    for det in grid {
        let spec = DetectorSpec::new(det.name(), &det.params().iter().map(|(k, v)| (*k, v.as_f64())).collect::<Vec<_>>())?;
        let fitted = super::Fitted::fit(det, &inputs.fit_data())?;
        let auc = ood_metrics(&fitted.score_vec(inputs.val)?, &fitted.score_vec(inputs.ood_val)?)?.auroc;
        candidates.push((spec, auc));
    }
    let best = candidates
        .iter()
        .fold(None::<&(DetectorSpec, f64)>, |b, x| match b {
            Some(b) if b.1 >= x.1 => Some(b),
            _ => Some(x),
        })
        .ok_or_else(|| Error::data(format!("selection of {name}"), "empty grid"))?;
    Ok(Selection { chosen: best.0.clone(), candidates })
}

/// One row of the long-form results table (key = the detector).
pub use crate::results::Row;

/// One fitted detector at one checkpoint, chosen by one protocol, and its scores.
#[derive(Debug)]
pub struct DetectorScores {
    pub epoch: i64,
    /// The protocol that chose it.
    pub protocol: Protocol,
    /// The chosen detector.
    pub spec: DetectorSpec,
    /// It, fitted (inspect its state with [`super::Fitted::fitted`]; score other
    /// sets with it). `None` for the model-based ODIN. Shared by the protocols that
    /// chose the same candidate.
    pub fitted: Option<Rc<super::Fitted>>,
    /// ID test scores (higher = more ID).
    pub id: Vec<f64>,
    /// Scores per OOD test set (under the oracle, one set per entry: its choice differs per set).
    pub ood: Vec<(String, Vec<f64>)>,
}

/// Evaluates `specs` (already chosen) at one checkpoint on every OOD set, with
/// `reps` bootstrap replicates (0 = no intervals), as protocol `protocol`. Also
/// reports ID accuracy (detector "classifier", dataset "id-test").
pub fn evaluate(epoch: i64, specs: &[DetectorSpec], inputs: &EvalInputs, reps: usize, seed: u64) -> Result<Vec<Row>> {
    Ok(evaluate_with_scores(epoch, Protocol::Jigsaw, specs, inputs, reps, seed)?.0)
}

/// The ID-accuracy row of a protocol's table (detector `classifier`, dataset `id-test`).
pub fn accuracy_row_of(epoch: i64, protocol: Protocol, inputs: &EvalInputs) -> Result<Row> {
    Ok(Row {
        epoch,
        protocol: protocol.name().into(),
        key: crate::names::CLASSIFIER.into(),
        dataset: inputs.id_test.name.clone(),
        metric: crate::names::metric::ID_ACCURACY.into(),
        value: super::metrics::accuracy(&inputs.id_test.logits, &inputs.id_test.labels)?,
        ci_low: f64::NAN,
        ci_high: f64::NAN,
    })
}

/// [`evaluate`], also returning the scores behind the rows.
pub fn evaluate_with_scores(
    epoch: i64,
    protocol: Protocol,
    specs: &[DetectorSpec],
    inputs: &EvalInputs,
    reps: usize,
    seed: u64,
) -> Result<(Vec<Row>, Vec<DetectorScores>)> {
    if inputs.ood.is_empty() {
        return Err(Error::data("OOD evaluation", "no OOD set"));
    }
    let correct = inputs.correct()?;
    let mut rows = vec![accuracy_row_of(epoch, protocol, inputs)?];
    let mut scores = Vec::new();
    for spec in specs {
        let fitted = spec.fit(&inputs.fit_data())?;
        let id = fitted.score_vec(inputs.id_test)?;
        let ood = inputs.ood.iter().map(|o| Ok((o.name.clone(), fitted.score_vec(o)?))).collect::<Result<Vec<_>>>()?;
        for (name, os) in &ood {
            rows.extend(metric_rows(epoch, protocol, spec.name(), name, &id, os, Some(&correct), reps, seed)?);
        }
        scores.push(DetectorScores { epoch, protocol, spec: spec.clone(), fitted: Some(Rc::new(fitted)), id, ood });
    }
    Ok((rows, scores))
}

/// The metric rows of one detector's scores on one OOD set: ID test scores `id`
/// against `ood`, with `reps` bootstrap replicates (0 = no intervals), and the
/// CCR@FPR rows when `correct` (per ID sample) is given (no intervals).
#[allow(clippy::too_many_arguments)]
pub fn metric_rows(
    epoch: i64,
    protocol: Protocol,
    detector: &str,
    dataset: &str,
    id: &[f64],
    ood: &[f64],
    correct: Option<&[bool]>,
    reps: usize,
    seed: u64,
) -> Result<Vec<Row>> {
    let named: Vec<(&str, f64, f64, f64)> = if reps > 0 {
        ood_metrics_ci(id, ood, reps, 0.95, seed)?.into_iter().map(|(m, v)| (m, v.value, v.ci_low, v.ci_high)).collect()
    } else {
        ood_metrics(id, ood)?.named().into_iter().map(|(m, v)| (m, v, f64::NAN, f64::NAN)).collect()
    };
    let row = |m: &str, value, ci_low, ci_high| Row {
        epoch,
        protocol: protocol.name().into(),
        key: detector.into(),
        dataset: dataset.into(),
        metric: m.into(),
        value,
        ci_low,
        ci_high,
    };
    let mut rows: Vec<Row> = named.into_iter().map(|(m, v, lo, hi)| row(m, v, lo, hi)).collect();
    if let Some(c) = correct {
        for (m, fpr) in crate::names::metric::CCR {
            rows.push(row(m, super::metrics::ccr_at_fpr(id, ood, c, fpr)?, f64::NAN, f64::NAN));
        }
    }
    Ok(rows)
}

/// The metric rows of one detector's scores: ID test scores `id` against each
/// named OOD set, with `reps` bootstrap replicates (0 = no intervals).
pub fn score_rows(epoch: i64, detector: &str, id: &[f64], ood: &[(String, Vec<f64>)], reps: usize, seed: u64) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (name, os) in ood {
        rows.extend(metric_rows(epoch, Protocol::Jigsaw, detector, name, id, os, None, reps, seed)?);
    }
    Ok(rows)
}

/// Every candidate of one detector at one checkpoint, with the protocols' choices.
pub struct DetectorStudy {
    pub name: String,
    pub candidates: Vec<Candidate>,
    /// Index of the default candidate.
    pub defaults: usize,
    /// Each candidate fitted (feature-based detectors), or `None` (ODIN).
    pub fitted: Vec<Option<Rc<super::Fitted>>>,
    /// One choice per protocol, in the order asked.
    pub choices: Vec<Choice>,
}

impl DetectorStudy {
    /// The metric rows and the scores of every protocol's choice.
    pub fn evaluate(&self, epoch: i64, correct: &[bool], reps: usize, seed: u64) -> Result<(Vec<Row>, Vec<DetectorScores>)> {
        // A candidate chosen by several protocols is bootstrapped once.
        let mut memo: HashMap<(usize, String), Vec<Row>> = HashMap::new();
        let (mut rows, mut scores) = (Vec::new(), Vec::new());
        for ch in &self.choices {
            for (dataset, i) in &ch.per_dataset {
                let c = &self.candidates[*i];
                let os = &c
                    .ood
                    .iter()
                    .find(|(n, _)| n == dataset)
                    .ok_or_else(|| Error::data("evaluation", format!("no scores for {dataset}")))?
                    .1;
                let key = (*i, dataset.clone());
                if !memo.contains_key(&key) {
                    memo.insert(key.clone(), metric_rows(epoch, ch.protocol, &self.name, dataset, &c.id, os, Some(correct), reps, seed)?);
                }
                rows.extend(memo[&key].iter().cloned().map(|mut r| {
                    r.protocol = ch.protocol.name().into();
                    r
                }));
            }
            let entry = |i: usize, ood: Vec<(String, Vec<f64>)>| DetectorScores {
                epoch,
                protocol: ch.protocol,
                spec: self.candidates[i].spec.clone(),
                fitted: self.fitted[i].clone(),
                id: self.candidates[i].id.clone(),
                ood,
            };
            match ch.single() {
                Some(i) => scores.push(entry(i, self.candidates[i].ood.clone())),
                None => {
                    for (dataset, i) in &ch.per_dataset {
                        let o = self.candidates[*i].ood.iter().filter(|(n, _)| n == dataset).cloned().collect();
                        scores.push(entry(*i, o));
                    }
                }
            }
        }
        Ok((rows, scores))
    }

    /// What each protocol chose, with the evidence (one per protocol).
    pub fn selections(&self, epoch: i64) -> Vec<super::protocol::ProtocolSelection> {
        self.choices.iter().map(|c| super::protocol::ProtocolSelection::new(epoch, c, &self.candidates)).collect()
    }
}

/// The validation sets of `protocols` present in `inputs`; a validation
/// protocol without its set is an error saying how to configure it.
fn validation_sets<'a>(inputs: &'a EvalInputs, protocols: &[Protocol]) -> Result<Vec<(Protocol, &'a FeatureSet)>> {
    protocols
        .iter()
        .filter(|p| p.is_validation())
        .map(|&p| {
            inputs.validation_set(p).map(|s| (p, s)).ok_or_else(|| {
                Error::data(
                    format!("selection protocol {p}"),
                    "has no OOD validation set here (configure ood.heldout, or drop heldout from ood.protocols)",
                )
            })
        })
        .collect()
}

/// Fits every candidate of `name`'s grid (and its defaults) on ID train,
/// scores ID-val, the validation OOD sets, ID test and every OOD test set, and
/// applies each of `protocols` (see [`super::protocol`]).
pub fn study_detector(name: &str, inputs: &EvalInputs, protocols: &[Protocol], uninformative_below: f64) -> Result<DetectorStudy> {
    let (n, d) = (inputs.train.penultimate.size()[0], inputs.train.penultimate.size()[1]);
    let c = inputs.weight.size()[0];
    let entry = super::detectors::lookup(name)?;
    let grid = (entry.grid)(&super::GridContext { d, c, n })?;
    let vsets = validation_sets(inputs, protocols)?;
    let mut all_sets: Vec<&FeatureSet> = vec![inputs.val];
    all_sets.extend(vsets.iter().map(|(_, s)| *s));
    all_sets.push(inputs.id_test);
    all_sets.extend(inputs.ood.iter().copied());
    (entry.prepare_grid)(&grid, &inputs.fit_data(), &all_sets)?;
    let default_spec = DetectorSpec::defaults(entry.name, d, c, n)?;
    let mut specs: Vec<(DetectorSpec, bool)> = grid.iter().map(|d| (DetectorSpec::from_detector(d.as_ref()), true)).collect();
    drop(grid);
    let defaults = match specs.iter().position(|(s, _)| *s == default_spec) {
        Some(i) => i,
        None => {
            specs.push((default_spec, false));
            specs.len() - 1
        }
    };
    let (mut candidates, mut fitted) = (Vec::new(), Vec::new());
    for (spec, in_grid) in specs {
        let f = spec.fit(&inputs.fit_data())?;
        let val = f.score_vec(inputs.val)?;
        let vs: Vec<(Protocol, Vec<f64>)> = vsets.iter().map(|(p, s)| Ok((*p, f.score_vec(s)?))).collect::<Result<_>>()?;
        let vrefs: Vec<(Protocol, &[f64], &[f64])> = vs.iter().map(|(p, o)| (*p, &val[..], &o[..])).collect();
        let id = f.score_vec(inputs.id_test)?;
        let ood = inputs.ood.iter().map(|o| Ok((o.name.clone(), f.score_vec(o)?))).collect::<Result<Vec<_>>>()?;
        candidates.push(Candidate::new(spec, in_grid, &vrefs, id, ood)?);
        fitted.push(Some(Rc::new(f)));
    }
    let choices = protocols.iter().map(|&p| choose(p, &candidates, defaults, uninformative_below)).collect::<Result<Vec<_>>>()?;
    // Keep only the fitted detectors some protocol chose (a KNN holds its bank).
    let used: std::collections::HashSet<usize> = choices.iter().flat_map(|c| c.per_dataset.iter().map(|(_, i)| *i)).collect();
    for (i, f) in fitted.iter_mut().enumerate() {
        if !used.contains(&i) {
            *f = None;
        }
    }
    Ok(DetectorStudy { name: name.into(), candidates, defaults, fitted, choices })
}

/// Rows of `protocol` only.
pub fn protocol_rows(rows: &[Row], protocol: Protocol) -> Vec<Row> {
    rows.iter().filter(|r| r.protocol == protocol.name()).cloned().collect()
}

/// Group-mean rows: for each group of `groups` with at least one member among
/// the datasets of `rows`, the mean of every metric over its members present
/// (dataset `mean:<group>`, no interval), per (epoch, protocol, detector).
pub fn group_rows(rows: &[Row], groups: &std::collections::BTreeMap<String, Vec<String>>) -> Vec<Row> {
    // (epoch, protocol, detector, group, metric) -> (sum, count).
    type Key = (i64, String, String, String, String);
    let mut acc: std::collections::BTreeMap<Key, (f64, usize)> = Default::default();
    for r in rows {
        for (g, members) in groups {
            if members.contains(&r.dataset) {
                let e = acc.entry((r.epoch, r.protocol.clone(), r.key.clone(), g.clone(), r.metric.clone())).or_insert((0.0, 0));
                e.0 += r.value;
                e.1 += 1;
            }
        }
    }
    acc.into_iter()
        .map(|((epoch, protocol, key, g, metric), (sum, n))| Row {
            epoch,
            protocol,
            key,
            dataset: super::protocol::group_dataset(&g),
            metric,
            value: sum / n as f64,
            ci_low: f64::NAN,
            ci_high: f64::NAN,
        })
        .collect()
}

/// Rows as a polars DataFrame (epoch, detector, dataset, metric, value, ci_low, ci_high).
pub fn rows_to_frame(rows: &[Row]) -> Result<DataFrame> {
    crate::results::to_frame(rows, crate::results::TableKind::Ood)
}

/// Per-sample scores as a table (run, epoch, detector, protocol, dataset, index,
/// score; higher = more ID): ID test first (dataset `id-test`), then each OOD set,
/// in the order of their samples, for every entry of `scores` (each names the
/// protocol that chose its hyperparameters; under the oracle the ID test scores
/// are repeated for each OOD set, since its choice differs per set).
pub fn scores_frame(run: &str, scores: &[DetectorScores]) -> Result<DataFrame> {
    let (mut ru, mut ep, mut det, mut pr, mut ds, mut idx, mut sc) = (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for s in scores {
        let sets = std::iter::once((crate::names::ID_TEST, &s.id)).chain(s.ood.iter().map(|(n, v)| (n.as_str(), v)));
        for (name, v) in sets {
            for (i, &x) in v.iter().enumerate() {
                ru.push(run.to_string());
                ep.push(s.epoch);
                det.push(s.spec.name().to_string());
                pr.push(s.protocol.name().to_string());
                ds.push(name.to_string());
                idx.push(i as i64);
                sc.push(x);
            }
        }
    }
    let n = ru.len();
    Ok(DataFrame::new(
        n,
        vec![
            Column::new("run".into(), ru),
            Column::new("epoch".into(), ep),
            Column::new("detector".into(), det),
            Column::new("protocol".into(), pr),
            Column::new("dataset".into(), ds),
            Column::new("index".into(), idx),
            Column::new("score".into(), sc),
        ],
    )?)
}
