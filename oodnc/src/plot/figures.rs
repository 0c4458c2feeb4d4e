//! Every figure of the original project, and the ones the assignment asked for
//! that it never made, built from a run's artefacts (history, long-form tables,
//! cached features). `oodnc figures --run NAME` writes them all.

use super::bar::BarChart;
use super::figure::Figure;
use super::grid::ImageGrid;
use super::heatmap::Heatmap;
use super::hist::Histogram;
use super::line::{LinePlot, Series};
use super::panels::{AnyPlot, Panels, TextBox};
use super::scatter::ScatterPlot;
use crate::data::{loader, Dataset};
use crate::error::{Error, Result};
use crate::report::LongRow;
use crate::train::History;
use crate::util::SplitMix64;
use tch::{Kind, Tensor};

/// A grid of `n` training images (augmented when `augment`), titled with class names.
pub fn sample_grid(ds: &Dataset, n: usize, augment: bool, seed: u64) -> Result<Figure> {
    let n = n.min(ds.len()).max(1);
    let idx: Vec<i64> = SplitMix64::new(seed).permutation(ds.len())[..n].to_vec();
    let sub = ds.subset(&idx, "sample")?;
    let imgs = if augment {
        let (dy, dx, flip) = loader::draw_augmentation(&mut SplitMix64::new(seed + 1), n);
        loader::augment_batch(&sub.images, &dy, &dx, &flip)?
    } else {
        sub.images.shallow_clone()
    };
    let labels = Vec::<i64>::try_from(&sub.labels)?;
    let caps = labels.iter().map(|&l| ds.class_names.get(l as usize).cloned().unwrap_or_else(|| l.to_string())).collect();
    let title = format!("{} ({} images{})", ds.name, n, if augment { ", random crop + flip" } else { "" });
    let grid = ImageGrid::from_tensor(title, &imgs, caps, 8.min(n))?;
    let (w, h) = grid.suggested_size();
    Figure::new(&grid, w, h)
}

fn hist_series(h: &History, f: impl Fn(&crate::train::EpochRecord) -> f64) -> Vec<(f64, f64)> {
    h.records.iter().map(|r| (r.epoch as f64, f(r))).collect()
}

fn training_panels(h: &History, upto: Option<i64>, with_lr: bool) -> Result<Vec<AnyPlot>> {
    let h = History { records: h.records.iter().filter(|r| upto.is_none_or(|u| r.epoch <= u)).cloned().collect() };
    if h.records.is_empty() {
        return Err(Error::data("training curves", "the history is empty"));
    }
    let loss = LinePlot::new("Loss", "epoch", "cross-entropy")
        .with(Series::new("train (augmented)", hist_series(&h, |r| r.train_loss)))
        .with(Series::new("val", hist_series(&h, |r| r.val_loss)));
    let acc = LinePlot::new("Accuracy", "epoch", "accuracy (%)")
        .with(Series::new("train (augmented)", hist_series(&h, |r| 100.0 * r.train_acc)))
        .with(Series::new("val", hist_series(&h, |r| 100.0 * r.val_acc)))
        .with(Series::new("test", hist_series(&h, |r| 100.0 * r.test_acc)).dashed())
        .legend_lower();
    let mut v: Vec<AnyPlot> = vec![loss.into(), acc.into()];
    if with_lr {
        v.push(LinePlot::new("Learning rate", "epoch", "lr (log)").with(Series::new("lr", hist_series(&h, |r| r.lr))).log_y().into());
    }
    Ok(v)
}

/// Loss, accuracy (train/val/test) and learning rate (log axis) per epoch.
pub fn training_curves(h: &History) -> Result<Figure> {
    Figure::new(&Panels::new("Training curves", 1, 3, training_panels(h, None, true)?), 1500, 450)
}

/// The 2x2 final-metrics panel: raw and smoothed loss, accuracy, LR, and a summary box.
pub fn final_metrics(h: &History) -> Result<Figure> {
    let last = h.records.last().ok_or_else(|| Error::data("final metrics", "the history is empty"))?;
    let best = h.best_by_val().unwrap_or(last);
    let mut ema = Vec::new();
    let mut s = f64::NAN;
    for r in &h.records {
        s = if s.is_nan() { r.train_loss } else { 0.8 * s + 0.2 * r.train_loss };
        ema.push((r.epoch as f64, s));
    }
    let loss = LinePlot::new("Training loss", "epoch", "cross-entropy")
        .with(Series::new("raw", hist_series(h, |r| r.train_loss)))
        .with(Series::new("smoothed (EMA 0.8)", ema).dashed().no_markers())
        .log_y();
    let p = training_panels(h, None, true)?;
    let text = TextBox {
        title: "Summary".into(),
        lines: vec![
            format!("final train acc (augmented): {:.2}%", 100.0 * last.train_acc),
            format!("final val acc: {:.2}%", 100.0 * last.val_acc),
            format!("best val acc: {:.2}% @ epoch {}", 100.0 * best.val_acc, best.epoch),
            format!("final test acc: {:.2}%", 100.0 * last.test_acc),
            format!("epochs: {}, {:.0} img/s", last.epoch, last.images_per_s),
        ],
    };
    let panels = vec![loss.into(), p[1].clone(), p[2].clone(), text.into()];
    Figure::new(&Panels::new("Final training metrics", 2, 2, panels), 1200, 900)
}

