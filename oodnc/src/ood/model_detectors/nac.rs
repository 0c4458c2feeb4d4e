//! **NAC-UE**, neuron activation coverage (Liu, Tian, Li, Ma & Wang, "Neuron
//! Activation Coverage: Rethinking Out-of-distribution Detection and
//! Generalization", ICLR 2024, arXiv 2306.02879; OpenOOD's `nac`): a neuron's
//! *state* mixes its output with how much it sways the decision, and an input is
//! in-distribution when its neurons sit in states that the ID training images
//! visited often. On OpenOOD v1.5's CIFAR-100 / ResNet-18 table it is the best
//! post-hoc method on far-OOD (86.98 AUROC).
//!
//! ```text
//! L(x)       = sum_c -(1/C) log softmax(z(x))_c         (cross-entropy to the uniform: KL(u || p) + log C)
//! o_n(x)     = sum_{h,w} a_n(x),  g_n(x) = sum_{h,w} dL/da_n(x)   (a layer's map, each summed over space)
//! s_n(x)     = sigmoid(alpha * o_n(x) * g_n(x))         (the state, in [0, 1])
//! t_0..t_M-1 = OpenOOD's `logspace(1e3, M)` thresholds: dense near 0 and 1, then 1.01, 1.2
//! count_n,i  = #{fit images with t_i <= s_n < t_i+1}       (M - 1 intervals per neuron)
//! cov_n,i    = min(count_n,i / O, 1)
//! NAC_l(x)   = mean_n cov_n,bin(s_n(x))
//! score(x)   = mean over the layers (pool, layer3, layer2, layer1) of NAC_l(x)
//! ```
//!
//! The layers are OpenOOD's CIFAR set `avgpool layer3 layer2 layer1`: `pool` is
//! the penultimate feature (the classifier's input; one value per channel, so
//! there is nothing to sum), `layer{k}` the output of stage `k`. Each layer has
//! its own `O`, `M` and `alpha` (`pool_o`, `pool_m`, `pool_alpha`, `l3_o`, ...).
//! `M` must be even: OpenOOD's threshold construction makes `M` thresholds only
//! for an even `M`.
//!
//! **Fitting** uses 1,000 ID training images balanced over the classes (OpenOOD's
//! `valid_num: 1000`): the first `1000 / C` of each class in dataset order
//! (OpenOOD draws them with a fixed seed; a class with fewer gives all it has).
//! Only the states are kept, so every `O`, `M` and `alpha` of the grid is scored
//! from one forward and backward pass per image.
//!
//! **Defaults** are OpenOOD's CIFAR-100 `layer_kwargs`: `pool` O = 50, M = 50,
//! alpha = 50; `layer3` O = 500, M = 1000, alpha = 10; `layer2` O = 500, M = 50,
//! alpha = 1; `layer1` O = 5, M = 50, alpha = 0.005. **Grid**: its
//! `postprocessor_sweep`, the cross product of `pool` O {50} x M {50, 500} x alpha
//! {1, 50}; `layer3` O {500} x M {50, 500, 1000} x alpha {10, 50, 100}; `layer2` O
//! {100, 500} x M {50, 500} x alpha {1}; `layer1` O {5, 50} x M {50} x alpha
//! {0.005}: 288 sets. OpenOOD chooses among them on its validation OOD set (APS
//! mode); oodnc chooses under each held-out protocol like every other detector.
//!
//! **Precision**: the network and the states in f32, as OpenOOD (the sigmoid
//! saturates to exactly 0 or 1 in f32 for large `|alpha o g|`, which puts such
//! states in the first or last interval, as there); thresholds, counts and
//! coverage in f64.
//!
//! **Differences from pytorch-ood's `NACUE`** (ai-coded there): it takes the
//! state of the spatial mean of `a * dL/da` where OpenOOD multiplies the spatial
//! *sums* of `a` and of `dL/da` (the same for `pool`, different for the maps);
//! its bins are geometric edges `logspace(1e-6 .. 0.5)` mirrored, not OpenOOD's;
//! and it sums the layers where OpenOOD averages them (a constant factor). oodnc
//! follows OpenOOD, the method's authors' own code.

use super::{known_only, FitImages, ModelDetector, ModelScorer, Params};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::ResNet18;
use tch::{Device, Kind, Tensor};

/// The layers, in OpenOOD's order, as they appear in parameter names.
pub const LAYERS: [&str; 4] = ["pool", "l3", "l2", "l1"];
/// How many ID training images the coverage is fitted on (balanced over the classes).
pub const FIT_IMAGES: usize = 1000;

/// One layer's hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerParams {
    /// `O`: how many fit images fill an interval (coverage 1).
    pub o: f64,
    /// `M`: thresholds per neuron (even, >= 4), so `M - 1` intervals.
    pub m: usize,
    /// `alpha`: the sigmoid's steepness.
    pub alpha: f64,
}

