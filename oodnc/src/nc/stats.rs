//! Class statistics of a feature set, in one pass.

use crate::error::{Error, Result};
use crate::ood::linalg::{check_2d, finite_f64};
use tch::{Kind, Tensor};

/// Counts, means and scatter matrices of labelled features (f64).
pub struct ClassStats {
    pub num_classes: i64,
    pub dim: i64,
    pub n: i64,
    /// `[C]` samples per class.
    pub counts: Tensor,
    /// `[C, D]` class means mu_c.
    pub means: Tensor,
    /// `[D]` mean of the class means (mu_G for NC1-NC3).
    pub global_mean: Tensor,
    /// `[D]` mean of all samples.
    pub sample_mean: Tensor,
    /// `[D, D]` within-class covariance Sigma_W (1/N normalisation).
    pub sigma_w: Tensor,
    /// `[D, D]` between-class covariance Sigma_B = 1/C M~ M~^T.
    pub sigma_b: Tensor,
    /// `[C]` per-class within-class variance Tr(Sigma_W,c) = mean_i ||h_i - mu_c||^2 over class c.
    pub class_var: Tensor,
}

impl std::fmt::Debug for ClassStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClassStats(N={}, C={}, D={})", self.n, self.num_classes, self.dim)
    }
}

impl ClassStats {
    /// Statistics of `h` `[N, D]` with `labels` `[N]` in `0..c`. Every class needs at
    /// least one sample; NaN / inf features and fewer than two classes are errors.
    pub fn compute(h: &Tensor, labels: &Tensor, c: i64) -> Result<Self> {
        let ctx = "NC class statistics";
        if c < 2 {
            return Err(Error::data(ctx, format!("{c} class(es): Neural Collapse needs at least 2")));
        }
        let (n, d) = check_2d(h, None, ctx)?;
        let h = finite_f64(h, ctx)?;
        let (means, counts) = crate::ood::linalg::class_means(&h, labels, c, ctx)?;
        let y = labels.to_kind(Kind::Int64);
        let centred = &h - means.index_select(0, &y);
        let sigma_w = centred.tr().matmul(&centred) / n as f64;
        let sq = centred.square().sum_dim_intlist(&[1i64][..], false, Kind::Double);
        let class_var = Tensor::zeros([c], (Kind::Double, h.device())).index_add(0, &y, &sq) / &counts;
        let global_mean = means.mean_dim(&[0i64][..], false, Kind::Double);
        let mt = &means - global_mean.unsqueeze(0); // [C, D]
        let sigma_b = mt.tr().matmul(&mt) / c as f64;
        Ok(ClassStats {
            num_classes: c,
            dim: d,
            n,
            counts,
            sample_mean: h.mean_dim(&[0i64][..], false, Kind::Double),
            means,
            global_mean,
            sigma_w,
            sigma_b,
            class_var,
        })
    }

    /// Centred class means M~ as `[C, D]` (rows mu_c - mu_G).
    pub fn centred_means(&self) -> Tensor {
        &self.means - self.global_mean.unsqueeze(0)
    }
}
