//! Benchmarks behind `oodnc bench`. Each prints its own timing and, measured in
//! the same run, a baseline, and the ratio between them. Timings live here and
//! never in tests.

use crate::data::loader::{augment_batch, augment_per_sample, draw_augmentation, Normalize};
use crate::error::Result;
use crate::util::SplitMix64;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Median of `reps` timings of `f` (seconds), after one warm-up call.
pub fn time_median(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut ts = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        ts.push(t.elapsed().as_secs_f64());
    }
    ts.sort_by(|a, b| a.total_cmp(b));
    Ok(ts[ts.len() / 2])
}

/// One benchmark result line.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchLine {
    pub name: String,
    pub ours: f64,
    pub baseline: f64,
    pub unit: String,
    pub baseline_name: String,
}

impl BenchLine {
    /// How many times faster oodnc is: ours / baseline for throughputs, baseline /
    /// ours for times (unit "s").
    pub fn ratio(&self) -> f64 {
        if self.unit == "s" {
            self.baseline / self.ours
        } else {
            self.ours / self.baseline
        }
    }

    /// A line comparing two timings in seconds.
    pub fn seconds(name: impl Into<String>, ours: f64, baseline: f64, baseline_name: &str) -> Self {
        BenchLine { name: name.into(), ours, baseline, unit: "s".into(), baseline_name: baseline_name.into() }
    }
}

impl std::fmt::Display for BenchLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let prec = if self.unit == "s" { 3 } else { 0 };
        write!(
            f,
            "{:<40} oodnc {:>10.prec$} {:<6} {:<18} {:>10.prec$} {:<6} speed-up {:>7.2}x",
            self.name,
            self.ours,
            self.unit,
            self.baseline_name,
            self.baseline,
            self.unit,
            self.ratio()
        )
    }
}

/// `oodnc bench data`: images/s of the batch-wise crop+flip+normalise against a
/// per-sample loop, on `device`, batch 128.
pub fn data(device: Device, batches: usize) -> Result<Vec<BenchLine>> {
    let b = 128usize;
    let x = Tensor::randint(256, [b as i64, 3, 32, 32], (Kind::Uint8, device));
    let norm = Normalize::default();
    let mut rng = SplitMix64::new(0);
    let (dy, dx, flip) = draw_augmentation(&mut rng, b);
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let batched = time_median(5, || {
        for _ in 0..batches {
            let y = norm.apply(&augment_batch(&x, &dy, &dx, &flip)?);
            let _ = y.size();
        }
        sync();
        Ok(())
    })?;
    let looped = time_median(5, || {
        for _ in 0..batches {
            let y = norm.apply(&augment_per_sample(&x, &dy, &dx, &flip));
            let _ = y.size();
        }
        sync();
        Ok(())
    })?;
    let imgs = (b * batches) as f64;
    Ok(vec![BenchLine {
        name: format!("augment+normalise ({device:?}, batch {b})"),
        ours: imgs / batched,
        baseline: imgs / looped,
        unit: "img/s".into(),
        baseline_name: "per-sample loop".into(),
    }])
}

/// The venv's Python (for the PyTorch / numpy baselines): `OODNC_PYTHON`, else
/// `.venv/bin/python` under the current folder or its parents.
pub fn python() -> Result<std::path::PathBuf> {
    if let Ok(p) = std::env::var("OODNC_PYTHON") {
        return Ok(p.into());
    }
    let mut dir = std::env::current_dir().map_err(|e| crate::Error::io(".", e))?;
    loop {
        let cand = dir.join(".venv/bin/python");
        if cand.exists() {
            return Ok(cand);
        }
        if !dir.pop() {
            return Err(crate::Error::Missing {
                what: "the project's Python venv".into(),
                path: ".venv/bin/python".into(),
                hint: "; run `make setup`, or set OODNC_PYTHON".into(),
            });
        }
    }
}

