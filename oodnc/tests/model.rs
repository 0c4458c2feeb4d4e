//! The ResNet-18: parameter count, initialisation, taps, PyTorch interop, checkpoints.

mod common;

use common::{run_python, TempDir};
use oodnc::model::resnet::parameter_count;
use oodnc::model::{load_checkpoint, save_checkpoint, CheckpointMeta, ResNet18, ResNetConfig};
use oodnc::Error;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn model(classes: i64, width: f64) -> (VarStore, ResNet18) {
    let vs = VarStore::new(Device::Cpu);
    let m = ResNet18::new(&vs.root(), ResNetConfig { num_classes: classes, width, bottleneck: None }).unwrap();
    (vs, m)
}

#[test]
fn parameter_count_matches_the_original() {
    let (vs, _) = model(100, 1.0);
    assert_eq!(parameter_count(&vs), 11_220_132);
    let (vs10, _) = model(10, 1.0);
    assert_eq!(parameter_count(&vs10), 11_220_132 - 90 * 513);
}

#[test]
fn initialisation_statistics() {
    tch::manual_seed(0);
    let (vs, _) = model(100, 1.0);
    let v = vs.variables();
    // Kaiming normal, fan_out, ReLU: std = sqrt(2 / (k * k * C_out)).
    for (name, k, cout) in
        [("layer4.0.conv2.weight", 3.0, 512.0), ("layer3.1.conv1.weight", 3.0, 256.0), ("layer2.0.shortcut.0.weight", 1.0, 128.0)]
    {
        let std = v[name].std(true).double_value(&[]);
        let expected = (2.0f64 / (k * k * cout)).sqrt();
        assert!((std / expected - 1.0).abs() < 0.02, "{name}: std {std} vs {expected}");
        assert!(v[name].mean(Kind::Float).double_value(&[]).abs() < 0.01 * expected * 10.0);
    }
    assert_eq!(v["bn1.weight"].min().double_value(&[]), 1.0);
    assert_eq!(v["layer1.0.bn2.bias"].abs().max().double_value(&[]), 0.0);
    assert_eq!(v["layer1.0.bn2.running_var"].min().double_value(&[]), 1.0);
    let fc_std = v["fc.weight"].std(true).double_value(&[]);
    assert!((fc_std - 0.01).abs() < 0.0005, "fc std {fc_std}");
    assert_eq!(v["fc.bias"].abs().max().double_value(&[]), 0.0);
    assert!(v.contains_key("layer2.0.shortcut.1.running_mean"));
    assert!(!v.contains_key("layer1.0.shortcut.0.weight"), "identity shortcut has no parameters");
}

#[test]
fn taps_shapes_and_consistency() {
    tch::manual_seed(1);
    let (_vs, m) = model(10, 0.25);
    let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    let taps = m.forward_taps(&x, false).unwrap();
    let shapes: Vec<Vec<i64>> = taps.maps.iter().map(|t| t.size()).collect();
    assert_eq!(shapes[0], vec![2, 16, 32, 32]);
    assert_eq!(shapes[2], vec![2, 16, 32, 32]);
    assert_eq!(shapes[3], vec![2, 32, 16, 16]);
    assert_eq!(shapes[8], vec![2, 128, 4, 4]);
    assert_eq!(taps.penultimate.size(), vec![2, 128]);
    assert!(taps.penultimate.min().double_value(&[]) >= 0.0, "post-ReLU features are non-negative");
    let logits = m.forward_t(&x, false).unwrap();
    assert!(logits.allclose(&taps.logits, 1e-6, 1e-6, false));
    let (w, b) = m.head();
    let manual = taps.penultimate.matmul(&w.tr()) + b;
    assert!(manual.allclose(&logits, 1e-5, 1e-5, false));
    // Bad inputs are errors, not panics.
    assert!(matches!(m.forward_t(&Tensor::zeros([2, 1, 32, 32], (Kind::Float, Device::Cpu)), false), Err(Error::Shape { .. })));
    assert!(m.forward_t(&Tensor::zeros([2, 3, 32, 32], (Kind::Uint8, Device::Cpu)), false).is_err());
    // An f64 input to f32 weights was a panic inside libtorch; now a typed error naming the fix.
    let e = m.forward_t(&Tensor::zeros([2, 3, 32, 32], (Kind::Double, Device::Cpu)), false).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }) && e.to_string().contains("cast the input"), "{e}");
    assert!(m.forward_taps(&Tensor::zeros([2, 3, 32, 32], (Kind::Double, Device::Cpu)), false).is_err());
    assert!(ResNet18::new(&VarStore::new(Device::Cpu).root(), ResNetConfig { num_classes: 1, width: 1.0, bottleneck: None }).is_err());
}

