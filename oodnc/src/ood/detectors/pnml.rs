//! pNML.

use super::{feats_in, logits_in, Head, PINV_REL_TOL, STEP_ROWS};
use crate::error::{Error, Result};
use crate::features::FeatureSet;
use crate::numerics::pinv_sqrt;
use crate::ood::detector::{FitData, ParamReader, Registered, Scorer};
use tch::{Kind, Tensor};

/// **pNML** (Bibas, Feder & Hassner, NeurIPS 2021, "Single layer predictive
/// normalized maximum likelihood for out-of-distribution detection"): the
/// regret of the predictive normalised maximum likelihood learner of the last
/// layer, in closed form. It is small when the test feature lies in directions
/// the training features span and the classifier is confident.
///
/// ```text
/// x      = h / ||h||_2,  X = the L2-normalised ID training features (rows)
/// k(x)   = x^T (X^T X)^+ x / (1 + x^T (X^T X)^+ x)
/// regret = log sum_c p_c / (p_c + (1 - p_c) p_c^k(x))  /  log C,     p = softmax(z), z the logits
/// score  = -regret                                     (in [-1, 0]; higher = more in-distribution)
/// ```
///
/// The probabilities are the network's own (its logits), as in the paper's code;
/// each term is computed as `1 / (1 + (1 - p_c) exp((k - 1) log p_c))` from the
/// log-softmax in f64, so no probability needs clamping. No hyperparameters.
///
/// **How it is computed.** The projection is kept as a lower-trapezoidal `T`
/// (`[D, r]`, `T_ij = 0` for `j > i`) with `T T^T = (X^T X)^+`, so that
/// `x^T (X^T X)^+ x = ||x T||^2`, a sum of squares (no cancellation in f32):
/// - when every eigenvalue of `X^T X` is above the library's pseudo-inverse
///   threshold ([`PINV_REL_TOL`] times the largest), the pseudo-inverse is the
///   inverse and `T` comes from a Cholesky factorisation (of `X^T X` with its
///   dimensions reversed, whose inverted factor, reversed back, is lower
///   triangular);
/// - otherwise (dead units, fewer samples than dimensions) `T` is the triangular
///   factor of a QR decomposition of the eigen square root `V_r Lambda_r^-1/2`.
///
/// Both are f64. Scoring takes `x T` in column blocks of [`PNML_BLOCK`], each
/// against only the rows it needs (36/64 of the dense product's multiply-adds
/// at D = 512), and the features in chunks of [`PNML_ROWS`] rows, so that no
/// `[N, D]` temporary is formed. Under [`Precision::Auto`](crate::ood::Precision)
/// the products are f32: the Gram matrix is formed from the normalised features
/// centred on a reference point (the mean of a strided sample of them, so its
/// rounding scales with their spread, not with the dominant mean direction of
/// post-ReLU features), the centring undone exactly in f64; the regret is f64.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pnml;

/// The head (its shape; the scores use the network's logits) and the
/// triangular whitening of the normalised training features' Gram matrix.
#[derive(Debug)]
pub struct FittedPnml {
    pub weight: Tensor,
    pub bias: Tensor,
    /// `T` `[D, r]`, lower trapezoidal (`T_ij = 0` for `j > i`), `T T^T = (X^T X)^+`.
    pub projection: Tensor,
}

