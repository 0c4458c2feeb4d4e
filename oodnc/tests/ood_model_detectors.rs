//! The model-based detectors beside ODIN and i-ODIN (`ood_odin.rs`): RankFeat, Gram and
//! the noisy multi-layer Mahalanobis against
//! pytorch-ood and OpenOOD's formulas on the same network (a PyTorch state dict
//! loaded by both), against independent formulations, and their registry, grids,
//! candidates and errors.

mod common;

use common::{run_python, TempDir};
use oodnc::data::Dataset;
use oodnc::model::{load_checkpoint, ResNet18, ResNetConfig};
use oodnc::ood::model_detectors::{self, gram, rankfeat, FitImages, ModelDetector, ModelSets, Params};
use oodnc::ood::{DetectorSpec, Protocol};
use oodnc::Error;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const CPU: Device = Device::Cpu;
const CLASSES: i64 = 10;
const WIDTH: f64 = 0.25;

/// A network initialised by PyTorch (torch_resnet.py, BN statistics made non-trivial), loaded here.
fn exported(t: &TempDir) -> (VarStore, ResNet18, std::path::PathBuf) {
    exported_as(t, WIDTH, 4)
}

fn exported_as(t: &TempDir, width: f64, seed: u64) -> (VarStore, ResNet18, std::path::PathBuf) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../python/torch_resnet.py");
    let code = format!("import runpy, sys; sys.argv = ['torch_resnet.py'] + sys.argv[1:]; runpy.run_path('{script}', run_name='__main__')");
    let dir = t.path().to_str().unwrap();
    run_python(
        &code,
        &["export", "--out", dir, "--classes", &CLASSES.to_string(), "--width", &width.to_string(), "--seed", &seed.to_string()],
    );
    let mut vs = VarStore::new(CPU);
    let m = ResNet18::new(&vs.root(), ResNetConfig { num_classes: CLASSES, width, bottleneck: None }).unwrap();
    let path = t.path().join("model.safetensors");
    load_checkpoint(&path, &mut vs).unwrap();
    (vs, m, path)
}

fn random_model() -> (VarStore, ResNet18) {
    tch::manual_seed(21);
    let vs = VarStore::new(CPU);
    let m = ResNet18::new(&vs.root(), ResNetConfig { num_classes: CLASSES, width: 0.125, bottleneck: None }).unwrap();
    (vs, m)
}

fn dataset(name: &str, n: i64, seed: i64) -> Dataset {
    tch::manual_seed(seed);
    Dataset {
        name: name.into(),
        images: Tensor::randint(256, [n, 3, 32, 32], (Kind::Uint8, CPU)),
        labels: Tensor::arange(n, (Kind::Int64, CPU)).remainder(CLASSES),
        class_names: (0..CLASSES).map(|i| format!("c{i}")).collect(),
    }
}

fn vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double)).unwrap()
}

fn params(p: &[(&str, f64)]) -> Params {
    p.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Parameter sets as a JSON list of maps, for model_peer.py's spec.
fn params_json(sets: &[Params]) -> String {
    let maps: Vec<String> =
        sets.iter().map(|p| format!("{{{}}}", p.iter().map(|(k, v)| format!("\"{k}\": {v:?}")).collect::<Vec<_>>().join(", "))).collect();
    format!("[{}]", maps.join(", "))
}

fn run_peer(t: &TempDir, model: &std::path::Path, tensors: &[(String, Tensor)], spec: &str) -> std::collections::HashMap<String, Tensor> {
    let inp = t.path().join("in.safetensors");
    let norm = oodnc::data::Normalize::default();
    let mut all: Vec<(String, Tensor)> = tensors.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
    all.push(("mean".into(), Tensor::from_slice(&norm.mean)));
    all.push(("std".into(), Tensor::from_slice(&norm.std)));
    oodnc::tensor_io::save(&inp, &all, &Default::default()).unwrap();
    let out = t.path().join("peer.safetensors");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../python/model_peer.py");
    let code = format!("import runpy, sys; sys.argv = ['model_peer.py'] + sys.argv[1:]; runpy.run_path('{script}', run_name='__main__')");
    run_python(&code, &[model.to_str().unwrap(), inp.to_str().unwrap(), out.to_str().unwrap(), spec]);
    oodnc::tensor_io::load(&out).unwrap().tensors.into_iter().collect()
}

fn max_rel_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().map(|x| x.abs()).fold(1e-12, f64::max);
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max) / scale
}

#[test]
fn rank1_removal_is_the_svd_rank1_part() {
    tch::manual_seed(2);
    let x = Tensor::rand([5, 24, 4, 4], (Kind::Double, CPU));
    let ours = rankfeat::remove_rank1(&x);
    let m = x.reshape([5, 24, 16]);
    let (u, s, v) = m.svd(true, true);
    let rank1 = s.narrow(1, 0, 1).unsqueeze(2) * u.narrow(2, 0, 1).matmul(&v.narrow(2, 0, 1).transpose(1, 2));
    let svd = (&m - rank1).reshape([5, 24, 4, 4]);
    assert!((&ours - &svd).abs().max().double_value(&[]) < 1e-10);
    // What is left has the original's singular values but the first.
    let left = ours.reshape([5, 24, 16]).svd(true, false).1;
    assert!((left.narrow(1, 0, 15) - s.narrow(1, 1, 15)).abs().max().double_value(&[]) < 1e-10);
    // f32 in, f32 out.
    assert_eq!(rankfeat::remove_rank1(&x.to_kind(Kind::Float)).kind(), Kind::Float);
}

