//! Class statistics of a feature set, in one pass.

use crate::error::{Error, Result};
use crate::numerics::{check_2d, finite_f64, pinv_sqrt};
use tch::{Kind, Tensor};

/// Relative eigenvalue threshold of the pseudo-inverses in NC (Sigma_B^+).
pub const NC_PINV_REL_TOL: f64 = 1e-10;

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
    /// `[D, D]` between-class covariance Sigma_B = 1/C M~ M~^T.
    pub sigma_b: Tensor,
    /// Tr(Sigma_W Sigma_B^+) (NC1 without the 1/C), Sigma_W the within-class
    /// covariance (1/N normalisation). Computed as ||(H - M_y) L||_F^2 / N with
    /// L L^T = Sigma_B^+ (L is D x rank(Sigma_B), rank <= C - 1): the same number
    /// without forming the D x D matrix Sigma_W (5x fewer flops at D = 512, C = 100),
    /// and a sum of squares, so no cancellation. [`ClassStats::sigma_w`] gives the
    /// matrix when it is wanted.
    pub tr_sw_sb_pinv: f64,
    /// `[C]` per-class within-class variance Tr(Sigma_W,c) = mean_i ||h_i - mu_c||^2 over class c.
    pub class_var: Tensor,
    /// He & Su's separation fuzziness D = Tr(SS_w SS_b^+) (2023, "A law of data
    /// separation in deep learning"): SS_w = Sigma_W, SS_b = (1/N) sum_c n_c
    /// (mu_c - mean)(mu_c - mean)^T, the between-class term weighted by class
    /// counts about the sample mean. With balanced classes it equals
    /// [`tr_sw_sb_pinv`](Self::tr_sw_sb_pinv) (NC1 without 1/C), and is then taken from it.
    pub separation_fuzziness: f64,
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
        check_2d(h, None, ctx)?;
        Self::from_finite_f64(&finite_f64(h, ctx)?, labels, c)
    }

    /// [`compute`](Self::compute) for features already converted to f64 and checked finite.
    pub fn from_finite_f64(h: &Tensor, labels: &Tensor, c: i64) -> Result<Self> {
        let ctx = "NC class statistics";
        if c < 2 {
            return Err(Error::data(ctx, format!("{c} class(es): Neural Collapse needs at least 2")));
        }
        let (n, d) = check_2d(h, None, ctx)?;
        let (means, counts) = crate::numerics::class_means(h, labels, c, ctx)?;
        let y = labels.to_kind(Kind::Int64);
        let centred = h - means.index_select(0, &y);
        let sq = centred.square().sum_dim_intlist(&[1i64][..], false, Kind::Double);
        let class_var = Tensor::zeros([c], (Kind::Double, h.device())).index_add(0, &y, &sq) / &counts;
        let global_mean = means.mean_dim(&[0i64][..], false, Kind::Double);
        let mt = &means - global_mean.unsqueeze(0); // [C, D]
        let sigma_b = mt.tr().matmul(&mt) / c as f64;
        let l = pinv_sqrt(&sigma_b, NC_PINV_REL_TOL)?;
        let tr_sw_sb_pinv = centred.matmul(&l).square().sum(Kind::Double).double_value(&[]) / n as f64;
        let sample_mean = h.mean_dim(&[0i64][..], false, Kind::Double);
        let balanced = bool::try_from(counts.eq_tensor(&counts.select(0, 0)).all()).unwrap_or(false);
        let separation_fuzziness = if balanced {
            tr_sw_sb_pinv
        } else {
            let weighted = (&means - sample_mean.unsqueeze(0)) * (&counts / n as f64).sqrt().unsqueeze(1);
            let l = pinv_sqrt(&weighted.tr().matmul(&weighted), NC_PINV_REL_TOL)?;
            centred.matmul(&l).square().sum(Kind::Double).double_value(&[]) / n as f64
        };
        Ok(ClassStats {
            num_classes: c,
            dim: d,
            n,
            counts,
            separation_fuzziness,
            sample_mean,
            means,
            global_mean,
            sigma_b,
            tr_sw_sb_pinv,
            class_var,
        })
    }

    /// The within-class covariance Sigma_W `[D, D]` (1/N normalisation) of the
    /// features `h` these statistics were computed from.
    pub fn sigma_w(&self, h: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let h = finite_f64(h, "Sigma_W")?;
        if h.size() != [self.n, self.dim] {
            return Err(Error::shape("Sigma_W", format!("features {:?}, statistics of [{}, {}]", h.size(), self.n, self.dim)));
        }
        let centred = &h - self.means.index_select(0, &labels.to_kind(Kind::Int64));
        Ok(centred.tr().matmul(&centred) / self.n as f64)
    }

    /// Centred class means M~ as `[C, D]` (rows mu_c - mu_G).
    pub fn centred_means(&self) -> Tensor {
        &self.means - self.global_mean.unsqueeze(0)
    }
}
