//! `oodnc figures --run NAME`: every figure of a run, as PNG and SVG.
//!
//! The stage after the studies: it reads a run's tables and features through
//! [`Run`](crate::run::Run), computes what a figure needs (scores with the
//! study's chosen hyperparameters, class geometry, a PCA) and hands the numbers
//! to [`crate::plot`], which only draws.

use crate::config::RunConfig;
use crate::data::protocol::EvalSets;
use crate::error::Result;
use crate::features::{cached, ExtractOptions};
use crate::plot::figures::*;
use crate::plot::Figure;
use crate::report::long_rows;
use std::path::{Path, PathBuf};
use tch::Device;

/// The terminal phase span (start, last epoch) recorded by the NC study, if reached.
pub fn terminal_phase_span(run_dir: &Path) -> Option<(i64, i64)> {
    let text = std::fs::read_to_string(crate::run::layout::table(run_dir, crate::run::Table::TerminalPhase)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let start = v["terminal_phase_start"].as_i64()?;
    let last = crate::run::available_epochs(run_dir).ok()?.last().copied()?;
    Some((start, last))
}

/// Writes every figure that the run's artefacts allow into `out`; returns the files.
pub fn write_run_figures(run_dir: &Path, out: &Path, device: Device) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut save = |fig: Figure, stem: &str| -> Result<()> {
        fig.save_both(out, stem)?;
        written.push(out.join(format!("{stem}.png")));
        Ok(())
    };
    let run = crate::run::Run::open(run_dir)?;
    let cfg = run.config().clone();
    let tpt = terminal_phase_span(run_dir);
    // Training.
    let hist = run.history()?;
    save(training_curves(&hist)?, "training_curves")?;
    save(final_metrics(&hist)?, "final_metrics")?;
    training_gif(&hist, out.join("training_curves.gif"), 50, 10)?;
    let sets = run.eval_sets()?;
    save(sample_grid(&sets.id_train, 16, true, cfg.seed)?, "sample_batch")?;
    let last = run.epochs()?.last().copied().unwrap_or(0);
    // OOD.
    let ood_csv = run.table(crate::run::Table::OodMetrics);
    if ood_csv.exists() {
        let rows = long_rows(&crate::results::read_csv(&ood_csv)?, "detector")?;
        let detectors: Vec<String> = {
            let mut v = Vec::new();
            for r in rows.iter().filter(|r| r.key != crate::names::CLASSIFIER) {
                if !v.contains(&r.key) {
                    v.push(r.key.clone());
                }
            }
            v
        };
        for d in &detectors {
            save(ood_vs_epoch(&rows, d, tpt)?, &format!("ood_{d}_per_dataset"))?;
        }
        let le = crate::report::last_epoch(&rows)?;
        save(ood_summary_bars(&rows, le, crate::names::metric::AUROC)?, "ood_summary_auroc")?;
        save(ood_summary_bars(&rows, le, crate::names::metric::FPR95_OOD_ACCEPTED)?, "ood_summary_fpr95")?;
        // Histograms and ROC curves of the original six at the last evaluated epoch.
        for d in crate::ood::SEED_SIX {
            if !detectors.iter().any(|x| x == d) {
                continue;
            }
            let (label, id, oods) = detector_scores(run_dir, le, &sets, d, device)?;
            save(score_histograms(&label, &id, &oods)?, &format!("scores_{d}"))?;
            save(roc_curves(&label, &id, &oods)?, &format!("roc_{d}"))?;
        }
    }
    // Neural Collapse.
    let nc_csv = run.table(crate::run::Table::NcMetrics);
    if nc_csv.exists() {
        let rows = long_rows(&crate::results::read_csv(&nc_csv)?, "layer")?;
        save(nc_evolution(&rows, tpt)?, "nc_evolution_all")?;
        save(nc5_evolution(&rows, tpt)?, "nc5_combined")?;
        for d in &sets.ood {
            save(nc5_evolution_for(&rows, tpt, Some(&d.name))?, &format!("nc5_convergence_{}", d.name))?;
        }
        save(nc_id_vs_ood(&rows)?, "nc_ood_summary")?;
        let mut epochs: Vec<i64> = rows.iter().map(|r| r.epoch).collect();
        epochs.sort();
        epochs.dedup();
        let (geo, var, pca) = geometry_figures(run_dir, &cfg, &sets, &epochs, device)?;
        save(geo, "nc_class_geometry")?;
        save(var, "nc_class_variance")?;
        save(pca, "pca_2d")?;
    }
    let layers_csv = run.table(crate::run::Table::NcLayers);
    if layers_csv.exists() {
        let rows = long_rows(&crate::results::read_csv(&layers_csv)?, "layer")?;
        let le = crate::report::last_epoch(&rows)?;
        save(layer_bars(&rows, le)?, "nc_by_layer")?;
        for (m, log) in [("nc1", true), ("nc2_equinorm_m", false), ("nc2_maxangle_m", false), ("nc4_ncc_mismatch", false)] {
            save(layer_epoch_heatmap(&rows, m, crate::names::ID_TRAIN, log)?, &format!("nc_heatmap_{m}"))?;
        }
        if let Some(first_ood) = sets.ood.first() {
            save(layer_epoch_heatmap(&rows, "nc5", &first_ood.name, false)?, "nc_heatmap_nc5")?;
        }
        save(fuzziness_vs_depth(&rows, le)?, "nc_fuzziness_by_depth")?;
    }
    let _ = last;
    Ok(written)
}

