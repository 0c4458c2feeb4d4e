//! Every figure renders from small fixture data: expected size, not blank, and
//! its text renders (a figure with labels differs from the same without).

mod common;

use oodnc::nc::{ClassGeometry, ClassStats};
use oodnc::plot::figures::*;
use oodnc::plot::{BarChart, Figure, Heatmap, Histogram, LinePlot, Panels, ScatterPlot, Series, TextBox};
use oodnc::report::LongRow;
use oodnc::train::{EpochRecord, History};
use oodnc::util::SplitMix64;
use tch::{Device, Kind, Tensor};

fn check(fig: &Figure, w: u32, h: u32) {
    assert_eq!((fig.width(), fig.height()), (w, h));
    assert_eq!(fig.rgb().len(), (w * h * 3) as usize);
    assert!(fig.pixel_variance() > 50.0, "blank figure: variance {}", fig.pixel_variance());
    assert!(fig.svg().starts_with("<svg") && fig.svg().contains("<text"), "SVG without text");
    let png = fig.png_bytes().unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}

fn history() -> History {
    History {
        records: (1..=8)
            .map(|e| EpochRecord {
                epoch: e,
                lr: 0.1 * 0.5 * (1.0 + (std::f64::consts::PI * (e - 1) as f64 / 8.0).cos()),
                train_loss: 2.0 / e as f64,
                train_acc: 1.0 - 0.5 / e as f64,
                val_loss: 2.2 / e as f64,
                val_acc: 0.9 - 0.5 / e as f64,
                test_acc: 0.88 - 0.5 / e as f64,
                seconds: 1.0,
                images_per_s: 100.0,
            })
            .collect(),
    }
}

fn rows() -> Vec<LongRow> {
    let mut v = Vec::new();
    let mut push = |e: i64, k: &str, d: &str, m: &str, x: f64| {
        v.push(LongRow {
            epoch: e,
            protocol: "heldout".into(),
            key: k.into(),
            dataset: d.into(),
            metric: m.into(),
            value: x,
            ci_low: x - 0.02,
            ci_high: x + 0.02,
        });
    };
    for e in [0, 1, 2, 5, 10] {
        let t = e as f64 / 10.0;
        for det in ["msp", "energy"] {
            for d in ["svhn", "cifar10"] {
                push(e, det, d, "auroc", 0.5 + 0.4 * t);
                push(e, det, d, "fpr95_ood_accepted_at_95_id", 0.9 - 0.5 * t);
                push(e, det, d, "fpr95_id_rejected_at_95_ood", 0.8 - 0.5 * t);
            }
        }
        for layer in ["stem", "layer1.0", "layer2.0", "layer3.0", "layer4.0", "penultimate"] {
            let depth =
                ["stem", "layer1.0", "layer2.0", "layer3.0", "layer4.0", "penultimate"].iter().position(|l| *l == layer).unwrap() as f64;
            for (m, x) in [
                ("nc1", 10.0 * (1.1 - t) / (1.0 + depth)),
                ("separation_fuzziness", 100.0 * (1.1 - t) / (1.0 + depth)),
                ("cdnv", 1.0 - 0.5 * t),
                ("nc2_equinorm_m", 0.3 - 0.2 * t),
                ("nc2_maxangle_m", 0.4 - 0.3 * t),
                ("nc2_equinorm_w", 0.1),
                ("nc2_maxangle_w", 0.2 - 0.1 * t),
                ("nc3", 1.0 - 0.8 * t),
                ("nc4_ncc_mismatch", 0.5 - 0.4 * t),
                ("accuracy", 0.5 + 0.5 * t),
                ("ncc_accuracy", 0.4 + 0.5 * t),
            ] {
                push(e, layer, "id-train", m, x);
            }
            for d in ["svhn", "cifar10"] {
                push(e, layer, d, "nc5", 0.5 - 0.3 * t);
                push(e, layer, d, "nc5_uncentred", 0.6);
                push(e, layer, d, "nc1_with_ood_class", 2.0 - t);
                push(e, layer, d, "nc2_maxangle_with_ood_class", 0.5 - 0.2 * t);
            }
        }
    }
    v
}

#[test]
fn training_figures() {
    let h = history();
    check(&training_curves(&h).unwrap(), 1500, 450);
    check(&final_metrics(&h).unwrap(), 1200, 900);
    let dir = std::env::temp_dir().join(format!("oodnc-fig-{}", std::process::id()));
    let gif = dir.join("curves.gif");
    training_gif(&h, &gif, 5, 10).unwrap();
    let bytes = std::fs::read(&gif).unwrap();
    assert_eq!(&bytes[..6], b"GIF89a");
    let frames = image::codecs::gif::GifDecoder::new(std::io::Cursor::new(bytes)).unwrap();
    use image::AnimationDecoder;
    assert_eq!(frames.into_frames().count(), 4); // epochs 2, 4, 6, 8
    std::fs::remove_dir_all(dir).ok();
    assert!(training_curves(&History::default()).is_err());
}

