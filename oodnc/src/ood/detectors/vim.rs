//! ViM and its residual score.

use super::{energy_of, feats_in, logits_in, max_dim1, Head};
use crate::error::{Error, Result};
use crate::features::FeatureSet;
use crate::numerics::{check_2d, eigh_desc};
use crate::ood::detector::{FitData, GridContext, ParamReader, ParamValue, Registered, Scorer};
use tch::{Kind, Tensor};

/// The principal-space fit shared by ViM and Residual.
#[derive(Debug)]
pub struct FittedVim {
    /// The origin u = -W^+ b.
    pub origin: Tensor,
    /// The residual space: eigenvectors of the (h - u) covariance beyond the top `dim`.
    pub residual: ResidualSpace,
    /// ViM's alpha = mean max-logit / mean residual norm on ID train (1 for Residual).
    pub alpha: f64,
    /// ViM (energy minus alpha * residual) or Residual (minus the residual norm).
    pub vim: bool,
    pub classes: i64,
    pub dim: i64,
}

fn grid(ctx: &GridContext) -> Vec<i64> {
    let v: Vec<i64> = [10, 20, 50, 64, 100, 128, 256, 300].iter().copied().filter(|&k| k < ctx.d).collect();
    if v.is_empty() {
        vec![(ctx.d / 2).max(1)]
    } else {
        v
    }
}

/// The paper's dim = 64 when it is below D, else D / 2.
fn default_dim(ctx: &GridContext) -> i64 {
    if 64 < ctx.d {
        64
    } else {
        (ctx.d / 2).max(1)
    }
}

fn fit(data: &FitData, name: &str, dim: i64, vim: bool) -> Result<FittedVim> {
    let h = Head::of(data, name)?;
    let (w, b, c, d, ctx) = (h.w, h.b, h.c, h.d, h.ctx);
    if dim >= d {
        return Err(Error::param(
            format!("{name}.dim"),
            format!("{dim} must be smaller than the feature dimension {d} (else the residual space is empty)"),
        ));
    }
    let u = -w.linalg_pinv(1e-15, false).matmul(&b);
    // (1/N) sum (h - u)(h - u)^T = Cov(h) + (mean - u)(mean - u)^T.
    let train = data.train;
    check_2d(&train.penultimate, Some(d), &ctx)?;
    let kind = data.precision.kind();
    let (mean, cov) = if kind == Kind::Double {
        let gm = train.global_moments(&ctx)?;
        (gm.mean.shallow_clone(), gm.cov.shallow_clone())
    } else {
        // f32: the centred Gram product in f32 (the bulk of the work), its
        // eigendecomposition in f64.
        let x = feats_in(train, d, &ctx, kind)?;
        let mean = x.mean_dim(&[0i64][..], true, kind);
        let centred = &x - &mean;
        let cov = (centred.tr().matmul(&centred) / x.size()[0] as f64).to_kind(Kind::Double);
        (mean.to_kind(Kind::Double), cov)
    };
    let dm = (&mean - &u).reshape([d, 1]);
    let cov = cov + dm.matmul(&dm.tr());
    let (_, vecs) = eigh_desc(&cov);
    let residual = ResidualSpace::of(&vecs.to_kind(kind), dim);
    let u = u.to_kind(kind);
    // alpha only matters for ViM (Residual is the residual norm alone).
    let alpha = if vim {
        let res_train = residual.norm(&(feats_in(train, d, &ctx, kind)? - &u));
        max_dim1(&logits_in(train, c, &ctx, kind)?).mean(Kind::Double).double_value(&[])
            / res_train.mean(Kind::Double).double_value(&[]).max(1e-12)
    } else {
        1.0
    };
    Ok(FittedVim { origin: u, residual, alpha, vim, classes: c, dim: d })
}

/// The residual space of ViM, held by whichever basis is smaller: the residual
/// one (`NS`, `[D, D - dim]`), or the principal one (`[D, dim]`), with
/// ||NS^T x||^2 = ||x||^2 - ||P^T x||^2 (the eigenvectors are orthonormal). With
/// the paper's dim = 64 of D = 512 the principal basis is 7 times smaller, and
/// so is the product that dominates ViM's cost. In f64 the subtraction loses
/// log10(||x||^2 / ||NS^T x||^2) of its 16 digits: one or two for real features.
#[derive(Debug)]
pub enum ResidualSpace {
    /// `NS` itself, `[D, D - dim]`.
    Residual(Tensor),
    /// The principal basis `P`, `[D, dim]`.
    Principal(Tensor),
}

