//! `oodnc selftest --device cuda|cpu`: the device-sensitive checks, inside the
//! binary (test binaries are too large to carry to a GPU machine).
//!
//! Each check runs the same computation on `device` and on the CPU (the
//! reference), or against an independent formulation, and reports one line:
//! pass or fail, what was compared, the measured difference and the bound. On
//! the CPU the device-against-CPU comparisons are exact by construction; they
//! still exercise every path. Tolerances allow for what differs legitimately on
//! a GPU: TF32 convolutions in cuDNN (relative error ~1e-3) and a different
//! summation order; bf16 steps are compared against their own bound.
//!
//! A check that errors or panics is reported as failed with the message; the
//! others still run.

use crate::amp::{autocast, channels_last, convert_channels_last, is_channels_last, is_enabled};
use crate::config::FastPath;
use crate::error::{Error, Result};
use crate::features::{extract, ExtractOptions, FeatureSet};
use crate::model::{encode_checkpoint, load_checkpoint, CheckpointMeta, ResNet18, ResNetConfig};
use crate::ood::detectors::mahalanobis_layers::STAGE_TAPS;
use crate::train::{train_step, Sgd, SgdConfig};
use crate::util::SplitMix64;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// The outcome of one check.
#[derive(Debug, Clone)]
pub struct Check {
    /// Short name (`train-step-fp32`, `knn`, ...).
    pub name: &'static str,
    pub passed: bool,
    /// What was compared and the measured difference, or the error.
    pub detail: String,
    pub seconds: f64,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:<30} {:>7.2} s  {}", if self.passed { "PASS" } else { "FAIL" }, self.name, self.seconds, self.detail)
    }
}

/// Runs `f` as the check `name`: `Ok(detail)` passes, an error or a panic fails.
pub fn check(name: &'static str, f: impl FnOnce() -> Result<String>) -> Check {
    let t = std::time::Instant::now();
    let (passed, detail) = match crate::util::catch_panic(f) {
        Ok(d) => (true, d),
        Err(e) => (false, e.to_string()),
    };
    Check { name, passed, detail, seconds: t.elapsed().as_secs_f64() }
}

/// Fails with `what` when `diff > bound`; else a detail line with both.
fn within(what: &str, diff: f64, bound: f64) -> Result<String> {
    if diff.is_finite() && diff <= bound {
        Ok(format!("{what}: {diff:.2e} <= {bound:.0e}"))
    } else {
        Err(Error::data("selftest", format!("{what}: {diff:.3e} exceeds {bound:.0e}")))
    }
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_device(Device::Cpu).to_kind(Kind::Double) - b.to_device(Device::Cpu).to_kind(Kind::Double)).abs().max().double_value(&[])
}

/// max |a - b| / max(max |b|, 1).
fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let scale = b.to_device(Device::Cpu).to_kind(Kind::Double).abs().max().double_value(&[]).max(1.0);
    max_abs(a, b) / scale
}

/// Relative bound of fp32 work that may run through TF32 convolutions on a GPU.
const FP32_REL: f64 = 2e-2;
/// Relative bound between a bf16-autocast loss and the fp32 one.
const BF16_REL: f64 = 5e-2;
/// A small CIFAR-shaped model: the full architecture at 1/8 width.
const MODEL: ResNetConfig = ResNetConfig { num_classes: 10, width: 0.125, bottleneck: None };

/// The same seeded model on `device` (weights copied from a CPU initialisation,
/// so every device starts from identical values).
fn model_on(device: Device) -> Result<(VarStore, ResNet18)> {
    let cpu = VarStore::new(Device::Cpu);
    ResNet18::new(&cpu.root(), MODEL)?;
    // The random initialisers (convolution and classifier weights) replaced by
    // draws of a local generator (He-normal scale): libtorch's global generator
    // is shared by every thread of the process, and a test binary's other tests
    // draw from it too. Batch-norm parameters and biases start constant.
    let mut vars: Vec<(String, Tensor)> = cpu.variables().into_iter().filter(|(_, v)| v.dim() >= 2).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (i, (_, v)) in vars.iter().enumerate() {
        let fan_in = v.numel() as f64 / v.size()[0] as f64;
        let fresh = randn(&v.size(), 11 + i as u64) * (2.0 / fan_in).sqrt();
        tch::no_grad(|| v.shallow_clone().f_copy_(&fresh))?;
    }
    let mut vs = VarStore::new(device);
    let m = ResNet18::new(&vs.root(), MODEL)?;
    vs.copy(&cpu).map_err(|e| Error::data("selftest model copy", e.to_string()))?;
    Ok((vs, m))
}