#[test]
fn sample_grid_shows_images_with_names() {
    let px: Vec<u8> = (0..20 * 3072).map(|i| ((i * 37) % 256) as u8).collect();
    let ds = oodnc::data::Dataset::from_raw("toy", px, (0..20).map(|i| i % 3).collect(), vec!["apple".into(), "bee".into(), "cat".into()])
        .unwrap();
    let fig = sample_grid(&ds, 16, true, 0).unwrap();
    assert!(fig.pixel_variance() > 100.0);
    assert_eq!(fig.width(), 8 * 110 + 20);
}

#[test]
fn ood_figures() {
    let r = rows();
    check(&ood_vs_epoch(&r, "msp", Some((5, 10))).unwrap(), 1300, 2 * 380 + 40);
    check(&ood_summary_bars(&r, 10, "auroc").unwrap(), 700, 520);
    let mut g = SplitMix64::new(1);
    let id: Vec<f64> = (0..300).map(|_| g.normal() + 1.0).collect();
    let ood = vec![("svhn".to_string(), (0..200).map(|_| g.normal()).collect::<Vec<f64>>())];
    check(&score_histograms("msp", &id, &ood).unwrap(), 520, 420);
    check(&roc_curves("msp", &id, &ood).unwrap(), 640, 560);
    assert!(ood_vs_epoch(&r, "nope", None).is_err());
}

#[test]
fn nc_figures() {
    let r = rows();
    check(&nc_evolution(&r, Some((5, 10))).unwrap(), 1600, 900);
    check(&nc5_evolution(&r, None).unwrap(), 900, 560);
    check(&nc_id_vs_ood(&r).unwrap(), 1300, 500);
    check(&layer_bars(&r, 10).unwrap(), 1900, 1000);
    let hm = layer_epoch_heatmap(&r, "nc1", "id-train", true).unwrap();
    assert!(hm.pixel_variance() > 50.0);
    check(&fuzziness_vs_depth(&r, 10).unwrap(), 1000, 560);
    // Geometry from real statistics of random clustered features.
    let mut g = SplitMix64::new(2);
    let means = Tensor::from_slice(&(0..4 * 6).map(|_| 3.0 * g.normal()).collect::<Vec<_>>()).view([4, 6]);
    let y = Tensor::arange(40, (Kind::Int64, Device::Cpu)).remainder(4);
    let h = means.index_select(0, &y) + Tensor::from_slice(&(0..240).map(|_| g.normal()).collect::<Vec<_>>()).view([40, 6]);
    let st = ClassStats::compute(&h, &y, 4).unwrap();
    let geo = ClassGeometry::new(&st, Some(&means));
    check(&class_geometry(&geo, 3).unwrap(), 1680, 520);
    let diag = geo.w_mean_cosines.as_ref().unwrap().diagonal(0, 0, 1);
    check(
        &class_variance_over_epochs(&[0, 3], &[st.class_var.shallow_clone(), st.class_var.shallow_clone()], &[diag.shallow_clone(), diag])
            .unwrap(),
        1300,
        520,
    );
    let names: Vec<String> = (0..4).map(|i| format!("c{i}")).collect();
    check(&oodnc::run_figures::pca_2d(&h, &h, &y, &names, &[("svhn".into(), h.narrow(0, 0, 5) + 5.0)], 100).unwrap(), 900, 760);
}

#[test]
fn every_plot_kind_renders_its_text() {
    let line = LinePlot::new("Title here", "x axis", "y axis").with(Series::new("a", vec![(0.0, 1.0), (1.0, 2.0)]));
    let bar = BarChart::new("Bars", "value", vec!["a".into(), "b".into()]).with("s", vec![1.0, 2.0], Some(vec![(0.9, 1.1), (1.8, 2.2)]));
    let heat = Heatmap::new("Heat", vec![vec![0.0, 1.0], vec![2.0, 3.0]]);
    let hist = Histogram::new("Hist", "score").with("id", vec![0.0, 1.0, 1.5, 2.0]).with("ood", vec![-1.0, 0.0]);
    let scat = ScatterPlot::new("Scatter", "x", "y").with("g", vec![(0.0, 0.0), (1.0, 1.0)], 3, true);
    let text = TextBox { title: "Box".into(), lines: vec!["line one".into()] };
    let blank_titles = |p: &Panels| {
        let mut q = p.clone();
        q.title = String::new();
        q
    };
    let panels = Panels::new("All kinds", 2, 3, vec![line.into(), bar.into(), heat.into(), hist.into(), scat.into(), text.into()]);
    let with = Figure::new(&panels, 1200, 700).unwrap();
    let without = Figure::new(&blank_titles(&panels), 1200, 700).unwrap();
    assert_ne!(with.rgb(), without.rgb(), "the title text changed nothing");
    check(&with, 1200, 700);
    // Bad inputs are errors, not panics.
    assert!(Figure::new(&BarChart::new("x", "y", vec!["a".into()]).with("s", vec![1.0, 2.0], None), 300, 200).is_err());
    assert!(Figure::new(&Heatmap::new("x", vec![vec![1.0], vec![1.0, 2.0]]), 300, 200).is_err());
    assert!(Figure::new(&Histogram::new("x", "y"), 300, 200).is_err());
    assert!(Figure::new(&Panels::new("x", 1, 1, vec![]), 300, 200).is_err());
}

