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
        let all_rows = long_rows(&crate::results::read_csv(&ood_csv)?, "detector")?;
        // Figures show the headline protocol (the tables hold them all).
        let rows = crate::ood::eval::protocol_rows(&all_rows, cfg.ood.headline);
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
        if let Ok(fig) = sensitivity_figure(&read_selections(run_dir)?, le) {
            save(fig, "ood_hyperparameter_sensitivity")?;
        }
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

/// The selections of `ood/selection.json` (empty when the study has not run),
/// as [`ProtocolSelection`](crate::ood::protocol::ProtocolSelection)s; entries
/// written before protocols existed are read as the jigsaw protocol's.
pub fn read_selections(run_dir: &Path) -> Result<Vec<crate::ood::protocol::ProtocolSelection>> {
    use crate::ood::{DetectorSpec, Protocol};
    let path = crate::run::layout::table(run_dir, crate::run::Table::OodSelection);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| crate::Error::io(&path, e))?;
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&text).map_err(|e| crate::Error::format(&path, format!("not a JSON array of selections ({e})")))?;
    let spec = |name: &str, v: &serde_json::Value| -> Option<DetectorSpec> {
        let params: Vec<(String, f64)> = v.as_object()?.iter().filter_map(|(k, x)| Some((k.clone(), x.as_f64()?))).collect();
        DetectorSpec::new(name, &params.iter().map(|(k, x)| (k.as_str(), *x)).collect::<Vec<_>>()).ok()
    };
    let mut out = Vec::new();
    for v in &all {
        let (Some(epoch), Some(name)) = (v["epoch"].as_i64(), v["detector"].as_str()) else { continue };
        let protocol = Protocol::parse(v["protocol"].as_str().unwrap_or("jigsaw")).unwrap_or(Protocol::Jigsaw);
        let mut candidates = Vec::new();
        for c in v["candidates"].as_array().into_iter().flatten() {
            let Some(s) = spec(name, &c["params"]) else { continue };
            // Older files: `val_auroc_vs_ood_val`, no test AUROC.
            let val = c["val_auroc"].as_f64().or_else(|| c["val_auroc_vs_ood_val"].as_f64());
            let test = c["test_auroc"]
                .as_object()
                .map(|m| m.iter().filter_map(|(d, a)| Some((d.clone(), a.as_f64()?))).collect())
                .unwrap_or_default();
            candidates.push((s, val, test));
        }
        let chosen: Vec<(String, DetectorSpec)> = if let Some(s) = spec(name, &v["chosen"]) {
            let sets: Vec<String> = candidates
                .first()
                .map(|c: &(DetectorSpec, Option<f64>, Vec<(String, f64)>)| c.2.iter().map(|(d, _)| d.clone()).collect())
                .unwrap_or_default();
            if sets.is_empty() {
                vec![(String::new(), s)]
            } else {
                sets.into_iter().map(|d| (d, s.clone())).collect()
            }
        } else {
            v["chosen_per_dataset"].as_object().into_iter().flatten().filter_map(|(d, p)| Some((d.clone(), spec(name, p)?))).collect()
        };
        out.push(crate::ood::protocol::ProtocolSelection {
            epoch,
            protocol,
            detector: name.to_string(),
            chosen,
            best_val_auroc: v["best_val_auroc"].as_f64(),
            informative: v["informative"].as_bool(),
            candidates,
        });
    }
    Ok(out)
}