fn batch(device: Device) -> (Tensor, Tensor) {
    let x = randn(&[16, 3, 32, 32], 12);
    let y = Tensor::arange(16, (Kind::Int64, Device::Cpu)).remainder(10);
    (x.to_device(device), y.to_device(device))
}

fn sgd(vs: &VarStore) -> Sgd {
    Sgd::new(vs.trainable_variables().into_iter().enumerate().map(|(i, t)| (format!("p{i:03}"), t)).collect(), SgdConfig::default())
}

/// One training step of the seeded model on `device` with `fast`: (loss, updated parameters on the CPU).
fn one_step(device: Device, fast: FastPath) -> Result<(f64, Vec<Tensor>)> {
    let (vs, m) = model_on(device)?;
    if fast.channels_last {
        convert_channels_last(&vs);
    }
    let mut opt = sgd(&vs);
    let (x, y) = batch(device);
    let (loss, _) = train_step(&m, &mut opt, &x, &y, 0.05, fast)?;
    let params = vs.trainable_variables().iter().map(|t| t.to_device(Device::Cpu).to_kind(Kind::Float)).collect();
    Ok((loss.double_value(&[]), params))
}

const FP32: FastPath = FastPath { autocast: None, channels_last: false, cudnn_benchmark: false };

/// Every check on `device` (each against the CPU or an independent formulation).
pub fn run(device: Device) -> Vec<Check> {
    let mut out = Vec::new();
    out.push(check("tensor-ops", || {
        let (a, b) = (randn(&[64, 128], 1), randn(&[128, 32], 101));
        let on = a.to_device(device).matmul(&b.to_device(device));
        if on.device() != device {
            return Err(Error::data("selftest", format!("result on {:?}, not {device:?}", on.device())));
        }
        within("matmul on the device vs the CPU, relative", rel(&on, &a.matmul(&b)), 1e-3)
    }));
    out.push(check("forward-fp32", || {
        let (x, _) = batch(device);
        let (_, m) = model_on(device)?;
        let (_, mc) = model_on(Device::Cpu)?;
        let a = tch::no_grad(|| m.forward_t(&x, false))?;
        let b = tch::no_grad(|| mc.forward_t(&x.to_device(Device::Cpu), false))?;
        within("eval logits vs the CPU, relative", rel(&a, &b), FP32_REL)
    }));
    out.push(check("train-step-fp32", || {
        let (loss, p) = one_step(device, FP32)?;
        let (loss_cpu, pc) = one_step(Device::Cpu, FP32)?;
        let dp = p.iter().zip(&pc).map(|(a, b)| rel(a, b)).fold(0.0, f64::max);
        let dl = (loss - loss_cpu).abs() / loss_cpu.abs().max(1.0);
        Ok(format!("{}; {}", within("loss vs the CPU", dl, FP32_REL)?, within("updated parameters vs the CPU", dp, FP32_REL)?))
    }));
    out.push(check("bf16-autocast", || {
        let (a, b) = (randn(&[32, 64], 2).to_device(device), randn(&[64, 16], 102).to_device(device));
        if is_enabled(device)? {
            return Err(Error::data("selftest", "autocast already on before the check"));
        }
        let y16 = autocast(device, Some(Kind::BFloat16), || a.matmul(&b))?;
        if y16.kind() != Kind::BFloat16 {
            return Err(Error::data("selftest", format!("matmul under autocast gave {:?}, not BFloat16", y16.kind())));
        }
        if is_enabled(device)? || a.matmul(&b).kind() != Kind::Float {
            return Err(Error::data("selftest", "autocast state not restored after the guard"));
        }
        // bf16 rounds each input to 8 significant bits.
        let bound = 2.0f64.powi(-6) * a.abs().matmul(&b.abs()).max().double_value(&[]);
        within("bf16 product vs fp32, absolute", max_abs(&y16, &a.matmul(&b)), bound)
    }));
    out.push(check("channels-last", || {
        let (x, _) = batch(device);
        let (vs, m) = model_on(device)?;
        let before = tch::no_grad(|| m.forward_t(&x, false))?;
        convert_channels_last(&vs);
        if let Some((n, _)) = vs.variables().into_iter().find(|(_, v)| v.dim() == 4 && !is_channels_last(v)) {
            return Err(Error::data("selftest", format!("{n} not channels-last after conversion")));
        }
        let after = tch::no_grad(|| m.forward_t(&channels_last(&x), false))?;
        within("channels-last forward vs contiguous, relative", rel(&after, &before), FP32_REL)
    }));
    out.push(check("train-step-bf16-channels-last", || {
        let fast = FastPath { autocast: Some(Kind::BFloat16), channels_last: true, cudnn_benchmark: device.is_cuda() };
        let (loss, p) = one_step(device, fast)?;
        let (loss32, _) = one_step(Device::Cpu, FP32)?;
        if let Some(i) = p.iter().position(|t| !bool::try_from(t.isfinite().all()).unwrap_or(false)) {
            return Err(Error::data("selftest", format!("parameter {i} not finite after the bf16 step")));
        }
        within("bf16 + channels-last loss vs fp32 on the CPU, relative", (loss - loss32).abs() / loss32.abs().max(1.0), BF16_REL)
    }));
    out.push(check("fused-sgd", || {
        let init: Vec<Tensor> = vec![randn(&[8, 4, 3, 3], 3), randn(&[8], 103)];
        let params = || -> Vec<(String, Tensor)> {
            init.iter().enumerate().map(|(i, t)| (format!("p{i}"), t.to_device(device).set_requires_grad(true))).collect()
        };
        let (pa, pb) = (params(), params());
        let share = |ps: &[(String, Tensor)]| ps.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect::<Vec<_>>();
        let cfg = SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: false, decay_bn_and_bias: true };
        let (mut fused, mut reference) = (Sgd::new(share(&pa), cfg), Sgd::new(share(&pb), cfg));
        let loss = |ps: &[(String, Tensor)], k: f64| (&ps[0].1 * k).sin().sum(Kind::Float) + (&ps[1].1 * &ps[1].1).sum(Kind::Float);
        let mut worst: f64 = 0.0;
        for step in 0..5 {
            let lr = 0.05 / (step as f64 + 1.0);
            fused.zero_grad()?;
            loss(&pa, 1.0 + step as f64).backward();
            fused.step(lr)?;
            reference.zero_grad()?;
            loss(&pb, 1.0 + step as f64).backward();
            reference.step_reference(lr);
            for ((_, a), (_, b)) in pa.iter().zip(&pb) {
                worst = worst.max(rel(a, b));
            }
        }
        within("fused kernel vs the reference rule over 5 steps, relative", worst, 2e-6)
    }));
    out.push(check("feature-extraction", || {
        let data = images("selftest", 24, 4)?;
        let opts = ExtractOptions { taps: true, pool2x2: false };
        let (_, m) = model_on(device)?;
        let (_, mc) = model_on(Device::Cpu)?;
        let a = extract(&m, &data, opts, device, 8)?;
        let b = extract(&mc, &data, opts, Device::Cpu, 8)?;
        if a.taps.len() != 9 || a.penultimate.size() != [24, 64] {
            return Err(Error::data("selftest", format!("{} taps, penultimate {:?}", a.taps.len(), a.penultimate.size())));
        }
        let worst = a.taps.iter().map(|(k, t)| rel(t, &b.taps[k])).fold(rel(&a.penultimate, &b.penultimate), f64::max);
        within("taps and penultimate features vs the CPU, relative", worst.max(rel(&a.logits, &b.logits)), FP32_REL)
    }));
    out.push(check("knn", || {
        let (train, _, test) = feature_sets(Device::Cpu)?;
        let on = crate::ood::knn::bank(&train, device, "selftest knn")?;
        let cpu = crate::ood::knn::bank(&train, Device::Cpu, "selftest knn")?;
        let a = on.lock().unwrap_or_else(|e| e.into_inner()).kth_largest(&crate::features::normalize_rows(&test.penultimate), 5)?;
        let b = cpu.lock().unwrap_or_else(|e| e.into_inner()).kth_largest_matmul(&crate::features::normalize_rows(&test.penultimate), 5);
        within("5th-largest cosine similarity, bank on the device vs a CPU matmul", max_abs(&a, &b), 1e-5)
    }));
    out.push(check("detectors", || detectors_against_the_cpu(device)));
    out.push(check("model-detectors", || model_detectors_against_the_cpu(device)));
    out.push(check("checkpoint-round-trip", || {
        let (vs, _) = model_on(device)?;
        let meta = CheckpointMeta { epoch: 1, seed: 11, config_hash: "selftest".into(), model: Some(MODEL), metrics: Default::default() };
        let path = std::env::temp_dir().join(format!("oodnc-selftest-{}.safetensors", std::process::id()));
        encode_checkpoint(&vs, &meta)?.write(&path)?;
        let result = (|| -> Result<String> {
            let mut worst = 0.0f64;
            for dev in [Device::Cpu, device] {
                let mut back = VarStore::new(dev);
                ResNet18::new(&back.root(), MODEL)?;
                let m = load_checkpoint(&path, &mut back)?;
                if m.epoch != 1 || m.model != Some(MODEL) {
                    return Err(Error::data("selftest", "checkpoint metadata changed in the round trip"));
                }
                let orig = vs.variables();
                for (n, t) in back.variables() {
                    worst = worst.max(max_abs(&t, &orig[&n]));
                }
            }
            if worst != 0.0 {
                return Err(Error::data("selftest", format!("tensors differ after save + load: {worst:e}")));
            }
            Ok("save on the device, load on the CPU and the device: every tensor bit-identical".into())
        })();
        let _ = std::fs::remove_file(&path);
        result
    }));
    out
}