/// ODIN, RankFeat (each stage) and Gram against pytorch-ood, RankFeat's fusion against
/// OpenOOD's formula, on a network PyTorch initialised and both load.
#[test]
fn odin_rankfeat_and_gram_match_pytorch_ood() {
    let t = TempDir::new("model-peer");
    let (_vs, m, model_path) = exported(&t);
    let train = dataset("train", 12 * CLASSES, 1);
    let test = dataset("test", 24, 2);
    let labels = vec(&train.labels).iter().map(|&v| v as i64).collect::<Vec<_>>();
    let held = gram::heldout_mask(&labels);
    assert_eq!(held.iter().filter(|h| **h).count(), CLASSES as usize, "one of every 10 per class");
    let pick = |want: bool| (0..labels.len() as i64).filter(|&i| held[i as usize] == want).collect::<Vec<_>>();
    let fit = train.subset(&pick(false), "fit").unwrap();
    let heldout = train.subset(&pick(true), "heldout").unwrap();
    let spec = format!("{{\"classes\": {CLASSES}, \"width\": {WIDTH}, \"poles\": [1, 5, 10]}}");
    let theirs = run_peer(
        &t,
        &model_path,
        &[
            ("fit".into(), fit.images.shallow_clone()),
            ("fit_labels".into(), fit.labels.shallow_clone()),
            ("heldout".into(), heldout.images.shallow_clone()),
            ("heldout_labels".into(), heldout.labels.shallow_clone()),
            ("train".into(), train.images.shallow_clone()),
            ("train_labels".into(), train.labels.shallow_clone()),
            ("test".into(), test.images.shallow_clone()),
        ],
        &spec,
    );

    // ODIN: pytorch-ood's, its -max softmax as oodnc's log max softmax. At T = 1000 the scores
    // hardly vary, so the difference is measured against their spread.
    for (t, e) in [(1000.0, 0.0014), (10.0, 0.004)] {
        let ours = vec(&oodnc::ood::odin::score(&m, &test, oodnc::ood::odin::OdinParams::new(t, e).unwrap(), CPU, 8).unwrap());
        let r = vec(&theirs[&format!("odin_{t}")]);
        let spread = r.iter().copied().fold(f64::MIN, f64::max) - r.iter().copied().fold(f64::MAX, f64::min);
        let d = ours.iter().zip(&r).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max) / spread;
        eprintln!("odin T {t} eps {e}: max difference {d:.2e} of the scores' spread");
        assert!(spread > 0.0 && d < 1e-5, "odin T {t}: difference {d} of the spread {spread}");
    }
    // RankFeat: oodnc's network in f32, the peer's in f64.
    let rf = model_detectors::lookup("rankfeat").unwrap().fit(&m, FitImages::train(&train), CPU, 8).unwrap();
    let ps = [params(&[("block3", 0.0), ("block4", 1.0)]), params(&[("block3", 1.0), ("block4", 0.0)]), params(&[])];
    let ours = rf.scores(&m, &test, &ps, CPU, 7).unwrap();
    for (s, key) in ours.iter().zip(["rankfeat_b4", "rankfeat_b3", "rankfeat_b34"]) {
        let d = max_rel_diff(&vec(s), &vec(&theirs[key]));
        eprintln!("{key}: max relative difference {d:.2e}");
        assert!(d < 1e-6, "{key}: relative difference {d}");
    }
    // The stages matter: the three scores differ.
    assert!(max_rel_diff(&vec(&ours[0]), &vec(&ours[1])) > 1e-3);

    // Gram: same split, same bounds, same normalisers.
    let g = gram::FittedGram::fit(&m, &train, CPU, 16).unwrap();
    assert_eq!((g.n_fit, g.n_heldout), (fit.len(), heldout.len()));
    assert_eq!(g.mins.len(), 9, "the stem and the 8 blocks");
    let ps: Vec<Params> = [1.0, 5.0, 10.0].iter().map(|&p| params(&[("poles", p)])).collect();
    let ours = model_detectors::ModelScorer::scores(&g, &m, &test, &ps, CPU, 5).unwrap();
    for (s, p) in ours.iter().zip([1, 5, 10]) {
        let r = vec(&theirs[&format!("gram_{p}")]);
        let d = max_rel_diff(&vec(s), &r);
        eprintln!("gram P = {p}: max relative difference {d:.2e}");
        assert!(d < 3e-5, "gram P = {p}: relative difference {d} (ours {:?}, theirs {:?})", &vec(s)[..3], &r[..3]);
        assert!(r.iter().any(|v| *v < -1e-3), "gram P = {p}: every test image inside the bounds, a weak check");
    }
    // The training images that gave the bounds are inside them: deviation 0 against their own class.
    let x = oodnc::data::Normalize::default().apply(&fit.images);
    let devs = tch::no_grad(|| g.deviations(&m, &x, &fit.labels)).unwrap();
    let worst = devs.iter().flatten().map(|d| d.abs().max().double_value(&[])).fold(0.0, f64::max);
    assert!(worst < 1e-9, "a fitting image outside its own class's bounds: {worst}");
}

