//! The whole study end to end on the ci profile, through `Run`: train ->
//! extract -> ood -> nc -> figures, so that `cargo test` alone covers the
//! pipelines (the notebook tests cover the same through the kernel). And a
//! detector written outside the crate, to show the `Registered` trait is all a
//! new detector needs.

mod common;

use common::TempDir;
use oodnc::config::RunConfig;
use oodnc::features::{ExtractOptions, FeatureSet};
use oodnc::ood::detector::{FitData, ParamReader, Registered, Scorer};
use oodnc::run::{Run, Table};
use tch::{Device, Tensor};

#[test]
fn the_ci_study_end_to_end_through_run() {
    let t = TempDir::new("pipeline");
    let mut cfg = RunConfig::profile("ci").unwrap();
    cfg.data.root = t.path().join("data");
    let dir = t.path().join("runs/ci");
    let cpu = Device::Cpu;
    let data = oodnc::train::RunData::load(&cfg).unwrap();
    let out = oodnc::train::Trainer::open(cfg.clone(), &dir, cpu).unwrap().fit(&data, None).unwrap();
    assert_eq!(out.epochs_done, cfg.train.epochs);

    let run = Run::open(&dir).unwrap();
    assert_eq!(run.config(), &cfg);
    assert_eq!(run.epochs().unwrap(), cfg.checkpoint_epochs());
    let last = run.last_epoch().unwrap();
    assert_eq!(run.parse_epochs("last").unwrap(), vec![last]);
    // The head read from the checkpoint equals the network's.
    let (w, b) = run.head(last).unwrap();
    let (_vs, model, meta) = run.model(last, cpu).unwrap();
    let (mw, mb) = model.head();
    assert!(w.equal(&mw) && b.equal(&mb) && meta.epoch == last);

    // Extract with layer taps, then every study reads the cache.
    let sets = run.eval_sets().unwrap();
    let train = run.features(last, &sets.id_train, ExtractOptions { taps: true, pool2x2: false }, cpu).unwrap();
    assert_eq!(train.taps.len(), 9);
    assert_eq!(train.len(), sets.id_train.len());

    let names = oodnc::ood::detector_names();
    let study = oodnc::ood::pipeline::study(&run, &[last], &names, 0, cpu).unwrap();
    let rows = oodnc::report::long_rows(&study.frame, "detector").unwrap();
    let protocols = oodnc::ood::Protocol::ALL;
    assert_eq!(study.headline, oodnc::ood::Protocol::Heldout);
    for p in protocols {
        for d in &names {
            for o in &sets.ood {
                let auroc = rows
                    .iter()
                    .find(|r| r.protocol == p.name() && r.key == *d && r.dataset == o.name && r.metric == "auroc")
                    .unwrap()
                    .value;
                assert!((0.0..=1.0).contains(&auroc), "{p} {d} on {}: {auroc}", o.name);
            }
            // The oracle is an upper bound of every other protocol on each test set.
            for o in &sets.ood {
                let get = |p: oodnc::ood::Protocol| {
                    rows.iter().find(|r| r.protocol == p.name() && r.key == *d && r.dataset == o.name && r.metric == "auroc").unwrap().value
                };
                assert!(get(oodnc::ood::Protocol::Oracle) >= get(p) - 1e-12, "{d} {p} on {}", o.name);
            }
        }
    }
    // Group means: the demo's sets fall in OpenOOD's near (cifar10) and far (svhn, textures) groups.
    let far = |p: &str, m: &str| {
        rows.iter().find(|r| r.protocol == p && r.key == "msp" && r.dataset == m && r.metric == "auroc").map(|r| r.value)
    };
    let mean = (far("heldout", "svhn").unwrap() + far("heldout", "textures").unwrap()) / 2.0;
    assert!((far("heldout", "mean:far").unwrap() - mean).abs() < 1e-12);
    assert_eq!(far("heldout", "mean:near"), far("heldout", "cifar10"));
    // CCR@FPR rows, between 0 and the accuracy.
    let acc = rows.iter().find(|r| r.protocol == "heldout" && r.key == "classifier").unwrap().value;
    let ccr: Vec<f64> = rows.iter().filter(|r| r.protocol == "heldout" && r.metric.starts_with("ccr_fpr")).map(|r| r.value).collect();
    assert!(!ccr.is_empty() && ccr.iter().all(|c| (0.0..=acc + 1e-12).contains(c)));
    // One scores entry per (protocol, detector); the oracle's per OOD set where its choice differs between sets.
    assert_eq!(study.scores.iter().filter(|s| s.protocol != oodnc::ood::Protocol::Oracle).count(), names.len() * 3);
    let oracle = study.scores_of(oodnc::ood::Protocol::Oracle);
    assert!((names.len()..=names.len() * sets.ood.len()).contains(&oracle.len()));
    assert_eq!(oracle.iter().map(|s| s.ood.len()).sum::<usize>(), names.len() * sets.ood.len());
    // The study returns its fitted detectors: scoring again gives the table's scores.
    let knn = study.scores.iter().find(|s| s.spec.name() == "knn" && s.protocol == study.headline).unwrap();
    let test = run.features(last, &sets.id_test, ExtractOptions::default(), cpu).unwrap();
    assert_eq!(knn.fitted.as_ref().unwrap().score_vec(&test).unwrap(), knn.id);
    assert!(study.scores.iter().all(|s| s.id.len() == sets.id_test.len()));
    assert!(run.table(Table::OodMetrics).exists() && run.table(Table::OodSelection).exists());
    // Every detector against the best on every OOD set per protocol, the best tied with itself.
    let sig = oodnc::results::read_csv(&run.table(Table::OodSignificance)).unwrap();
    assert_eq!(sig.height(), protocols.len() * names.len() * sets.ood.len());
    let tied_col = sig.column("tied").unwrap().i64().unwrap().clone();
    let tied: i64 = (0..tied_col.len()).filter_map(|i| tied_col.get(i)).sum();
    assert!(tied >= (protocols.len() * sets.ood.len()) as i64);
    // The figures reuse the study's choices (the headline protocol's), read back typed.
    let spec = oodnc::run_figures::chosen_spec(run.dir(), last, "vim", study.headline).unwrap();
    let sel = study.selections.iter().find(|s| s.detector == "vim" && s.protocol == study.headline).unwrap();
    assert_eq!(&spec, sel.single().unwrap());
    let back = oodnc::run_figures::read_selections(run.dir()).unwrap();
    assert_eq!(back.len(), study.selections.len());
    let back_vim = back.iter().find(|s| s.detector == "vim" && s.protocol == study.headline).unwrap();
    assert_eq!(back_vim.candidates.len(), sel.candidates.len());
    assert_eq!(back_vim.informative, sel.informative);
    // A second call with one detector merges: the other detectors' rows stay.
    let before = oodnc::results::read_csv(&run.table(Table::OodMetrics)).unwrap().height();
    oodnc::ood::pipeline::study(&run, &[last], &["msp"], 0, cpu).unwrap();
    assert_eq!(oodnc::results::read_csv(&run.table(Table::OodMetrics)).unwrap().height(), before);
    // The model-based detectors (the network on the images) by name through the same study, merged in.
    let model = ["iodin", "rankfeat", "gram", "mahalanobis_noise", "nac", "adascale_a", "adascale_l"];
    let ms = oodnc::ood::pipeline::study(&run, &[last], &model, 0, cpu).unwrap();
    let mrows = oodnc::report::long_rows(&ms.frame, "detector").unwrap();
    for p in protocols {
        for d in model {
            for o in &sets.ood {
                let auroc = mrows.iter().find(|r| r.protocol == p.name() && r.key == d && r.dataset == o.name && r.metric == "auroc");
                assert!(auroc.is_some_and(|r| (0.0..=1.0).contains(&r.value)), "{p} {d} on {}", o.name);
            }
        }
    }
    let after = oodnc::results::read_csv(&run.table(Table::OodMetrics)).unwrap();
    assert!(after.height() > before, "the model-based rows are added to the table");
    let sel = oodnc::run_figures::read_selections(run.dir()).unwrap();
    assert!(model.iter().all(|d| sel.iter().any(|s| s.detector == *d && s.protocol == study.headline)));
    // Fitted state is typed and inspectable; estimated values are apart from the hyperparameters.
    let val = run.features(last, &sets.id_val, ExtractOptions::default(), cpu).unwrap();
    let fitted = spec.fit(&FitData::new(&train, Some(&val), &w, &b)).unwrap();
    let vim = fitted.fitted::<oodnc::ood::detectors::vim::FittedVim>().unwrap();
    assert_eq!(fitted.estimated["alpha"], vim.alpha);
    assert!(!fitted.params.contains_key("alpha") && fitted.params.contains_key("dim"));
    let (d, dim) = (cfg.model.feature_dim(), spec.get("dim").unwrap() as i64);
    let residual_dim = match &vim.residual {
        oodnc::ood::detectors::vim::ResidualSpace::Principal(p) => d - p.size()[1],
        oodnc::ood::detectors::vim::ResidualSpace::Residual(ns) => ns.size()[1],
    };
    assert_eq!(residual_dim, d - dim);

    let nc = oodnc::nc::study::study(&run, &[], oodnc::nc::study::NcOptions { layers: true, ..Default::default() }, cpu).unwrap();
    assert!(nc.rows.iter().any(|r| r.key == "layer4.0" && r.metric == "nc1" && r.value.is_finite()));
    assert!(run.table(Table::NcLayers).exists() && run.table(Table::TerminalPhase).exists());
    let nc = oodnc::nc::study::study(&run, &[], Default::default(), cpu).unwrap();
    assert!(nc.rows.iter().any(|r| r.metric == "nc1" && r.value.is_finite()));

    // Interpretability: every layer probed, the ablations written, and the NCC probe on
    // ID train at the penultimate layer is NC4's ncc_accuracy of the same checkpoint.
    let it = oodnc::interp::study(&run, &[last], &Default::default(), cpu).unwrap();
    let get = |key: &str, set: &str, metric: &str| {
        it.layers.iter().find(|r| r.key == key && r.dataset == set && r.metric == metric).map(|r| r.value).unwrap()
    };
    let ncc = nc.rows.iter().find(|r| r.epoch == last && r.metric == "ncc_accuracy").unwrap().value;
    assert!((get("penultimate", "id-train", "ncc_probe_accuracy") - ncc).abs() < 1e-12);
    for layer in ["stem", "layer2.1", "layer4.0", "penultimate"] {
        assert!((0.0..=1.0).contains(&get(layer, "id-test", "linear_probe_accuracy")), "{layer}");
        assert!(get(layer, "id-train", "effective_rank_means") <= (cfg.model.num_classes - 1) as f64 + 1e-9);
    }
    let full_acc = it.ablation.iter().find(|r| r.key == "full" && r.metric == "accuracy").unwrap().value;
    let test_acc = oodnc::ood::metrics::accuracy(
        &run.features(last, &sets.id_test, ExtractOptions::default(), cpu).unwrap().logits,
        &run.features(last, &sets.id_test, ExtractOptions::default(), cpu).unwrap().labels,
    )
    .unwrap();
    // The head recomputed in f64 from the f32 features: at most one near-tie may flip.
    assert!((full_acc - test_acc).abs() <= 1.0 / sets.id_test.len() as f64 + 1e-12, "the `full` ablation is the network itself");
    assert!(it.ablation.iter().any(|r| r.key == "etf_complement" && r.metric == "auroc_knn"));
    assert!(run.table(Table::InterpLayers).exists() && run.table(Table::InterpAblation).exists());

    let figs = t.path().join("figures");
    let written = oodnc::run_figures::write_run_figures(run.dir(), &run.figures_dir(&figs), cpu).unwrap();
    assert!(written.iter().all(|p| p.starts_with(figs.join("ci"))));
    for stem in ["training_curves", "ood_summary_auroc", "ood_hyperparameter_sensitivity", "nc_evolution_all", "nc_by_layer"] {
        assert!(written.iter().any(|p| p.file_stem().unwrap() == stem), "{stem} missing: {written:?}");
    }
}