/// Seeded features of four classes (ReLU'd Gaussians), with the stage taps the
/// multi-layer Mahalanobis ensemble reads: train (400 rows), validation (100)
/// and test (100, shifted), every tensor on `device`.
fn feature_sets(device: Device) -> Result<(FeatureSet, FeatureSet, FeatureSet)> {
    let mus = randn(&[4, 32], 5) * 2.0;
    let taps: Vec<Tensor> = STAGE_TAPS.iter().enumerate().map(|(l, _)| randn(&[32, 3 + l as i64], 50 + l as u64)).collect();
    let (w, b) = head(Device::Cpu);
    let set = |name: &str, h: Tensor, y: Tensor| -> Result<FeatureSet> {
        let mut f = FeatureSet::new(name, (h.matmul(&w.tr()) + &b).to_device(device), h.to_device(device), y.to_device(device))?;
        for (tap, r) in STAGE_TAPS.iter().zip(&taps) {
            f.taps.insert(tap.to_string(), h.matmul(r).relu().to_device(device));
        }
        Ok(f)
    };
    let y = Tensor::arange(400, (Kind::Int64, Device::Cpu)).remainder(4);
    let train = set("train", (mus.index_select(0, &y) + randn(&[400, 32], 105)).relu(), y)?;
    let y = Tensor::arange(100, (Kind::Int64, Device::Cpu)).remainder(4);
    let val = set("val", (mus.index_select(0, &y) + randn(&[100, 32], 205)).relu(), y)?;
    let test = set("test", (randn(&[100, 32], 305) + 1.0).relu(), Tensor::zeros([100], (Kind::Int64, Device::Cpu)))?;
    Ok((train, val, test))
}

