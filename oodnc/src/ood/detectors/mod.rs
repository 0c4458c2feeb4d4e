//! The feature-based detectors, one file (or one block) each, and their
//! registry.
//!
//! Notation: z = logits `[C]`, p = softmax(z), h = penultimate feature `[D]`,
//! W `[C, D]` and b `[C]` the classifier, mu_c class means of the ID training
//! features. Every score is higher = more in-distribution. Each detector's
//! doc comment gives its formula, paper, defaults and search grid; every
//! deliberate difference from the paper and the peers is in `docs/detectors.md`.

pub mod caref;
pub mod dice;
pub mod fdbd;
pub mod gmm;
pub mod gradnorm;
pub mod graduncertainty;
pub mod klm;
pub mod knn;
pub mod logit;
pub mod mahalanobis;
pub mod mahalanobis_layers;
pub mod nci;
pub mod neco;
pub mod nnguide;
pub mod openmax;
pub mod pnml;
pub mod shaping;
pub mod she;
pub mod tempscale;
pub mod vim;
pub mod weiper;

use super::detector::{entry, Entry, FitData};
use crate::error::{Error, Result};
use crate::features::FeatureSet;
use crate::numerics::{check_2d, check_finite, finite_f64};
use tch::{Kind, Tensor};

/// Every feature-based detector, one line each (order = table order).
pub static REGISTRY: &[Entry] = &[
    entry::<logit::Msp>(),
    entry::<logit::MaxLogit>(),
    entry::<logit::Energy>(),
    entry::<logit::Entropy>(),
    entry::<logit::Gen>(),
    entry::<tempscale::TempScale>(),
    entry::<klm::Klm>(),
    entry::<mahalanobis::Mahalanobis>(),
    entry::<mahalanobis::Rmds>(),
    entry::<knn::Knn>(),
    entry::<vim::Vim>(),
    entry::<vim::Residual>(),
    entry::<neco::Neco>(),
    entry::<neco::NecoSeed>(),
    entry::<shaping::React>(),
    entry::<shaping::AshP>(),
    entry::<shaping::AshB>(),
    entry::<shaping::AshS>(),
    entry::<dice::Dice>(),
    entry::<she::She>(),
    entry::<fdbd::Fdbd>(),
    entry::<nci::Nci>(),
    entry::<shaping::Scale>(),
    entry::<gradnorm::GradNorm>(),
    entry::<shaping::Vra>(),
    entry::<nnguide::NnGuide>(),
    entry::<caref::Caref>(),
    entry::<caref::Cadref>(),
    entry::<nnguide::Relation>(),
    entry::<shaping::Lts>(),
    entry::<mahalanobis_layers::MahalanobisLayers>(),
    entry::<openmax::OpenMax>(),
    entry::<pnml::Pnml>(),
    entry::<graduncertainty::GradUncertainty>(),
    entry::<gmm::Gmm>(),
    entry::<weiper::Weiper>(),
];

/// The registry line of `name`, or an error listing the known names.
pub fn lookup(name: &str) -> Result<&'static Entry> {
    REGISTRY.iter().find(|e| e.name == name).ok_or_else(|| Error::Unknown {
        kind: "detector".into(),
        name: name.into(),
        known: REGISTRY.iter().map(|e| e.name).collect::<Vec<_>>().join(", "),
    })
}

/// Rows per step where a detector takes its features a few thousand rows at a
/// time (pNML, KLM, LTS): the temporaries stay a few MB, where a `[36 032, 512]`
/// f32 one is 74 MB, which the allocator maps afresh, page by page, each time.
pub const STEP_ROWS: i64 = 2048;

/// Relative eigenvalue threshold of every pseudo-inverse (documented regularisation
/// for singular covariances, e.g. fewer samples than dimensions).
pub const PINV_REL_TOL: f64 = 1e-10;

/// The classifier head of a fit, checked: finite f64 `w` `[C, D]` and `b` `[C]`,
/// and training features and logits of matching sizes.
pub(crate) struct Head {
    pub w: Tensor,
    pub b: Tensor,
    pub c: i64,
    pub d: i64,
    /// "<name> fit", the context of fit-time errors.
    pub ctx: String,
}

