//! The OOD study of a run: features from the cache, hyperparameters chosen on
//! held-out data, every detector on every OOD set at every requested checkpoint.

use super::eval::{rows_to_frame, EvalInputs, Row};
use super::protocol::{Protocol, ProtocolSelection};
use crate::data::protocol::EvalSets;
use crate::error::{Error, Result};
use crate::features::{cached, ExtractOptions, FeatureSet};
use polars::prelude::*;
use std::path::{Path, PathBuf};
use tch::Device;

/// Results of [`run`].
pub struct OodStudy {
    /// Long form: epoch, protocol, detector, dataset, metric, value, ci_low,
    /// ci_high; every configured protocol, and the group means (`mean:<group>`).
    pub frame: DataFrame,
    /// The same rows (key = detector).
    pub rows: Vec<Row>,
    /// The run's headline protocol (`ood.headline`).
    pub headline: Protocol,
    /// What each protocol chose per (epoch, detector), with the evidence.
    pub selections: Vec<ProtocolSelection>,
    /// The fitted detectors and the scores behind the table (ID test and every
    /// OOD test set), per (epoch, protocol, detector). A fitted KNN holds its
    /// bank (the normalised training features of its epoch).
    pub scores: Vec<super::eval::DetectorScores>,
    pub csv: PathBuf,
}

impl OodStudy {
    /// The rows of `protocol` only.
    pub fn rows_of(&self, protocol: Protocol) -> Vec<Row> {
        super::eval::protocol_rows(&self.rows, protocol)
    }

    /// The rows of the headline protocol.
    pub fn headline_rows(&self) -> Vec<Row> {
        self.rows_of(self.headline)
    }

    /// The best / tied marks of `protocol` at `epoch` (DeLong, Holm, alpha 0.05),
    /// for [`crate::report::ood_table_with_intervals`].
    pub fn marks(&self, epoch: i64, protocol: Protocol) -> Result<crate::report::Marks> {
        let sig = super::significance::table(
            &self.scores.iter().filter(|s| s.epoch == epoch && s.protocol == protocol).collect::<Vec<_>>(),
            0,
            0,
        )?;
        crate::report::Marks::from_frame(&sig, epoch, protocol)
    }

    /// The scores of `protocol` only.
    pub fn scores_of(&self, protocol: Protocol) -> Vec<&super::eval::DetectorScores> {
        self.scores.iter().filter(|s| s.protocol == protocol).collect()
    }
}

/// Features of every evaluation set at `epoch`.
pub struct EpochFeatures {
    pub train: FeatureSet,
    pub val: FeatureSet,
    pub ood_val: FeatureSet,
    pub heldout: Option<FeatureSet>,
    pub test: FeatureSet,
    pub ood: Vec<FeatureSet>,
}

impl EpochFeatures {
    /// Every set on `device` (see [`FeatureSet::to_device`]).
    pub fn to_device(&self, device: Device) -> EpochFeatures {
        EpochFeatures {
            train: self.train.to_device(device),
            val: self.val.to_device(device),
            ood_val: self.ood_val.to_device(device),
            heldout: self.heldout.as_ref().map(|h| h.to_device(device)),
            test: self.test.to_device(device),
            ood: self.ood.iter().map(|o| o.to_device(device)).collect(),
        }
    }

    /// The detector inputs, with the classifier `w` `[C, D]`, `b` `[C]`.
    pub fn inputs<'a>(&'a self, w: &'a tch::Tensor, b: &'a tch::Tensor) -> EvalInputs<'a> {
        EvalInputs {
            train: &self.train,
            val: &self.val,
            ood_val: &self.ood_val,
            heldout: self.heldout.as_ref(),
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
        heldout: sets.heldout.as_ref().map(f).transpose()?,
        test: f(&sets.id_test)?,
        ood: sets.ood.iter().map(f).collect::<Result<_>>()?,
    })
}

/// Runs the OOD study of `run_dir` for `epochs` (all checkpoints when empty) and
/// `detectors`, with `reps` bootstrap replicates, under every selection
/// protocol of the run's `ood.protocols` (see [`super::protocol`]); writes
/// `ood/metrics.csv`, `ood/selection.json` and `ood/significance.csv` in the
/// run folder. `detectors` are names of the feature-based registry and of the
/// model-based one ([`super::model_detectors`]: `odin`, `iodin`, `rankfeat`,
/// `gram`; they run the network on the images).
///
/// The tables are merged, never shrunk: rows (epoch, protocol, detector,
/// dataset) and selections (epoch, protocol, detector) this call computed
/// replace the old ones, every other row is kept. The detector list is checked
/// before anything is read or written; the run's tables lock is held while the
/// study runs.
pub fn run(run_dir: &Path, epochs: &[i64], detectors: &[&str], reps: usize, device: Device) -> Result<OodStudy> {
    check_detectors(detectors)?;
    study(&crate::run::Run::open(run_dir)?, epochs, detectors, reps, device)
}