impl Registered for Pnml {
    const NAME: &'static str = "pnml";
    const SUMMARY: &'static str = "regret of the single-layer predictive normalized maximum likelihood learner (Bibas et al. 2021)";
    const AUTO_F32: bool = true;
    type Fitted = FittedPnml;
    fn read(_: &mut ParamReader) -> Result<Self> {
        Ok(Pnml)
    }
    fn fit(&self, data: &FitData) -> Result<FittedPnml> {
        let kind = data.precision.kind();
        let h = Head::of(data, Self::NAME)?;
        if h.c < 2 {
            return Err(Error::data(h.ctx, "pNML's regret is normalised by log C: it needs at least 2 classes"));
        }
        let x = feats_in(data.train, h.d, &h.ctx, kind)?;
        let exact = || lower_pinv_factor(&normalised_gram(&x, Kind::Double), 0.0);
        // Below 2 samples' worth of rows the f64 Gram matrix costs about what the check would.
        let small = x.size()[0] < 2 * PNML_SAMPLE;
        let projection = if kind == Kind::Double || small || !f32_gram_likely_resolved(&x)? {
            exact()?
        } else {
            // The f32 Gram matrix, unless its spectrum reaches down to f32's rounding.
            match lower_pinv_factor(&normalised_gram(&x, kind), PNML_F32_RESOLVED)? {
                Some(t) => Some(t),
                None => exact()?,
            }
        };
        let projection = projection.ok_or_else(|| Error::numerical("pnml", "no pseudo-inverse factor"))?.to_kind(kind);
        Ok(FittedPnml { weight: h.w, bias: h.b, projection })
    }
}

impl Scorer for FittedPnml {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        let kind = self.projection.kind();
        let (c, d) = (self.weight.size()[0], self.weight.size()[1]);
        let x = feats_in(f, d, "pnml score", kind)?;
        let z = logits_in(f, c, "pnml score", kind)?;
        let r = self.projection.size()[1];
        let log_c = (c as f64).ln();
        let mut scores = Vec::new();
        for (xr, zr) in x.split(PNML_ROWS, 0).iter().zip(z.split(PNML_ROWS, 0)) {
            // ||x T||^2 / ||x||^2: the projection of the normalised feature without normalising it.
            let sq_norm = row_sq_norms(xr).clamp_min(1e-24);
            let mut proj = Tensor::zeros([xr.size()[0], 1], (Kind::Double, x.device()));
            for j in (0..r).step_by(PNML_BLOCK as usize) {
                let b = PNML_BLOCK.min(r - j);
                // Columns j..j+b of T are zero above row j.
                proj += row_sq_norms(&xr.narrow(1, j, d - j).matmul(&self.projection.narrow(0, j, d - j).narrow(1, j, b)));
            }
            let proj = proj / sq_norm;
            let k = &proj / (&proj + 1.0);
            let log_p = zr.log_softmax(1, Kind::Double);
            let one_minus_p: Tensor = 1.0 - log_p.exp();
            let terms: Tensor = ((k - 1.0) * &log_p).exp() * one_minus_p + 1.0;
            let regret = terms.reciprocal().sum_dim_intlist(&[1i64][..], false, Kind::Double).log() / log_c;
            scores.push(-regret);
        }
        Ok(Tensor::cat(&scores, 0))
    }
}

/// Rows of features per step of pNML's f32 work ([`STEP_ROWS`]; the f64 Gram
/// matrix takes half as many, the same bytes).
pub const PNML_ROWS: i64 = STEP_ROWS;

/// Rows of the strided sample that gives the Gram matrix's reference point (see
/// `normalised_gram`) and the check before an f32 Gram matrix (see
/// `f32_gram_likely_resolved`).
pub const PNML_SAMPLE: i64 = 2048;

/// Columns of `T` per block of the scoring product and of the Gram matrix: 64
/// measured fastest on the 2-core machine at D = 512 (128: about 10 % slower).
pub const PNML_BLOCK: i64 = 64;

/// `sum_j x_ij^2` per row, `[N, 1]` f64, in one pass (the norm's reduction; no
/// squared copy of `x`).
fn row_sq_norms(x: &Tensor) -> Tensor {
    x.norm_scalaropt_dim(2, &[1i64][..], true).to_kind(Kind::Double).square()
}