/// Gram's row sums through `F^p (F^p^T 1)` equal the Gram matrix's row sums.
#[test]
fn gram_vectors_are_the_row_sums_of_the_gram_matrices() {
    tch::manual_seed(3);
    // Activations up to 60: their 10th power (6e17) squared overflows f32 unscaled.
    let map = Tensor::rand([3, 6, 5, 5], (Kind::Float, CPU)) * 60.0;
    let gs = gram::gram_vectors(&map, 10);
    for (i, g) in gs.iter().enumerate() {
        let p = (i + 1) as f64;
        let f = map.to_kind(Kind::Double).reshape([3, 6, 25]).pow_tensor_scalar(p);
        let full = f.matmul(&f.transpose(1, 2)).sum_dim_intlist(&[2i64][..], false, Kind::Double).pow_tensor_scalar(1.0 / p);
        // f32 inside (on maps scaled to [0, 1]), the scale restored in f64.
        let rel = ((g - &full).abs() / full.abs()).max().double_value(&[]);
        assert!(rel < 1e-6, "pole {p}: relative difference {rel}");
    }
    // The deviation by hand: below, inside and above the bounds.
    let g = Tensor::from_slice(&[0.5, 2.0, 5.0]).view([1, 3]);
    let mins = Tensor::from_slice(&[1.0, 1.0, 1.0]).view([1, 3]);
    let maxs = Tensor::from_slice(&[4.0, 4.0, 4.0]).view([1, 3]);
    let d = gram::deviation(&g, &mins, &maxs).double_value(&[0]);
    let want = 0.5 / (1.0 + 1e-6) + 1.0 / (4.0 + 1e-6);
    assert!((d - want).abs() < 1e-12, "{d} vs {want}");
    // The held-out split: the 10th, 20th, ... image of each class, in dataset order.
    let labels = [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let held = gram::heldout_mask(&labels);
    assert_eq!(held.iter().enumerate().filter(|(_, h)| **h).map(|(i, _)| i).collect::<Vec<_>>(), vec![10]);
}

#[test]
fn registry_grids_defaults_and_bad_parameters() {
    assert_eq!(model_detectors::names(), vec!["odin", "iodin", "rankfeat", "gram", "mahalanobis_noise", "nac", "adascale_a", "adascale_l"]);
    let sizes: Vec<usize> = model_detectors::REGISTRY.iter().map(|d| d.grid().len()).collect();
    assert_eq!(sizes, vec![20, 8, 3, 4, 14, 288, 36, 36]);
    for d in model_detectors::REGISTRY {
        for p in d.grid() {
            assert_eq!(d.check(&p).unwrap(), p, "{} grid entry {p:?} is not checked-stable", d.name());
        }
        assert!(!d.summary().is_empty());
        // Each is usable by name, like the feature-based ones, and refused by the feature path.
        let spec = DetectorSpec::new(d.name(), &[]).unwrap();
        assert_eq!(spec.params(), &d.defaults());
        assert!(spec.detector().is_err());
    }
    assert_eq!(DetectorSpec::new("gram", &[]).unwrap().label(), "gram(poles=10)");
    assert_eq!(DetectorSpec::new("iodin", &[]).unwrap().label(), "iodin(epsilon=0.0014,t=1000)");
    assert_eq!(DetectorSpec::new("rankfeat", &[]).unwrap().label(), "rankfeat(block3=1,block4=1)");
    let bad: [(&str, &[(&str, f64)]); 16] = [
        ("nac", &[("pool_m", 51.0)]),
        ("nac", &[("l3_m", 2.0)]),
        ("nac", &[("l2_m", 50.5)]),
        ("nac", &[("l1_o", 0.5)]),
        ("nac", &[("pool_alpha", 0.0)]),
        ("nac", &[("l4_o", 5.0)]),
        ("mahalanobis_noise", &[("epsilon", -0.1)]),
        ("mahalanobis_noise", &[("ensemble", 2.0)]),
        ("gram", &[("poles", 0.0)]),
        ("gram", &[("poles", 11.0)]),
        ("gram", &[("poles", 2.5)]),
        ("gram", &[("layers", 1.0)]),
        ("rankfeat", &[("block3", 0.0), ("block4", 0.0)]),
        ("rankfeat", &[("block3", 0.5)]),
        ("iodin", &[("t", 0.0)]),
        ("iodin", &[("epsilon", f64::NAN)]),
    ];
    for (name, p) in bad {
        let e = DetectorSpec::new(name, p).unwrap_err();
        assert!(matches!(e, Error::InvalidParam { .. }), "{name} {p:?}: {e}");
    }
    assert!(matches!(model_detectors::lookup("nope"), Err(Error::Unknown { .. })));
    // The CLI's list: groups expand in place, repeats dropped, unknown names refused.
    let e = oodnc::ood::expand_detector_list("seed, model ,msp,gram,knn").unwrap();
    let want: Vec<String> = oodnc::ood::SEED_SIX.iter().chain(&model_detectors::names()).chain(&["knn"]).map(|s| s.to_string()).collect();
    assert_eq!(e, want);
    assert_eq!(oodnc::ood::expand_detector_list("all").unwrap().len(), oodnc::ood::detector_names().len());
    let e = oodnc::ood::expand_detector_list("msp,nope").unwrap_err();
    assert!(matches!(&e, Error::Unknown { name, known, .. } if name == "nope" && known.contains("model")), "{e}");
    assert!(matches!(oodnc::ood::expand_detector_list(" , "), Err(Error::InvalidParam { .. })));
}

#[test]
fn candidates_cover_the_grid_and_studies_choose_on_held_out_data() {
    let (_vs, m) = random_model();
    let train = dataset("train", 4 * CLASSES, 5);
    let id_val = dataset("id-val", 12, 6);
    let ood_val = dataset("ood-val", 12, 7);
    let id_test = dataset("id-test", 10, 8);
    let ood = vec![dataset("svhn", 9, 9), dataset("textures", 8, 10)];
    let sets = ModelSets { id_train: &train, id_val: &id_val, val: vec![(Protocol::Jigsaw, &ood_val)], id_test: &id_test, ood: &ood };
    let all = [
        ("iodin", 8, true),
        ("rankfeat", 3, true),
        ("gram", 4, true),
        ("mahalanobis_noise", 14, true),
        ("nac", 288, true),
        ("odin", 21, false),
    ];
    for (name, n, defaults_in_grid) in all {
        let det = model_detectors::lookup(name).unwrap();
        let (cands, d) = model_detectors::candidates(det, &m, &sets, CPU, 8).unwrap();
        assert_eq!(cands.len(), n, "{name}");
        assert_eq!(cands[d].spec.params(), &det.defaults(), "{name}");
        assert_eq!(cands[d].in_grid, defaults_in_grid, "{name}");
        for c in &cands {
            assert_eq!(c.id.len(), id_test.len());
            assert_eq!(c.ood.iter().map(|(n, s)| (n.as_str(), s.len())).collect::<Vec<_>>(), vec![("svhn", 9), ("textures", 8)]);
            assert!(c.val_auroc.contains_key(&Protocol::Jigsaw));
        }
        let protocols = [Protocol::Jigsaw, Protocol::Defaults, Protocol::Oracle];
        let st = model_detectors::study(det, &m, &sets, &protocols, 0.0, CPU, 8).unwrap();
        assert_eq!(st.choices.len(), 3);
        // The jigsaw choice is the best validation AUROC among the grid (first on ties).
        let best = st.candidates.iter().filter(|c| c.in_grid).map(|c| c.val_auroc[&Protocol::Jigsaw]).fold(f64::MIN, f64::max);
        for (_, i) in &st.choices[0].per_dataset {
            assert_eq!(st.candidates[*i].val_auroc[&Protocol::Jigsaw], best, "{name}");
        }
        for (_, i) in &st.choices[1].per_dataset {
            assert_eq!(*i, d, "{name}: the defaults protocol takes the defaults");
        }
    }
}

#[test]
fn gram_refuses_a_class_without_training_images_and_bad_labels() {
    let (_vs, m) = random_model();
    let mut train = dataset("train", 30, 5);
    train.labels = train.labels.clamp_max(CLASSES - 2); // class 9 has no image
    let e = gram::FittedGram::fit(&m, &train, CPU, 8).unwrap_err();
    assert!(matches!(e, Error::InvalidData { .. }) && e.to_string().contains("class 9"), "{e}");
    let mut train = dataset("train", 30, 5);
    train.labels += 5; // labels up to 14 for a 10-class model
    let e = gram::FittedGram::fit(&m, &train, CPU, 8).unwrap_err();
    assert!(e.to_string().contains("outside the model's 10 classes"), "{e}");
    let empty = Dataset {
        name: "empty".into(),
        images: Tensor::zeros([0, 3, 32, 32], (Kind::Uint8, CPU)),
        labels: Tensor::zeros([0], (Kind::Int64, CPU)),
        class_names: vec![],
    };
    let e = model_detectors::lookup("rankfeat").unwrap().fit(&m, FitImages::train(&empty), CPU, 4).unwrap().scores(
        &m,
        &empty,
        &[params(&[])],
        CPU,
        4,
    );
    assert!(e.is_err());
}

/// The noisy multi-layer Mahalanobis: each layer against pytorch-ood's MahalanobisODIN
/// (encoder: that tap, pooled), and without noise equal to the feature-based ensemble.
#[test]
fn mahalanobis_noise_matches_pytorch_ood_per_layer_and_the_feature_ensemble_without_noise() {
    use oodnc::ood::model_detectors::mahalanobis_noise::{FittedMahalanobisNoise, TAPS};
    let t = TempDir::new("mahalanobis-noise-peer");
    // Narrow enough (64 features at the last stage) for 400 training images to give a
    // well-conditioned covariance: pytorch-ood inverts it with a 1e-6 ridge, oodnc takes a pseudo-inverse.
    let (_vs, m, model_path) = exported_as(&t, 0.125, 6);
    let train = dataset("train", 40 * CLASSES, 11);
    let test = dataset("test", 16, 12);
    let fitted = FittedMahalanobisNoise::fit(&m, &train, CPU, 64).unwrap();
    let eps = [0.0, 0.002];
    let spec = format!("{{\"classes\": {CLASSES}, \"width\": 0.125, \"mahalanobis_eps\": {eps:?}}}");
    let theirs = run_peer(
        &t,
        &model_path,
        &[
            ("fit".into(), train.images.narrow(0, 0, 10)),
            ("fit_labels".into(), train.labels.narrow(0, 0, 10)),
            ("heldout".into(), train.images.narrow(0, 0, 10)),
            ("heldout_labels".into(), train.labels.narrow(0, 0, 10)),
            ("train".into(), train.images.shallow_clone()),
            ("train_labels".into(), train.labels.shallow_clone()),
            ("test".into(), test.images.shallow_clone()),
        ],
        &spec,
    );
    let x = oodnc::data::Normalize::default().apply(&test.images);
    let std = Tensor::from_slice(&oodnc::data::CIFAR100_STD.map(|v| v as f32)).view([1, 3, 1, 1]);
    let raw = fitted.noisy_scores(&m, &x, &[0, 1, 2, 3, 4], &eps, &std).unwrap();
    for (li, &tap) in TAPS.iter().enumerate() {
        for (k, e) in eps.iter().enumerate() {
            let r = vec(&theirs[&format!("mahalanobis_{tap}_{e:?}")]);
            let d = max_rel_diff(&vec(&raw[li][k]), &r);
            eprintln!("mahalanobis tap {tap} eps {e}: max relative difference {d:.2e}");
            assert!(d < 5e-4, "tap {tap} eps {e}: relative difference {d}");
        }
        // The step brings every test image closer to its nearest class.
        assert!(bool::try_from((&raw[li][1] - &raw[li][0]).ge(-1e-9).all()).unwrap(), "tap {tap}: the noise lowered a score");
    }
    // eps = 0, ensemble = 1 is the feature-based `mahalanobis_layers` on the same network.
    let opts = oodnc::features::ExtractOptions { taps: true, pool2x2: false };
    let ftrain = oodnc::features::extract(&m, &train, opts, CPU, 64).unwrap();
    let ftest = oodnc::features::extract(&m, &test, opts, CPU, 64).unwrap();
    let (w, b) = m.head();
    let fd = oodnc::ood::FitData::new(&ftrain, None, &w, &b);
    let feature_based = DetectorSpec::new("mahalanobis_layers", &[]).unwrap().fit(&fd).unwrap().score(&ftest).unwrap();
    let ours = model_detectors::ModelScorer::scores(&fitted, &m, &test, &[params(&[("epsilon", 0.0)])], CPU, 64).unwrap().remove(0);
    let d = max_rel_diff(&vec(&ours), &vec(&feature_based));
    assert!(d < 1e-9, "eps = 0 against mahalanobis_layers: {d}");
    // ensemble = 0 is the last stage alone, standardised.
    let last = model_detectors::ModelScorer::scores(&fitted, &m, &test, &[params(&[("epsilon", 0.002), ("ensemble", 0.0)])], CPU, 64)
        .unwrap()
        .remove(0);
    let g = &fitted.taps[4];
    let want = (&raw[4][1] - g.train_mean) / g.train_std;
    assert!(max_rel_diff(&vec(&last), &vec(&want)) < 1e-9);
}

/// NAC-UE against OpenOOD's nac postprocessor written from its code (model_peer.py): the
/// neuron-state ingredients on the same network, the coverage on exactly the peer's states,
/// and the scores end to end.
#[test]
fn nac_matches_openood_formulation() {
    use oodnc::ood::model_detectors::nac::{self, FittedNac, NacParams, LAYERS};
    let t = TempDir::new("nac-peer");
    let (_vs, m, model_path) = exported(&t);
    let train = dataset("train", 12 * CLASSES, 13);
    let test = dataset("test", 24, 14);
    let fitted = FittedNac::fit(&m, &train, CPU, 16).unwrap();
    // 1000 / 10 classes = 100 per class asked, 12 per class there: every image.
    assert_eq!(fitted.fit_indices.len(), train.len());
    let nac_fit = train.subset(&fitted.fit_indices, "nac-fit").unwrap();
    let det = model_detectors::lookup("nac").unwrap();
    let grid = det.grid();
    // The defaults, two corners of the grid, and small O / M with steep states, where the
    // coverage varies between images.
    let sets: Vec<Params> = vec![
        det.defaults(),
        grid[0].clone(),
        grid[grid.len() - 1].clone(),
        det.check(&params(&[
            ("pool_o", 3.0),
            ("pool_m", 8.0),
            ("l3_o", 2.0),
            ("l3_m", 6.0),
            ("l2_o", 4.0),
            ("l1_o", 1.0),
            ("l1_alpha", 5.0),
        ]))
        .unwrap(),
    ];
    let spec = format!("{{\"classes\": {CLASSES}, \"width\": {WIDTH}, \"nac\": {}}}", params_json(&sets));
    let theirs = run_peer(
        &t,
        &model_path,
        &[("nac_fit".into(), nac_fit.images.shallow_clone()), ("test".into(), test.images.shallow_clone())],
        &spec,
    );
    // 2. The coverage on the peer's own products: exact up to the order of a sum.
    let fit_p: Vec<Tensor> = LAYERS.iter().map(|n| theirs[&format!("nac_prod_fit_{n}")].to_kind(Kind::Float)).collect();
    let test_p: Vec<Tensor> = LAYERS.iter().map(|n| theirs[&format!("nac_prod_test_{n}")].to_kind(Kind::Float)).collect();
    let ps: Vec<NacParams> = sets.iter().map(|p| NacParams::from_map(p).unwrap()).collect();
    let fed = nac::scores_from_products(&fit_p, &test_p, &ps).unwrap();
    for (k, s) in fed.iter().enumerate() {
        let r = vec(&theirs[&format!("nac_{k}")]);
        let d = vec(s).iter().zip(&r).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        eprintln!("nac set {k} on the peer's states: max difference {d:.2e}");
        assert!(d < 1e-6, "set {k}: {d} (ours {:?}, theirs {:?})", &vec(s)[..4], &r[..4]);
    }
    let spread = |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max) - v.iter().copied().fold(f64::MAX, f64::min);
    assert!(spread(&vec(&theirs["nac_3"])) > 0.05, "the small-O set should tell the images apart");
    // 3. End to end in f32, the precision OpenOOD runs in. The products are spatial sums of
    // gradients of both signs, so f32 rounding is amplified (up to 5e-3 of the largest on
    // this random network and noise images), and a state near an interval edge may land in
    // the next interval, which changes that neuron's coverage: a few images differ, by little.
    let e2e = model_detectors::ModelScorer::scores(&fitted, &m, &test, &sets, CPU, 7).unwrap();
    for (k, s) in e2e.iter().enumerate() {
        let r = vec(&theirs[&format!("nac_{k}")]);
        let diffs: Vec<f64> = vec(s).iter().zip(&r).map(|(a, b)| (a - b).abs()).collect();
        let off = diffs.iter().filter(|d| **d > 1e-6).count();
        let worst = diffs.iter().copied().fold(0.0, f64::max);
        eprintln!("nac set {k} end to end in f32: {off} of {} images differ, by at most {worst:.2e}", diffs.len());
        assert!(worst < 5e-3, "set {k}: {off} images differ, by up to {worst}");
    }
    // 4. The network in f64, as the peer's: the products agree to the peer's f32 rounding,
    // and end to end nearly every image is equal.
    let x = oodnc::data::Normalize::default().apply(&test.images).to_kind(Kind::Double);
    let mut vs = _vs;
    vs.double();
    let ours = nac::products(&m, &x).unwrap();
    for (l, name) in LAYERS.iter().enumerate() {
        let d = max_rel_diff(&vec(&ours[l].view([-1])), &vec(&theirs[&format!("nac_prod_test_{name}")].view([-1])));
        eprintln!("nac products {name} (f64 network): max relative difference {d:.2e}");
        assert!(d < 1e-6, "{name}: relative difference {d}");
    }
    let fitted64 = FittedNac {
        fit_products: nac::products(&m, &oodnc::data::Normalize::default().apply(&nac_fit.images).to_kind(Kind::Double)).unwrap(),
        fit_indices: fitted.fit_indices.clone(),
    };
    let prods64 = nac::products(&m, &x).unwrap();
    let e2e = nac::scores_from_products(&fitted64.fit_products, &prods64, &ps).unwrap();
    for (k, s) in e2e.iter().enumerate() {
        let r = vec(&theirs[&format!("nac_{k}")]);
        let off = vec(s).iter().zip(&r).filter(|(a, b)| (*a - *b).abs() > 1e-6).count();
        eprintln!("nac set {k} end to end, f64 network: {off} of {} images differ", r.len());
        assert!(off <= 1, "set {k}: {off} images differ");
    }
}

