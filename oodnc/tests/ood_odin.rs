//! ODIN and i-ODIN against independent per-image formulations in pixel space,
//! ODIN's defining property (the perturbation raises the score), selection and bad input.

use oodnc::data::Dataset;
use oodnc::model::{ResNet18, ResNetConfig};
use oodnc::ood::odin::{perturbed_scores, score, scores, select, OdinParams, Perturb, EPSILONS, TEMPERATURES};
use oodnc::Error;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const CPU: Device = Device::Cpu;

fn model() -> (VarStore, ResNet18) {
    tch::manual_seed(21);
    let vs = VarStore::new(CPU);
    let m = ResNet18::new(&vs.root(), ResNetConfig { num_classes: 10, width: 0.125, bottleneck: None }).unwrap();
    (vs, m)
}

fn dataset(n: i64, seed: i64, name: &str) -> Dataset {
    tch::manual_seed(seed);
    Dataset {
        name: name.into(),
        images: Tensor::randint(256, [n, 3, 32, 32], (Kind::Uint8, CPU)),
        labels: Tensor::zeros([n], (Kind::Int64, CPU)),
        class_names: (0..10).map(|i| format!("c{i}")).collect(),
    }
}

fn mean_std() -> (Tensor, Tensor) {
    let mean = Tensor::from_slice(&oodnc::data::CIFAR100_MEAN.map(|v| v as f32)).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&oodnc::data::CIFAR100_STD.map(|v| v as f32)).view([1, 3, 1, 1]);
    (mean, std)
}

/// log max softmax(f(normalise(pixels)) / T) of a `[1, 3, 32, 32]` image in [0, 1].
fn log_s(m: &ResNet18, pix: &Tensor, t: f64) -> Tensor {
    let (mean, std) = mean_std();
    let z = m.forward_t(&((pix - &mean) / &std), false).unwrap().to_kind(Kind::Double) / t;
    z.log_softmax(1, Kind::Double).max()
}

/// The pixels of one u8 image in [0, 1], and the gradient of log S with respect to them.
fn pixel_gradient(m: &ResNet18, img_u8: &Tensor, t: f64) -> (Tensor, Tensor) {
    let pix = (img_u8.unsqueeze(0).to_kind(Kind::Float) / 255.0).set_requires_grad(true);
    let g = Tensor::run_backward(&[log_s(m, &pix, t)], &[&pix], false, false).remove(0);
    (pix.detach(), g)
}

/// ODIN for one image, written independently: pixels in [0, 1], normalisation
/// done here, gradient taken with respect to the pixels, perturbation applied in
/// pixel space, batch of one.
fn odin_by_hand(m: &ResNet18, img_u8: &Tensor, t: f64, eps: f64) -> f64 {
    let (pix, g) = pixel_gradient(m, img_u8, t);
    tch::no_grad(|| log_s(m, &(pix + g.sign() * eps), t).double_value(&[]))
}

/// i-ODIN for one image, written independently: the gradient of log S with respect to
/// the pixels, the most sensitive element of the network's input (|d/dx| = |d/dpixel| * std_c),
/// moved alone by eps pixels.
fn iodin_by_hand(m: &ResNet18, img_u8: &Tensor, t: f64, eps: f64) -> f64 {
    let (_, std) = mean_std();
    let (pix, g) = pixel_gradient(m, img_u8, t);
    let sensitivity = (&g * &std).abs().flatten(0, -1);
    let at = sensitivity.argmax(0, false).int64_value(&[]);
    let step = Tensor::zeros([3 * 32 * 32], (Kind::Float, CPU));
    let _ = step.get(at).fill_(g.flatten(0, -1).get(at).sign().double_value(&[]) * eps);
    tch::no_grad(|| log_s(m, &(pix + step.view([1, 3, 32, 32])), t).double_value(&[]))
}

#[test]
fn iodin_matches_a_per_image_formulation() {
    let (_vs, m) = model();
    let data = dataset(5, 3, "x");
    for (t, eps) in [(1.0, 0.0014), (1000.0, 0.0028), (10.0, 0.05)] {
        let ours = perturbed_scores(&m, &data, t, &[eps], Perturb::Single, CPU, 3).unwrap().remove(0);
        let plain = perturbed_scores(&m, &data, t, &[0.0], Perturb::Single, CPU, 3).unwrap().remove(0);
        let full = scores(&m, &data, t, &[eps], CPU, 3).unwrap().remove(0);
        for (i, o) in Vec::<f64>::try_from(&ours).unwrap().iter().enumerate() {
            let r = iodin_by_hand(&m, &data.images.get(i as i64), t, eps);
            assert!((o - r).abs() <= 1e-6 * r.abs().max(1e-3), "T {t} eps {eps} image {i}: {o} vs {r}");
        }
        // One element moves the score less than ODIN's step on every element (by far, at a
        // large eps), and in the same direction.
        let gain1 = Vec::<f64>::try_from(&ours - &plain).unwrap();
        let gain_all = Vec::<f64>::try_from(&full - &plain).unwrap();
        if eps >= 0.05 {
            for (a, b) in gain1.iter().zip(&gain_all) {
                assert!(*a >= -1e-9 && a.abs() < b.abs(), "i-ODIN gain {a} against ODIN's {b}");
            }
        }
    }
}