/// How much the choice matters: for every detector with more than one
/// candidate at `epoch`, its validation AUROC under each validation protocol
/// and its test AUROC on each OOD set, over its grid (a figure for notebook 02).
pub fn sensitivity_figure(selections: &[crate::ood::protocol::ProtocolSelection], epoch: i64) -> Result<Figure> {
    use crate::ood::Protocol;
    let at: Vec<&crate::ood::protocol::ProtocolSelection> =
        selections.iter().filter(|s| s.epoch == epoch && s.candidates.len() > 1).collect();
    let mut detectors: Vec<&str> = Vec::new();
    for s in &at {
        if !detectors.contains(&s.detector.as_str()) {
            detectors.push(&s.detector);
        }
    }
    let mut panels = Vec::new();
    for d in detectors {
        let of = |p: Protocol| at.iter().find(|s| s.detector == d && s.protocol == p);
        let Some(any) = at.iter().find(|s| s.detector == d) else { continue };
        // The one hyperparameter that varies over the grid names the candidates (all when several do).
        let varying: Vec<String> = any.candidates[0]
            .0
            .params()
            .keys()
            .filter(|k| any.candidates.iter().any(|c| c.0.params().get(*k) != any.candidates[0].0.params().get(*k)))
            .cloned()
            .collect();
        let label = |s: &crate::ood::DetectorSpec| {
            varying.iter().map(|k| format!("{k}={}", crate::plot::style::fmt_tick(&s.params()[k]))).collect::<Vec<_>>().join(",")
        };
        let names: Vec<String> = any.candidates.iter().map(|c| label(&c.0)).collect();
        let mut curves = Vec::new();
        let mut chosen = Vec::new();
        for p in [Protocol::Jigsaw, Protocol::Heldout] {
            if let Some(s) = of(p) {
                curves.push((format!("val AUROC ({p})"), s.candidates.iter().map(|c| c.1.unwrap_or(f64::NAN)).collect(), false));
                if let Some(c) = s.single() {
                    let flag = if s.informative == Some(false) { " (uninformative → defaults)" } else { "" };
                    chosen.push(format!("{p}: {}{flag}", label(c)));
                }
            }
        }
        for (k, (set, _)) in any.candidates[0].2.iter().enumerate() {
            curves.push((
                format!("test AUROC ({set})"),
                any.candidates.iter().map(|c| c.2.get(k).map(|x| x.1).unwrap_or(f64::NAN)).collect(),
                true,
            ));
        }
        panels.push(sensitivity_panel(d, &names, &curves, &chosen.join("; ")));
    }
    sensitivity_grid(&format!("Hyperparameter sensitivity at epoch {epoch}: validation (solid) vs test (dashed) AUROC"), panels)
}

/// Scores per named set: `(set name, scores)`.
pub type NamedScores = Vec<(String, Vec<f64>)>;

/// The hyperparameters the OOD study chose for `name` at `epoch` under
/// `protocol`, from the run's `ood/selection.json` (None when that study has
/// not run, or under the oracle, whose choice differs per OOD set). Entries
/// written before protocols existed are the jigsaw protocol's.
pub fn chosen_spec(run_dir: &Path, epoch: i64, name: &str, protocol: crate::ood::Protocol) -> Option<crate::ood::DetectorSpec> {
    let text = std::fs::read_to_string(crate::run::layout::table(run_dir, crate::run::Table::OodSelection)).ok()?;
    let all: Vec<serde_json::Value> = serde_json::from_str(&text).ok()?;
    let v = all.iter().find(|v| {
        v["epoch"].as_i64() == Some(epoch)
            && v["detector"].as_str() == Some(name)
            && v["protocol"].as_str().unwrap_or(crate::ood::Protocol::Jigsaw.name()) == protocol.name()
    })?;
    let params: Vec<(String, f64)> = v["chosen"].as_object()?.iter().filter_map(|(k, x)| Some((k.clone(), x.as_f64()?))).collect();
    let refs: Vec<(&str, f64)> = params.iter().map(|(k, x)| (k.as_str(), *x)).collect();
    crate::ood::DetectorSpec::new(name, &refs).ok()
}

/// Scores of detector `name` at `epoch`, with the hyperparameters the OOD study
/// chose under the run's headline protocol (read from `selection.json`; chosen
/// now by that protocol when the study has not run): (label with the chosen
/// values, ID test scores, scores per OOD set).
pub fn detector_scores(run_dir: &Path, epoch: i64, sets: &EvalSets, name: &str, device: Device) -> Result<(String, Vec<f64>, NamedScores)> {
    let run = crate::run::Run::open(run_dir)?;
    let cfg = run.config();
    let head = cfg.ood.headline;
    let feats = crate::ood::pipeline::epoch_features(run_dir, epoch, sets, ExtractOptions::default(), device)?;
    let (w, b) = run.head(epoch)?;
    let spec = match chosen_spec(run_dir, epoch, name, head) {
        Some(s) => s,
        None => {
            let st = crate::ood::eval::study_detector(name, &feats.inputs(&w, &b), &[head], cfg.ood.uninformative_below)?;
            let i = st.choices[0].single().unwrap_or(st.defaults);
            st.candidates[i].spec.clone()
        }
    };
    let fitted = spec.fit(&crate::ood::FitData::new(&feats.train, Some(&feats.val), &w, &b))?;
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