/// NAC's pieces by hand: the thresholds, the intervals, the coverage table, the layer score,
/// and the `pool` gradient against its closed form.
#[test]
fn nac_thresholds_coverage_and_gradient_by_hand() {
    use oodnc::ood::model_detectors::nac;
    // M = 4: log_1000 of linspace(1, sqrt(1000), 2) = [0, 0.5]; [0] + [0.5, 1] -> last + 0.01, then 1.2.
    assert_eq!(nac::thresholds(4), vec![0.0, 0.5, 1.01, 1.2]);
    let t = nac::thresholds(50);
    assert_eq!(t.len(), 50);
    assert!(t.windows(2).all(|w| w[0] < w[1]), "increasing");
    assert!((t[24] - 0.5).abs() < 1e-15 && (t[48] - 1.01).abs() < 1e-15 && t[0] == 0.0);
    // Symmetric about 0.5 below 1 (dense near both ends).
    for i in 1..24 {
        assert!((t[i] + t[48 - i] - 1.0).abs() < 1e-12, "{i}");
    }
    let s = Tensor::from_slice(&[0.2f32, 0.7, 1.0, 0.5, 0.0]).view([5, 1]);
    assert_eq!(vec(&nac::bins(&s, &[0.0, 0.5, 1.01, 1.2]).view([-1])), vec![0.0, 1.0, 1.0, 1.0, 0.0]);
    // Two neurons, three intervals, O = 2: neuron 0 hit (0, 0, 1), neuron 1 hit (2, 1, 1).
    let fit = Tensor::from_slice(&[0i64, 2, 0, 1, 1, 1]).view([3, 2]);
    let cov = nac::coverage(&fit, 4, 2.0);
    assert_eq!(vec(&cov.view([-1])), vec![1.0, 0.5, 0.0, 0.0, 1.0, 0.5]);
    let data = Tensor::from_slice(&[0i64, 1, 1, 2, 2, 0]).view([3, 2]);
    assert_eq!(vec(&nac::layer_score(&cov, &data)), vec![1.0, 0.5, 0.0]);
    // The states saturate in f32 as OpenOOD's do.
    let st = nac::states(&Tensor::from_slice(&[-1.0f32, 0.0, 1.0]), 1e3);
    assert_eq!(vec(&st), vec![0.0, 0.5, 1.0]);
    // pool: o * dL/do with L = sum_c -(1/C) log p_c is h * W^T (p - 1/C), no backward pass needed.
    let (_vs, m) = random_model();
    let images = dataset("x", 6, 15).images;
    let x = oodnc::data::Normalize::default().apply(&images);
    let p = nac::products(&m, &x).unwrap();
    let (h, z) = tch::no_grad(|| m.features_t(&x, false)).unwrap();
    let (w, _) = m.head();
    let g = (z.softmax(1, Kind::Double) - 1.0 / CLASSES as f64).matmul(&w.to_kind(Kind::Double));
    let want = h.to_kind(Kind::Double) * g;
    let d = max_rel_diff(&vec(&p[0].view([-1])), &vec(&want.view([-1])));
    assert!(d < 1e-5, "pool product against W^T (p - 1/C): {d}");
    // Shapes: pool has the feature dimension, the maps their channels.
    let widths: Vec<i64> = p.iter().map(|t| t.size()[1]).collect();
    let c = m.config.widths();
    assert_eq!(widths, vec![m.config.feature_dim(), c[2], c[1], c[0]]);
    // Fitting takes the first 1000 / C of each class, in dataset order.
    assert_eq!(nac::fit_indices(&[0, 1, 0, 2, 1, 0], 2), vec![0, 1, 2, 4, 5]);
    assert_eq!(nac::fit_indices(&[1, 1, 1], 1000), vec![0]);
}

