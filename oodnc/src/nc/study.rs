//! The NC study of a run: across checkpoints (real epoch numbers) and layers.

use super::layers::{layer_metrics, separation_fuzziness_slope};
use super::metrics::{nc5, nc_metrics, nc_with_ood_class};
use crate::error::{Error, Result};
use crate::features::{cached, ExtractOptions};
use polars::prelude::*;
use std::path::{Path, PathBuf};
use tch::Device;

/// One row: (epoch, layer, dataset, metric, value); the key is the layer.
pub type NcRow = crate::results::Row;

/// Results of [`run`].
pub struct NcStudy {
    pub frame: DataFrame,
    pub rows: Vec<NcRow>,
    /// First epoch whose unaugmented train accuracy reaches the threshold.
    pub terminal_phase_start: Option<i64>,
    pub csv: PathBuf,
}

/// Options of the study.
#[derive(Debug, Clone, Copy)]
pub struct NcOptions {
    /// Also every block (features extracted with taps).
    pub layers: bool,
    /// 2x2 adaptive pooling of the taps in addition to global average pooling.
    pub pool2x2: bool,
    /// Train accuracy that marks the terminal phase of training.
    pub tpt_threshold: f64,
}

impl Default for NcOptions {
    fn default() -> Self {
        NcOptions { layers: false, pool2x2: false, tpt_threshold: 0.999 }
    }
}

/// The terminal phase of training: the first epoch with `accuracy >= threshold`.
pub fn terminal_phase(acc_by_epoch: &[(i64, f64)], threshold: f64) -> Option<i64> {
    let mut v = acc_by_epoch.to_vec();
    v.sort_by_key(|x| x.0);
    v.into_iter().find(|(_, a)| *a >= threshold).map(|(e, _)| e)
}

/// Runs NC1-NC5 (and layer-wise NC with `opts.layers`) on the ID training split
/// of `run_dir` at `epochs` (all checkpoints when empty); writes `nc/metrics.csv`.
///
/// The tables are merged, never shrunk: rows (epoch, layer, dataset) this call
/// computed replace the old ones, every other row is kept; the run's tables
/// lock is held while the study runs.
pub fn run(run_dir: &Path, epochs: &[i64], opts: NcOptions, device: Device) -> Result<NcStudy> {
    if opts.pool2x2 && !opts.layers {
        return Err(Error::param("pool2x2", "needs layers (2x2 pooling applies to the block outputs: pass --layers too)"));
    }
    study(&crate::run::Run::open(run_dir)?, epochs, opts, device)
}