impl Head {
    pub(crate) fn of(data: &FitData, name: &str) -> Result<Self> {
        let ctx = format!("{name} fit");
        let w = finite_f64(data.weight, &ctx)?;
        let b = finite_f64(data.bias, &ctx)?;
        let ws = w.size();
        if ws.len() != 2 || b.size() != [ws[0]] {
            return Err(Error::shape(&ctx, format!("classifier weight {ws:?}, bias {:?}", b.size())));
        }
        let (c, d) = (ws[0], ws[1]);
        check_2d(&data.train.penultimate, Some(d), &format!("{ctx} (train features vs classifier)"))?;
        check_2d(&data.train.logits, Some(c), &format!("{ctx} (train logits)"))?;
        Ok(Head { w, b, c, d, ctx })
    }

    /// The same, with `w` and `b` in `kind` (a detector's working precision).
    pub(crate) fn of_kind(data: &FitData, name: &str, kind: Kind) -> Result<Self> {
        let h = Self::of(data, name)?;
        Ok(Head { w: h.w.to_kind(kind), b: h.b.to_kind(kind), ..h })
    }
}

/// Logits of `f` as f64, checked `[N, c]` and finite.
pub(crate) fn logits(f: &FeatureSet, c: i64, ctx: &str) -> Result<Tensor> {
    check_2d(&f.logits, Some(c), ctx)?;
    f.logits_f64(ctx)
}

/// Penultimate features of `f` as f64, checked `[N, d]` and finite.
pub(crate) fn feats(f: &FeatureSet, d: i64, ctx: &str) -> Result<Tensor> {
    check_2d(&f.penultimate, Some(d), ctx)?;
    f.penultimate_f64(ctx)
}

/// Logits of `f` in `kind`, checked `[N, c]` and finite: f64 is the cached copy
/// ([`FeatureSet::logits_f64`]), f32 the stored tensor itself (no copy).
pub(crate) fn logits_in(f: &FeatureSet, c: i64, ctx: &str, kind: Kind) -> Result<Tensor> {
    check_2d(&f.logits, Some(c), ctx)?;
    in_kind(&f.logits, kind, || f.logits_f64(ctx), ctx)
}

/// Penultimate features of `f` in `kind`, checked `[N, d]` and finite (see [`logits_in`]).
pub(crate) fn feats_in(f: &FeatureSet, d: i64, ctx: &str, kind: Kind) -> Result<Tensor> {
    check_2d(&f.penultimate, Some(d), ctx)?;
    in_kind(&f.penultimate, kind, || f.penultimate_f64(ctx), ctx)
}

fn in_kind(x: &Tensor, kind: Kind, f64_copy: impl FnOnce() -> Result<Tensor>, ctx: &str) -> Result<Tensor> {
    if kind == Kind::Double {
        return f64_copy();
    }
    check_finite(x, ctx)?;
    Ok(if x.kind() == kind { x.shallow_clone() } else { x.to_kind(kind) })
}

/// T logsumexp(z / T) per row.
pub(crate) fn energy_of(z: &Tensor, t: f64) -> Tensor {
    if t == 1.0 {
        // The default: no [N, C] copy for a division by 1.
        return z.logsumexp(&[1i64][..], false);
    }
    (z / t).logsumexp(&[1i64][..], false) * t
}

pub(crate) fn max_dim1(x: &Tensor) -> Tensor {
    // The values only (no argmax indices to compute and allocate).
    x.amax(&[1i64][..], false)
}

/// log max-softmax, precise for confident samples: -log1p(sum_{j != argmax} exp(z_j - z_max)).
pub(crate) fn log_msp(z: &Tensor) -> Tensor {
    if z.kind() == Kind::Float && crate::numerics::cpu_kernels(z.device()) && z.dim() == 2 {
        // The same formula in one fused pass per row.
        return crate::numerics::row_log_msp(z);
    }
    let (zmax, arg) = z.max_dim(1, true);
    // In place after the subtraction: one [N, C] temporary instead of three.
    let mut e = z - &zmax;
    let _ = e.exp_();
    let _ = e.scatter_value_(1, &arg, 0.0);
    -e.sum_dim_intlist(&[1i64][..], false, z.kind()).log1p()
}

/// An error for a parameter outside its range.
pub(crate) fn bad_param(detector: &str, key: &str, value: impl std::fmt::Display, why: &str) -> Error {
    Error::param(format!("{detector}.{key}"), format!("{value} {why}"))
}