/// NAC-UE's checked parameters, one [`LayerParams`] per entry of [`LAYERS`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NacParams {
    pub layers: [LayerParams; 4],
}

const DEFAULTS: [LayerParams; 4] = [
    LayerParams { o: 50.0, m: 50, alpha: 50.0 },
    LayerParams { o: 500.0, m: 1000, alpha: 10.0 },
    LayerParams { o: 500.0, m: 50, alpha: 1.0 },
    LayerParams { o: 5.0, m: 50, alpha: 0.005 },
];

const NAMES: [&str; 12] =
    ["l1_alpha", "l1_m", "l1_o", "l2_alpha", "l2_m", "l2_o", "l3_alpha", "l3_m", "l3_o", "pool_alpha", "pool_m", "pool_o"];

/// The largest `M` accepted (OpenOOD's grids go up to 1000).
pub const MAX_M: usize = 100_000;

impl NacParams {
    /// From a by-name map, missing entries at their defaults.
    pub fn from_map(given: &Params) -> Result<Self> {
        known_only("nac", given, &NAMES)?;
        let mut layers = DEFAULTS;
        for (l, name) in LAYERS.iter().enumerate() {
            let key = |k: &str| format!("{name}_{k}");
            let p = &mut layers[l];
            if let Some(&o) = given.get(&key("o")) {
                if o < 1.0 {
                    return Err(Error::param(format!("nac.{}", key("o")), format!("{o} must be at least 1 (a count of fit images)")));
                }
                p.o = o;
            }
            if let Some(&m) = given.get(&key("m")) {
                if m.fract() != 0.0 || !(4.0..=MAX_M as f64).contains(&m) || !(m as usize).is_multiple_of(2) {
                    return Err(Error::param(
                        format!("nac.{}", key("m")),
                        format!("{m} must be an even whole number in 4..={MAX_M} (OpenOOD's thresholds need an even M)"),
                    ));
                }
                p.m = m as usize;
            }
            if let Some(&a) = given.get(&key("alpha")) {
                if a <= 0.0 {
                    return Err(Error::param(format!("nac.{}", key("alpha")), format!("{a} must be positive")));
                }
                p.alpha = a;
            }
        }
        Ok(NacParams { layers })
    }

    /// As a by-name map, as in tables.
    pub fn to_map(&self) -> Params {
        let mut p = Params::new();
        for (l, name) in LAYERS.iter().enumerate() {
            let lp = self.layers[l];
            p.insert(format!("{name}_o"), lp.o);
            p.insert(format!("{name}_m"), lp.m as f64);
            p.insert(format!("{name}_alpha"), lp.alpha);
        }
        p
    }
}

/// NAC-UE over `pool`, `layer3`, `layer2`, `layer1`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Nac;

impl ModelDetector for Nac {
    fn name(&self) -> &'static str {
        "nac"
    }
    fn param_names(&self) -> &'static [&'static str] {
        &NAMES
    }
    fn summary(&self) -> &'static str {
        "neuron activation coverage of output x KL-gradient states over four layers (Liu et al. 2024, NAC-UE), model-based"
    }
    fn check(&self, given: &Params) -> Result<Params> {
        Ok(NacParams::from_map(given)?.to_map())
    }
    fn grid(&self) -> Vec<Params> {
        let per_layer: [Vec<LayerParams>; 4] = [
            cross(&[50.0], &[50, 500], &[1.0, 50.0]),
            cross(&[500.0], &[50, 500, 1000], &[10.0, 50.0, 100.0]),
            cross(&[100.0, 500.0], &[50, 500], &[1.0]),
            cross(&[5.0, 50.0], &[50], &[0.005]),
        ];
        let mut out = Vec::new();
        for a in &per_layer[0] {
            for b in &per_layer[1] {
                for c in &per_layer[2] {
                    for d in &per_layer[3] {
                        out.push(NacParams { layers: [*a, *b, *c, *d] }.to_map());
                    }
                }
            }
        }
        out
    }
    fn fit(&self, model: &ResNet18, data: FitImages, device: Device, batch: usize) -> Result<Box<dyn ModelScorer>> {
        Ok(Box::new(FittedNac::fit(model, data.id_train, device, batch)?))
    }
}

fn cross(os: &[f64], ms: &[usize], alphas: &[f64]) -> Vec<LayerParams> {
    let mut v = Vec::new();
    for &o in os {
        for &m in ms {
            for &alpha in alphas {
                v.push(LayerParams { o, m, alpha });
            }
        }
    }
    v
}