/// `X^T X` (f64 `[D, D]`) of the L2-normalised rows of `x`, computed in `kind`
/// chunk by chunk, on the rows centred on a reference point `m` (the mean of a
/// strided sample of normalised rows):
///
/// ```text
/// X^T X = Xc^T Xc + m s^T + s m^T + N m m^T,   Xc = X - 1 m^T,  s = Xc^T 1
/// ```
///
/// the correction in f64. Only the upper block triangle of `Xc^T Xc` is formed
/// (blocks of [`PNML_BLOCK`] rows), then mirrored. A dimension that is zero in
/// every row (a dead unit) has an exactly zero row and column.
fn normalised_gram(x: &Tensor, kind: Kind) -> Tensor {
    let (n, d) = (x.size()[0], x.size()[1]);
    let dev = x.device();
    let unit = |x: &Tensor| x.norm_scalaropt_dim(2, &[1i64][..], true).clamp_min(1e-12).reciprocal();
    let step = (n / PNML_SAMPLE).max(1);
    let sample = x.index_select(0, &Tensor::arange_start_step(0, n, step, (Kind::Int64, dev))).to_kind(kind);
    let m = (&sample * unit(&sample)).mean_dim(&[0i64][..], false, kind);
    let g = Tensor::zeros([d, d], (kind, dev));
    let mut s = Tensor::zeros([d], (Kind::Double, dev));
    // About 4 MB of rows per step in either precision (f64: half as many rows).
    let step_rows = if kind == Kind::Double { PNML_ROWS / 2 } else { PNML_ROWS };
    for xr in x.split(step_rows, 0) {
        let xr = xr.to_kind(kind);
        let xc = (-&m).addcmul(&xr, &unit(&xr)); // x / ||x|| - m in one pass
        s += xc.sum_dim_intlist(&[0i64][..], false, Kind::Double);
        for j in (0..d).step_by(PNML_BLOCK as usize) {
            let b = PNML_BLOCK.min(d - j);
            let _ = g.narrow(0, j, b).narrow(1, j, d - j).addmm_(&xc.narrow(1, j, b).tr(), &xc.narrow(1, j, d - j));
        }
    }
    let g = g.to_kind(Kind::Double);
    let (m, s) = (m.to_kind(Kind::Double).unsqueeze(1), s.unsqueeze(1));
    g.triu(0) + g.triu(1).tr() + m.matmul(&s.tr()) + s.matmul(&m.tr()) + m.matmul(&m.tr()) * n as f64
}

/// Under [`Precision::Auto`](crate::ood::Precision), pNML keeps the Gram matrix
/// formed in f32 only when every eigenvalue of its live block is above this
/// fraction of the largest (a condition number below 10^4); otherwise the Gram
/// matrix is formed again in f64. Measured:
/// - a direction the features do not span (fewer samples than dimensions) comes
///   out of the f32 product with a noise eigenvalue of 1e-13 to 1e-9 of the
///   largest, above the pseudo-inverse threshold: it would be kept and weighted
///   by its inverse (scores off by 75 % in `tests/ood_detectors.rs`);
/// - the demo's trained features have ratios of 1e-5 to 4e-5; there the f32
///   Gram matrix moves the scores by up to 1.4e-6 and the AUROC by up to 2e-6
///   (f32 scoring alone: 5e-8 and 0). The bench's synthetic features (8e-4)
///   stay within 1e-7.
pub const PNML_F32_RESOLVED: f64 = 1e-4;

/// Whether the f32 Gram matrix is worth forming (see [`PNML_F32_RESOLVED`]):
/// the f64 Gram matrix of a strided sample of about [`PNML_SAMPLE`] rows has its
/// eigenvalue ratio above the bound. A sample's smallest eigenvalue is below
/// the whole set's, as a rule, so features that fail here go straight to the
/// f64 Gram matrix (at D = 512, 45 000 rows: 250 ms, where an f32 attempt
/// first would add 100 ms); the f32 one is still checked when formed.
fn f32_gram_likely_resolved(x: &Tensor) -> Result<bool> {
    let n = x.size()[0];
    let idx = Tensor::arange_start_step(0, n, (n / PNML_SAMPLE).max(1), (Kind::Int64, x.device()));
    let (lo, hi) = live_spectrum(&normalised_gram(&x.index_select(0, &idx), Kind::Double))?.1;
    Ok(lo > PNML_F32_RESOLVED * hi)
}

