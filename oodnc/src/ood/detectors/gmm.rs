//! Class-conditional Gaussian mixture with one full covariance per class.

use super::{feats, Head};
use crate::error::{Error, Result};
use crate::features::FeatureSet;
use crate::ood::detector::{FitData, GridContext, ParamReader, ParamValue, Registered, Scorer};
use tch::{Kind, Tensor};

/// **GMM** (a classical baseline; pytorch-ood's `GMM`): one Gaussian per class
/// on the penultimate features, each with its own covariance (Mahalanobis ties
/// them), mixed by the class frequencies; the score is the mixture's
/// log-likelihood:
///
/// ```text
/// Sigma_c  = (1/n_c) sum_{i in c} (h_i - mu_c)(h_i - mu_c)^T + reg I
/// score(h) = log sum_c pi_c N(h | mu_c, Sigma_c),     pi_c = n_c / N
///          = logsumexp_c [log pi_c - (||L_c^-1 (h - mu_c)||^2 + log det Sigma_c + D log 2 pi) / 2]
/// ```
///
/// with `L_c` the Cholesky factor of `Sigma_c`. Fitted on ID train (true
/// labels); a class without training samples has no component (as pytorch-ood).
/// Default `reg = 1e-6` (pytorch-ood's). With fewer samples in a class than
/// dimensions (450 against 512 on CIFAR-100) its covariance is singular, and
/// `reg` alone sets the likelihood along the missing directions, so it is
/// searched: grid `reg` in {1e-6, 1e-4, 1e-2, 1e-1, 1}.
///
/// f64 throughout (pytorch-ood too): the covariances are ill-conditioned by
/// construction, and f32 cannot hold `L^-1` when `reg` is small. Scoring is one
/// `[N, D + 1] x [D + 1, D]` product per class, `[h, 1]` against the whitening
/// `L_c^-T` with the whitened mean folded in as a last row, then one norm pass:
/// no `[N, D]` difference (pytorch-ood forms a `[C, N, D]` one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gmm {
    /// Ridge added to every class covariance, > 0.
    pub reg: f64,
}

impl Default for Gmm {
    fn default() -> Self {
        Gmm { reg: 1e-6 }
    }
}

/// The fitted mixture: per component (present class), the projection
/// `[L_c^-T; -(L_c^-1 mu_c)^T]` `[K, D + 1, D]` (so that `[h, 1]` times it is
/// `L_c^-1 (h - mu_c)`, one product with the mean folded in) and
/// `log pi_c - (log det Sigma_c + D log 2 pi) / 2` `[K]`.
#[derive(Debug)]
pub struct FittedGmm {
    /// The classes that have a component.
    pub classes: Vec<i64>,
    pub projection: Tensor,
    pub offsets: Tensor,
    pub dim: i64,
}

impl Registered for Gmm {
    const NAME: &'static str = "gmm";
    const SUMMARY: &'static str = "log-likelihood of a class-conditional Gaussian mixture, one covariance per class (pytorch-ood's GMM)";
    type Fitted = FittedGmm;
    fn read(r: &mut ParamReader) -> Result<Self> {
        Ok(Gmm { reg: r.f64("reg", Self::default().reg)? })
    }
    fn params(&self) -> Vec<(&'static str, ParamValue)> {
        vec![("reg", ParamValue::Float(self.reg))]
    }
    fn check(&self) -> Result<()> {
        if self.reg <= 0.0 || !self.reg.is_finite() {
            return Err(super::bad_param(Self::NAME, "reg", self.reg, "must be > 0 (it makes every covariance invertible)"));
        }
        Ok(())
    }
    fn grid(_: &GridContext) -> Vec<Self> {
        [1e-6, 1e-4, 1e-2, 1e-1, 1.0].iter().map(|&reg| Gmm { reg }).collect()
    }
    fn fit(&self, data: &FitData) -> Result<FittedGmm> {
        let h = Head::of(data, Self::NAME)?;
        let (c, d, ctx) = (h.c, h.d, h.ctx);
        let x = feats(data.train, d, &ctx)?;
        let labels = Vec::<i64>::try_from(&data.train.labels)?;
        if let Some(bad) = labels.iter().find(|&&y| y < 0 || y >= c) {
            return Err(Error::data(ctx, format!("label {bad} outside the head's {c} classes")));
        }
        let n = labels.len() as f64;
        let eye = Tensor::eye(d, (Kind::Double, x.device()));
        let log_2pi = (2.0 * std::f64::consts::PI).ln();
        let (mut classes, mut ws, mut offs) = (Vec::new(), Vec::new(), Vec::new());
        for k in 0..c {
            let rows: Vec<i64> = (0..labels.len() as i64).filter(|&i| labels[i as usize] == k).collect();
            if rows.is_empty() {
                continue;
            }
            let xc = x.index_select(0, &Tensor::from_slice(&rows).to_device(x.device()));
            let mu = xc.mean_dim(0, false, Kind::Double);
            let centred = &xc - &mu;
            let cov = centred.tr().matmul(&centred) / rows.len() as f64 + &eye * self.reg;
            let (l, info) = cov.linalg_cholesky_ex(false, false);
            if info.int64_value(&[]) != 0 {
                return Err(Error::numerical(
                    format!("{ctx}: class {k}"),
                    format!("its covariance is not positive definite even with reg = {}; increase reg", self.reg),
                ));
            }
            let w = Tensor::linalg_solve_triangular(&l, &eye, false, true, false);
            let log_det = 2.0 * l.diagonal(0, 0, 1).log().sum(Kind::Double).double_value(&[]);
            offs.push((rows.len() as f64 / n).ln() - 0.5 * (log_det + d as f64 * log_2pi));
            ws.push(Tensor::cat(&[w.tr(), -w.matmul(&mu).unsqueeze(0)], 0));
            classes.push(k);
        }
        if classes.is_empty() {
            return Err(Error::data(ctx, "no training sample"));
        }
        Ok(FittedGmm { classes, projection: Tensor::stack(&ws, 0), offsets: Tensor::from_slice(&offs).to_device(x.device()), dim: d })
    }
}

impl Scorer for FittedGmm {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        let x = feats(f, self.dim, "gmm score")?;
        let x1 = Tensor::cat(&[x.shallow_clone(), Tensor::ones([x.size()[0], 1], (Kind::Double, x.device()))], 1);
        let k = self.classes.len() as i64;
        let mut cols = Vec::with_capacity(k as usize);
        for j in 0..k {
            // ||L^-1 (h - mu)||^2: one product (the mean folded in), then one pass for the norm.
            let y = x1.matmul(&self.projection.get(j));
            cols.push(y.norm_scalaropt_dim(2.0, [1i64], false).square() * -0.5);
        }
        let ll = Tensor::stack(&cols, 1) + self.offsets.unsqueeze(0);
        Ok(ll.logsumexp([1i64], false))
    }
}