/// Writes an animated GIF of the loss and accuracy curves growing epoch by epoch.
pub fn training_gif(h: &History, path: impl AsRef<std::path::Path>, max_frames: usize, fps: u16) -> Result<()> {
    let path = path.as_ref();
    let n = h.records.len();
    if n == 0 {
        return Err(Error::data("training GIF", "the history is empty"));
    }
    let step = n.div_ceil(max_frames.max(1)).max(1);
    let loss_max = h.records.iter().take(20).map(|r| r.train_loss.max(r.val_loss)).fold(0.0f64, f64::max) * 1.1;
    let last_epoch = h.records[n - 1].epoch as f64;
    let mut frames = Vec::new();
    let mut k = step.min(n);
    loop {
        let upto = h.records[k - 1].epoch;
        let mut p = training_panels(h, Some(upto), false)?;
        if let AnyPlot::Line(l) = &mut p[0] {
            l.y_range = Some((0.0, loss_max.max(1e-6)));
            l.series.push(Series::new("", vec![(last_epoch, f64::NAN)]));
        }
        if let AnyPlot::Line(l) = &mut p[1] {
            l.y_range = Some((0.0, 100.0));
        }
        let fig = Figure::new(&Panels::new(format!("Training, epoch {upto}"), 1, 2, p), 900, 380)?;
        let img =
            image::RgbImage::from_raw(fig.width(), fig.height(), fig.rgb().to_vec()).ok_or_else(|| Error::Plot("frame buffer".into()))?;
        frames.push(image::DynamicImage::ImageRgb8(img).to_rgba8());
        if k == n {
            break;
        }
        k = (k + step).min(n);
    }
    let mut bytes = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new_with_speed(&mut bytes, 10);
        enc.set_repeat(image::codecs::gif::Repeat::Infinite).map_err(|e| Error::Plot(e.to_string()))?;
        let delay = image::Delay::from_numer_denom_ms(1000, fps.max(1) as u32);
        for f in frames {
            enc.encode_frame(image::Frame::from_parts(f, 0, 0, delay)).map_err(|e| Error::Plot(e.to_string()))?;
        }
    }
    crate::util::write_atomic(path, &bytes)
}

/// (epoch, value) points of one (key, dataset, metric), sorted by epoch.
pub fn series_of(rows: &[LongRow], key: &str, dataset: &str, metric: &str) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> =
        rows.iter().filter(|r| r.key == key && r.dataset == dataset && r.metric == metric).map(|r| (r.epoch as f64, r.value)).collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

fn distinct<T: Clone + PartialEq>(it: impl Iterator<Item = T>) -> Vec<T> {
    let mut v = Vec::new();
    for x in it {
        if !v.contains(&x) {
            v.push(x);
        }
    }
    v
}

/// AUROC and FPR@95 (OOD accepted at 95 % ID) vs epoch for one detector, one row
/// per OOD set, the terminal phase shaded; y axes automatic (never clipped).
pub fn ood_vs_epoch(rows: &[LongRow], detector: &str, tpt: Option<(i64, i64)>) -> Result<Figure> {
    let datasets = distinct(rows.iter().filter(|r| r.key == detector).map(|r| r.dataset.clone()));
    if datasets.is_empty() {
        return Err(Error::data("OOD vs epoch", format!("no rows for detector {detector}")));
    }
    let mut panels = Vec::new();
    for d in &datasets {
        let mut a = LinePlot::new(format!("{detector}: AUROC, {d}"), "epoch", "AUROC")
            .with(Series::new("AUROC", series_of(rows, detector, d, crate::names::metric::AUROC)))
            .hline(0.5, "chance");
        let mut f = LinePlot::new(format!("{detector}: FPR@95, {d}"), "epoch", "FPR@95 (%)")
            .with(Series::new(
                "OOD accepted at 95% ID",
                series_of(rows, detector, d, crate::names::metric::FPR95_OOD_ACCEPTED).into_iter().map(|(e, v)| (e, 100.0 * v)).collect(),
            ))
            .with(
                Series::new(
                    "ID rejected at 95% OOD",
                    series_of(rows, detector, d, crate::names::metric::FPR95_ID_REJECTED)
                        .into_iter()
                        .map(|(e, v)| (e, 100.0 * v))
                        .collect(),
                )
                .dashed(),
            );
        if let Some((s, e)) = tpt {
            a = a.shade(s as f64, e as f64, "terminal phase");
            f = f.shade(s as f64, e as f64, "terminal phase");
        }
        panels.push(a.into());
        panels.push(f.into());
    }
    let n = datasets.len();
    Figure::new(&Panels::new(format!("{detector} across training"), n, 2, panels), 1300, 380 * n as u32 + 40)
}