/// AdaSCALE-A and -L against OpenOOD's postprocessor written from its code (model_peer.py):
/// the scoring on exactly the peer's features, and end to end with the network in f64 on
/// both sides.
#[test]
fn adascale_matches_openood_formulation() {
    use oodnc::ood::model_detectors::adascale::{self, AdaScale, AdaScaleParams, FittedAdaScale, Variant, Views};
    let t = TempDir::new("adascale-peer");
    let (vs, m, model_path) = exported(&t);
    let train = dataset("train", 2 * CLASSES, 16);
    let val = dataset("val", 40, 17);
    let test = dataset("test", 24, 18);
    let det_a = AdaScale(Variant::A);
    let sets: Vec<Params> = vec![
        det_a.defaults(),
        params(&[("pmin", 60.0), ("pmax", 99.0)]),
        params(&[("pmin", 90.0), ("pmax", 95.0), ("k1", 10.0), ("k2", 3.0), ("lambda", 2.0)]),
    ];
    let sets: Vec<Params> = sets.iter().map(|p| det_a.check(p).unwrap()).collect();
    let spec = format!("{{\"classes\": {CLASSES}, \"width\": {WIDTH}, \"adascale\": {}}}", params_json(&sets));
    let theirs =
        run_peer(&t, &model_path, &[("ada_val".into(), val.images.shallow_clone()), ("test".into(), test.images.shallow_clone())], &spec);
    let ps: Vec<AdaScaleParams> = sets.iter().map(|p| AdaScaleParams::from_map("adascale_a", p).unwrap()).collect();
    let views = |pre: &str, z: bool| Views {
        h: theirs[&format!("ada_h_{pre}")].shallow_clone(),
        h_tilde: theirs[&format!("ada_ht_{pre}")].shallow_clone(),
        logits: if z { theirs["ada_z_test"].shallow_clone() } else { Tensor::zeros([0], (Kind::Double, CPU)) },
    };
    // 0. Through the batch loader in f32 (OpenOOD's precision): f32 gradients may pick a
    // different element at the edge of the least-sensitive set, and Q' may then pass a
    // validation value, moving the percentile by (pmax - pmin) / N_val.
    for (variant, key) in [(Variant::A, "A"), (Variant::L, "L")] {
        let scorer = AdaScale(variant).fit(&m, FitImages::new(&train, Some(&val)), CPU, 8).unwrap();
        let ours = scorer.scores(&m, &test, &sets, CPU, 7).unwrap();
        for (k, s) in ours.iter().enumerate() {
            let (a, b) = (vec(s), vec(&theirs[&format!("ada_{key}_{k}")]));
            let scale = b.iter().map(|x| x.abs()).fold(1e-12, f64::max);
            let off = a.iter().zip(&b).filter(|(x, y)| (*x - *y).abs() > 1e-4 * scale).count();
            let d = max_rel_diff(&a, &b);
            eprintln!("adascale_{key} set {k} through the loader in f32: {off} of {} images off by > 1e-4, at most {d:.2e}", b.len());
            assert!(off <= b.len() / 2 && d < 0.05, "{key} set {k}: {off} images off, up to {d}");
        }
    }
    // 1. The scoring on the peer's own features (f64): equal to rounding.
    let mut vs = vs;
    vs.double();
    for (variant, key) in [(Variant::A, "A"), (Variant::L, "L")] {
        let det = AdaScale(variant);
        let scorer = det.fit(&m, FitImages::new(&train, Some(&val)), CPU, 8).unwrap();
        let fitted = scorer.as_any().downcast_ref::<FittedAdaScale>().unwrap();
        let fed = fitted.scores_of(&m, &views("test", true), &ps, |_| Ok(views("val", false))).unwrap();
        for (k, s) in fed.iter().enumerate() {
            let d = max_rel_diff(&vec(s), &vec(&theirs[&format!("ada_{key}_{k}")]));
            eprintln!("adascale_{key} set {k} on the peer's features: max relative difference {d:.2e}");
            assert!(d < 1e-9, "{key} set {k}: {d}");
        }
        // 2. From the images, the network in f64 as the peer's (the batch loader gives f32
        // images, so the views are taken here on f64 ones, the whole set as one batch).
        let f64_images = |d: &Dataset| oodnc::data::Normalize::default().apply(&d.images).to_kind(Kind::Double);
        let v = adascale::views_of(&m, &f64_images(&test), 0.05).unwrap();
        let ours = fitted.scores_of(&m, &v, &ps, |o| adascale::views_of(&m, &f64_images(&val), o)).unwrap();
        for (k, s) in ours.iter().enumerate() {
            let d = max_rel_diff(&vec(s), &vec(&theirs[&format!("ada_{key}_{k}")]));
            eprintln!("adascale_{key} set {k} end to end (f64 network): max relative difference {d:.2e}");
            assert!(d < 1e-6, "{key} set {k}: {d}");
        }
    }
    // The percentile range matters: defaults and (60, 99) differ.
    assert!(max_rel_diff(&vec(&theirs["ada_A_0"]), &vec(&theirs["ada_A_1"])) > 1e-4);
}