/// Scores per named set: `(set name, scores)`.
pub type NamedScores = Vec<(String, Vec<f64>)>;

/// The hyperparameters the OOD study chose for `name` at `epoch`, from the
/// run's `ood/selection.json` (None when that study has not run).
pub fn chosen_spec(run_dir: &Path, epoch: i64, name: &str) -> Option<crate::ood::DetectorSpec> {
    let text = std::fs::read_to_string(crate::run::layout::table(run_dir, crate::run::Table::OodSelection)).ok()?;
    let all: Vec<serde_json::Value> = serde_json::from_str(&text).ok()?;
    let v = all.iter().find(|v| v["epoch"].as_i64() == Some(epoch) && v["detector"].as_str() == Some(name))?;
    let params: Vec<(String, f64)> = v["chosen"].as_object()?.iter().filter_map(|(k, x)| Some((k.clone(), x.as_f64()?))).collect();
    let refs: Vec<(&str, f64)> = params.iter().map(|(k, x)| (k.as_str(), *x)).collect();
    crate::ood::DetectorSpec::new(name, &refs).ok()
}

/// Scores of detector `name` at `epoch`, with the hyperparameters the OOD study
/// chose (read from `selection.json`; chosen on held-out data now when the
/// study has not run): (label with the chosen values, ID test scores, scores
/// per OOD set).
pub fn detector_scores(run_dir: &Path, epoch: i64, sets: &EvalSets, name: &str, device: Device) -> Result<(String, Vec<f64>, NamedScores)> {
    let run = crate::run::Run::open(run_dir)?;
    let feats = crate::ood::pipeline::epoch_features(run_dir, epoch, sets, ExtractOptions::default(), device)?;
    let (w, b) = run.head(epoch)?;
    let spec = match chosen_spec(run_dir, epoch, name) {
        Some(s) => s,
        None => crate::ood::select_hyperparameters(name, &feats.inputs(&w, &b))?.chosen,
    };
    let fitted = spec.fit(&crate::ood::FitData { train: &feats.train, val: Some(&feats.val), weight: &w, bias: &b })?;
    let id = fitted.score_vec(&feats.test)?;
    let oods = feats.ood.iter().map(|o| Ok((o.name.clone(), fitted.score_vec(o)?))).collect::<Result<_>>()?;
    Ok((spec.label(), id, oods))
}

/// The class-geometry heatmaps (last of `epochs`), the within-class variance over
/// `epochs`, and the 2-D PCA of ID test and OOD features (last epoch).
pub fn geometry_figures(
    run_dir: &Path,
    cfg: &RunConfig,
    sets: &EvalSets,
    epochs: &[i64],
    device: Device,
) -> Result<(Figure, Figure, Figure)> {
    let c = cfg.model.num_classes;
    let last = *epochs.last().ok_or_else(|| crate::Error::data("geometry figures", "no epochs"))?;
    let (mut vars, mut diag, mut geo_fig, mut pca_fig) = (Vec::new(), Vec::new(), None, None);
    let run = crate::run::Run::open(run_dir)?;
    for &e in epochs {
        let f = cached(run_dir, e, &sets.id_train, ExtractOptions::default(), device)?;
        let (w, _) = run.head(e)?;
        let st = crate::nc::ClassStats::compute(&f.penultimate, &f.labels, c)?;
        let g = crate::nc::ClassGeometry::new(&st, Some(&w));
        if e == last {
            geo_fig = Some(class_geometry(&g, e)?);
            let test = cached(run_dir, e, &sets.id_test, ExtractOptions::default(), device)?;
            let ood: Vec<(String, tch::Tensor)> = sets
                .ood
                .iter()
                .map(|d| Ok((d.name.clone(), cached(run_dir, e, d, ExtractOptions::default(), device)?.penultimate)))
                .collect::<Result<_>>()?;
            pca_fig = Some(pca_2d(&f.penultimate, &test.penultimate, &test.labels, &sets.id_train.class_names, &ood, 2000)?);
        }
        vars.push(g.class_variance.shallow_clone());
        if let Some(wm) = &g.w_mean_cosines {
            diag.push(wm.diagonal(0, 0, 1));
        }
    }
    let var_fig = class_variance_over_epochs(epochs, &vars, &diag)?;
    match (geo_fig, pca_fig) {
        (Some(g), Some(p)) => Ok((g, var_fig, p)),
        _ => Err(crate::Error::data("geometry figures", "no figure for the last epoch")),
    }
}

/// The 2-D PCA of penultimate features fitted on ID `train`: the first
/// `max_points` ID test points by class and each OOD set (a [`pca_scatter`]).
pub fn pca_2d(
    train: &tch::Tensor,
    test: &tch::Tensor,
    test_labels: &tch::Tensor,
    class_names: &[String],
    ood: &[(String, tch::Tensor)],
    max_points: i64,
) -> Result<Figure> {
    let pca = crate::numerics::Pca2::fit(train);
    let pts = pca.project(test, max_points)?;
    let labels = Vec::<i64>::try_from(test_labels.narrow(0, 0, pts.len() as i64))?;
    let ood_pts = ood.iter().map(|(n, t)| Ok((n.clone(), pca.project(t, max_points)?))).collect::<Result<Vec<_>>>()?;
    pca_scatter(&pts, &labels, class_names, &ood_pts)
}