impl ResidualSpace {
    fn of(vecs: &Tensor, dim: i64) -> Self {
        let d = vecs.size()[1];
        if dim < d - dim {
            ResidualSpace::Principal(vecs.narrow(1, 0, dim))
        } else {
            ResidualSpace::Residual(vecs.narrow(1, dim, d - dim))
        }
    }

    /// ||NS^T x|| per row of `x` `[N, D]`.
    pub fn norm(&self, x: &Tensor) -> Tensor {
        match self {
            ResidualSpace::Residual(ns) => x.matmul(ns).norm_scalaropt_dim(2, &[1i64][..], false),
            ResidualSpace::Principal(p) => {
                let all = x.square().sum_dim_intlist(&[1i64][..], false, x.kind());
                let kept = x.matmul(p).square().sum_dim_intlist(&[1i64][..], false, x.kind());
                (all - kept).clamp_min(0.0).sqrt()
            }
        }
    }
}

impl Scorer for FittedVim {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        let sc = if self.vim { "vim score" } else { "residual score" };
        let kind = self.origin.kind();
        let r = self.residual.norm(&(feats_in(f, self.dim, sc, kind)? - &self.origin));
        Ok(if self.vim { energy_of(&logits_in(f, self.classes, sc, kind)?, 1.0) - r * self.alpha } else { -r })
    }
    fn fitted_values(&self) -> Vec<(&'static str, f64)> {
        if self.vim {
            vec![("alpha", self.alpha)]
        } else {
            vec![]
        }
    }
}

fn check_dim(name: &str, dim: i64) -> Result<()> {
    if dim < 1 {
        return Err(super::bad_param(name, "dim", dim, "must be a positive integer"));
    }
    Ok(())
}

/// **ViM** (Wang et al., CVPR 2022): logsumexp(z) - alpha ||NS^T (h - u)||,
/// u = -W^+ b, NS the eigenvectors of the (h - u) covariance beyond the top
/// `dim`, alpha = mean max-logit / mean residual norm on ID train. Default
/// dim = 64; grid dim in {10, 20, 50, 64, 100, 128, 256, 300} below D (D/2 if none).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Vim {
    /// Principal dimension, 1 <= dim < D.
    pub dim: i64,
}

impl Default for Vim {
    fn default() -> Self {
        Vim { dim: 64 }
    }
}

impl Registered for Vim {
    const NAME: &'static str = "vim";
    const SUMMARY: &'static str = "virtual-logit matching (Wang et al. 2022)";
    const AUTO_F32: bool = true;
    type Fitted = FittedVim;
    fn read(p: &mut ParamReader) -> Result<Self> {
        Ok(Vim { dim: p.int("dim", Self::default().dim)? })
    }
    fn params(&self) -> Vec<(&'static str, ParamValue)> {
        vec![("dim", ParamValue::Int(self.dim))]
    }
    fn check(&self) -> Result<()> {
        check_dim(Self::NAME, self.dim)
    }
    fn grid(ctx: &GridContext) -> Vec<Self> {
        grid(ctx).into_iter().map(|dim| Vim { dim }).collect()
    }
    fn defaults(ctx: &GridContext) -> Self {
        Vim { dim: default_dim(ctx) }
    }
    fn fit(&self, data: &FitData) -> Result<FittedVim> {
        fit(data, Self::NAME, self.dim, true)
    }
}

/// **Residual** (Wang et al., CVPR 2022, the residual term of ViM alone):
/// -||NS^T (h - u)||. Same defaults and grid as ViM.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Residual {
    /// Principal dimension, 1 <= dim < D.
    pub dim: i64,
}

impl Default for Residual {
    fn default() -> Self {
        Residual { dim: 64 }
    }
}

impl Registered for Residual {
    const NAME: &'static str = "residual";
    const SUMMARY: &'static str = "norm of the residual outside the principal subspace (Wang et al. 2022)";
    const AUTO_F32: bool = true;
    type Fitted = FittedVim;
    fn read(p: &mut ParamReader) -> Result<Self> {
        Ok(Residual { dim: p.int("dim", Self::default().dim)? })
    }
    fn params(&self) -> Vec<(&'static str, ParamValue)> {
        vec![("dim", ParamValue::Int(self.dim))]
    }
    fn check(&self) -> Result<()> {
        check_dim(Self::NAME, self.dim)
    }
    fn grid(ctx: &GridContext) -> Vec<Self> {
        grid(ctx).into_iter().map(|dim| Residual { dim }).collect()
    }
    fn defaults(ctx: &GridContext) -> Self {
        Residual { dim: default_dim(ctx) }
    }
    fn fit(&self, data: &FitData) -> Result<FittedVim> {
        fit(data, Self::NAME, self.dim, false)
    }
}