/// A lower-trapezoidal `T` (`[D, r]`, f64) with `T T^T = G^+`, `G` symmetric
/// PSD, the pseudo-inverse keeping the eigenvalues above [`PINV_REL_TOL`] times
/// the largest (as [`pinv_sqrt`]).
///
/// The dimensions with a zero diagonal (dead units: zero rows and columns) get
/// zero rows; the rest, the live block `G_l`, is factored. When every
/// eigenvalue of `G_l` is above the threshold `G^+` embeds `G_l^-1`: with `J`
/// the reversal of the dimensions and `J G_l J = U^T U` (Cholesky, `U` upper),
/// `G_l^-1 = (J U^-1 J)(J U^-1 J)^T` and `J U^-1 J` is lower triangular.
/// Otherwise the eigen square root `L` (`L L^T = G_l^+`) is rotated into that
/// form: `L^T = Q R` gives `T = R^T`.
///
/// `None` when `resolved > 0` and the smallest eigenvalue of `G_l` is not above
/// `resolved` times the largest (see [`PNML_F32_RESOLVED`]).
pub(crate) fn lower_pinv_factor(g: &Tensor, resolved: f64) -> Result<Option<Tensor>> {
    let d = g.size()[0];
    let ((live, gl), (lo, hi)) = live_spectrum(g)?;
    let nl = live.size()[0];
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    if resolved > 0.0 && !(lo > resolved * hi) {
        return Ok(None);
    }
    // A factorisation that fails this close to the threshold takes the eigen route.
    let tl = match (lo > PINV_REL_TOL * hi).then(|| reversed_cholesky_inverse(&gl)).flatten() {
        Some(t) => t,
        None => eigen_lower_factor(&gl)?,
    };
    if nl == d {
        return Ok(Some(tl));
    }
    // Row i of T is row live^-1(i) of T_l: zero after column live^-1(i) <= i.
    Ok(Some(Tensor::zeros([d, tl.size()[1]], (Kind::Double, g.device())).index_copy(0, &live, &tl)))
}

/// The dimensions of `g` with a nonzero diagonal, the block of `g` they span,
/// and that block's smallest and largest eigenvalues; an error when `g` is zero.
#[allow(clippy::type_complexity)]
fn live_spectrum(g: &Tensor) -> Result<((Tensor, Tensor), (f64, f64))> {
    let d = g.size()[0];
    let live = g.diagonal(0, 0, 1).gt(0.0).nonzero().squeeze_dim(1);
    let nl = live.size()[0];
    let gl = if nl == d { g.shallow_clone() } else { g.index_select(0, &live).index_select(1, &live) };
    let vals = if nl > 0 { gl.f_linalg_eigvalsh("L")? } else { Tensor::zeros([1], (Kind::Double, g.device())) };
    let (lo, hi) = (vals.min().double_value(&[]), vals.max().double_value(&[]));
    #[allow(clippy::neg_cmp_op_on_partial_ord)] // NaN must fail too
    if !(hi > 0.0) {
        return Err(Error::numerical("pseudo-inverse", "matrix is zero (all features identical?)"));
    }
    Ok(((live, gl), (lo, hi)))
}

/// `J U^-1 J` with `J G J = U^T U` (Cholesky), for a positive definite `G`:
/// lower triangular, `(J U^-1 J)(J U^-1 J)^T = G^-1`. `None` when the
/// factorisation fails or overflows.
fn reversed_cholesky_inverse(g: &Tensor) -> Option<Tensor> {
    let u = g.flip([0i64, 1]).f_linalg_cholesky(true).ok()?;
    let eye = Tensor::eye(g.size()[0], (Kind::Double, g.device()));
    let inv = Tensor::f_linalg_solve_triangular(&u, &eye, true, true, false).ok()?;
    bool::try_from(inv.isfinite().all()).unwrap_or(false).then(|| inv.flip([0i64, 1]))
}