/// A `shape` tensor of standard normal f32 values from a local generator
/// seeded with `seed`: the selftest never draws from libtorch's global
/// generator, which every thread of the process shares (a test binary runs
/// its other tests beside it, and two draws under one seed could differ).
fn randn(shape: &[i64], seed: u64) -> Tensor {
    let mut g = SplitMix64::new(seed);
    let v: Vec<f32> = (0..shape.iter().product::<i64>()).map(|_| g.normal() as f32).collect();
    Tensor::from_slice(&v).view(shape)
}

/// `n` seeded random images of 10 classes (labels i mod 10).
fn images(name: &str, n: usize, seed: u64) -> Result<crate::data::Dataset> {
    let mut g = SplitMix64::new(seed);
    let px: Vec<u8> = (0..n * 3 * 32 * 32).map(|_| g.below(256) as u8).collect();
    crate::data::Dataset::from_raw(name, px, (0..n as i64).map(|i| i % 10).collect(), (0..10).map(|c| format!("c{c}")).collect())
}

/// Device-against-CPU score comparisons of many detectors, each on its own:
/// the worst relative difference, and every run that failed, errored or
/// panicked (not only the first).
struct ScoreComparison {
    bound: f64,
    runs: usize,
    worst: (f64, String),
    failed: Vec<String>,
}

