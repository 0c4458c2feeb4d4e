//! The multi-layer Mahalanobis ensemble.

use super::{Head, PINV_REL_TOL};
use crate::error::{Error, Result};
use crate::features::FeatureSet;
use crate::numerics::{check_2d, finite_f64, pinv_sqrt, sq_dists, ClassMoments};
use crate::ood::detector::{FitData, ParamReader, Registered, Scorer};
use tch::{Kind, Tensor};

/// The layers of [`MahalanobisLayers`]: the stem and the end of each of the four
/// stages (global-average pooled), as Lee et al.'s ensemble over ResNet stages.
pub const STAGE_TAPS: [&str; 5] = ["stem", "layer1.1", "layer2.1", "layer3.1", "layer4.1"];

/// **Multi-layer Mahalanobis** (Lee et al., NeurIPS 2018, "A simple unified
/// framework for detecting out-of-distribution samples and adversarial
/// attacks", its feature ensemble, without input noise): for each tap l of
/// [`STAGE_TAPS`] (global-average pooled), M_l(h) = -min_c (f_l - mu_lc)^T
/// Sigma_l^+ (f_l - mu_lc) with class means and tied covariance of the ID
/// training taps, then
///
/// ```text
/// score = sum_l (M_l - mean_train(M_l)) / std_train(M_l)
/// ```
///
/// Lee et al. weight the layers by a logistic regression fitted on validation
/// OOD (or adversarial) samples; with no OOD data at fit time, oodnc
/// standardises each layer's score on ID train and weights them equally (as
/// OpenOOD's MDSEns with equal `alpha`). The input-noise variant needs the
/// network: it is the model-based
/// [`mahalanobis_noise`](crate::ood::model_detectors::mahalanobis_noise), equal to
/// this one at `eps = 0`. Needs the layer taps: the OOD study extracts them
/// when this detector is asked for. No hyperparameters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MahalanobisLayers;

/// Per layer: the whitening `L` (`L L^T = Sigma^+`), the whitened class means,
/// and the ID training mean and std of the layer's score.
#[derive(Debug)]
pub struct FittedMahalanobisLayers {
    pub layers: Vec<LayerGaussians>,
}

/// One layer's Gaussians.
#[derive(Debug)]
pub struct LayerGaussians {
    pub tap: &'static str,
    pub whitening: Tensor,
    pub means_whitened: Tensor,
    pub train_mean: f64,
    pub train_std: f64,
}

fn tap<'a>(f: &'a FeatureSet, name: &str, ctx: &str) -> Result<&'a Tensor> {
    f.taps.get(name).ok_or_else(|| {
        Error::data(
            ctx,
            format!(
                "the features of '{}' have no layer tap '{name}'; extract them with taps (`oodnc extract --taps`, or ExtractOptions {{ taps: true, .. }})",
                f.name
            ),
        )
    })
}

fn layer_score(x: &Tensor, g: &LayerGaussians) -> Tensor {
    -sq_dists(&x.matmul(&g.whitening), &g.means_whitened).min_dim(1, false).0
}

impl Registered for MahalanobisLayers {
    const NAME: &'static str = "mahalanobis_layers";
    const SUMMARY: &'static str = "Mahalanobis on the stem and every stage, standardised and summed (Lee et al. 2018's ensemble)";
    const NEEDS_TAPS: bool = true;
    type Fitted = FittedMahalanobisLayers;
    fn read(_: &mut ParamReader) -> Result<Self> {
        Ok(MahalanobisLayers)
    }
    fn fit(&self, data: &FitData) -> Result<FittedMahalanobisLayers> {
        let h = Head::of(data, Self::NAME)?;
        let mut layers = Vec::new();
        for name in STAGE_TAPS {
            let x = finite_f64(tap(data.train, name, &h.ctx)?, &h.ctx)?;
            check_2d(&x, None, &h.ctx)?;
            let cm = ClassMoments::compute(&x, &data.train.labels, h.c, &h.ctx)?;
            let l = pinv_sqrt(&cm.within, PINV_REL_TOL)?;
            let mut g = LayerGaussians { tap: name, means_whitened: cm.means.matmul(&l), whitening: l, train_mean: 0.0, train_std: 1.0 };
            let s = layer_score(&x, &g);
            g.train_mean = s.mean(Kind::Double).double_value(&[]);
            g.train_std = s.std(true).double_value(&[]).max(1e-12);
            layers.push(g);
        }
        Ok(FittedMahalanobisLayers { layers })
    }
}

impl Scorer for FittedMahalanobisLayers {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        let ctx = "mahalanobis_layers score";
        let mut total: Option<Tensor> = None;
        for g in &self.layers {
            let x = finite_f64(tap(f, g.tap, ctx)?, ctx)?;
            check_2d(&x, Some(g.whitening.size()[0]), ctx)?;
            let s = (layer_score(&x, g) - g.train_mean) / g.train_std;
            total = Some(match total {
                Some(t) => t + s,
                None => s,
            });
        }
        total.ok_or_else(|| Error::data(ctx, "no layer"))
    }
}