/// Score histograms of ID test against each OOD set.
pub fn score_histograms(detector: &str, id: &[f64], ood: &[(String, Vec<f64>)]) -> Result<Figure> {
    let panels: Vec<AnyPlot> = ood
        .iter()
        .map(|(name, s)| {
            Histogram::new(format!("{detector}: ID vs {name}"), "score (higher = more ID)")
                .with("ID test", id.to_vec())
                .with(name.clone(), s.clone())
                .into()
        })
        .collect();
    let n = panels.len().max(1);
    Figure::new(&Panels::new("", 1, n, panels), 520 * n as u32, 420)
}

/// ROC curves (TPR = ID accepted vs FPR = OOD accepted) of one detector.
pub fn roc_curves(detector: &str, id: &[f64], ood: &[(String, Vec<f64>)]) -> Result<Figure> {
    let mut p = LinePlot::new(format!("ROC, {detector}"), "FPR (OOD accepted)", "TPR (ID accepted)").y_range(0.0, 1.0);
    for (name, s) in ood {
        let auc = crate::ood::metrics::auroc(id, s)?;
        p = p.with(Series::new(format!("{name} (AUROC {auc:.3})"), crate::ood::metrics::roc_points(id, s)?).no_markers());
    }
    p = p.with(Series::new("chance", vec![(0.0, 0.0), (1.0, 1.0)]).dashed().no_markers());
    Figure::new(&p, 640, 560)
}

/// Bars per detector, one per OOD set, with bootstrap intervals, at `epoch`.
pub fn ood_summary_bars(rows: &[LongRow], epoch: i64, metric: &str) -> Result<Figure> {
    summary_bars(rows, epoch, metric, format!("{metric} at epoch {epoch} (95% bootstrap CI)"))
}

/// [`ood_summary_bars`] of the mean over `n_runs` seeds, the error bars ± one
/// standard deviation across them (rows hold mean, mean - std, mean + std).
pub fn seed_spread_bars(rows: &[LongRow], epoch: i64, metric: &str, n_runs: usize) -> Result<Figure> {
    summary_bars(rows, epoch, metric, format!("{metric} at epoch {epoch}: mean ± std over {n_runs} seeds"))
}

fn summary_bars(rows: &[LongRow], epoch: i64, metric: &str, title: String) -> Result<Figure> {
    let rs: Vec<&LongRow> = rows.iter().filter(|r| r.epoch == epoch && r.metric == metric && !r.dataset.starts_with("mean:")).collect();
    let detectors = distinct(rs.iter().map(|r| r.key.clone()));
    let datasets = distinct(rs.iter().map(|r| r.dataset.clone()));
    let mut chart = BarChart::new(title, metric, detectors.clone());
    for d in &datasets {
        let get = |det: &String| rs.iter().find(|r| &r.key == det && &r.dataset == d).map(|r| (r.value, r.ci_low, r.ci_high));
        let vals: Vec<f64> = detectors.iter().map(|k| get(k).map(|x| x.0).unwrap_or(f64::NAN)).collect();
        let cis: Vec<(f64, f64)> = detectors.iter().map(|k| get(k).map(|x| (x.1, x.2)).unwrap_or((f64::NAN, f64::NAN))).collect();
        chart = chart.with(d.clone(), vals, Some(cis));
    }
    if metric == crate::names::metric::AUROC {
        chart.y_range = Some((0.0, 1.0));
    }
    Figure::new(&chart, (140 * detectors.len() as u32).clamp(700, 3000), 520)
}

/// One detector's curves over its candidate grid (x = candidate index, values
/// listed in the title): validation AUROC per protocol (solid) and test AUROC
/// per OOD set (dashed), the chosen candidates marked in the title.
pub fn sensitivity_panel(detector: &str, candidates: &[String], curves: &[(String, Vec<f64>, bool)], chosen: &str) -> LinePlot {
    let x: Vec<f64> = (0..candidates.len()).map(|i| i as f64).collect();
    let mut p =
        LinePlot::new(format!("{detector}: {} (chosen: {chosen})", candidates.join(" | ")), "candidate", "AUROC").hline(0.5, "chance");
    for (label, ys, dashed) in curves {
        let s = Series::new(label.clone(), x.iter().copied().zip(ys.iter().copied()).filter(|(_, y)| y.is_finite()).collect());
        p = p.with(if *dashed { s.dashed() } else { s });
    }
    p
}

