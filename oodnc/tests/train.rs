//! Training: history and checkpoint files, config validation, and exact resume
//! after the process is killed.

mod common;

use common::TempDir;
use oodnc::config::RunConfig;
use oodnc::train::History;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn tiny_config(root: &Path) -> RunConfig {
    let mut c = RunConfig::profile("ci").unwrap();
    c.data.root = root.join("data");
    c.data.synth.train_per_class = 24;
    c.data.synth.test_per_class = 6;
    c.data.split = oodnc::data::SplitProtocol::Seeded { n_val: 40, seed: 1 };
    c.train.epochs = 4;
    c.train.batch_size = 32;
    c.train.checkpoint_every = 2;
    c.seed = 11;
    c
}

fn oodnc(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_oodnc"));
    c.args(args).env("OODNC_QUIET", "1").env("OODNC_DEVICE", "cpu");
    c
}

fn write_config(dir: &Path, cfg: &RunConfig) -> String {
    let p = dir.join("cfg.toml");
    std::fs::write(&p, cfg.to_toml().unwrap()).unwrap();
    p.display().to_string()
}

#[test]
fn run_writes_history_config_and_checkpoints() {
    let t = TempDir::new("train-files");
    let cfg = tiny_config(t.path());
    let cfg_path = write_config(t.path(), &cfg);
    let runs = t.path().join("runs");
    let st = oodnc(&["train", "--config", &cfg_path, "--run", "a", "--runs", runs.to_str().unwrap()]).status().unwrap();
    assert!(st.success());
    let run = runs.join("a");
    let h = History::read(run.join("history.csv")).unwrap();
    assert_eq!(h.records.iter().map(|r| r.epoch).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    assert!(h.records.iter().all(|r| r.train_loss.is_finite() && (0.0..=1.0).contains(&r.val_acc)));
    // LR of epoch k is the cosine value at k-1.
    assert!((h.records[1].lr - oodnc::train::cosine_lr(0.05, 1.0, 4.0)).abs() < 1e-9);
    let saved = RunConfig::read(run.join("config.toml")).unwrap();
    assert_eq!(saved, cfg);
    for e in [0, 2, 4] {
        assert!(run.join(format!("checkpoints/epoch_{e:03}.safetensors")).exists(), "epoch {e}");
        assert!(run.join(format!("checkpoints/epoch_{e:03}.optim.safetensors")).exists(), "optimizer state, epoch {e}");
    }
    let best: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("checkpoints/best.json")).unwrap()).unwrap();
    let be = best["epoch"].as_i64().unwrap();
    assert!(run.join(format!("checkpoints/epoch_{be:03}.safetensors")).exists());
    // The checkpoint metadata carries the epoch, seed and config hash.
    let (_, _, meta) = oodnc::train::trainer::load_run_model(&run, 2, tch::Device::Cpu).unwrap();
    assert_eq!((meta.epoch, meta.seed, meta.config_hash.clone()), (2, 11, cfg.hash()));
    assert!(meta.metrics.contains_key("val_acc"));
    // Re-running without --resume refuses to overwrite; with --resume it is a no-op.
    let st = oodnc(&["train", "--config", &cfg_path, "--run", "a", "--runs", runs.to_str().unwrap()]).output().unwrap();
    assert!(!st.status.success());
    assert!(String::from_utf8_lossy(&st.stderr).contains("--resume"));
    let st = oodnc(&["train", "--config", &cfg_path, "--run", "a", "--runs", runs.to_str().unwrap(), "--resume"]).status().unwrap();
    assert!(st.success());
    assert_eq!(History::read(run.join("history.csv")).unwrap().records.len(), 4);
}

