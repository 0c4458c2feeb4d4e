//! Hyperparameter selection on held-out data and evaluation into a long-form table.

use super::metrics::{ood_metrics, ood_metrics_ci};
use super::{DetectorSpec, FitData};
use crate::error::{Error, Result};
use crate::features::FeatureSet;
use polars::prelude::*;
use tch::Tensor;

/// Features of one checkpoint needed to evaluate detectors.
pub struct EvalInputs<'a> {
    pub train: &'a FeatureSet,
    pub val: &'a FeatureSet,
    /// OOD validation set (never a test OOD set).
    pub ood_val: &'a FeatureSet,
    pub id_test: &'a FeatureSet,
    pub ood: Vec<&'a FeatureSet>,
    pub weight: &'a Tensor,
    pub bias: &'a Tensor,
}

impl EvalInputs<'_> {
    fn fit_data(&self) -> FitData<'_> {
        FitData { train: self.train, val: Some(self.val), weight: self.weight, bias: self.bias }
    }
}

/// The hyperparameters chosen for one detector.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Selection {
    pub chosen: DetectorSpec,
    /// Every candidate with its AUROC of ID-val against OOD-val.
    pub candidates: Vec<(DetectorSpec, f64)>,
}

/// Fits every candidate of `name`'s grid on ID train and keeps the one with the
/// best AUROC of ID-val against OOD-val (the first on ties). Test OOD sets are
/// never looked at.
pub fn select_hyperparameters(name: &str, inputs: &EvalInputs) -> Result<Selection> {
    let (n, d) = (inputs.train.penultimate.size()[0], inputs.train.penultimate.size()[1]);
    let c = inputs.weight.size()[0];
    let entry = super::detectors::lookup(name)?;
    let grid = (entry.grid)(&super::GridContext { d, c, n })?;
    // Work the whole grid shares (KNN: one pass over the bank per set for every k).
    (entry.prepare_grid)(&grid, inputs.train, &[inputs.val, inputs.ood_val])?;
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

/// One fitted detector at one checkpoint and its scores.
#[derive(Debug)]
pub struct DetectorScores {
    pub epoch: i64,
    /// The chosen detector.
    pub spec: DetectorSpec,
    /// It, fitted (inspect its state with [`super::Fitted::fitted`]; score other sets with it).
    pub fitted: super::Fitted,
    /// ID test scores (higher = more ID).
    pub id: Vec<f64>,
    /// Scores per OOD test set.
    pub ood: Vec<(String, Vec<f64>)>,
}

/// Evaluates `specs` (already chosen) at one checkpoint on every OOD set, with
/// `reps` bootstrap replicates (0 = no intervals). Also reports ID accuracy
/// (detector "classifier", dataset "id-test").
pub fn evaluate(epoch: i64, specs: &[DetectorSpec], inputs: &EvalInputs, reps: usize, seed: u64) -> Result<Vec<Row>> {
    Ok(evaluate_with_scores(epoch, specs, inputs, reps, seed)?.0)
}

/// [`evaluate`], also returning the scores behind the rows.
pub fn evaluate_with_scores(
    epoch: i64,
    specs: &[DetectorSpec],
    inputs: &EvalInputs,
    reps: usize,
    seed: u64,
) -> Result<(Vec<Row>, Vec<DetectorScores>)> {
    if inputs.ood.is_empty() {
        return Err(Error::data("OOD evaluation", "no OOD set"));
    }
    let mut rows = vec![Row {
        epoch,
        key: crate::names::CLASSIFIER.into(),
        dataset: inputs.id_test.name.clone(),
        metric: crate::names::metric::ID_ACCURACY.into(),
        value: super::metrics::accuracy(&inputs.id_test.logits, &inputs.id_test.labels)?,
        ci_low: f64::NAN,
        ci_high: f64::NAN,
    }];
    let mut scores = Vec::new();
    for spec in specs {
        let fitted = spec.fit(&inputs.fit_data())?;
        let id = fitted.score_vec(inputs.id_test)?;
        let ood = inputs.ood.iter().map(|o| Ok((o.name.clone(), fitted.score_vec(o)?))).collect::<Result<Vec<_>>>()?;
        rows.extend(score_rows(epoch, spec.name(), &id, &ood, reps, seed)?);
        scores.push(DetectorScores { epoch, spec: spec.clone(), fitted, id, ood });
    }
    Ok((rows, scores))
}

/// The metric rows of one detector's scores: ID test scores `id` against each
/// named OOD set, with `reps` bootstrap replicates (0 = no intervals).
pub fn score_rows(epoch: i64, detector: &str, id: &[f64], ood: &[(String, Vec<f64>)], reps: usize, seed: u64) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (name, os) in ood {
        let named: Vec<(&str, f64, f64, f64)> = if reps > 0 {
            ood_metrics_ci(id, os, reps, 0.95, seed)?.into_iter().map(|(m, v)| (m, v.value, v.ci_low, v.ci_high)).collect()
        } else {
            ood_metrics(id, os)?.named().into_iter().map(|(m, v)| (m, v, f64::NAN, f64::NAN)).collect()
        };
        for (m, value, ci_low, ci_high) in named {
            rows.push(Row { epoch, key: detector.into(), dataset: name.clone(), metric: m.into(), value, ci_low, ci_high });
        }
    }
    Ok(rows)
}

/// Rows as a polars DataFrame (epoch, detector, dataset, metric, value, ci_low, ci_high).
pub fn rows_to_frame(rows: &[Row]) -> Result<DataFrame> {
    crate::results::to_frame(rows, crate::results::TableKind::Ood)
}

/// Per-sample scores as a table (run, epoch, detector, protocol, dataset, index,
/// score; higher = more ID): ID test first (dataset `id-test`), then each OOD set,
/// in the order of their samples. `protocol` names the selection protocol the
/// hyperparameters were chosen with (`jigsaw` today).
pub fn scores_frame(run: &str, protocol: &str, scores: &[DetectorScores]) -> Result<DataFrame> {
    let (mut ru, mut ep, mut det, mut pr, mut ds, mut idx, mut sc) = (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for s in scores {
        let sets = std::iter::once((crate::names::ID_TEST, &s.id)).chain(s.ood.iter().map(|(n, v)| (n.as_str(), v)));
        for (name, v) in sets {
            for (i, &x) in v.iter().enumerate() {
                ru.push(run.to_string());
                ep.push(s.epoch);
                det.push(s.spec.name().to_string());
                pr.push(protocol.to_string());
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