/// [`run`] on an opened [`Run`](crate::run::Run).
pub fn study(run: &crate::run::Run, epochs: &[i64], opts: NcOptions, device: Device) -> Result<NcStudy> {
    if opts.pool2x2 && !opts.layers {
        return Err(Error::param("pool2x2", "needs layers (2x2 pooling applies to the block outputs: pass --layers too)"));
    }
    let run_dir = run.dir();
    let cfg = run.config();
    let _lock = run.lock_tables()?;
    let epochs = run.select_epochs(epochs)?;
    let sets = run.eval_sets()?;
    let c = cfg.model.num_classes;
    let x_opts = ExtractOptions { taps: opts.layers, pool2x2: opts.layers && opts.pool2x2 };
    let mut rows = Vec::new();
    let mut push = |epoch: i64, layer: &str, dataset: &str, metric: &str, value: f64| {
        rows.push(NcRow::point(epoch, layer, dataset, metric, value));
    };
    let mut prog = crate::progress::Progress::new("nc", epochs.len() as u64);
    let mut acc = Vec::new();
    for &epoch in &epochs {
        // Statistics in f64 on the device (the GPU when there is one).
        let train = cached(run_dir, epoch, &sets.id_train, x_opts, device)?.to_device(device);
        let ood: Vec<_> = sets.ood.iter().map(|d| cached(run_dir, epoch, d, x_opts, device)).collect::<Result<_>>()?;
        let (w, _) = run.head(epoch)?;
        let w = w.to_device(device);
        let (m, st) = nc_metrics(&train.penultimate, &train.labels, c, Some(&train.logits), Some(&w))?;
        for (k, v) in m.named() {
            push(epoch, "penultimate", crate::names::ID_TRAIN, k, v);
        }
        acc.push((epoch, m.accuracy.unwrap_or(0.0)));
        for o in &ood {
            let op = o.penultimate.to_device(device);
            let (a, b) = nc5(&st, &op)?;
            push(epoch, "penultimate", &o.name, "nc5", a);
            push(epoch, "penultimate", &o.name, "nc5_uncentred", b);
            push(epoch, "penultimate", &o.name, "nc5_classmean_centred", super::metrics::nc5_classmean_centred(&st, &op)?);
            let (nc1o, ang) = nc_with_ood_class(&st, &train.penultimate, &train.labels, &op)?;
            push(epoch, "penultimate", &o.name, "nc1_with_ood_class", nc1o);
            push(epoch, "penultimate", &o.name, "nc2_maxangle_with_ood_class", ang);
        }
        if opts.layers {
            let ood_dev: Vec<crate::features::FeatureSet> = ood.iter().map(|o| o.to_device(device)).collect();
            let oref: Vec<&_> = ood_dev.iter().collect();
            for pooled in [false, true] {
                if pooled && !opts.pool2x2 {
                    continue;
                }
                let res = layer_metrics(&train, &w, c, &oref, pooled)?;
                let mut fuzz = Vec::new();
                for r in &res {
                    let lname = if pooled && r.layer == "penultimate" { "penultimate" } else { &r.layer };
                    if pooled && r.layer == "penultimate" {
                        continue; // already reported above
                    }
                    for (k, v) in r.metrics.named() {
                        push(epoch, lname, crate::names::ID_TRAIN, k, v);
                    }
                    push(epoch, lname, crate::names::ID_TRAIN, "dim", r.dim as f64);
                    push(epoch, lname, crate::names::ID_TRAIN, "dim_below_classes", if r.dim < c - 1 { 1.0 } else { 0.0 });
                    for (oname, a, b) in &r.nc5 {
                        push(epoch, lname, oname, "nc5", *a);
                        push(epoch, lname, oname, "nc5_uncentred", *b);
                    }
                    fuzz.push(r.metrics.separation_fuzziness);
                }
                if !pooled {
                    if let Ok((_, slope)) = separation_fuzziness_slope(&fuzz) {
                        push(epoch, "all", crate::names::ID_TRAIN, "fuzziness_log_slope", slope);
                        push(epoch, "all", crate::names::ID_TRAIN, "fuzziness_ratio_per_layer", slope.exp());
                    }
                }
            }
        }
        prog.inc(1, || format!("epoch {epoch}"));
    }
    prog.finish();
    let frame = crate::results::to_frame(&rows, crate::results::TableKind::Nc)?;
    let csv = run.table(if opts.layers { crate::run::Table::NcLayers } else { crate::run::Table::NcMetrics });
    crate::run::ensure_dir(csv.parent().unwrap_or(run_dir), "results folder")?;
    crate::report::merge_csv(&csv, &frame, &["epoch", "layer", "dataset"])?;
    // The accuracy of epochs computed before (and not now) is kept too.
    let tp_path = run.table(crate::run::Table::TerminalPhase);
    let mut all_acc: std::collections::BTreeMap<i64, f64> = std::collections::BTreeMap::new();
    if tp_path.exists() {
        let text = std::fs::read_to_string(&tp_path).map_err(|e| Error::io(&tp_path, e))?;
        let old: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::format(&tp_path, format!("{e}; move it away and run again")))?;
        for pair in old.get("train_accuracy_by_epoch").and_then(|v| v.as_array()).into_iter().flatten() {
            if let (Some(e), Some(a)) = (pair.get(0).and_then(|v| v.as_i64()), pair.get(1).and_then(|v| v.as_f64())) {
                all_acc.insert(e, a);
            }
        }
    }
    all_acc.extend(acc.iter().copied());
    let acc_all: Vec<(i64, f64)> = all_acc.into_iter().collect();
    let tpt_all = terminal_phase(&acc_all, opts.tpt_threshold);
    let summary = serde_json::json!({
        "terminal_phase_rule": format!("first epoch with unaugmented train accuracy >= {}", opts.tpt_threshold),
        "terminal_phase_start": tpt_all,
        "train_accuracy_by_epoch": acc_all,
    });
    crate::util::write_atomic(&tp_path, summary.to_string().as_bytes())?;
    Ok(NcStudy { frame, rows, terminal_phase_start: tpt_all, csv })
}