/// A grid of [`sensitivity_panel`]s, two per row.
pub fn sensitivity_grid(title: &str, panels: Vec<LinePlot>) -> Result<Figure> {
    if panels.is_empty() {
        return Err(Error::data("sensitivity figure", "no detector with more than one candidate"));
    }
    let n = panels.len();
    let rows = n.div_ceil(2);
    let cols = n.min(2);
    Figure::new(
        &Panels::new(title.to_string(), rows, cols, panels.into_iter().map(Into::into).collect()),
        650 * cols as u32,
        380 * rows as u32 + 40,
    )
}

fn nc_line(rows: &[LongRow], title: &str, ylabel: &str, items: &[(&str, &str)], log: bool, tpt: Option<(i64, i64)>) -> LinePlot {
    let mut p = LinePlot::new(title, "epoch", ylabel);
    for (i, (metric, label)) in items.iter().enumerate() {
        let s = Series::new(*label, series_of(rows, "penultimate", crate::names::ID_TRAIN, metric));
        p = p.with(if i > 0 { s.dashed() } else { s });
    }
    if log {
        p = p.log_y();
    }
    if let Some((a, b)) = tpt {
        p = p.shade(a as f64, b as f64, "terminal phase");
    }
    p
}

/// The NC evolution grid: NC1 (log), NC2 equinorm (M, W), NC2 angles (M, W), NC3, NC4, accuracy.
pub fn nc_evolution(rows: &[LongRow], tpt: Option<(i64, i64)>) -> Result<Figure> {
    let acc: Vec<(f64, f64)> =
        series_of(rows, "penultimate", crate::names::ID_TRAIN, "accuracy").into_iter().map(|(e, v)| (e, 100.0 * v)).collect();
    let ncc: Vec<(f64, f64)> =
        series_of(rows, "penultimate", crate::names::ID_TRAIN, "ncc_accuracy").into_iter().map(|(e, v)| (e, 100.0 * v)).collect();
    let mut accp = LinePlot::new("Accuracy (unaugmented train)", "epoch", "%")
        .with(Series::new("network", acc))
        .with(Series::new("nearest class centre", ncc).dashed())
        .legend_lower();
    if let Some((a, b)) = tpt {
        accp = accp.shade(a as f64, b as f64, "terminal phase");
    }
    let panels: Vec<AnyPlot> = vec![
        nc_line(rows, "NC1: within-class variability", "Tr(Sw Sb+)/C (log)", &[("nc1", "NC1"), ("cdnv", "CDNV")], true, tpt).into(),
        nc_line(
            rows,
            "NC2: equinorm",
            "CoV of norms",
            &[("nc2_equinorm_m", "class means"), ("nc2_equinorm_w", "classifier W")],
            false,
            tpt,
        )
        .into(),
        nc_line(
            rows,
            "NC2: equiangularity",
            "mean |cos + 1/(C-1)|",
            &[("nc2_maxangle_m", "class means"), ("nc2_maxangle_w", "classifier W")],
            false,
            tpt,
        )
        .into(),
        nc_line(rows, "NC3: self-duality", "||W/|W| - M/|M|||^2", &[("nc3", "NC3")], false, tpt).into(),
        nc_line(rows, "NC4: NCC mismatch", "fraction", &[("nc4_ncc_mismatch", "NCC vs network")], false, tpt).into(),
        accp.into(),
    ];
    Figure::new(&Panels::new("Neural Collapse across training (penultimate layer)", 2, 3, panels), 1600, 900)
}

/// NC5 per OOD set (centred, and the original's uncentred dashed); all sets when `only` is `None`.
pub fn nc5_evolution(rows: &[LongRow], tpt: Option<(i64, i64)>) -> Result<Figure> {
    nc5_evolution_for(rows, tpt, None)
}

/// NC5 of one OOD set (`only`), or of all.
pub fn nc5_evolution_for(rows: &[LongRow], tpt: Option<(i64, i64)>, only: Option<&str>) -> Result<Figure> {
    let sets = distinct(
        rows.iter()
            .filter(|r| r.metric == "nc5" && r.key == "penultimate" && only.is_none_or(|o| r.dataset == o))
            .map(|r| r.dataset.clone()),
    );
    if sets.is_empty() {
        return Err(Error::data("NC5 figure", "no NC5 rows"));
    }
    let mut p = LinePlot::new("NC5: ID/OOD orthogonality (0 = orthogonal)", "epoch", "mean |cos|");
    for s in &sets {
        p = p.with(Series::new(format!("{s} (centred)"), series_of(rows, "penultimate", s, "nc5")));
        p = p.with(Series::new(format!("{s} (uncentred, original)"), series_of(rows, "penultimate", s, "nc5_uncentred")).dashed());
    }
    if let Some((a, b)) = tpt {
        p = p.shade(a as f64, b as f64, "terminal phase");
    }
    Figure::new(&p, 900, 560)
}

