//! The OOD study of a run: features from the cache, hyperparameters chosen on
//! held-out data, every detector on every OOD set at every requested checkpoint.

use super::eval::{rows_to_frame, select_hyperparameters, EvalInputs, Row, Selection};
use crate::data::protocol::EvalSets;
use crate::error::{Error, Result};
use crate::features::{cached, ExtractOptions, FeatureSet};
use polars::prelude::*;
use std::path::{Path, PathBuf};
use tch::Device;

/// Results of [`run`].
pub struct OodStudy {
    /// Long form: epoch, detector, dataset, metric, value, ci_low, ci_high.
    pub frame: DataFrame,
    /// The same rows (key = detector).
    pub rows: Vec<Row>,
    /// Chosen hyperparameters per (epoch, detector).
    pub selections: Vec<(i64, Selection)>,
    /// The fitted detectors and the scores behind the table (ID test and every
    /// OOD test set), per (epoch, feature-based detector). A fitted KNN holds its
    /// bank (the normalised training features of its epoch).
    pub scores: Vec<super::eval::DetectorScores>,
    pub csv: PathBuf,
}

/// Features of every evaluation set at `epoch`.
pub struct EpochFeatures {
    pub train: FeatureSet,
    pub val: FeatureSet,
    pub ood_val: FeatureSet,
    pub test: FeatureSet,
    pub ood: Vec<FeatureSet>,
}

impl EpochFeatures {
    /// The detector inputs, with the classifier `w` `[C, D]`, `b` `[C]`.
    pub fn inputs<'a>(&'a self, w: &'a tch::Tensor, b: &'a tch::Tensor) -> EvalInputs<'a> {
        EvalInputs {
            train: &self.train,
            val: &self.val,
            ood_val: &self.ood_val,
            id_test: &self.test,
            ood: self.ood.iter().collect(),
            weight: w,
            bias: b,
        }
    }
}

/// Extracts (or reads from the cache) every evaluation set at `epoch`.
pub fn epoch_features(run_dir: &Path, epoch: i64, sets: &EvalSets, opts: ExtractOptions, device: Device) -> Result<EpochFeatures> {
    let f = |d: &crate::data::Dataset| cached(run_dir, epoch, d, opts, device);
    Ok(EpochFeatures {
        train: f(&sets.id_train)?,
        val: f(&sets.id_val)?,
        ood_val: f(&sets.ood_val)?,
        test: f(&sets.id_test)?,
        ood: sets.ood.iter().map(f).collect::<Result<_>>()?,
    })
}

/// Runs the OOD study of `run_dir` for `epochs` (all checkpoints when empty) and
/// `detectors`, with `reps` bootstrap replicates; writes `ood/metrics.csv` and
/// `ood/selection.json` in the run folder. `detectors` are names of the
/// feature-based registry and, optionally, `odin` (model-based: it runs the
/// network with input gradients on the images, see [`super::odin`]).
///
/// The tables are merged, never shrunk: rows (epoch, detector, dataset) and
/// selections (epoch, detector) this call computed replace the old ones, every
/// other row is kept. The detector list is checked before anything is read or
/// written; the run's tables lock is held while the study runs.
pub fn run(run_dir: &Path, epochs: &[i64], detectors: &[&str], reps: usize, device: Device) -> Result<OodStudy> {
    check_detectors(detectors)?;
    study(&crate::run::Run::open(run_dir)?, epochs, detectors, reps, device)
}

/// Errors on an empty list or an unknown name, listing the valid ones.
fn check_detectors(detectors: &[&str]) -> Result<()> {
    if detectors.is_empty() {
        return Err(Error::param(
            "--detectors",
            format!("is empty; name at least one: all, seed, odin, or any of {}", super::detector_names().join(", ")),
        ));
    }
    for d in detectors {
        super::DetectorSpec::new(d, &[])?;
    }
    Ok(())
}

