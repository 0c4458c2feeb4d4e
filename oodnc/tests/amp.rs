//! The training fast path on the CPU: bf16 autocast through our shim, the
//! channels-last layout, and a training run with both (the same code runs on CUDA).

mod common;

use common::TempDir;
use oodnc::amp::{autocast, channels_last, convert_channels_last, is_channels_last, is_enabled, AutocastGuard, Precision};
use oodnc::config::{FastPath, RunConfig, Toggle};
use oodnc::model::{load_checkpoint, save_checkpoint, CheckpointMeta, ResNet18, ResNetConfig};
use oodnc::train::{train_step, Sgd};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const CPU: Device = Device::Cpu;

fn model(seed: i64) -> (VarStore, ResNet18) {
    tch::manual_seed(seed);
    let vs = VarStore::new(CPU);
    let m = ResNet18::new(&vs.root(), ResNetConfig { num_classes: 10, width: 0.125, bottleneck: None }).unwrap();
    (vs, m)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn autocast_runs_matmuls_in_bf16_and_restores_the_state() {
    let a = Tensor::randn([8, 16], (Kind::Float, CPU));
    let b = Tensor::randn([16, 4], (Kind::Float, CPU));
    assert!(!is_enabled(CPU).unwrap());
    assert_eq!(a.matmul(&b).kind(), Kind::Float);
    let inside = autocast(CPU, Some(Kind::BFloat16), || {
        assert!(is_enabled(CPU).unwrap());
        a.matmul(&b).kind()
    })
    .unwrap();
    assert_eq!(inside, Kind::BFloat16);
    assert!(!is_enabled(CPU).unwrap());
    assert_eq!(a.matmul(&b).kind(), Kind::Float);
    // The bf16 product is the f32 one up to bf16 rounding of the inputs.
    let y16 = autocast(CPU, Some(Kind::BFloat16), || a.matmul(&b)).unwrap().to_kind(Kind::Float);
    let y32 = a.matmul(&b);
    let scale = a.abs().matmul(&b.abs()).max().double_value(&[]);
    assert!(max_abs_diff(&y16, &y32) <= 2.0f64.powi(-6) * scale, "bf16 error too large");
    assert!(max_abs_diff(&y16, &y32) > 0.0, "autocast had no effect");
    // None runs plainly.
    assert_eq!(autocast(CPU, None, || a.matmul(&b).kind()).unwrap(), Kind::Float);
    // Nested guards restore the outer state; an error inside still restores.
    {
        let _outer = AutocastGuard::new(CPU, Kind::BFloat16).unwrap();
        {
            let _inner = AutocastGuard::new(CPU, Kind::BFloat16).unwrap();
        }
        assert!(is_enabled(CPU).unwrap());
        assert_eq!(a.matmul(&b).kind(), Kind::BFloat16);
    }
    assert!(!is_enabled(CPU).unwrap());
    let r: Result<(), String> = autocast(CPU, Some(Kind::BFloat16), || Err("inner failure".to_string())).unwrap();
    assert!(r.is_err());
    assert!(!is_enabled(CPU).unwrap());
    // Unsupported dtypes are typed errors.
    assert!(matches!(AutocastGuard::new(CPU, Kind::Double), Err(oodnc::Error::InvalidParam { .. })));
}

#[test]
fn channels_last_keeps_values_and_checkpoints() {
    let x = Tensor::randn([2, 3, 5, 7], (Kind::Float, CPU));
    let cl = channels_last(&x);
    assert!(is_channels_last(&cl) && !is_channels_last(&x));
    assert_eq!(cl.size(), x.size());
    assert!(cl.equal(&x));
    assert_eq!(cl.stride(), vec![105, 1, 21, 3]);

    let (vs, m) = model(5);
    let input = Tensor::randn([4, 3, 32, 32], (Kind::Float, CPU));
    let before = m.forward_t(&input, false).unwrap();
    convert_channels_last(&vs);
    for (name, v) in vs.variables() {
        assert_eq!(is_channels_last(&v), v.dim() == 4, "{name}");
    }
    // The module sees the converted weights (same variables), values unchanged.
    let after = m.forward_t(&channels_last(&input), false).unwrap();
    assert!(max_abs_diff(&before, &after) < 1e-4, "{}", max_abs_diff(&before, &after));
    // A checkpoint of the channels-last model loads into a plain one: same logits.
    let t = TempDir::new("amp-ckpt");
    let p = t.path().join("epoch_001.safetensors");
    let meta = CheckpointMeta { epoch: 1, seed: 5, config_hash: "x".into(), model: Some(m.config), metrics: Default::default() };
    save_checkpoint(&p, &vs, &meta).unwrap();
    let (mut vs2, m2) = model(6);
    load_checkpoint(&p, &mut vs2).unwrap();
    for ((n1, a), (n2, b)) in sorted(&vs).iter().zip(sorted(&vs2).iter()) {
        assert_eq!(n1, n2);
        assert!(a.equal(b), "{n1} differs after the round trip");
    }
    assert!(max_abs_diff(&m2.forward_t(&input, false).unwrap(), &before) < 1e-4);
}

fn sorted(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<_> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn train_step_fast_paths_agree_with_fp32() {
    // Fixed inputs: drawn from the global generator they changed with the order in which
    // the tests of this binary ran (in threads), and the bf16 bound below then failed now and
    // then (a loss difference of 0.053 against 0.046 on a fresh clone).
    let x = (Tensor::arange(16 * 3 * 32 * 32, (Kind::Float, CPU)) * 0.37).sin().view([16, 3, 32, 32]) * 1.5;
    let y = Tensor::arange(16, (Kind::Int64, CPU)).remainder(10);
    // The same weights for every path: `model` seeds the global generator, which the other
    // tests of this binary (threads) draw from too, so two calls of `model(9)` can differ (a
    // fresh clone saw f32 and channels-last losses 2.2962 and 2.3010: two initialisations).
    let (reference, _) = model(9);
    let step = |fast: FastPath| {
        let (mut vs, m) = model(9);
        vs.copy(&reference).unwrap();
        if fast.channels_last {
            convert_channels_last(&vs);
        }
        let params: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        let mut opt = Sgd::new(params, oodnc::train::SgdConfig::default());
        let (loss, logits) = train_step(&m, &mut opt, &x, &y, 0.1, fast).unwrap();
        assert_eq!(logits.kind(), Kind::Float);
        let fc = sorted(&vs).into_iter().find(|(n, _)| n == "fc.weight").unwrap().1;
        // Parameters stay f32 (master weights) whatever the compute precision.
        assert!(vs.variables().values().all(|v| v.kind() == Kind::Float));
        (loss.double_value(&[]), fc.copy())
    };
    let plain = FastPath { autocast: None, channels_last: false, cudnn_benchmark: false };
    let (l32, w32) = step(plain);
    let (lcl, wcl) = step(FastPath { channels_last: true, ..plain });
    let (l16, w16) = step(FastPath { autocast: Some(Kind::BFloat16), channels_last: true, ..plain });
    assert!((l32 - lcl).abs() < 1e-4, "{l32} vs {lcl}");
    assert!(max_abs_diff(&w32, &wcl) < 1e-5);
    // bf16: same loss to bf16 accuracy, and a different (but close) update.
    eprintln!("loss f32 {l32}, bf16 {l16}");
    assert!((l32 - l16).abs() < 2e-2 * l32.abs().max(1.0), "{l32} vs {l16}");
    let dw = max_abs_diff(&w32, &w16);
    assert!(dw > 0.0 && dw < 1e-2, "{dw}");
}

#[test]
fn fast_path_resolution() {
    let mut t = RunConfig::profile("coursework").unwrap().train;
    let cuda = Device::Cuda(0);
    // auto: the GPU path on CUDA only.
    assert_eq!(t.fast_path(cuda), FastPath { autocast: Some(Kind::BFloat16), channels_last: true, cudnn_benchmark: true });
    assert_eq!(t.fast_path(CPU), FastPath { autocast: None, channels_last: false, cudnn_benchmark: false });
    t.gpu_fast_path = false;
    assert_eq!(t.fast_path(cuda), FastPath { autocast: None, channels_last: false, cudnn_benchmark: false });
    t.precision = Precision::Bf16;
    t.channels_last = Toggle::On;
    assert_eq!(t.fast_path(CPU), FastPath { autocast: Some(Kind::BFloat16), channels_last: true, cudnn_benchmark: false });
    t.precision = Precision::Fp32;
    t.gpu_fast_path = true;
    assert_eq!(t.fast_path(cuda).autocast, None);
    // Config files written before these options existed still read (defaults: auto).
    let mut cfg = RunConfig::profile("ci").unwrap();
    let text = cfg.to_toml().unwrap().replace("precision = \"auto\"\n", "").replace("channels_last = \"auto\"\n", "");
    assert!(!text.contains("precision"));
    let t = TempDir::new("amp-cfg");
    std::fs::write(t.path().join("c.toml"), text).unwrap();
    let back = RunConfig::read(t.path().join("c.toml")).unwrap();
    assert_eq!(back, cfg);
    assert_eq!(back.hash(), cfg.hash());
    // A bad value names the field.
    cfg.train.precision = Precision::Auto;
    let bad = cfg.to_toml().unwrap().replace("precision = \"auto\"", "precision = \"fp8\"");
    std::fs::write(t.path().join("bad.toml"), bad).unwrap();
    let e = RunConfig::read(t.path().join("bad.toml")).unwrap_err();
    assert!(e.to_string().contains("precision") || e.to_string().contains("fp8"), "{e}");
}

#[test]
fn a_bf16_channels_last_run_trains_and_saves_f32_checkpoints() {
    let t = TempDir::new("amp-run");
    let mut cfg = RunConfig::profile("ci").unwrap();
    cfg.data.root = t.path().join("data");
    cfg.data.synth.train_per_class = 24;
    cfg.data.synth.test_per_class = 6;
    cfg.data.split = oodnc::data::SplitProtocol::Seeded { n_val: 40, seed: 1 };
    cfg.train.epochs = 2;
    cfg.train.batch_size = 32;
    cfg.train.precision = Precision::Bf16;
    cfg.train.channels_last = Toggle::On;
    let data = oodnc::train::RunData::load(&cfg).unwrap();
    let run = t.path().join("runs/bf16");
    let mut tr = oodnc::train::Trainer::open(cfg.clone(), &run, CPU).unwrap();
    let out = tr.fit(&data, None).unwrap();
    assert_eq!(out.epochs_done, 2);
    let h = oodnc::train::History::read(run.join("history.csv")).unwrap();
    assert!(h.records.iter().all(|r| r.train_loss.is_finite() && r.val_loss.is_finite()));
    let saved = oodnc::config::RunConfig::read(run.join("config.toml")).unwrap();
    assert_eq!(saved.train.precision, Precision::Bf16);
    // The checkpoint holds f32 tensors in the standard layout and gives the
    // trained model's f32 logits.
    let (vs, m, _) = oodnc::train::trainer::load_run_model(&run, 2, CPU).unwrap();
    assert!(vs.variables().values().all(|v| v.kind() == Kind::Float || v.kind() == Kind::Int64));
    let x = Tensor::randn([3, 3, 32, 32], (Kind::Float, CPU));
    let ours = tch::no_grad(|| tr.model.forward_t(&x, false).unwrap());
    let loaded = tch::no_grad(|| m.forward_t(&x, false).unwrap());
    assert!(max_abs_diff(&ours, &loaded) < 1e-4);
}

#[test]
fn selftest_passes_on_the_cpu_and_reports_failures_as_lines() {
    let checks = oodnc::selftest::run(CPU);
    let names: Vec<&str> = checks.iter().map(|c| c.name).collect();
    for n in [
        "train-step-fp32",
        "bf16-autocast",
        "channels-last",
        "fused-sgd",
        "feature-extraction",
        "knn",
        "detectors",
        "model-detectors",
        "checkpoint-round-trip",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    for c in &checks {
        assert!(c.passed, "{c}");
        assert!(c.to_string().starts_with("PASS "), "{c}");
    }
    // A check that errors or panics fails with its message; it does not stop the others.
    let e = oodnc::selftest::check("errs", || Err(oodnc::Error::data("x", "went wrong")));
    assert!(!e.passed && e.detail.contains("went wrong") && e.to_string().starts_with("FAIL errs"), "{e}");
    let p = oodnc::selftest::check("panics", || panic!("boom {}", 7));
    assert!(!p.passed && p.detail.contains("panicked: boom 7"), "{p}");
}

/// The selftest's data and models come from local generators, not libtorch's
/// global one: with another thread drawing from that generator all along (as a
/// test binary's other tests do), every check still compares like with like.
/// (A fresh clone's `make test` failed `detectors` once: two `manual_seed(5)`
/// draws of the same features differed, Mahalanobis by 1.22 relative.)
#[test]
fn selftest_is_independent_of_the_global_generator() {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let noise = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tch::manual_seed(99);
                let _ = Tensor::randn([4096], (Kind::Float, CPU));
            }
        })
    };
    let checks = oodnc::selftest::run(CPU);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    noise.join().unwrap();
    for c in &checks {
        assert!(c.passed, "{c}");
    }
}
