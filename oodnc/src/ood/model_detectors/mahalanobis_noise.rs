//! **Multi-layer Mahalanobis with input pre-processing** (Lee, Lee, Lee & Shin,
//! "A simple unified framework for detecting out-of-distribution samples and
//! adversarial attacks", NeurIPS 2018: the full method, feature ensemble plus
//! input noise). For each layer, the input is moved by a small step that brings
//! its features closer to the nearest class Gaussian, as ODIN does for the
//! softmax, and that layer's confidence is read on the moved input.
//!
//! ```text
//! f_l(x)   = the global-average-pooled map of tap l (the stem and the end of each stage,
//!            as `mahalanobis_layers`)
//! M_l(x)   = -min_c (f_l(x) - mu_lc)^T Sigma_l^+ (f_l(x) - mu_lc)     (class means, tied covariance, ID train)
//! x~_l     = x + eps * sign(grad_x M_l(x)) / std_c                    (eps in pixel units)
//! score(x) = sum_l (M_l(x~_l) - m_l) / s_l                            (ensemble = 1)
//!          = (M_L(x~_L) - m_L) / s_L, L the last stage                  (ensemble = 0: the penultimate layer only)
//! ```
//!
//! `m_l`, `s_l` are the mean and standard deviation of `M_l` on the ID
//! training images without noise, so with `eps = 0` and `ensemble = 1` this is
//! exactly the feature-based `mahalanobis_layers` (a test checks it). Lee et al.
//! weight the layers by a logistic regression on validation OOD (or adversarial)
//! samples; oodnc standardises and weights them equally, as `mahalanobis_layers`
//! and OpenOOD's MDSEns with equal `alpha`.
//!
//! Defaults: `eps = 0.0014`, `ensemble = 1`. Grid: eps in Lee et al.'s list
//! {0, 0.0005, 0.001, 0.0014, 0.002, 0.005, 0.01} x ensemble in {1, 0}. Fitted on
//! ID train images (one pass, f64 moments). Per image and layer one backward pass,
//! then one partial forward per layer and eps.

use super::{known_only, switch, FitImages, ModelDetector, ModelScorer, Params};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::ResNet18;
use crate::numerics::{pinv_sqrt, sq_dists, ClassMoments};
use tch::{Device, Kind, Tensor};

/// The taps (indices into [`crate::model::TAP_NAMES`]): the stem and the end of each stage.
pub const TAPS: [usize; 5] = [0, 2, 4, 6, 8];
/// Lee et al.'s noise magnitudes (pixel units).
pub const EPSILONS: [f64; 7] = [0.0, 0.0005, 0.001, 0.0014, 0.002, 0.005, 0.01];

/// Multi-layer Mahalanobis with input noise: `epsilon`, `ensemble` (0 / 1).
#[derive(Debug, Clone, Copy, Default)]
pub struct MahalanobisNoise;

/// Its checked parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MahalanobisNoiseParams {
    /// Step in pixel units ([0, 1] scale).
    pub epsilon: f64,
    /// Every stage tap (true) or the last stage only.
    pub ensemble: bool,
}

impl MahalanobisNoiseParams {
    /// From a by-name map (`epsilon` default 0.0014, `ensemble` default 1).
    pub fn from_map(given: &Params) -> Result<Self> {
        known_only("mahalanobis_noise", given, MahalanobisNoise.param_names())?;
        let epsilon = given.get("epsilon").copied().unwrap_or(0.0014);
        if !(0.0..=1.0).contains(&epsilon) {
            return Err(Error::param("mahalanobis_noise.epsilon", format!("{epsilon} must be in [0, 1] (pixel units)")));
        }
        Ok(MahalanobisNoiseParams { epsilon, ensemble: switch("mahalanobis_noise", given, "ensemble", true)? })
    }

    /// As a by-name map, as in tables.
    pub fn to_map(self) -> Params {
        [("epsilon".to_string(), self.epsilon), ("ensemble".to_string(), self.ensemble as u8 as f64)].into_iter().collect()
    }
}

impl ModelDetector for MahalanobisNoise {
    fn name(&self) -> &'static str {
        "mahalanobis_noise"
    }
    fn param_names(&self) -> &'static [&'static str] {
        &["ensemble", "epsilon"]
    }
    fn summary(&self) -> &'static str {
        "multi-layer Mahalanobis on inputs moved towards the nearest class Gaussian (Lee et al. 2018), model-based"
    }
    fn check(&self, given: &Params) -> Result<Params> {
        Ok(MahalanobisNoiseParams::from_map(given)?.to_map())
    }
    fn grid(&self) -> Vec<Params> {
        [true, false]
            .iter()
            .flat_map(|&ensemble| EPSILONS.iter().map(move |&epsilon| MahalanobisNoiseParams { epsilon, ensemble }.to_map()))
            .collect()
    }
    fn fit(&self, model: &ResNet18, data: FitImages, device: Device, batch: usize) -> Result<Box<dyn ModelScorer>> {
        Ok(Box::new(FittedMahalanobisNoise::fit(model, data.id_train, device, batch)?))
    }
}

/// One tap's Gaussians: the whitening `L` (`L L^T = Sigma^+`), the whitened
/// class means, and the ID training mean and std of its score.
#[derive(Debug)]
pub struct TapGaussians {
    pub tap: usize,
    pub whitening: Tensor,
    pub means_whitened: Tensor,
    pub train_mean: f64,
    pub train_std: f64,
}