/// NC1 and equiangularity, ID only vs with each OOD set as an extra class.
pub fn nc_id_vs_ood(rows: &[LongRow]) -> Result<Figure> {
    let sets = distinct(rows.iter().filter(|r| r.metric == "nc1_with_ood_class").map(|r| r.dataset.clone()));
    let mut a = LinePlot::new("NC1: ID vs ID + OOD class", "epoch", "NC1 (log)")
        .with(Series::new("ID", series_of(rows, "penultimate", crate::names::ID_TRAIN, "nc1")))
        .log_y();
    let mut b = LinePlot::new("Equiangularity: ID vs ID + OOD class", "epoch", "mean |cos + 1/(K-1)|")
        .with(Series::new("ID", series_of(rows, "penultimate", crate::names::ID_TRAIN, "nc2_maxangle_m")));
    for s in &sets {
        a = a.with(Series::new(format!("ID + {s}"), series_of(rows, "penultimate", s, "nc1_with_ood_class")).dashed());
        b = b.with(Series::new(format!("ID + {s}"), series_of(rows, "penultimate", s, "nc2_maxangle_with_ood_class")).dashed());
    }
    Figure::new(&Panels::new("", 1, 2, vec![a.into(), b.into()]), 1300, 500)
}

/// Scatter of 2-D projections (e.g. the PCA of [`crate::numerics::Pca2`]):
/// ID test points coloured by class, then each OOD set in grey.
pub fn pca_scatter(test: &[(f64, f64)], test_labels: &[i64], class_names: &[String], ood: &[(String, Vec<(f64, f64)>)]) -> Result<Figure> {
    let c = class_names.len();
    let mut plot = ScatterPlot::new("PCA of penultimate features (fitted on ID train)", "PC 1", "PC 2");
    let mut colors = super::style::class_colors(c);
    for (k, name) in class_names.iter().enumerate() {
        let g: Vec<(f64, f64)> = test.iter().zip(test_labels).filter(|(_, &l)| l as usize == k).map(|(p, _)| *p).collect();
        plot = plot.with(name.clone(), g, 2, c <= 10);
    }
    let greys = [plotters::style::RGBColor(20, 20, 20), plotters::style::RGBColor(110, 110, 110), plotters::style::RGBColor(185, 185, 185)];
    for (i, (name, pts)) in ood.iter().enumerate() {
        plot = plot.with(format!("OOD: {name}"), pts.clone(), 2, true);
        colors.push(greys[i % greys.len()]);
    }
    plot.colors = Some(colors);
    Figure::new(&plot, 900, 760)
}

/// Heatmaps of class-mean distances, class-mean cosines and cos(w_c, mu_c').
pub fn class_geometry(g: &crate::nc::ClassGeometry, epoch: i64) -> Result<Figure> {
    let mut panels: Vec<AnyPlot> = vec![
        Heatmap::from_tensor(format!("||mu_c - mu_c'|| (centred), epoch {epoch}"), &g.mean_distances)?.axes("class", "class").into(),
        Heatmap {
            range: Some((-1.0, 1.0)),
            ..Heatmap::from_tensor(format!("cos(mu_c, mu_c'), epoch {epoch}"), &g.mean_cosines)?.axes("class", "class")
        }
        .into(),
    ];
    if let Some(wm) = &g.w_mean_cosines {
        panels.push(
            Heatmap {
                range: Some((-1.0, 1.0)),
                ..Heatmap::from_tensor(format!("cos(w_c, mu_c'), epoch {epoch}"), wm)?.axes("class mean", "classifier row")
            }
            .into(),
        );
    }
    let n = panels.len();
    Figure::new(&Panels::new("Class-mean geometry (NC2, NC3)", 1, n, panels), 560 * n as u32, 520)
}

/// Per-class within-class variance Tr(Sigma_W,c) over epochs (log10), a class x epoch heatmap,
/// and the diagonal cos(w_c, mu_c) over epochs.
pub fn class_variance_over_epochs(epochs: &[i64], class_var: &[Tensor], diag_cos: &[Tensor]) -> Result<Figure> {
    if epochs.is_empty() || epochs.len() != class_var.len() {
        return Err(Error::shape("class variance figure", format!("{} epochs, {} variance vectors", epochs.len(), class_var.len())));
    }
    let cols: Vec<Vec<f64>> = class_var
        .iter()
        .map(|t| Vec::<f64>::try_from(t.to_kind(Kind::Double).clamp_min(1e-12).log10()))
        .collect::<std::result::Result<_, _>>()?;
    let c = cols[0].len();
    let values: Vec<Vec<f64>> = (0..c).map(|k| cols.iter().map(|col| col[k]).collect()).collect();
    let labels: Vec<String> = epochs.iter().map(|e| e.to_string()).collect();
    let heat = Heatmap::new("log10 Tr(Sigma_W,c) per class", values).axes("epoch", "class").labels(vec![], labels);
    let mut panels: Vec<AnyPlot> = vec![heat.into()];
    if diag_cos.len() == epochs.len() {
        let means: Vec<(f64, f64)> =
            epochs.iter().zip(diag_cos).map(|(&e, t)| (e as f64, t.mean(Kind::Double).double_value(&[]))).collect();
        let mins: Vec<(f64, f64)> = epochs.iter().zip(diag_cos).map(|(&e, t)| (e as f64, t.min().double_value(&[]))).collect();
        panels.push(
            LinePlot::new("cos(w_c, mu_c) (self-duality per class)", "epoch", "cosine")
                .with(Series::new("mean over classes", means))
                .with(Series::new("worst class", mins).dashed())
                .into(),
        );
    }
    let n = panels.len();
    Figure::new(&Panels::new("Within-class variance and self-duality over training", 1, n, panels), 650 * n as u32, 520)
}