impl ScoreComparison {
    fn new(bound: f64) -> Self {
        ScoreComparison { bound, runs: 0, worst: (0.0, String::new()), failed: Vec::new() }
    }

    /// Scores on the device (`on`) against the CPU's (`cpu`): max |a - r| over
    /// the largest |r|, within the bound, finite, as many.
    fn add(&mut self, label: String, on: Result<Vec<f64>>, cpu: Result<Vec<f64>>) {
        self.runs += 1;
        let outcome = match (on, cpu) {
            (Ok(a), Ok(r)) => {
                let scale = r.iter().map(|x| x.abs()).fold(1e-12, f64::max);
                let d = a.iter().zip(&r).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max) / scale;
                if d > self.worst.0 {
                    self.worst = (d, label.clone());
                }
                if !a.iter().all(|x| x.is_finite()) {
                    Err("non-finite scores".into())
                } else if a.len() != r.len() {
                    Err(format!("{} scores against the CPU's {}", a.len(), r.len()))
                } else if d > self.bound {
                    Err(format!("relative difference {d:.2e}"))
                } else {
                    Ok(())
                }
            }
            (Err(err), _) => Err(err.to_string()),
            (_, Err(err)) => Err(format!("on the CPU: {err}")),
        };
        if let Err(why) = outcome {
            self.failed.push(format!("{label}: {why}"));
        }
    }

    fn finish(self, what: &str) -> Result<String> {
        if !self.failed.is_empty() {
            return Err(Error::data(
                "selftest",
                format!("{} of {} runs, {what}: {}", self.failed.len(), self.runs, self.failed.join("; ")),
            ));
        }
        let at = if self.worst.0 > 0.0 { format!(" ({})", self.worst.1) } else { String::new() };
        Ok(format!("{what}: worst relative score difference {:.2e}{at} <= {:.0e}", self.worst.0, self.bound))
    }
}

/// Every model-based detector (its defaults) fitted on 20 training and 10
/// validation images and scoring 10, with the network (the same weights) on
/// `device`, against the same on the CPU. The bound is [`FP32_REL`] of the
/// largest score: on a GPU the convolutions may run in TF32, and ODIN-like
/// steps follow the sign of gradients that rounding can flip where they are
/// near zero.
fn model_detectors_against_the_cpu(device: Device) -> Result<String> {
    use crate::ood::model_detectors::{FitImages, REGISTRY};
    let (train, val, test) = (images("train", 20, 7)?, images("val", 10, 8)?, images("test", 10, 9)?);
    let mut cmp = ScoreComparison::new(FP32_REL);
    for det in REGISTRY {
        let params = det.defaults();
        let scores = |dev: Device| -> Result<Vec<f64>> {
            let (_, model) = model_on(dev)?;
            let fitted = det.fit(&model, FitImages::new(&train, Some(&val)), dev, 16)?;
            let s = fitted.scores(&model, &test, std::slice::from_ref(&params), dev, 16)?;
            let s = s.first().ok_or_else(|| Error::data("selftest", "no scores"))?;
            Ok(Vec::<f64>::try_from(s.to_kind(Kind::Double).to_device(Device::Cpu))?)
        };
        cmp.add(det.name().into(), crate::util::catch_panic(|| scores(device)), crate::util::catch_panic(|| scores(Device::Cpu)));
    }
    cmp.finish(&format!("{} model-based detectors (defaults) on the device vs the CPU", REGISTRY.len()))
}