impl TapGaussians {
    /// `M_l` of pooled features `f` (`[B, C_l]`, any float kind; differentiable).
    pub fn score(&self, f: &Tensor) -> Tensor {
        let w = self.whitening.to_device(f.device());
        -sq_dists(&f.to_kind(Kind::Double).matmul(&w), &self.means_whitened.to_device(f.device())).min_dim(1, false).0
    }
}

/// Fitted on ID training images: one [`TapGaussians`] per tap of [`TAPS`].
#[derive(Debug)]
pub struct FittedMahalanobisNoise {
    pub taps: Vec<TapGaussians>,
}

fn pooled(map: &Tensor) -> Tensor {
    map.mean_dim(&[2i64, 3][..], false, Kind::Float)
}

impl FittedMahalanobisNoise {
    /// Class means and tied covariance of each tap's pooled features on `id_train` (true labels).
    pub fn fit(model: &ResNet18, id_train: &Dataset, device: Device, batch: usize) -> Result<Self> {
        let ctx = format!("mahalanobis_noise fit on {}", id_train.name);
        let k = model.config.num_classes;
        let parts = super::per_batch(id_train, device, batch, TAPS.len(), |x| {
            let t = tch::no_grad(|| model.forward_taps(x, false))?;
            Ok(TAPS.iter().map(|&i| pooled(&t.maps[i])).collect())
        })?;
        let labels = id_train.labels.to_kind(Kind::Int64);
        let mut taps = Vec::with_capacity(TAPS.len());
        for (&tap, f) in TAPS.iter().zip(&parts) {
            let x = f.to_kind(Kind::Double);
            let cm = ClassMoments::compute(&x, &labels, k, &ctx)?;
            let l = pinv_sqrt(&cm.within, crate::ood::detectors::PINV_REL_TOL)?;
            let mut g = TapGaussians { tap, means_whitened: cm.means.matmul(&l), whitening: l, train_mean: 0.0, train_std: 1.0 };
            let s = g.score(&x);
            g.train_mean = s.mean(Kind::Double).double_value(&[]);
            g.train_std = s.std(true).double_value(&[]).max(1e-12);
            taps.push(g);
        }
        Ok(FittedMahalanobisNoise { taps })
    }

    /// `M_l(x~_l)` for each of `layers` (indices into [`taps`](Self::taps);
    /// `[layer][eps]`, each `[B]`, not standardised) of normalised images `x`,
    /// for each of `epsilons`.
    pub fn noisy_scores(&self, model: &ResNet18, x: &Tensor, layers: &[usize], epsilons: &[f64], std: &Tensor) -> Result<Vec<Vec<Tensor>>> {
        if let Some(&bad) = layers.iter().find(|&&l| l >= self.taps.len()) {
            return Err(Error::param("mahalanobis_noise layer", format!("{bad} (fitted on {} taps)", self.taps.len())));
        }
        let x = x.detach().set_requires_grad(true);
        let taps = model.forward_taps(&x, false)?;
        let mut out = Vec::with_capacity(layers.len());
        for (k, &li) in layers.iter().enumerate() {
            let g = &self.taps[li];
            let m = g.score(&pooled(&taps.maps[g.tap]));
            let mut per_eps = Vec::with_capacity(epsilons.len());
            let step = if epsilons.iter().any(|&e| e > 0.0) {
                // The graph is kept for the next layer's gradient.
                let grads = Tensor::f_run_backward(&[m.sum(Kind::Double)], &[&x], k + 1 < layers.len(), false)?;
                Some(grads[0].sign() / std)
            } else {
                None
            };
            tch::no_grad(|| -> Result<()> {
                for &e in epsilons {
                    per_eps.push(match (&step, e > 0.0) {
                        (Some(s), true) => g.score(&pooled(&model.tap_output_t(&(x.detach() + s * e), g.tap, false)?)),
                        _ => m.detach(),
                    });
                }
                Ok(())
            })?;
            out.push(per_eps);
        }
        Ok(out)
    }
}

impl ModelScorer for FittedMahalanobisNoise {
    fn scores(&self, model: &ResNet18, data: &Dataset, params: &[Params], device: Device, batch: usize) -> Result<Vec<Tensor>> {
        let ps: Vec<MahalanobisNoiseParams> = params.iter().map(MahalanobisNoiseParams::from_map).collect::<Result<_>>()?;
        let mut eps: Vec<f64> = ps.iter().map(|p| p.epsilon).collect();
        eps.sort_by(f64::total_cmp);
        eps.dedup();
        let norm = crate::data::Normalize::default();
        let std = Tensor::from_slice(&norm.std.map(|v| v as f32)).to_device(device).view([1, 3, 1, 1]);
        let last = self.taps.len() - 1;
        // Only the last stage when no parameter set asks for the ensemble.
        let layers: Vec<usize> = if ps.iter().any(|p| p.ensemble) { (0..=last).collect() } else { vec![last] };
        super::per_batch(data, device, batch, ps.len(), |x| {
            let raw = self.noisy_scores(model, x, &layers, &eps, &std)?;
            Ok(ps
                .iter()
                .map(|p| {
                    let e = eps.iter().position(|&v| v == p.epsilon).expect("every eps scored");
                    let z = |k: usize| (&raw[k][e] - self.taps[layers[k]].train_mean) / self.taps[layers[k]].train_std;
                    if p.ensemble {
                        (1..layers.len()).fold(z(0), |acc, k| acc + z(k))
                    } else {
                        z(layers.len() - 1)
                    }
                })
                .collect())
        })
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