/// A detector written outside the crate: the mean logit (no hyperparameters).
#[derive(Debug, Clone, Copy, Default)]
struct MeanLogit;

struct FittedMeanLogit;

impl Registered for MeanLogit {
    const NAME: &'static str = "mean_logit";
    const SUMMARY: &'static str = "mean of the logits (a test detector)";
    type Fitted = FittedMeanLogit;
    fn read(_: &mut ParamReader) -> oodnc::Result<Self> {
        Ok(MeanLogit)
    }
    fn fit(&self, _: &FitData) -> oodnc::Result<FittedMeanLogit> {
        Ok(FittedMeanLogit)
    }
}

impl Scorer for FittedMeanLogit {
    fn score(&self, f: &FeatureSet) -> oodnc::Result<Tensor> {
        Ok(f.logits.to_kind(tch::Kind::Double).mean_dim(&[1i64][..], false, tch::Kind::Double))
    }
}

#[test]
fn a_detector_is_one_registered_type() {
    let z = Tensor::from_slice(&[1.0f32, 3.0, -1.0, 5.0]).view([2, 2]);
    let f = FeatureSet::new("x", z.shallow_clone(), z.shallow_clone(), Tensor::from_slice(&[0i64, 1])).unwrap();
    let (w, b) = (Tensor::eye(2, (tch::Kind::Float, Device::Cpu)), Tensor::zeros([2], (tch::Kind::Float, Device::Cpu)));
    let fitted = oodnc::ood::Fitted::fit(Box::new(MeanLogit), &FitData::new(&f, None, &w, &b)).unwrap();
    assert_eq!(fitted.score_vec(&f).unwrap(), vec![2.0, 2.0]);
    assert_eq!(fitted.name, "mean_logit");
    assert!(fitted.fitted::<FittedMeanLogit>().is_some());
    // And the fitted state of a registered one is reachable by type.
    let spec = oodnc::ood::DetectorSpec::new("energy", &[("t", 2.0)]).unwrap();
    let e = spec.detector().unwrap();
    let energy = e.as_any().downcast_ref::<oodnc::ood::detectors::logit::Energy>().unwrap();
    assert_eq!(energy.t, 2.0);
    assert!(oodnc::ood::DetectorSpec::new("energy", &[("temperature", 2.0)]).unwrap_err().to_string().contains("known: t"));
}