fn layer_order(rows: &[LongRow]) -> Vec<String> {
    let order = crate::model::TAP_NAMES;
    let mut v = distinct(rows.iter().filter(|r| order.contains(&r.key.as_str())).map(|r| r.key.clone()));
    v.sort_by_key(|l| order.iter().position(|o| o == l).unwrap_or(usize::MAX));
    v
}

/// Per-layer bars at `epoch`: NC1 (log), equinorm, equiangularity, NC4, NC5 per OOD set.
pub fn layer_bars(rows: &[LongRow], epoch: i64) -> Result<Figure> {
    let layers = layer_order(rows);
    let get = |l: &str, d: &str, m: &str| {
        rows.iter().find(|r| r.epoch == epoch && r.key == l && r.dataset == d && r.metric == m).map(|r| r.value).unwrap_or(f64::NAN)
    };
    let bar = |title: &str, m: &str, log: bool| {
        let mut b =
            BarChart::new(title, m, layers.clone()).with(m, layers.iter().map(|l| get(l, crate::names::ID_TRAIN, m)).collect(), None);
        b.log_y = log;
        AnyPlot::Bar(b)
    };
    let sets = distinct(rows.iter().filter(|r| r.metric == "nc5" && r.dataset != crate::names::ID_TRAIN).map(|r| r.dataset.clone()));
    let mut nc5 = BarChart::new("NC5 (centred)", "mean |cos|", layers.clone());
    for s in &sets {
        nc5 = nc5.with(s.clone(), layers.iter().map(|l| get(l, s, "nc5")).collect(), None);
    }
    let panels = vec![
        bar("NC1 (log)", "nc1", true),
        bar("NC2 equinorm (means)", "nc2_equinorm_m", false),
        bar("NC2 equiangularity (means)", "nc2_maxangle_m", false),
        bar("NC4 NCC mismatch", "nc4_ncc_mismatch", false),
        AnyPlot::Bar(nc5),
        bar("CDNV (log)", "cdnv", true),
    ];
    Figure::new(&Panels::new(format!("Neural Collapse by layer, epoch {epoch} (global average pooling)"), 2, 3, panels), 1900, 1000)
}

/// A layer x epoch heatmap of one metric (`log10` for NC1-like metrics).
pub fn layer_epoch_heatmap(rows: &[LongRow], metric: &str, dataset: &str, log10: bool) -> Result<Figure> {
    let layers = layer_order(rows);
    let epochs = {
        let mut e = distinct(rows.iter().map(|r| r.epoch));
        e.sort();
        e
    };
    let values: Vec<Vec<f64>> = layers
        .iter()
        .map(|l| {
            epochs
                .iter()
                .map(|&e| {
                    let v = rows
                        .iter()
                        .find(|r| r.epoch == e && &r.key == l && r.dataset == dataset && r.metric == metric)
                        .map(|r| r.value)
                        .unwrap_or(f64::NAN);
                    if log10 {
                        v.max(1e-12).log10()
                    } else {
                        v
                    }
                })
                .collect()
        })
        .collect();
    let mut h = Heatmap::new(format!("{}{metric} ({dataset}), layer x epoch", if log10 { "log10 " } else { "" }), values)
        .axes("epoch", "layer")
        .labels(layers.clone(), epochs.iter().map(|e| e.to_string()).collect());
    h.reversed = true;
    h.annotate = layers.len() * epochs.len() <= 160;
    Figure::new(&h, (120 + 70 * epochs.len() as u32).clamp(700, 2000), 620)
}

/// log separation fuzziness D_l vs depth with the fitted line (He & Su).
pub fn fuzziness_vs_depth(rows: &[LongRow], epoch: i64) -> Result<Figure> {
    let layers = layer_order(rows);
    let d: Vec<f64> = layers
        .iter()
        .map(|l| {
            rows.iter()
                .find(|r| r.epoch == epoch && &r.key == l && r.dataset == crate::names::ID_TRAIN && r.metric == "separation_fuzziness")
                .map(|r| r.value)
                .unwrap_or(f64::NAN)
        })
        .collect();
    let (a, b) = crate::nc::separation_fuzziness_slope(&d)?;
    let pts: Vec<(f64, f64)> = d.iter().enumerate().map(|(i, &v)| (i as f64, v)).collect();
    let fit: Vec<(f64, f64)> = (0..d.len()).map(|i| (i as f64, (a + b * i as f64).exp())).collect();
    let p = LinePlot::new(
        format!("Separation fuzziness by depth, epoch {epoch} (layers: {})", layers.join(", ")),
        "layer index (0 = stem)",
        "D = Tr(SS_w SS_b+) (log)",
    )
    .with(Series::new("measured", pts))
    .with(Series::new(format!("fit: ratio {:.3} per layer", b.exp()), fit).dashed().no_markers())
    .log_y();
    Figure::new(&p, 1000, 560)
}