/// `R^T` from `L^T = Q R`, `L` the eigen square root of `G^+` ([`pinv_sqrt`]):
/// `R^T R = L L^T = G^+`, and `R^T` (`[D, r]`) is lower trapezoidal.
fn eigen_lower_factor(g: &Tensor) -> Result<Tensor> {
    let l = pinv_sqrt(g, PINV_REL_TOL)?;
    let (_, r) = Tensor::f_linalg_qr(&l.tr(), "reduced")?;
    Ok(r.tr().contiguous())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both routes give a lower-trapezoidal factor of the pseudo-inverse; at full
    /// rank they give the same one (the Cholesky factor of `G^-1`, unique up to
    /// the signs of its columns).
    #[test]
    fn both_factor_routes_are_lower_factors_of_the_pseudo_inverse() {
        tch::manual_seed(5);
        let cpu = (Kind::Double, tch::Device::Cpu);
        let d = 40;
        for rows in [200, 25] {
            let x = Tensor::randn([rows, d], cpu) + 0.5;
            let g = x.tr().matmul(&x);
            let want = g.linalg_pinv(1e-10, true);
            let eig = eigen_lower_factor(&g).unwrap();
            assert_eq!(eig.size(), [d, rows.min(d)]);
            let routes =
                if rows > d { vec![eig.shallow_clone(), reversed_cholesky_inverse(&g).unwrap()] } else { vec![eig.shallow_clone()] };
            for t in &routes {
                assert_eq!(f64::try_from(t.triu(1).abs().max()).unwrap(), 0.0, "not lower trapezoidal");
                let err = f64::try_from((t.matmul(&t.tr()) - &want).abs().max()).unwrap() / f64::try_from(want.abs().max()).unwrap();
                assert!(err < 1e-10, "{rows} rows: T T^T vs the pseudo-inverse {err:e}");
            }
            if rows > d {
                let gap =
                    f64::try_from((routes[0].abs() - routes[1].abs()).abs().max()).unwrap() / f64::try_from(routes[1].abs().max()).unwrap();
                assert!(gap < 1e-10, "the two routes' factors differ by {gap:e}");
                assert!(reversed_cholesky_inverse(&(&g * 0.0)).is_none());
            }
        }
        // Dead units (zero rows and columns) get zero rows: with the rest full rank
        // (the Cholesky route) and rank-deficient (the eigen route); a zero G is an error.
        for rows in [60, 20] {
            let x = Tensor::randn([rows, d], cpu) + 0.5;
            let _ = x.narrow(1, 3, 4).fill_(0.0);
            let _ = x.narrow(1, d - 1, 1).fill_(0.0);
            let g = x.tr().matmul(&x);
            let t = lower_pinv_factor(&g, 0.0).unwrap().unwrap();
            assert_eq!(t.size(), [d, rows.min(d - 5)]);
            assert_eq!(f64::try_from(t.triu(1).abs().max()).unwrap(), 0.0, "not lower trapezoidal");
            let want = g.linalg_pinv(1e-10, true);
            let err = f64::try_from((t.matmul(&t.tr()) - &want).abs().max()).unwrap() / f64::try_from(want.abs().max()).unwrap();
            assert!(err < 1e-10, "{rows} rows with dead units: {err:e}");
            // Rank-deficient live block: unresolved at any positive threshold.
            assert_eq!(lower_pinv_factor(&g, 1e-6).unwrap().is_none(), rows < d);
        }
        assert!(lower_pinv_factor(&Tensor::zeros([d, d], cpu), 0.0).is_err());
    }
}