/// OpenOOD's `logspace(base = 1e3, num = M)` thresholds: `log_1000` of
/// `linspace(1, sqrt(1000), M / 2)` (0 .. 0.5) without its last point, its
/// mirror `1 - .` (0.5 .. 1), the last raised by 0.01, then 1.2. `M` even, >= 4.
pub fn thresholds(m: usize) -> Vec<f64> {
    assert!(m >= 4 && m.is_multiple_of(2), "thresholds need an even M >= 4 (checked by NacParams)");
    let num = m / 2;
    let (start, stop) = (1.0f64, 1000f64.sqrt());
    // numpy's linspace: start + k * step, the last point set to stop.
    let step = (stop - start) / (num - 1) as f64;
    let lin: Vec<f64> = (0..num).map(|k| if k + 1 == num { stop } else { start + k as f64 * step }).collect();
    let ln_base = 1000f64.ln();
    let xl: Vec<f64> = lin.iter().map(|x| x.ln() / ln_base).collect();
    let mut t: Vec<f64> = xl[..num - 1].to_vec();
    t.extend(xl.iter().rev().map(|x| 1.0 - x));
    *t.last_mut().expect("num >= 2") += 1e-2;
    t.push(1.2);
    debug_assert_eq!(t.len(), m);
    t
}

/// States `sigmoid(alpha * prod)` of products `o * g` (f32 `[N, K]`), computed in
/// f32 as OpenOOD does (`1 / (1 + exp(-alpha x))`).
pub fn states(products: &Tensor, alpha: f64) -> Tensor {
    ((products.to_kind(Kind::Float) * (-alpha)).exp() + 1.0).reciprocal()
}

/// The interval of each state (`i` with `t_i <= s < t_i+1`, `[N, K]` int64, in
/// `0..M-1`) for the thresholds `t` of [`thresholds`].
pub fn bins(states: &Tensor, t: &[f64]) -> Tensor {
    let bounds = Tensor::from_slice(t).to_device(states.device());
    // right = true: the number of thresholds <= s.
    let b = Tensor::bucketize(&states.to_kind(Kind::Double), &bounds, false, true) - 1;
    b.clamp(0, t.len() as i64 - 2)
}

/// The coverage table `min(count / O, 1)` (f64 `[K, M - 1]`) of fit-image bins
/// (`[N_fit, K]` from [`bins`]) with `m` thresholds.
pub fn coverage(fit_bins: &Tensor, m: usize, o: f64) -> Tensor {
    let k = fit_bins.size()[1];
    let intervals = m as i64 - 1;
    let offsets = Tensor::arange(k, (Kind::Int64, fit_bins.device())).unsqueeze(0) * intervals;
    let flat = (fit_bins + offsets).flatten(0, -1);
    let counts = flat.bincount::<Tensor>(None, k * intervals).to_kind(Kind::Double);
    (counts / o).clamp_max(1.0).view([k, intervals])
}

/// `NAC_l` of each sample (f64 `[N]`): the mean over neurons of the coverage of the
/// interval each neuron's state falls in.
pub fn layer_score(cov: &Tensor, bins: &Tensor) -> Tensor {
    let k = cov.size()[0];
    let intervals = cov.size()[1];
    let offsets = Tensor::arange(k, (Kind::Int64, bins.device())).unsqueeze(0) * intervals;
    let idx = bins + offsets;
    cov.flatten(0, -1).take(&idx).mean_dim(1, false, Kind::Double)
}

/// NAC-UE scores of samples with per-layer products `data[l]` (`[N, K_l]`), fitted
/// on products `fit[l]` (`[N_fit, K_l]`), for each parameter set: the whole
/// method once the states' ingredients are known (tests feed OpenOOD's in).
pub fn scores_from_products(fit: &[Tensor], data: &[Tensor], params: &[NacParams]) -> Result<Vec<Tensor>> {
    if fit.len() != LAYERS.len() || data.len() != LAYERS.len() {
        return Err(Error::shape("nac products", format!("{} fit and {} data layers, expected {}", fit.len(), data.len(), LAYERS.len())));
    }
    for (l, (f, d)) in fit.iter().zip(data).enumerate() {
        if f.dim() != 2 || d.dim() != 2 || f.size()[1] != d.size()[1] || f.size()[0] == 0 {
            return Err(Error::shape(format!("nac products of {}", LAYERS[l]), format!("fit {:?}, data {:?}", f.size(), d.size())));
        }
    }
    // Per layer, each distinct (M, alpha) is binned once and each (M, alpha, O) scored once.
    // Per layer: ((M, alpha bits, O bits), NAC_l of every sample).
    type Scored = Vec<((usize, u64, u64), Tensor)>;
    let mut per_layer: Vec<Scored> = (0..LAYERS.len()).map(|_| Vec::new()).collect();
    for p in params {
        for (l, lp) in p.layers.iter().enumerate() {
            let key = (lp.m, lp.alpha.to_bits(), lp.o.to_bits());
            if per_layer[l].iter().any(|(k, _)| *k == key) {
                continue;
            }
            let t = thresholds(lp.m);
            let fb = bins(&states(&fit[l], lp.alpha), &t);
            let db = bins(&states(&data[l], lp.alpha), &t);
            let s = layer_score(&coverage(&fb, lp.m, lp.o), &db);
            per_layer[l].push((key, s));
        }
    }
    Ok(params
        .iter()
        .map(|p| {
            let layer = |l: usize| {
                let lp = p.layers[l];
                let key = (lp.m, lp.alpha.to_bits(), lp.o.to_bits());
                per_layer[l].iter().find(|(k, _)| *k == key).expect("every layer scored").1.shallow_clone()
            };
            (1..LAYERS.len()).fold(layer(0), |acc, l| acc + layer(l)) / LAYERS.len() as f64
        })
        .collect())
}