/// AdaSCALE's pieces by hand: the perturbation, the ECDF, the adaptive scale; and a
/// fit without validation images is refused.
#[test]
fn adascale_pieces_by_hand() {
    use oodnc::ood::model_detectors::adascale::{self, AdaScale, Variant};
    // ECDF: the fraction <= q.
    assert_eq!(adascale::ecdf(&[1.0, 2.0, 2.0, 5.0], &[0.0, 2.0, 4.9, 5.0]), vec![0.0, 0.75, 0.75, 1.0]);
    // Scale: D = 4, p = 50 keeps the top 2: (4 + 3 + 2 + 1) / (4 + 3); p = 74 keeps round(2.96) = 3 -> 4 - 3 = 1: 10 / 4.
    let h = Tensor::from_slice(&[1.0, 4.0, 2.0, 3.0, 1.0, 4.0, 2.0, 3.0]).view([2, 4]);
    let s = adascale::ada_scale(&h, &[50.0, 74.0]).unwrap();
    assert_eq!(vec(&s), vec![10.0 / 7.0, 10.0 / 4.0]);
    // Negative entries count as 0 (relu), as OpenOOD's ada_scale of relu(feature).
    let s = adascale::ada_scale(&Tensor::from_slice(&[-5.0, 4.0, 2.0, 2.0]).view([1, 4]), &[50.0]).unwrap();
    assert_eq!(vec(&s), vec![8.0 / 6.0]);
    // round(2.5) is 2 (ties to even, torch.round): D = 5, p = 50 keeps 5 - 2 = 3.
    let s = adascale::ada_scale(&Tensor::from_slice(&[5.0, 4.0, 3.0, 2.0, 1.0]).view([1, 5]), &[50.0]).unwrap();
    assert_eq!(vec(&s), vec![15.0 / 12.0]);
    assert!(adascale::ada_scale(&h, &[99.99, 50.0]).is_err(), "a percentile keeping no feature");
    // The perturbation moves floor(o 3072) elements by 0.5, those of smallest |gradient|.
    let (_vs, m) = random_model();
    let x = oodnc::data::Normalize::default().apply(&dataset("x", 3, 19).images);
    let (moved, _, _) = adascale::perturb(&m, &x, 0.05).unwrap();
    let d = (&moved - &x).flatten(1, -1);
    for i in 0..3 {
        let row = vec(&d.get(i));
        let n = row.iter().filter(|v| v.abs() > 0.0).count();
        assert!(n <= 153 && n > 140, "{n} elements moved");
        assert!(row.iter().all(|v| *v == 0.0 || (v.abs() - 0.5).abs() < 1e-6));
    }
    let xg = x.detach().set_requires_grad(true);
    let (_, z) = m.features_t(&xg, false).unwrap();
    let g = Tensor::f_run_backward(&[z.gather(1, &z.argmax(1, true), false).sum(Kind::Float)], &[&xg], false, false).unwrap()[0]
        .abs()
        .flatten(1, -1);
    for i in 0..3 {
        let gi = vec(&g.get(i));
        let di = vec(&d.get(i));
        let moved_max = gi.iter().zip(&di).filter(|(_, d)| d.abs() > 0.0).map(|(g, _)| *g).fold(0.0, f64::max);
        let kept_min = gi.iter().zip(&di).filter(|(_, d)| **d == 0.0).map(|(g, _)| *g).fold(f64::MAX, f64::min);
        assert!(moved_max <= kept_min || kept_min == 0.0, "image {i}: a moved element more sensitive than a kept one");
    }
    // Without validation images there is no ECDF.
    let train = dataset("train", 20, 20);
    let Err(e) = AdaScale(Variant::L).fit(&m, FitImages::train(&train), CPU, 8) else { panic!("fitted without validation images") };
    assert!(matches!(e, Error::InvalidParam { .. }) && e.to_string().contains("validation"), "{e}");
    // Bad parameters are typed errors.
    for p in [[("pmin", 0.0)], [("pmax", 100.0)], [("pmax", 70.0)], [("o", 0.0)], [("k1", 101.0)], [("lambda", -1.0)]] {
        let e = DetectorSpec::new("adascale_a", &p).unwrap_err();
        assert!(matches!(e, Error::InvalidParam { .. }), "{p:?}: {e}");
    }
}