/// Every feature-based detector (the paper's defaults at these sizes), fitted
/// and scored in both precisions with the features and the head on `device`,
/// against the same on the CPU. On the CPU itself the device side takes the
/// route a GPU takes ([`crate::numerics::portable_route`]: libtorch tensor
/// operations instead of the CPU row kernels).
fn detectors_against_the_cpu(device: Device) -> Result<String> {
    use crate::ood::{detectors::REGISTRY, DetectorSpec, FitData, Precision};
    let scores = |name: &str, p: Precision, dev: Device| -> Result<Vec<f64>> {
        let (train, val, test) = feature_sets(dev)?;
        let (w, b) = head(dev);
        let spec = DetectorSpec::defaults(name, 32, 4, 400)?;
        spec.fit(&FitData::new(&train, Some(&val), &w, &b).with_precision(p))?.score_vec(&test)
    };
    let mut cmp = ScoreComparison::new(1e-5);
    for e in REGISTRY {
        for p in [Precision::Auto, Precision::F64] {
            let on = crate::util::catch_panic(|| {
                if device == Device::Cpu {
                    crate::numerics::portable_route(|| scores(e.name, p, device))
                } else {
                    scores(e.name, p, device)
                }
            });
            cmp.add(format!("{} ({p:?})", e.name), on, crate::util::catch_panic(|| scores(e.name, p, Device::Cpu)));
        }
    }
    let what = if device == Device::Cpu { "the tensor route (a GPU's) vs the CPU kernels" } else { "features on the device vs the CPU" };
    cmp.finish(&format!("{} detectors, Auto and F64, {what}", REGISTRY.len()))
}

fn head(device: Device) -> (Tensor, Tensor) {
    let (w, b) = (randn(&[4, 32], 6) * 0.1, randn(&[4], 106) * 0.1);
    (w.to_device(device), b.to_device(device))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every run that differs, errors or gives non-finite scores is named, not
    /// only the first; the worst difference of the passing ones is reported.
    #[test]
    fn score_comparison_names_every_failed_run() {
        let mut c = ScoreComparison::new(1e-5);
        c.add("close".into(), Ok(vec![1.0, 2.0 + 1e-6]), Ok(vec![1.0, 2.0]));
        c.add("far".into(), Ok(vec![1.0, 2.1]), Ok(vec![1.0, 2.0]));
        c.add("nan".into(), Ok(vec![f64::NAN, 2.0]), Ok(vec![1.0, 2.0]));
        c.add("errs".into(), Err(Error::data("x", "went wrong")), Ok(vec![1.0]));
        c.add("cpu errs".into(), Ok(vec![1.0]), Err(Error::data("y", "broke")));
        let e = c.finish("test").unwrap_err().to_string();
        assert!(e.contains("4 of 5 runs, test"), "{e}");
        for part in
            ["far: relative difference 5.00e-2", "nan: non-finite scores", "errs: invalid data for x: went wrong", "cpu errs: on the CPU"]
        {
            assert!(e.contains(part), "{part} missing from {e}");
        }
        assert!(!e.contains("close:"), "{e}");
        let mut good = ScoreComparison::new(1e-5);
        good.add("a".into(), Ok(vec![1.0, 2.0 + 1e-6]), Ok(vec![1.0, 2.0]));
        assert_eq!(good.finish("t").unwrap(), "t: worst relative score difference 5.00e-7 (a) <= 1e-5");
    }
}