// ---------------------------------------------------------------- notebook display (Session::show)

fn session_in(dir: &std::path::Path) -> oodnc::notebook::Session {
    oodnc::notebook::Session {
        root: dir.to_path_buf(),
        cfg: oodnc::config::RunConfig::profile("ci").unwrap(),
        run: "t".into(),
        run_dir: dir.join("runs/t"),
        figures: dir.join("figures/t"),
        device: Device::Cpu,
    }
}

#[test]
fn session_show_saves_figures_tables_and_frames_for_the_report() {
    use oodnc::notebook::Shown;
    use polars::prelude::*;
    let tmp = common::TempDir::new("show");
    let s = session_in(tmp.path());
    let fig = training_curves(&history()).unwrap();
    let shown = s.show(fig, "curves").unwrap();
    assert!(shown.figure().is_some());
    for ext in ["png", "svg"] {
        assert!(tmp.path().join(format!("figures/t/curves.{ext}")).exists(), "{ext}");
    }
    let md = "| a | b |\n|---|---|\n| 1 | 2 |".to_string();
    assert!(matches!(s.show(md.clone(), "table").unwrap(), Shown::Table(_)));
    assert_eq!(std::fs::read_to_string(tmp.path().join("figures/t/table.md")).unwrap(), md + "\n");
    let df = df!("detector" => ["msp", "<knn>"], "auroc" => [0.91234567, 0.5]).unwrap();
    assert!(matches!(s.show(df, "frame").unwrap(), Shown::Frame(_)));
    let csv = std::fs::read_to_string(tmp.path().join("figures/t/frame.csv")).unwrap();
    assert!(csv.starts_with("detector,auroc\n") && csv.contains("msp,0.91234567"), "{csv}");
    // A stem with a folder in it is refused, naming the stem.
    for bad in ["", "../x", "a/b", ".hidden"] {
        let e = s.show("| x |".to_string(), bad).unwrap_err().to_string();
        assert!(e.contains("stem"), "{bad}: {e}");
    }
}

#[test]
fn frames_show_as_html_tables_escaped_and_truncated() {
    use polars::prelude::*;
    let df = df!("name" => ["a<b", "c&d", "e"], "x" => [1.0f64, 2.123456, f64::NAN], "n" => [1i64, 2, 3]).unwrap();
    let h = oodnc::notebook::frame_html(&df, 2);
    assert!(h.starts_with("<table>") && h.contains("<th>name</th><th>x</th><th>n</th>"), "{h}");
    assert!(h.contains("<td>a&lt;b</td><td>1.0000</td><td>1</td>"), "{h}");
    assert!(h.contains("<td>c&amp;d</td><td>2.1235</td><td>2</td>"), "{h}");
    assert!(!h.contains("<td>e</td>") && h.contains("2 of 3 rows, 3 columns"), "{h}");
    let all = oodnc::notebook::frame_html(&df, 10);
    assert!(all.contains("<td>e</td>") && !all.contains("rows,"), "{all}");
}

#[test]
fn session_rows_reads_an_earlier_table_or_names_the_notebook_to_run() {
    use oodnc::run::Table;
    let tmp = common::TempDir::new("rows");
    let s = session_in(tmp.path());
    let e = s.rows(Table::NcMetrics, "03_neural_collapse").unwrap_err().to_string();
    assert!(e.contains("nc/metrics.csv") && e.contains("03_neural_collapse"), "{e}");
    let rows = vec![LongRow::point(3, "penultimate", "id-train", "nc1", 0.25), LongRow::point(5, "penultimate", "id-train", "nc1", 0.125)];
    let mut df = oodnc::results::to_frame(&rows, oodnc::results::TableKind::Nc).unwrap();
    std::fs::create_dir_all(tmp.path().join("runs/t/nc")).unwrap();
    oodnc::results::write_csv(&mut df, &tmp.path().join("runs/t/nc/metrics.csv")).unwrap();
    let back = s.rows(Table::NcMetrics, "03_neural_collapse").unwrap();
    assert_eq!(back.len(), 2);
    assert_eq!((back[1].epoch, back[1].key.as_str(), back[1].value), (5, "penultimate", 0.125));
    assert_eq!(oodnc::report::epochs_of(&back), vec![3, 5]);
}