/// Where a Python baseline script lives: `OODNC_PYTHON_DIR`, else `python/`
/// beside the executable (a bundle), else the source tree's `python/` (the
/// build's manifest folder's parent; the torch 2.11 variant's manifest sits
/// two levels under the repository, hence the second candidate).
pub fn python_script(script: &str) -> Result<std::path::PathBuf> {
    let mut dirs: Vec<std::path::PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("OODNC_PYTHON_DIR") {
        dirs.push(d.into());
    }
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(|p| p.to_path_buf())) {
        dirs.push(exe_dir.join("python"));
    }
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    dirs.push(manifest.join("../python"));
    dirs.push(manifest.join("../../python"));
    dirs.iter().map(|d| d.join(script)).find(|p| p.is_file()).ok_or_else(|| crate::Error::Missing {
        what: format!("the baseline script {script}"),
        path: dirs.first().map(|d| d.join(script)).unwrap_or_default(),
        hint: "; set OODNC_PYTHON_DIR to the folder holding oodnc's python/ scripts".into(),
    })
}

/// Runs one of the repo's Python baseline scripts and parses its last stdout line as JSON.
pub fn run_python_json(script: &str, args: &[String]) -> Result<serde_json::Value> {
    let py = python()?;
    let script_path = python_script(script)?;
    let out = std::process::Command::new(&py).arg(&script_path).args(args).output().map_err(|e| crate::Error::io(&py, e))?;
    if !out.status.success() {
        return Err(crate::Error::data(
            format!("baseline {script}"),
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("failed").to_string(),
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("{}"))
        .map_err(|e| crate::Error::data(format!("baseline {script} output"), e.to_string()))
}

/// `oodnc bench train`: images/s of forward + backward + SGD step of the full
/// ResNet-18 (100 classes) at batch 128 on `device` with the precision and layout
/// of `fast` (see [`crate::config::TrainConfig::fast_path`]), against the same
/// model and step in PyTorch eager (python/torch_resnet.py) on the same device,
/// with the same threads, precision (`torch.autocast`) and layout.
pub fn train(device: Device, steps: usize, width: f64, fast: crate::config::FastPath) -> Result<Vec<BenchLine>> {
    use crate::model::{ResNet18, ResNetConfig};
    use crate::train::{train_step, Sgd};
    let b = 128i64;
    tch::manual_seed(0);
    if fast.cudnn_benchmark {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let vs = tch::nn::VarStore::new(device);
    let model = ResNet18::new(&vs.root(), ResNetConfig { num_classes: 100, width, bottleneck: None })?;
    if fast.channels_last {
        crate::amp::convert_channels_last(&vs);
    }
    let params: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    let mut opt = Sgd::new(params, crate::train::sgd::SgdConfig::default());
    let x = Tensor::randn([b, 3, 32, 32], (Kind::Float, device));
    let y = Tensor::randint(100, [b], (Kind::Int64, device));
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    // Warm-up (cuDNN autotuning, allocator), not timed.
    for _ in 0..if device.is_cuda() { 10 } else { 1 } {
        let _ = train_step(&model, &mut opt, &x, &y, 0.1, fast)?;
    }
    sync();
    let ours = time_median(steps, || {
        let _ = train_step(&model, &mut opt, &x, &y, 0.1, fast)?;
        sync();
        Ok(())
    })?;
    let mut args: Vec<String> = vec![
        "bench".into(),
        "--batch".into(),
        b.to_string(),
        "--steps".into(),
        steps.to_string(),
        "--width".into(),
        width.to_string(),
        "--threads".into(),
        tch::get_num_threads().to_string(),
        "--device".into(),
        if device.is_cuda() { "cuda".into() } else { "cpu".into() },
    ];
    if fast.autocast.is_some() {
        args.extend(["--amp".into(), "bf16".into()]);
    }
    if fast.channels_last {
        args.push("--channels-last".into());
    }
    let base = run_python_json("torch_resnet.py", &args)?;
    let base_ips = base["images_per_s"].as_f64().unwrap_or(f64::NAN);
    let mode =
        format!("{}{}", if fast.autocast.is_some() { "bf16" } else { "fp32" }, if fast.channels_last { ", channels-last" } else { "" });
    Ok(vec![BenchLine {
        name: format!("ResNet-18 train step ({device:?}, {mode}, batch {b}, width {width})"),
        ours: b as f64 / ours,
        baseline: base_ips,
        unit: "img/s".into(),
        baseline_name: "PyTorch eager".into(),
    }])
}

/// `oodnc bench ood`: fit + score time per detector on `n_train` x `dim` train
/// features (`classes` classes), `n_test` ID + `n_ood` OOD test features, against
/// plain numpy / scikit-learn (python/ood_numpy.py) on data of the same sizes.
///
/// The features live on `device` (a GPU when there is one: every detector then
/// computes there), and pytorch-ood is run on the same device.
pub fn ood(device: Device, n_train: i64, dim: i64, classes: i64, n_test: i64, n_ood: i64, detectors: &[&str]) -> Result<Vec<BenchLine>> {
    use crate::features::FeatureSet;
    use crate::ood::{DetectorSpec, FitData};
    if detectors.is_empty() {
        return Err(crate::error::Error::param("detectors", "no detector to benchmark"));
    }
    // Every name checked before anything is timed.
    for d in detectors {
        DetectorSpec::new(d, &[])?;
    }
    // Detectors that read the layer taps need a network's features, not these synthetic ones.
    let (tapped, plain): (Vec<&str>, Vec<&str>) =
        detectors.iter().partition(|d| crate::ood::detectors::lookup(d).map(|e| e.needs_taps).unwrap_or(false));
    if !tapped.is_empty() {
        eprintln!("bench ood: skipping {} (they read layer taps, which synthetic features do not have)", tapped.join(", "));
    }
    let detectors = &plain[..];
    if detectors.is_empty() {
        return Err(crate::error::Error::param("detectors", "no detector to benchmark on synthetic features"));
    }
    tch::manual_seed(0);
    let opts = (Kind::Float, Device::Cpu);
    let mus = Tensor::randn([classes, dim], opts) * 2.0;
    let y = Tensor::arange(n_train, (Kind::Int64, Device::Cpu)).remainder(classes);
    let h = (mus.index_select(0, &y) + Tensor::randn([n_train, dim], opts)).relu().to_device(device);
    let y = y.to_device(device);
    let w = (Tensor::randn([classes, dim], opts) * 0.05).to_device(device);
    let b = (Tensor::randn([classes], opts) * 0.1).to_device(device);
    let te = (Tensor::randn([n_test + n_ood, dim], opts) + 1.0).relu().to_device(device);
    // Fresh feature sets for every timing: nothing cached by one detector (f64 copies,
    // moments, KNN banks) serves another, or a later repetition.
    let val_rows = 5000.min(n_train);
    let fresh = || -> Result<(FeatureSet, FeatureSet, FeatureSet)> {
        let train = FeatureSet::new("train", h.matmul(&w.tr()) + &b, h.shallow_clone(), y.shallow_clone())?;
        let val = train.rows(&(0..val_rows).collect::<Vec<i64>>(), "val");
        let test =
            FeatureSet::new("test", te.matmul(&w.tr()) + &b, te.shallow_clone(), Tensor::zeros([n_test + n_ood], (Kind::Int64, device)))?;
        Ok((train, val, test))
    };
    println!(
        "bench ood: features and every detector's work on {device:?} (KNN's and NNGuide's banks on {:?}), pytorch-ood on the same device, {} CPU threads",
        crate::device::best_device(),
        tch::get_num_threads()
    );
    // Warm-up (libtorch's thread pool and allocator), not timed.
    let (train, val, test) = fresh()?;
    let _ = DetectorSpec::new("energy", &[])?.fit(&FitData::new(&train, Some(&val), &w, &b))?.score(&test)?;
    // At least 3 repetitions; more for the millisecond detectors (enough for about
    // half a second in all, at most 31), whose single timings are at the mercy of
    // page faults and the scheduler. The peer repeats each detector as often.
    let min_reps = 3;
    let mut specs = Vec::new();
    let mut lines = Vec::new();
    let mut ours_total = 0.0;
    let mut ours_each = Vec::new();
    let mut precision_checks = Vec::new();
    let mut timed_names: Vec<&str> = Vec::new();
    for d in detectors {
        // The paper's defaults, fitted to the sizes (ViM's dim below a small --dim).
        let mut spec = DetectorSpec::defaults(d, dim, classes, n_train)?;
        if *d == "openmax" {
            // What pytorch-ood computes: class means and tails over every training sample.
            let mut p: Vec<(&str, f64)> = spec.params().iter().map(|(k, v)| (k.as_str(), *v)).collect();
            p.retain(|(k, _)| *k != "correct");
            p.push(("correct", 0.0));
            spec = DetectorSpec::new(d, &p)?;
        }
        let timed = || -> Result<(f64, usize)> {
            let mut times = Vec::new();
            let mut reps = min_reps;
            while times.len() < reps {
                let (train, val, test) = fresh()?;
                let t = std::time::Instant::now();
                let fitted = spec.fit(&FitData::new(&train, Some(&val), &w, &b))?;
                let _ = fitted.score(&test)?;
                times.push(t.elapsed().as_secs_f64());
                if times.len() == 1 {
                    reps = reps_for(times[0], min_reps);
                }
            }
            times.sort_by(f64::total_cmp);
            Ok((times[reps / 2], reps))
        };
        // One failing detector (e.g. an operation a GPU build lacks: a typed error, or a
        // panic from libtorch) is reported and left out; the others are still timed.
        let (s, reps) = match crate::util::catch_panic(timed) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("bench ood: {d} failed on {device:?}, left out: {e}");
                continue;
            }
        };
        if crate::ood::detectors::lookup(d).map(|e| e.auto_f32).unwrap_or(false) {
            match crate::util::catch_panic(|| precision_check(&spec, &w, &b, &fresh)) {
                Ok(c) => precision_checks.push((d.to_string(), c)),
                Err(e) => eprintln!("bench ood: {d}'s precision check failed on {device:?}: {e}"),
            }
        }
        ours_total += s;
        ours_each.push(s);
        timed_names.push(*d);
        specs.push(serde_json::json!([d, spec.params(), reps]));
    }
    let detectors = &timed_names[..];
    for (d, (da, rel)) in &precision_checks {
        println!(
            "precision {d:<12} f32 under auto: |AUROC(auto) - AUROC(f64)| = {da:.1e}, max relative score difference {rel:.1e} (untimed)"
        );
    }
    if let Some(worst) = precision_checks.iter().map(|(_, (da, _))| *da).reduce(f64::max) {
        println!("precision: the largest AUROC difference of the f32 detectors is {worst:.1e} (the bound they are held to: 1e-6)");
    }
    let specs = serde_json::Value::Array(specs).to_string();
    // Both baselines are optional (a GPU machine may have torch but neither numpy's
    // scikit-learn nor pytorch-ood): a missing one is said, and its ratios left out.
    let base = run_python_json(
        "ood_numpy.py",
        &[
            "bench".into(),
            "--n-train".into(),
            n_train.to_string(),
            "--dim".into(),
            dim.to_string(),
            "--classes".into(),
            classes.to_string(),
            "--n-test".into(),
            n_test.to_string(),
            "--n-ood".into(),
            n_ood.to_string(),
            "--specs".into(),
            specs.clone(),
        ],
    )
    .unwrap_or_else(|e| {
        eprintln!("bench ood: numpy/scikit-learn baseline unavailable ({e}); no numpy ratios in this run");
        serde_json::json!({})
    });
    // The peer, pytorch-ood, on features of the same sizes, each detector alone, median of `reps`.
    let peer = run_python_json(
        "ood_peer.py",
        &[
            "bench".into(),
            specs,
            "--n-train".into(),
            n_train.to_string(),
            "--dim".into(),
            dim.to_string(),
            "--classes".into(),
            classes.to_string(),
            "--n-test".into(),
            (n_test + n_ood).to_string(),
            "--reps".into(),
            min_reps.to_string(),
            "--device".into(),
            if device.is_cuda() { "cuda".into() } else { "cpu".into() },
        ],
    )
    .unwrap_or_else(|e| {
        eprintln!("bench ood: pytorch-ood baseline unavailable ({e}); no pytorch-ood ratios in this run");
        serde_json::json!({})
    });
    let mut base_total = 0.0;
    let mut n_base = 0;
    let (mut peer_ours, mut peer_total, mut n_peer) = (0.0, 0.0, 0);
    for (d, s) in detectors.iter().zip(&ours_each) {
        if let Some(bs) = base[*d].as_f64() {
            base_total += bs;
            n_base += 1;
            lines.push(BenchLine::seconds(format!("ood {d} fit+score"), *s, bs, "numpy/sklearn"));
        }
        if let Some(ps) = peer[*d].as_f64() {
            lines.push(BenchLine::seconds(format!("ood {d} fit+score"), *s, ps, "pytorch-ood"));
            peer_ours += s;
            peer_total += ps;
            n_peer += 1;
        }
    }
    let all = crate::ood::detector_names().len() == detectors.len();
    let total = if all {
        format!("ood all {} detectors (total)", detectors.len())
    } else {
        format!("ood these {} detectors (total)", detectors.len())
    };
    if detectors.len() > 1 && n_base == detectors.len() {
        lines.push(BenchLine::seconds(total, ours_total, base_total, "numpy/sklearn"));
    }
    if n_peer > 1 {
        lines.push(BenchLine::seconds(format!("ood the {n_peer} pytorch-ood has (total)"), peer_ours, peer_total, "pytorch-ood"));
    }
    // Exact brute-force KNN is one big matrix product on both sides, so it bounds
    // the total ratio; the rest shown apart for transparency.
    if let Some(i) = detectors.iter().position(|d| *d == "knn").filter(|_| detectors.len() > 1 && n_base == detectors.len()) {
        let bk = base[detectors[i]].as_f64().unwrap_or(f64::NAN);
        lines.push(BenchLine::seconds(
            format!("ood the {} others (total)", detectors.len() - 1),
            ours_total - ours_each[i],
            base_total - bk,
            "numpy/sklearn",
        ));
    }
    // The grid hook (`prepare_grid`): a hyperparameter search scores every grid point on the
    // validation sets; KNN and Relation serve the whole grid from one pass per set. Timed on
    // the 5,000-row validation set against the same grid scored point by point (fresh sets,
    // nothing kept), one repetition each.
    for d in detectors.iter().filter(|d| ["knn", "relation"].contains(d)) {
        let entry = crate::ood::detectors::lookup(d)?;
        let ctx = crate::ood::GridContext { d: dim, c: classes, n: n_train };
        let run = |shared: bool| -> Result<f64> {
            let (train, val, _) = fresh()?;
            let data = FitData::new(&train, Some(&val), &w, &b);
            let grid = (entry.grid)(&ctx)?;
            let t = std::time::Instant::now();
            if shared {
                (entry.prepare_grid)(&grid, &data, &[&val])?;
            }
            for det in grid {
                let _ = crate::ood::Fitted::fit(det, &data)?.score(&val)?;
            }
            Ok(t.elapsed().as_secs_f64())
        };
        let points = (entry.grid)(&ctx)?.len();
        match crate::util::catch_panic(|| run(true).and_then(|a| Ok((a, run(false)?)))) {
            Ok((shared, alone)) => {
                lines.push(BenchLine::seconds(format!("ood {d} grid of {points}, {val_rows} rows"), shared, alone, "oodnc, point by point"))
            }
            Err(e) => eprintln!("bench ood: {d}'s grid timing failed on {device:?}: {e}"),
        }
    }
    Ok(lines)
}

/// `oodnc bench ood-model`: the model-based detectors that pytorch-ood also has,
/// each fitted (Gram, the noisy Mahalanobis) and scored alone on random images
/// through a freshly initialised ResNet-18 of `width` with `classes` outputs
/// (`n_fit` ID training images, `n_score` scored, batch 128), median of `reps`
/// after a warm-up, against pytorch-ood 0.4.0 on the same network shape, sizes,
/// device and threads (python/model_peer.py). The work compared: ODIN (T = 1000,
/// eps = 0.0014), RankFeat on the stage-4 map (pytorch-ood edits one map),
/// Gram with P = 10 over the stem and the 8 blocks, and the last stage's
/// Mahalanobis with input noise (pytorch-ood's MahalanobisODIN, encoder = the
/// penultimate features), and NAC over four layers (pytorch-ood's NACUE on
/// layer1..layer4: the same forward and backward passes and histograms, its own
/// bins and pooling; oodnc's on pool, layer3, layer2, layer1 as OpenOOD, fitted on
/// at most 1,000 of the training images).
pub fn ood_model(device: Device, width: f64, classes: i64, n_fit: i64, n_score: i64, reps: usize) -> Result<Vec<BenchLine>> {
    use crate::ood::model_detectors::{self, Params};
    tch::manual_seed(0);
    let vs = tch::nn::VarStore::new(device);
    let model = crate::model::ResNet18::new(&vs.root(), crate::model::ResNetConfig { num_classes: classes, width, bottleneck: None })?;
    let data = |name: &str, n: i64| crate::data::Dataset {
        name: name.into(),
        images: Tensor::randint(256, [n, 3, 32, 32], (Kind::Uint8, Device::Cpu)),
        labels: Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(classes),
        class_names: (0..classes).map(|c| format!("c{c}")).collect(),
    };
    let (train, test) = (data("train", n_fit), data("test", n_score));
    let p = |kv: &[(&str, f64)]| -> Params { kv.iter().map(|(k, v)| (k.to_string(), *v)).collect() };
    let cases: [(&str, &str, Params, &str); 5] = [
        ("odin", "odin T=1000 eps=0.0014", p(&[("t", 1000.0), ("epsilon", 0.0014)]), "odin"),
        ("rankfeat", "rankfeat stage 4", p(&[("block3", 0.0), ("block4", 1.0)]), "rankfeat_b4"),
        ("gram", "gram P=10", p(&[("poles", 10.0)]), "gram"),
        ("mahalanobis_noise", "mahalanobis_noise last stage", p(&[("ensemble", 0.0), ("epsilon", 0.0014)]), "mahalanobis_odin"),
        ("nac", "nac 4 layers", p(&[]), "nac"),
    ];
    // One failing detector (a typed error or a panic from libtorch) is reported and
    // left out; the others are still timed.
    let mut ours = Vec::new();
    for (name, label, params, _) in &cases {
        let det = model_detectors::lookup(name)?;
        let t = crate::util::catch_panic(|| {
            time_median(reps, || {
                let scorer = det.fit(&model, model_detectors::FitImages::train(&train), device, 128)?;
                scorer.scores(&model, &test, std::slice::from_ref(params), device, 128)?;
                Ok(())
            })
        });
        match &t {
            Ok(t) => println!("bench ood-model: {label} {t:.3} s (fit on {n_fit}, {n_score} scored, width {width}, {classes} classes)"),
            Err(e) => eprintln!("bench ood-model: {label} failed on {device:?}, left out: {e}"),
        }
        ours.push(t.ok());
    }
    let peer = run_python_json(
        "model_peer.py",
        &[
            "bench".into(),
            "--width".into(),
            width.to_string(),
            "--classes".into(),
            classes.to_string(),
            "--n-fit".into(),
            n_fit.to_string(),
            "--n-score".into(),
            n_score.to_string(),
            "--reps".into(),
            reps.to_string(),
            "--threads".into(),
            tch::get_num_threads().to_string(),
            "--device".into(),
            if device.is_cuda() { "cuda".into() } else { "cpu".into() },
        ],
    )
    .unwrap_or_else(|e| {
        eprintln!("bench ood-model: pytorch-ood baseline unavailable ({e}); no ratios in this run");
        serde_json::json!({})
    });
    let mut lines = Vec::new();
    let (mut ours_total, mut peer_total) = (0.0, 0.0);
    for ((_, label, _, key), t) in cases.iter().zip(&ours) {
        if let (Some(t), Some(ps)) = (t, peer[*key].as_f64()) {
            lines.push(BenchLine::seconds(format!("ood-model {label}"), *t, ps, "pytorch-ood"));
            ours_total += t;
            peer_total += ps;
        }
    }
    if lines.len() > 1 {
        lines.push(BenchLine::seconds(format!("ood-model these {} (total)", lines.len()), ours_total, peer_total, "pytorch-ood"));
    }
    Ok(lines)
}

/// Repetitions for a detector whose first timing took `first` seconds: enough
/// for about half a second in all, at least `min`, at most 31 (odd, so the
/// median is one of the timings).
pub fn reps_for(first: f64, min: usize) -> usize {
    let want = if first > 0.0 { (0.5 / first).ceil() as usize } else { 31 };
    (want.clamp(min, 31)) | 1
}

/// Makes fresh (train, val, test) feature sets.
type FreshSets<'a> = dyn Fn() -> Result<(crate::features::FeatureSet, crate::features::FeatureSet, crate::features::FeatureSet)> + 'a;

/// The f32 (`Precision::Auto`) scores of `spec` against its f64 reference on
/// the bench's features, untimed: the AUROC of ID (the validation rows, drawn
/// like the training ones) against the test rows under each, and the largest
/// relative score difference. Returns (|AUROC difference|, relative difference).
fn precision_check(spec: &crate::ood::DetectorSpec, w: &Tensor, b: &Tensor, fresh: &FreshSets) -> Result<(f64, f64)> {
    use crate::ood::{FitData, Precision};
    let (train, val, test) = fresh()?;
    let run = |p: Precision| -> Result<(Vec<f64>, Vec<f64>)> {
        let fitted = spec.fit(&FitData::new(&train, Some(&val), w, b).with_precision(p))?;
        Ok((fitted.score_vec(&val)?, fitted.score_vec(&test)?))
    };
    let ((id32, ood32), (id64, ood64)) = (run(Precision::Auto)?, run(Precision::F64)?);
    let da = (crate::ood::metrics::auroc(&id32, &ood32)? - crate::ood::metrics::auroc(&id64, &ood64)?).abs();
    let all32 = id32.iter().chain(&ood32);
    let all64: Vec<f64> = id64.iter().chain(&ood64).copied().collect();
    let scale = all64.iter().fold(1e-300f64, |m, x| m.max(x.abs()));
    let rel = all32.zip(&all64).fold(0.0f64, |m, (a, b)| m.max((a - b).abs())) / scale;
    Ok((da, rel))
}

/// `oodnc bench nc`: every NC metric for `checkpoints` checkpoints x the 10 layer
/// dimensions of ResNet-18 (64 ... 512) on `n` samples of `classes` classes,
/// against plain numpy (python/nc_numpy.py) on data of the same sizes.
pub fn nc(n: i64, classes: i64, checkpoints: usize) -> Result<Vec<BenchLine>> {
    let dims = [64i64, 64, 64, 128, 128, 256, 256, 512, 512, 512];
    tch::manual_seed(0);
    let y = Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(classes);
    let feats: Vec<Tensor> = dims
        .iter()
        .map(|&d| {
            (Tensor::randn([classes, d], (Kind::Double, Device::Cpu)).index_select(0, &y)
                + Tensor::randn([n, d], (Kind::Double, Device::Cpu)))
            .abs()
        })
        .collect();
    let w = Tensor::randn([classes, 512], (Kind::Double, Device::Cpu));
    let logits = feats[9].matmul(&w.tr());
    let t = std::time::Instant::now();
    for _ in 0..checkpoints {
        for (i, f) in feats.iter().enumerate() {
            crate::nc::metrics::nc_metrics(f, &y, classes, Some(&logits), if i == 9 { Some(&w) } else { None })?;
        }
    }
    let ours = t.elapsed().as_secs_f64();
    let base = run_python_json(
        "nc_numpy.py",
        &[
            "bench".into(),
            "--n".into(),
            n.to_string(),
            "--classes".into(),
            classes.to_string(),
            "--checkpoints".into(),
            checkpoints.to_string(),
        ],
    )?;
    let bs = base["seconds"].as_f64().unwrap_or(f64::NAN);
    Ok(vec![BenchLine::seconds(format!("nc {checkpoints} ckpt x 10 layers, N={n}"), ours, bs, "numpy")])
}
