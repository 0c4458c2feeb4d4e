//! ViM and its residual score.

use super::{energy_of, feats, logits, max_dim1, Head};
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
    /// The residual basis `[D, D - dim]`: eigenvectors of the (h - u) covariance beyond the top `dim`.
    pub residual_basis: Tensor,
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
    let gm = train.global_moments(&ctx)?;
    let dm = (&gm.mean - &u).reshape([d, 1]);
    let cov = &gm.cov + dm.matmul(&dm.tr());
    let (_, vecs) = eigh_desc(&cov);
    let ns = vecs.narrow(1, dim, d - dim);
    // alpha only matters for ViM (Residual is the residual norm alone).
    let alpha = if vim {
        let res_train = (feats(train, d, &ctx)? - &u).matmul(&ns).norm_scalaropt_dim(2, &[1i64][..], false);
        max_dim1(&logits(train, c, &ctx)?).mean(Kind::Double).double_value(&[]) / res_train.mean(Kind::Double).double_value(&[]).max(1e-12)
    } else {
        1.0
    };
    Ok(FittedVim { origin: u, residual_basis: ns, alpha, vim, classes: c, dim: d })
}

impl Scorer for FittedVim {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        let sc = if self.vim { "vim score" } else { "residual score" };
        let r = (feats(f, self.dim, sc)? - &self.origin).matmul(&self.residual_basis).norm_scalaropt_dim(2, &[1i64][..], false);
        Ok(if self.vim { energy_of(&logits(f, self.classes, sc)?, 1.0) - r * self.alpha } else { -r })
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