/// The first `per_set` images of every OOD set, captioned with the set name.
pub fn ood_samples(sets: &[Dataset], per_set: usize) -> Result<Figure> {
    let mut imgs = Vec::new();
    let mut caps = Vec::new();
    for d in sets {
        let n = per_set.min(d.len());
        imgs.push(d.images.narrow(0, 0, n as i64));
        caps.extend(std::iter::repeat_n(d.name.clone(), n));
    }
    if imgs.is_empty() {
        return Err(Error::data("OOD samples", "no OOD sets"));
    }
    let grid = ImageGrid::from_tensor("OOD samples (as the network sees them, 32x32)", &Tensor::cat(&imgs, 0), caps, per_set.max(1))?;
    let (w, h) = grid.suggested_size();
    Figure::new(&grid, w, h)
}

/// Shows a GIF file inline in a notebook (`image/gif`).
pub fn display_gif(path: impl AsRef<std::path::Path>) -> Result<()> {
    use base64::Engine;
    let p = path.as_ref();
    let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
    println!("EVCXR_BEGIN_CONTENT image/gif\n{}\nEVCXR_END_CONTENT", base64::engine::general_purpose::STANDARD.encode(bytes));
    Ok(())
}

/// The value of (`epoch`, `key`, `dataset`, `metric`) in `rows`, NaN when absent.
fn value_of(rows: &[LongRow], epoch: i64, key: &str, dataset: &str, metric: &str) -> f64 {
    rows.iter()
        .find(|r| r.epoch == epoch && r.key == key && r.dataset == dataset && r.metric == metric)
        .map(|r| r.value)
        .unwrap_or(f64::NAN)
}

/// Notebook 06's per-layer panels (`interp/layers.csv` rows of one or more runs, each
/// with a label and the epoch to show): probe accuracies on ID test, effective rank of the class means
/// (reference C - 1), class selectivity, units per class and classes per unit, the
/// kurtosis test (unit basis against random rotations) and the feature dimensionality
/// of the centred means (reference (C - 1) / C, the simplex ETF). x is the layer index
/// (0 = the stem, last = the penultimate feature).
pub fn interp_by_layer(runs: &[(&str, &[LongRow], i64)], classes: i64) -> Result<Figure> {
    use crate::names::{ID_TEST, ID_TRAIN};
    if runs.is_empty() {
        return Err(Error::data("interp_by_layer", "no runs given"));
    }
    let line = |title: &str, y: &str| LinePlot::new(title, "layer index (0 = stem, last = penultimate)", y);
    let mut probes = line("Probe accuracy (ID test)", "accuracy").y_range(0.0, 1.02).legend_lower();
    let mut erank =
        line("Effective rank of the class means", "exp(entropy of singular values)").hline((classes - 1) as f64, "C - 1 (simplex ETF)");
    let mut sel = line("Class selectivity (Morcos et al.)", "mean over units").legend_lower();
    let mut poly = line("Units per class, classes per unit", "participation ratio").log_y();
    let mut kurt = line("Privileged basis: kurtosis of class means", "kurtosis (3 = Gaussian)").log_y().hline(3.0, "Gaussian");
    let mut dims =
        line("Feature dimensionality of the class means", "mean D_c").hline((classes - 1) as f64 / classes as f64, "(C - 1) / C (ETF)");
    let mut names = Vec::new();
    for &(label, rows, epoch) in runs {
        let layers = layer_order(rows);
        names = layers.clone();
        let pts = |set: &str, metric: &str| -> Vec<(f64, f64)> {
            layers.iter().enumerate().map(|(i, l)| (i as f64, value_of(rows, epoch, l, set, metric))).filter(|p| p.1.is_finite()).collect()
        };
        let tag = |s: &str| if runs.len() > 1 { format!("{label}: {s}") } else { s.to_string() };
        probes = probes
            .with(Series::new(tag("linear probe"), pts(ID_TEST, "linear_probe_accuracy")))
            .with(Series::new(tag("NCC probe"), pts(ID_TEST, "ncc_probe_accuracy")).dashed());
        erank = erank.with(Series::new(tag("class means"), pts(ID_TRAIN, "effective_rank_means")));
        sel = sel
            .with(Series::new(tag("mean"), pts(ID_TRAIN, "selectivity_mean")))
            .with(Series::new(tag("90th percentile"), pts(ID_TRAIN, "selectivity_p90")).dashed());
        poly = poly
            .with(Series::new(tag("units per class"), pts(ID_TRAIN, "units_per_class")))
            .with(Series::new(tag("classes per unit"), pts(ID_TRAIN, "classes_per_unit")).dashed());
        kurt = kurt
            .with(Series::new(tag("unit basis"), pts(ID_TRAIN, "kurtosis_units")))
            .with(Series::new(tag("random rotations"), pts(ID_TRAIN, "kurtosis_rotated")).dashed());
        dims = dims.with(Series::new(tag("centred means"), pts(ID_TRAIN, "dimensionality_means")));
    }
    let panels = [probes, erank, sel, poly, kurt, dims].into_iter().map(AnyPlot::Line).collect();
    Figure::new(&Panels::new(format!("Interpretability by layer (layers: {})", names.join(", ")), 2, 3, panels), 1900, 1000)
}