/// Errors on an empty list or an unknown name, listing the valid ones.
fn check_detectors(detectors: &[&str]) -> Result<()> {
    if detectors.is_empty() {
        return Err(Error::param(
            "--detectors",
            format!(
                "is empty; name at least one: all, seed, model, or any of {}, {}",
                super::detector_names().join(", "),
                super::model_detectors::names().join(", ")
            ),
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
    let protocols = cfg.ood.protocols.clone();
    let _lock = run.lock_tables()?;
    let epochs = run.select_epochs(epochs)?;
    let model_detectors: Vec<&dyn super::ModelDetector> = detectors.iter().filter_map(|d| super::model_detectors::find(d)).collect();
    let feature_detectors: Vec<&str> = detectors.iter().copied().filter(|d| super::model_detectors::find(d).is_none()).collect();
    let sets = run.eval_sets()?;
    let mut rows: Vec<Row> = Vec::new();
    let mut selections = Vec::new();
    let mut scores = Vec::new();
    let mut prog = crate::progress::Progress::new("ood", (epochs.len() * detectors.len()) as u64);
    // Layer taps only when a detector reads them (the multi-layer Mahalanobis ensemble).
    let taps = feature_detectors.iter().any(|d| super::detectors::lookup(d).map(|e| e.needs_taps).unwrap_or(false));
    for &epoch in &epochs {
        // The features (cached on the CPU) and the head go to the device: every
        // detector computes there (the GPU when there is one).
        let feats = epoch_features(run_dir, epoch, &sets, ExtractOptions { taps, pool2x2: false }, device)?.to_device(device);
        let (w, b) = run.head(epoch)?;
        let (w, b) = (w.to_device(device), b.to_device(device));
        let inputs = feats.inputs(&w, &b);
        let correct = inputs.correct()?;
        for &p in &protocols {
            rows.push(super::eval::accuracy_row_of(epoch, p, &inputs)?);
        }
        for d in &feature_detectors {
            let st = super::eval::study_detector(d, &inputs, &protocols, cfg.ood.uninformative_below)?;
            let (mut r, mut sc) = st.evaluate(epoch, &correct, reps, cfg.seed)?;
            rows.append(&mut r);
            scores.append(&mut sc);
            selections.extend(st.selections(epoch));
            prog.inc(1, || format!("epoch {epoch} {d}"));
        }
        if !model_detectors.is_empty() {
            let (_vs, model, _) = crate::run::load_run_model(run_dir, epoch, device)?;
            let msets = model_sets(&sets, &protocols)?;
            for det in &model_detectors {
                let st = super::model_detectors::study(*det, &model, &msets, &protocols, cfg.ood.uninformative_below, device, 256)?;
                let (mut r, mut sc) = st.evaluate(epoch, &correct, reps, cfg.seed)?;
                rows.append(&mut r);
                scores.append(&mut sc);
                selections.extend(st.selections(epoch));
                prog.inc(1, || format!("epoch {epoch} {}", det.name()));
            }
        }
    }
    prog.finish();
    rows.extend(super::eval::group_rows(&rows, &cfg.ood.groups));
    let frame = rows_to_frame(&rows)?;
    let csv = run.table(crate::run::Table::OodMetrics);
    crate::run::ensure_dir(csv.parent().unwrap_or(run_dir), "results folder")?;
    let legacy = [("protocol", Protocol::Jigsaw.name())];
    crate::report::merge_csv_upgrading(&csv, &frame, &["epoch", "protocol", "detector", "dataset"], &legacy)?;
    // Significance: each (epoch, protocol, dataset) group compares the detectors of this
    // call, so a recomputed group replaces the previous comparison as a whole.
    let sig = super::significance::table(&scores.iter().collect::<Vec<_>>(), reps, cfg.seed)?;
    if sig.height() > 0 {
        crate::report::merge_csv_upgrading(
            &run.table(crate::run::Table::OodSignificance),
            &sig,
            &["epoch", "protocol", "dataset"],
            &legacy,
        )?;
    }
    let sel_json: Vec<serde_json::Value> = selections.iter().map(ProtocolSelection::to_json).collect();
    crate::report::merge_json_array_upgrading(
        &run.table(crate::run::Table::OodSelection),
        sel_json,
        &["epoch", "protocol", "detector"],
        &legacy,
    )?;
    Ok(OodStudy { frame, rows, headline: cfg.ood.headline, selections, scores, csv })
}

/// The sets a model-based study scores: ID train (fitting), ID-val, each
/// validation protocol's OOD set, ID test and the OOD test sets.
pub fn model_sets<'a>(sets: &'a EvalSets, protocols: &[Protocol]) -> Result<super::model_detectors::ModelSets<'a>> {
    let mut val = Vec::new();
    for &p in protocols {
        match p {
            Protocol::Jigsaw => val.push((p, &sets.ood_val)),
            Protocol::Heldout => {
                val.push((p, sets.heldout.as_ref().ok_or_else(|| Error::data("protocol heldout", "no held-out set loaded"))?))
            }
            _ => {}
        }
    }
    Ok(super::model_detectors::ModelSets { id_train: &sets.id_train, id_val: &sets.id_val, val, id_test: &sets.id_test, ood: &sets.ood })
}

/// CSV export and import of long-form tables (they live in [`crate::results`]).
pub use crate::results::{read_csv, write_csv};
