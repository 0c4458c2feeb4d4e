//! Mahalanobis distance and its relative form.

use super::{feats, Head, PINV_REL_TOL};
use crate::error::Result;
use crate::features::FeatureSet;
use crate::numerics::{check_2d, pinv_sqrt, sq_dists};
use crate::ood::detector::{FitData, ParamReader, Registered, Scorer};
use tch::{Kind, Tensor};

/// The fitted Gaussians: `L L^T = Sigma^+` of the tied class covariance, the
/// class means times L and, for RMDS, the background Gaussian.
#[derive(Debug)]
pub struct FittedMahalanobis {
    /// `[D, r]`, `L L^T = Sigma^+` (pseudo-inverse with relative threshold [`PINV_REL_TOL`]).
    pub whitening: Tensor,
    /// `mu_c L`, `[C, r]`.
    pub means_whitened: Tensor,
    /// RMDS: the mean `[D]` and whitening of one Gaussian on all training features.
    pub background: Option<(Tensor, Tensor)>,
    pub dim: i64,
}

fn fit(data: &FitData, name: &str, relative: bool) -> Result<FittedMahalanobis> {
    let h = Head::of(data, name)?;
    let (c, d, ctx) = (h.c, h.d, h.ctx);
    let train = data.train;
    check_2d(&train.penultimate, Some(d), &ctx)?;
    let cm = train.class_moments(c, &ctx)?;
    let l = pinv_sqrt(&cm.within, PINV_REL_TOL)?;
    let mu_l = cm.means.matmul(&l);
    let background = if relative {
        let gm = train.global_moments(&ctx)?;
        let l0 = pinv_sqrt(&gm.cov, PINV_REL_TOL)?;
        Some((gm.mean.shallow_clone(), l0))
    } else {
        None
    };
    Ok(FittedMahalanobis { whitening: l, means_whitened: mu_l, background, dim: d })
}

impl Scorer for FittedMahalanobis {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        let sc = if self.background.is_some() { "rmds score" } else { "mahalanobis score" };
        let x = feats(f, self.dim, sc)?;
        let md = sq_dists(&x.matmul(&self.whitening), &self.means_whitened);
        let md = match &self.background {
            Some((mu0, l0)) => md - (&x - mu0).matmul(l0).square().sum_dim_intlist(&[1i64][..], true, Kind::Double),
            None => md,
        };
        Ok(-md.min_dim(1, false).0)
    }
}

/// **Mahalanobis** (Lee et al., NeurIPS 2018), penultimate layer only, no input
/// noise: -min_c (h - mu_c)^T Sigma^+ (h - mu_c), Sigma the tied covariance
/// about the class means. No hyperparameters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Mahalanobis;

impl Registered for Mahalanobis {
    const NAME: &'static str = "mahalanobis";
    const SUMMARY: &'static str = "min class-conditional Mahalanobis distance, tied covariance (Lee et al. 2018)";
    type Fitted = FittedMahalanobis;
    fn read(_: &mut ParamReader) -> Result<Self> {
        Ok(Mahalanobis)
    }
    fn fit(&self, data: &FitData) -> Result<FittedMahalanobis> {
        fit(data, Self::NAME, false)
    }
}

/// **RMDS** (Ren et al., 2021): the Mahalanobis distance to the closest class
/// minus the distance to one background Gaussian fitted on all training
/// features. No hyperparameters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rmds;

impl Registered for Rmds {
    const NAME: &'static str = "rmds";
    const SUMMARY: &'static str = "relative Mahalanobis distance (Ren et al. 2021)";
    type Fitted = FittedMahalanobis;
    fn read(_: &mut ParamReader) -> Result<Self> {
        Ok(Rmds)
    }
    fn fit(&self, data: &FitData) -> Result<FittedMahalanobis> {
        fit(data, Self::NAME, true)
    }
}