#[test]
fn resume_after_kill_gives_the_same_weights() {
    let t = TempDir::new("train-resume");
    let cfg = tiny_config(t.path());
    let cfg_path = write_config(t.path(), &cfg);
    let runs = t.path().join("runs");
    let runs_s = runs.to_str().unwrap();
    // Straight through.
    assert!(oodnc(&["train", "--config", &cfg_path, "--run", "straight", "--runs", runs_s]).status().unwrap().success());
    // Killed once at least two epochs are on disk, then resumed.
    let mut child = oodnc(&["train", "--config", &cfg_path, "--run", "killed", "--runs", runs_s]).spawn().unwrap();
    let hist = runs.join("killed/history.csv");
    let t0 = Instant::now();
    loop {
        let n = History::read(&hist).map(|h| h.records.len()).unwrap_or(0);
        if n >= 2 || t0.elapsed() > Duration::from_secs(300) {
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let done_before = History::read(&hist).unwrap().records.len();
    assert!(done_before >= 2, "killed before two epochs were written");
    assert!(oodnc(&["train", "--config", &cfg_path, "--run", "killed", "--runs", runs_s, "--resume"]).status().unwrap().success());

    let a = oodnc::tensor_io::load(runs.join("straight/state/last.safetensors")).unwrap();
    let b = oodnc::tensor_io::load(runs.join("killed/state/last.safetensors")).unwrap();
    assert_eq!(a.tensors.keys().collect::<Vec<_>>(), b.tensors.keys().collect::<Vec<_>>());
    for (name, ta) in &a.tensors {
        let tb = &b.tensors[name];
        let diff = (ta.to_kind(tch::Kind::Double) - tb.to_kind(tch::Kind::Double)).abs().max().double_value(&[]);
        assert!(diff <= 1e-6, "{name}: max diff {diff}");
    }
    assert!(a.tensors.keys().any(|k| k.starts_with("optim.momentum_buffer.")));
    let ha = History::read(runs.join("straight/history.csv")).unwrap();
    let hb = History::read(&hist).unwrap();
    for (x, y) in ha.records.iter().zip(&hb.records) {
        assert_eq!(x.epoch, y.epoch);
        assert!((x.train_loss - y.train_loss).abs() < 1e-6 && (x.val_acc - y.val_acc).abs() < 1e-9);
    }
}

#[test]
fn bad_train_inputs_are_clear_errors() {
    let t = TempDir::new("train-bad");
    let mut cfg = tiny_config(t.path());
    cfg.model.num_classes = 7; // the data has 10
    let cfg_path = write_config(t.path(), &cfg);
    let out = oodnc(&["train", "--config", &cfg_path, "--run", "x", "--runs", t.path().join("runs").to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("num_classes"), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(t.path().join("broken.toml"), "profile = 3").unwrap();
    let out = oodnc(&["train", "--config", t.path().join("broken.toml").to_str().unwrap(), "--run", "y"]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("broken.toml"));
    let out = oodnc(&["train", "--profile", "nope", "--run", "z"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown profile"));
}

#[test]
fn evaluation_sets_follow_the_protocol_and_take_extra_ood_folders() {
    let t = TempDir::new("eval-sets");
    let mut cfg = tiny_config(t.path());
    let folder = t.path().join("mnist-like/7");
    std::fs::create_dir_all(&folder).unwrap();
    for i in 0..3 {
        image::GrayImage::from_pixel(28, 28, image::Luma([40 * i as u8])).save(folder.join(format!("{i}.png"))).unwrap();
    }
    cfg.data.extra_ood = vec![oodnc::config::ExtraOod {
        name: "mnist-like".into(),
        path: t.path().join("mnist-like"),
        format: Default::default(),
        list: None,
    }];
    let sets = oodnc::data::protocol::load_eval_sets(&cfg).unwrap();
    let names: Vec<&str> = sets.ood.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, vec!["svhn", "cifar10", "textures", "mnist-like"]);
    assert_eq!(sets.ood[3].len(), 3);
    assert_eq!(sets.ood[3].images.size(), vec![3, 3, 32, 32]);
    // ID splits are disjoint and complete; OOD-val is built from ID-val, never from a test set.
    assert_eq!(sets.id_train.len() + sets.id_val.len(), 240);
    assert_eq!(sets.ood_val.len(), sets.id_val.len());
    assert_eq!(sets.ood_val.name, "ood-val");
    // A missing extra folder is a clear error.
    cfg.data.extra_ood[0].path = t.path().join("nope");
    let e = oodnc::data::protocol::load_eval_sets(&cfg).err().unwrap();
    assert!(e.to_string().contains("nope"), "{e}");
}

/// Parameters of a few shapes (a channels-last conv weight among them) and a
/// loss whose gradient depends on the parameters, so that steps differ.
fn sgd_problem(seed: i64) -> Vec<(String, tch::Tensor)> {
    use tch::{Device, Kind, Tensor};
    tch::manual_seed(seed);
    let f = (Kind::Float, Device::Cpu);
    vec![
        ("conv.weight".to_string(), Tensor::randn([8, 3, 3, 3], f)),
        ("cl.weight".to_string(), oodnc::amp::channels_last(&Tensor::randn([4, 8, 3, 3], f))),
        ("bn.bias".to_string(), Tensor::randn([8], f)),
        ("fc.weight".to_string(), Tensor::randn([5, 8], f)),
        ("late.weight".to_string(), Tensor::randn([3, 3], f)),
    ]
}

/// The same tensors (shared storage), for handing to an optimizer.
fn share(ps: &[(String, tch::Tensor)]) -> Vec<(String, tch::Tensor)> {
    ps.iter().map(|(n, p)| (n.clone(), p.shallow_clone())).collect()
}

fn sgd_loss(params: &[(String, tch::Tensor)], step: usize) -> tch::Tensor {
    use tch::Kind;
    let mut loss = tch::Tensor::zeros([], (Kind::Float, tch::Device::Cpu));
    for (i, (name, p)) in params.iter().enumerate() {
        // `late.weight` only gets a gradient from the third step on: its
        // momentum buffer starts later than the others'.
        if name == "late.weight" && step < 2 {
            continue;
        }
        let c = tch::Tensor::arange(p.numel() as i64, (Kind::Float, tch::Device::Cpu)).view(p.size().as_slice()).sin();
        loss = loss + (p * c * (i as f64 + 1.0)).sum(Kind::Float) + (p * p).sum(Kind::Float) * 0.5 + (p * p * p).sum(Kind::Float) * 0.01;
    }
    loss
}

#[test]
fn fused_sgd_matches_the_reference_rule() {
    use oodnc::train::{Sgd, SgdConfig};
    // (momentum, weight decay, nesterov, decay BN and bias)
    for (momentum, wd, nesterov, decay_all) in
        [(0.9, 5e-4, false, true), (0.9, 1e-2, true, false), (0.0, 1e-2, false, true), (0.5, 0.0, false, true)]
    {
        let base = sgd_problem(3);
        let fresh = |b: &[(String, tch::Tensor)]| -> Vec<(String, tch::Tensor)> {
            b.iter().map(|(n, p)| (n.clone(), p.copy().set_requires_grad(true))).collect()
        };
        let (pa, pb) = (fresh(&base), fresh(&base));
        assert!(!pa[1].1.is_contiguous(), "the channels-last weight keeps its layout");
        let mut fused = Sgd::new(share(&pa), SgdConfig { momentum, weight_decay: wd, nesterov, decay_bn_and_bias: decay_all });
        let mut reference = Sgd::new(share(&pb), SgdConfig { momentum, weight_decay: wd, nesterov, decay_bn_and_bias: decay_all });
        for step in 0..5 {
            let lr = 0.05 / (step as f64 + 1.0);
            fused.zero_grad().unwrap();
            sgd_loss(&pa, step).backward();
            fused.step(lr).unwrap();
            reference.zero_grad().unwrap();
            sgd_loss(&pb, step).backward();
            reference.step_reference(lr);
            for ((n, a), (_, b)) in pa.iter().zip(&pb) {
                let diff = (a - b).abs().max().double_value(&[]);
                let scale = b.abs().max().double_value(&[]).max(1.0);
                assert!(diff <= 2e-6 * scale, "{n} after step {step} (momentum {momentum}, wd {wd}, nesterov {nesterov}): {diff}");
            }
            let (sa, sb) = (fused.state(), reference.state());
            let names = |s: &[(String, tch::Tensor)]| s.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
            assert_eq!(names(&sa), names(&sb), "step {step}");
            for ((n, a), (_, b)) in sa.iter().zip(&sb) {
                assert!((a - b).abs().max().double_value(&[]) <= 2e-6 * b.abs().max().double_value(&[]).max(1.0), "{n}");
            }
            if momentum > 0.0 {
                // `late.weight` has no buffer before its first gradient.
                assert_eq!(sa.len(), if step < 2 { 4 } else { 5 }, "step {step}");
            } else {
                assert!(sa.is_empty());
            }
        }
        assert_eq!(fused.steps, 5);
    }
}

#[test]
fn zero_grad_drops_gradients_so_they_do_not_accumulate() {
    use oodnc::train::{Sgd, SgdConfig};
    let ps: Vec<(String, tch::Tensor)> = sgd_problem(4).into_iter().map(|(n, p)| (n, p.set_requires_grad(true))).collect();
    let mut opt = Sgd::new(share(&ps), SgdConfig { momentum: 0.9, weight_decay: 0.0, nesterov: false, decay_bn_and_bias: true });
    sgd_loss(&ps, 3).backward();
    let first: Vec<tch::Tensor> = ps.iter().map(|(_, p)| p.grad().copy()).collect();
    opt.zero_grad().unwrap();
    assert!(ps.iter().all(|(_, p)| !p.grad().defined()));
    sgd_loss(&ps, 3).backward();
    for ((_, p), g) in ps.iter().zip(&first) {
        assert!(p.grad().allclose(g, 0.0, 0.0, false), "a fresh gradient, not the sum of two");
    }
}

#[test]
fn restored_momentum_buffers_take_the_parameter_layout() {
    // Buffers come back from a checkpoint in the standard layout; a channels-last
    // parameter must still be updated element by element with its own buffer.
    use oodnc::train::{Sgd, SgdConfig};
    let base = sgd_problem(5);
    let fresh = |b: &[(String, tch::Tensor)]| -> Vec<(String, tch::Tensor)> {
        b.iter().map(|(n, p)| (n.clone(), p.copy().set_requires_grad(true))).collect()
    };
    let (pa, pb) = (fresh(&base), fresh(&base));
    let mut first = Sgd::new(share(&pa), SgdConfig::default());
    first.zero_grad().unwrap();
    sgd_loss(&pa, 3).backward();
    first.step(0.05).unwrap();
    // What a checkpoint holds: contiguous copies.
    let saved: std::collections::BTreeMap<String, tch::Tensor> =
        first.state().into_iter().map(|(n, t)| (n, t.contiguous().copy())).collect();
    assert!(saved["momentum_buffer.cl.weight"].is_contiguous());
    let mut reference = Sgd::new(share(&pb), SgdConfig::default());
    reference.zero_grad().unwrap();
    sgd_loss(&pb, 3).backward();
    reference.step_reference(0.05);
    let mut resumed = Sgd::new(share(&pa), SgdConfig::default());
    resumed.load_state(saved, 1).unwrap();
    for _ in 0..2 {
        resumed.zero_grad().unwrap();
        sgd_loss(&pa, 3).backward();
        resumed.step(0.05).unwrap();
        reference.zero_grad().unwrap();
        sgd_loss(&pb, 3).backward();
        reference.step_reference(0.05);
    }
    for ((n, a), (_, b)) in pa.iter().zip(&pb) {
        let diff = (a - b).abs().max().double_value(&[]);
        assert!(diff <= 2e-6 * b.abs().max().double_value(&[]).max(1.0), "{n}: {diff}");
    }
    assert_eq!(resumed.steps, 3);
}

#[test]
fn a_failing_fused_kernel_falls_back_to_the_same_rule() {
    // A gradient whose dtype differs from its parameter's makes the fused kernel
    // refuse (before updating anything); the step must still apply the SGD rule.
    use oodnc::train::{Sgd, SgdConfig};
    let base: Vec<(String, tch::Tensor)> = sgd_problem(6).into_iter().map(|(n, p)| (n, p.to_kind(tch::Kind::Double))).collect();
    let fresh = |b: &[(String, tch::Tensor)]| -> Vec<(String, tch::Tensor)> {
        b.iter().map(|(n, p)| (n.clone(), p.copy().set_requires_grad(true))).collect()
    };
    let (pa, pb) = (fresh(&base), fresh(&base));
    let mut fused = Sgd::new(share(&pa), SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: true, decay_bn_and_bias: true });
    let mut reference = Sgd::new(share(&pb), SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: true, decay_bn_and_bias: true });
    let f32_grads = |ps: &[(String, tch::Tensor)]| {
        for (_, p) in ps {
            let mut g = p.grad();
            let as_f32 = g.to_kind(tch::Kind::Float);
            g.set_data(&as_f32);
        }
    };
    for step in 0..3 {
        fused.zero_grad().unwrap();
        sgd_loss(&pa, step + 2).backward();
        f32_grads(&pa);
        fused.step(0.05).unwrap();
        reference.zero_grad().unwrap();
        sgd_loss(&pb, step + 2).backward();
        f32_grads(&pb);
        reference.step_reference(0.05);
    }
    for ((n, a), (_, b)) in pa.iter().zip(&pb) {
        assert_eq!(a.kind(), tch::Kind::Double);
        assert!(a.allclose(b, 1e-12, 1e-12, false), "{n}");
    }
    assert_eq!(fused.steps, 3);
    assert_eq!(fused.state().len(), 5);
}