#[test]
fn matches_a_per_image_pixel_space_formulation() {
    let (_vs, m) = model();
    let data = dataset(6, 3, "x");
    for (t, eps) in [(1.0, 0.0), (1000.0, 0.002), (10.0, 0.004)] {
        // Batches of 4 (a partial last batch too).
        let ours = Vec::<f64>::try_from(score(&m, &data, OdinParams::new(t, eps).unwrap(), CPU, 4).unwrap()).unwrap();
        for (i, o) in ours.iter().enumerate() {
            let r = odin_by_hand(&m, &data.images.get(i as i64), t, eps);
            assert!((o - r).abs() <= 1e-5 * r.abs().max(1e-3), "T {t} eps {eps} image {i}: {o} vs {r}");
        }
    }
    // T = 1, eps = 0 is log MSP of the plain logits.
    let plain = tch::no_grad(|| {
        let x = oodnc::data::Normalize::default().apply(&data.images);
        m.forward_t(&x, false).unwrap().to_kind(Kind::Double).log_softmax(1, Kind::Double).max_dim(1, false).0
    });
    let ours = score(&m, &data, OdinParams::new(1.0, 0.0).unwrap(), CPU, 6).unwrap();
    assert!((ours - plain).abs().max().double_value(&[]) < 1e-9);
}

#[test]
fn the_perturbation_raises_the_score_and_one_pass_serves_every_epsilon() {
    let (_vs, m) = model();
    let data = dataset(16, 5, "x");
    let s = scores(&m, &data, 100.0, &[0.0, 1e-4], CPU, 16).unwrap();
    let gain = Vec::<f64>::try_from(&s[1] - &s[0]).unwrap();
    let up = gain.iter().filter(|g| **g > 0.0).count();
    assert!(up >= 14, "only {up} of 16 scores went up: {gain:?}");
    // The shared-gradient path equals separate calls.
    for (i, &e) in [0.0, 1e-4].iter().enumerate() {
        let one = score(&m, &data, OdinParams::new(100.0, e).unwrap(), CPU, 16).unwrap();
        assert!((one - &s[i]).abs().max().double_value(&[]) < 1e-12);
    }
}

#[test]
fn selection_covers_the_grid_and_keeps_the_best() {
    let (_vs, m) = model();
    let id = dataset(12, 7, "id-val");
    let ood = dataset(12, 8, "ood-val");
    let sel = select(&m, &id, &ood, CPU, 8).unwrap();
    assert_eq!(sel.candidates.len(), TEMPERATURES.len() * EPSILONS.len());
    let best = sel.candidates.iter().map(|c| c.1).fold(f64::MIN, f64::max);
    let first_best = sel.candidates.iter().find(|c| c.1 == best).unwrap().0;
    assert_eq!(sel.chosen, first_best);
    assert!(sel.candidates.iter().all(|(_, a)| (0.0..=1.0).contains(a)));
}

#[test]
fn bad_hyperparameters_and_inputs_are_typed_errors() {
    for (t, e) in [(0.0, 0.001), (-1.0, 0.0), (f64::NAN, 0.0), (1.0, -0.1), (1.0, 2.0), (1.0, f64::INFINITY)] {
        assert!(matches!(OdinParams::new(t, e), Err(Error::InvalidParam { .. })), "T {t} eps {e}");
    }
    let (_vs, m) = model();
    let empty = Dataset {
        name: "empty".into(),
        images: Tensor::zeros([0, 3, 32, 32], (Kind::Uint8, CPU)),
        labels: Tensor::zeros([0], (Kind::Int64, CPU)),
        class_names: vec![],
    };
    assert!(score(&m, &empty, OdinParams::new(1.0, 0.0).unwrap(), CPU, 4).is_err());
    assert!(matches!(scores(&m, &dataset(2, 1, "x"), 1.0, &[0.5, -1.0], CPU, 4), Err(Error::InvalidParam { .. })));
}