/// [`run`] on an opened [`Run`](crate::run::Run).
pub fn study(run: &crate::run::Run, epochs: &[i64], detectors: &[&str], reps: usize, device: Device) -> Result<OodStudy> {
    check_detectors(detectors)?;
    let run_dir = run.dir();
    let cfg = run.config();
    let _lock = run.lock_tables()?;
    let epochs = run.select_epochs(epochs)?;
    let with_odin = detectors.contains(&ODIN);
    let feature_detectors: Vec<&str> = detectors.iter().copied().filter(|d| *d != ODIN).collect();
    let sets = run.eval_sets()?;
    let mut rows: Vec<Row> = Vec::new();
    let mut selections = Vec::new();
    let mut scores = Vec::new();
    let mut prog = crate::progress::Progress::new("ood", (epochs.len() * detectors.len()) as u64);
    for &epoch in &epochs {
        let feats = epoch_features(run_dir, epoch, &sets, ExtractOptions::default(), device)?;
        let (w, b) = run.head(epoch)?;
        let inputs = feats.inputs(&w, &b);
        let mut chosen = Vec::new();
        for d in &feature_detectors {
            let sel = select_hyperparameters(d, &inputs)?;
            chosen.push(sel.chosen.clone());
            selections.push((epoch, sel));
            prog.inc(1, || format!("epoch {epoch} {d}"));
        }
        let (mut r, mut sc) = super::eval::evaluate_with_scores(epoch, &chosen, &inputs, reps, cfg.seed)?;
        rows.append(&mut r);
        scores.append(&mut sc);
        if with_odin {
            let (sel, mut r) = odin_epoch(run_dir, epoch, &sets, reps, cfg.seed, device)?;
            selections.push((epoch, sel));
            rows.append(&mut r);
            prog.inc(1, || format!("epoch {epoch} odin"));
        }
    }
    prog.finish();
    let frame = rows_to_frame(&rows)?;
    let csv = run.table(crate::run::Table::OodMetrics);
    crate::run::ensure_dir(csv.parent().unwrap_or(run_dir), "results folder")?;
    crate::report::merge_csv(&csv, &frame, &["epoch", "detector", "dataset"])?;
    // Significance: each (epoch, dataset) group compares the detectors of this call, so a
    // recomputed group replaces the previous comparison as a whole.
    let sig = super::significance::table(&scores)?;
    if sig.height() > 0 {
        crate::report::merge_csv(&run.table(crate::run::Table::OodSignificance), &sig, &["epoch", "dataset"])?;
    }
    let sel_json: Vec<serde_json::Value> = selections
        .iter()
        .map(|(e, s)| serde_json::json!({"epoch": e, "detector": s.chosen.name(), "chosen": s.chosen.params(), "candidates": s.candidates.iter().map(|(c, a)| serde_json::json!({"params": c.params(), "val_auroc_vs_ood_val": a})).collect::<Vec<_>>()}))
        .collect();
    crate::report::merge_json_array(&run.table(crate::run::Table::OodSelection), sel_json, &["epoch", "detector"])?;
    Ok(OodStudy { frame, rows, selections, scores, csv })
}

/// Name of the model-based detector in `detectors` lists.
pub const ODIN: &str = <super::odin::Odin as super::ModelDetector>::NAME;

/// ODIN at one checkpoint: (T, eps) chosen on ID-val vs OOD-val, then scored on
/// ID test and every OOD test set. The selection is reported like the
/// feature-based ones (a spec named `odin` with `t` and `epsilon`).
pub fn odin_epoch(run_dir: &Path, epoch: i64, sets: &EvalSets, reps: usize, seed: u64, device: Device) -> Result<(Selection, Vec<Row>)> {
    use super::odin;
    let (_vs, model, _) = crate::run::load_run_model(run_dir, epoch, device)?;
    let batch = 256;
    let sel = odin::select(&model, &sets.id_val, &sets.ood_val, device, batch)?;
    let spec = |p: &odin::OdinParams| super::DetectorSpec::new(ODIN, &[("t", p.temperature), ("epsilon", p.epsilon)]);
    let p = sel.chosen;
    let id = odin::to_vec(&odin::score(&model, &sets.id_test, p, device, batch)?)?;
    let ood = sets
        .ood
        .iter()
        .map(|o| Ok((o.name.clone(), odin::to_vec(&odin::score(&model, o, p, device, batch)?)?)))
        .collect::<Result<Vec<_>>>()?;
    let rows = super::eval::score_rows(epoch, ODIN, &id, &ood, reps, seed)?;
    let selection =
        Selection { chosen: spec(&p)?, candidates: sel.candidates.iter().map(|(c, a)| Ok((spec(c)?, *a))).collect::<Result<_>>()? };
    Ok((selection, rows))
}

/// CSV export and import of long-form tables (they live in [`crate::results`]).
pub use crate::results::{read_csv, write_csv};