/// Notebook 06's ablation panels at `epoch` (`interp/ablation.csv` rows; the `layer`
/// column holds the subspace): ID-test accuracy through the head and the mean AUROC
/// over the OOD sets of each detector, per kept subspace; and the share of each set's
/// centred energy inside the ETF span.
pub fn ablation_bars(rows: &[LongRow], epoch: i64) -> Result<Figure> {
    let at: Vec<&LongRow> = rows.iter().filter(|r| r.epoch == epoch).collect();
    if at.is_empty() {
        return Err(Error::data("ablation_bars", format!("no ablation rows at epoch {epoch}")));
    }
    let subs = distinct(at.iter().filter(|r| r.metric == "accuracy").map(|r| r.key.clone()));
    let dets = distinct(at.iter().filter(|r| r.metric.starts_with("auroc_")).map(|r| r.metric.clone()));
    let mut b = BarChart::new("Accuracy and OOD AUROC after projecting the features", "value", subs.clone());
    b = b.with("ID-test accuracy", subs.iter().map(|s| value_of(rows, epoch, s, crate::names::ID_TEST, "accuracy")).collect(), None);
    for d in &dets {
        let mean = |s: &String| {
            let v: Vec<f64> = at.iter().filter(|r| &r.key == s && &r.metric == d).map(|r| r.value).collect();
            if v.is_empty() {
                f64::NAN
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        b = b.with(format!("{} AUROC (mean over OOD sets)", d.trim_start_matches("auroc_")), subs.iter().map(mean).collect(), None);
    }
    b.y_range = Some((0.0, 1.05));
    let sets = distinct(at.iter().filter(|r| r.metric == "energy_in_etf_span").map(|r| r.dataset.clone()));
    let e = BarChart::new("Centred energy inside the ETF span (NC5: OOD less)", "mean share", sets.clone()).with(
        "share",
        sets.iter().map(|s| value_of(rows, epoch, "etf", s, "energy_in_etf_span")).collect(),
        None,
    );
    Figure::new(&Panels::new(format!("Causal subspace ablation, epoch {epoch}"), 1, 2, vec![AnyPlot::Bar(b), AnyPlot::Bar(e)]), 1800, 600)
}

/// Class selectivity beside Neural Collapse over training at one layer: the mean and
/// 90th-percentile selectivity (`interp/layers.csv` rows) and NC1 (log) and the NC2
/// equinorm of the same checkpoints (`nc/layers.csv` or `nc/metrics.csv` rows).
pub fn selectivity_vs_nc(interp: &[LongRow], nc: &[LongRow], layer: &str) -> Result<Figure> {
    let id = crate::names::ID_TRAIN;
    let sel = LinePlot::new(format!("Class selectivity of {layer} units"), "epoch", "selectivity")
        .with(Series::new("mean", series_of(interp, layer, id, "selectivity_mean")))
        .with(Series::new("90th percentile", series_of(interp, layer, id, "selectivity_p90")).dashed())
        .legend_lower();
    let nc1 =
        LinePlot::new(format!("NC1 of {layer}"), "epoch", "NC1 (log)").with(Series::new("nc1", series_of(nc, layer, id, "nc1"))).log_y();
    let nc2 = LinePlot::new(format!("NC2 of {layer}"), "epoch", "coefficient of variation / max |cos + 1/(C-1)|")
        .with(Series::new("equinorm (means)", series_of(nc, layer, id, "nc2_equinorm_m")))
        .with(Series::new("equiangularity (means)", series_of(nc, layer, id, "nc2_maxangle_m")).dashed());
    if sel.series.iter().all(|s| s.points.is_empty()) {
        return Err(Error::data("selectivity_vs_nc", format!("no selectivity rows for layer {layer}")));
    }
    let panels = vec![AnyPlot::Line(sel), AnyPlot::Line(nc1), AnyPlot::Line(nc2)];
    Figure::new(&Panels::new(format!("Units and geometry over training ({layer})"), 1, 3, panels), 1800, 560)
}