/// The products `o * g` of each layer of [`LAYERS`] (f32 `[B, K_l]`) for normalised images `x`.
pub fn products(model: &ResNet18, x: &Tensor) -> Result<Vec<Tensor>> {
    // The input asks for gradients so the graph exists even for a frozen network.
    let x = x.detach().set_requires_grad(true);
    let taps = model.forward_taps(&x, false)?;
    let c = taps.logits.size()[1] as f64;
    let loss = -taps.logits.log_softmax(1, Kind::Float).sum(Kind::Float) / c;
    // pool, layer3, layer2, layer1: the penultimate feature, then the ends of stages 3, 2, 1.
    let acts = [&taps.penultimate, &taps.maps[6], &taps.maps[4], &taps.maps[2]];
    let grads = Tensor::f_run_backward(&[loss], &acts, false, false)?;
    let sum_space = |t: &Tensor| if t.dim() == 4 { t.sum_dim_intlist(&[2i64, 3][..], false, Kind::Float) } else { t.shallow_clone() };
    Ok(acts.iter().zip(&grads).map(|(a, g)| sum_space(&a.detach()) * sum_space(g)).collect())
}

/// Fitted on [`FIT_IMAGES`] ID training images: their per-layer products.
#[derive(Debug)]
pub struct FittedNac {
    /// `[N_fit, K_l]` f32 per layer of [`LAYERS`].
    pub fit_products: Vec<Tensor>,
    /// The dataset indices of the fit images.
    pub fit_indices: Vec<i64>,
}

/// The first `FIT_IMAGES / C` images of each class (at least one), in dataset order.
pub fn fit_indices(labels: &[i64], classes: i64) -> Vec<i64> {
    let per_class = (FIT_IMAGES / classes.max(1) as usize).max(1);
    let mut taken = vec![0usize; classes.max(0) as usize];
    let mut out = Vec::new();
    for (i, &c) in labels.iter().enumerate() {
        if c >= 0 && c < classes && taken[c as usize] < per_class {
            taken[c as usize] += 1;
            out.push(i as i64);
        }
    }
    out
}

impl FittedNac {
    pub fn fit(model: &ResNet18, id_train: &Dataset, device: Device, batch: usize) -> Result<Self> {
        let k = model.config.num_classes;
        let labels = Vec::<i64>::try_from(&id_train.labels)?;
        if let Some(bad) = labels.iter().find(|&&c| c < 0 || c >= k) {
            return Err(Error::data(id_train.name.clone(), format!("label {bad} outside the model's {k} classes")));
        }
        let idx = fit_indices(&labels, k);
        let part = id_train.subset(&idx, format!("{}-nac-fit", id_train.name))?;
        let fit_products = super::per_batch(&part, device, batch, LAYERS.len(), |x| products(model, x))?;
        check_finite(&fit_products, &part.name)?;
        Ok(FittedNac { fit_products, fit_indices: idx })
    }
}

fn check_finite(products: &[Tensor], name: &str) -> Result<()> {
    for (l, p) in products.iter().enumerate() {
        if !bool::try_from(p.isfinite().all())? {
            return Err(Error::numerical(
                format!("nac states of {} at {}", name, LAYERS[l]),
                "non-finite output x gradient (NaN/inf in the model or images?)",
            ));
        }
    }
    Ok(())
}

impl ModelScorer for FittedNac {
    fn scores(&self, model: &ResNet18, data: &Dataset, params: &[Params], device: Device, batch: usize) -> Result<Vec<Tensor>> {
        let ps: Vec<NacParams> = params.iter().map(NacParams::from_map).collect::<Result<_>>()?;
        let prods = super::per_batch(data, device, batch, LAYERS.len(), |x| products(model, x))?;
        check_finite(&prods, &data.name)?;
        scores_from_products(&self.fit_products, &prods, &ps)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