fn interop(naming: &str) {
    let t = TempDir::new(&format!("interop-{naming}"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../python/torch_resnet.py");
    let code = format!("import runpy, sys; sys.argv = ['torch_resnet.py'] + sys.argv[1:]; runpy.run_path('{script}', run_name='__main__')");
    let out = run_python(&code, &["export", "--out", t.path().to_str().unwrap(), "--classes", "100", "--naming", naming]);
    assert!(out.contains("\"params\": 11220132"), "{out}");
    let (mut vs, m) = model(100, 1.0);
    let meta = load_checkpoint(t.path().join("model.safetensors"), &mut vs).unwrap();
    assert_eq!(meta, CheckpointMeta::default());
    let io = oodnc::tensor_io::load(t.path().join("io.safetensors")).unwrap();
    let x = &io.tensors["input"];
    let expected = &io.tensors["logits"];
    let got = tch::no_grad(|| m.forward_t(x, false)).unwrap();
    let diff = (&got - expected).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "max |logit difference| = {diff}");
}

#[test]
fn pytorch_state_dict_gives_the_same_logits() {
    interop("shortcut");
}

#[test]
fn torchvision_downsample_names_are_accepted() {
    interop("downsample");
}

#[test]
fn checkpoint_round_trip_and_bad_files() {
    tch::manual_seed(3);
    let t = TempDir::new("ckpt");
    let (vs, m) = model(10, 0.25);
    let meta = CheckpointMeta {
        epoch: 7,
        seed: 42,
        config_hash: "abc".into(),
        model: Some(m.config),
        metrics: [("val_acc".to_string(), 0.5)].into_iter().collect(),
    };
    let p = t.path().join("epoch_007.safetensors");
    save_checkpoint(&p, &vs, &meta).unwrap();
    let (mut vs2, m2) = model(10, 0.25);
    assert_eq!(load_checkpoint(&p, &mut vs2).unwrap(), meta);
    let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    assert!(m.forward_t(&x, false).unwrap().equal(&m2.forward_t(&x, false).unwrap()));

    // Missing checkpoint.
    let e = load_checkpoint(t.path().join("nope.safetensors"), &mut vs2).unwrap_err();
    assert!(matches!(e, Error::Missing { .. }), "{e}");
    // Shape mismatch: a wider model.
    let (mut wide, _) = model(10, 0.5);
    assert!(matches!(load_checkpoint(&p, &mut wide), Err(Error::Shape { .. })));
    // Truncated file.
    let bytes = std::fs::read(&p).unwrap();
    let bad = t.path().join("bad.safetensors");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_checkpoint(&bad, &mut vs2).unwrap_err();
    assert!(matches!(e, Error::Format { .. }) && e.to_string().contains("bad.safetensors"), "{e}");
    // Garbage.
    std::fs::write(&bad, b"garbage").unwrap();
    assert!(matches!(load_checkpoint(&bad, &mut vs2), Err(Error::Format { .. })));
}

#[test]
fn a_linear_bottleneck_is_the_penultimate_feature() {
    let vs = VarStore::new(Device::Cpu);
    let cfg = ResNetConfig { num_classes: 10, width: 0.125, bottleneck: Some(4) };
    let m = ResNet18::new(&vs.root(), cfg).unwrap();
    let vars = vs.variables();
    assert_eq!(vars["bottleneck.weight"].size(), [4, 64]);
    assert_eq!(vars["fc.weight"].size(), [10, 4]);
    assert_eq!(cfg.feature_dim(), 4);
    let x = Tensor::randn([3, 3, 32, 32], (tch::Kind::Float, Device::Cpu));
    let t = m.forward_taps(&x, false).unwrap();
    assert_eq!(t.penultimate.size(), [3, 4]);
    assert_eq!(t.maps.last().unwrap().size()[1], 64);
    let (pen, logits) = m.features_t(&x, false).unwrap();
    assert!(pen.allclose(&t.penultimate, 1e-6, 1e-6, false) && logits.allclose(&t.logits, 1e-6, 1e-6, false));
    // Signed (no ReLU after the bottleneck), unlike the default penultimate feature.
    let (_, b) = m.head();
    assert_eq!(b.size(), [10]);
    assert!(ResNetConfig { bottleneck: Some(0), ..cfg }.validate().is_err());
    // A config without a bottleneck serialises as before (same hash as older runs).
    let text = toml::to_string(&ResNetConfig::default()).unwrap();
    assert!(!text.contains("bottleneck"), "{text}");
    let back: ResNetConfig = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
}

#[test]
fn the_cuda_backend_is_looked_for_next_to_the_loaded_libtorch_first() {
    use oodnc::device::{cuda_candidates, libtorch_dir_in_maps, loaded_libtorch_dir};
    use std::path::{Path, PathBuf};
    let maps = "7f00-7f10 r-xp 00000000 08:01 123 /usr/lib/libc.so.6\n\
                7f20-7f30 r-xp 00000000 08:01 456 /opt/my torch/lib/libtorch_cpu.so\n\
                7f40-7f50 rw-p 00000000 00:00 0 \n7f60-7f70 rw-p 00000000 00:00 0 [heap]\n";
    assert_eq!(libtorch_dir_in_maps(maps), Some(PathBuf::from("/opt/my torch/lib")));
    assert_eq!(libtorch_dir_in_maps("7f00-7f10 r-xp 00000000 08:01 123 /usr/lib/libc.so.6\n"), None);
    assert_eq!(
        cuda_candidates("libtorch_cuda.so", Some(Path::new("/device/torch/lib")), "/build/torch/lib"),
        ["/device/torch/lib/libtorch_cuda.so", "/build/torch/lib/libtorch_cuda.so", "libtorch_cuda.so"]
    );
    assert_eq!(cuda_candidates("libc10_cuda.so", Some(Path::new("/b")), "/b"), ["/b/libc10_cuda.so", "libc10_cuda.so"]);
    assert_eq!(cuda_candidates("libc10_cuda.so", None, ""), ["libc10_cuda.so"]);
    // This test binary has libtorch loaded: its folder is found, and holds the library.
    let _ = tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu));
    let dir = loaded_libtorch_dir().expect("libtorch_cpu.so mapped into the test process");
    assert!(dir.join("libtorch_cpu.so").exists(), "{}", dir.display());
}
