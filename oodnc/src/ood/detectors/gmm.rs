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
/// construction, and f32 cannot hold `L^-1` when `reg` is small.
///
/// **Scoring, exact with pruning** ([`FittedGmm::score_counted`]). The
/// quadratic form `q_c = ||L_c^-1 (h - mu_c)||^2` is a sum of squares over the
/// rows of `L_c^-1`, so any subset of rows bounds it from below, and bounds the
/// component's log-term `x_c = off_c - q_c / 2` from above. The dimensions are
/// ordered per class by decreasing variance before the Cholesky factorisation,
/// so the last rows of `L_c^-1` carry the directions the class's covariance
/// lacks (zero-variance dimensions, and the `D - n_c + 1` directions a class
/// with fewer samples than dimensions cannot span: their pivots are
/// `~sqrt(reg)`), which dominate `q_c` when `reg` is small. Scoring computes
/// the last [`GMM_BLOCK`] rows for every component and sample (a dense
/// `[B, D + 1] x [D + 1, N]` product per class), completes each sample's
/// best-bounded component exactly (`x*`), then completes only the components
/// whose bound is within [`GMM_PRUNE_NATS`] of `x*`; the others weigh less
/// than `K e^-60` in the logsumexp, below f64's resolution, and are left out.
/// The completion takes the other rows in blocks of [`GMM_BLOCK`], each against
/// only the columns it needs (`L^-1` is lower triangular): 36/64 of a dense
/// product's multiply-adds at D = 512. The whitened mean is folded into the
/// whitening as a first column, `[-L^-1 mu, L^-1]` against `[1; h]`, so no
/// `[N, D]` difference is formed (pytorch-ood forms a `[C, N, D]` one and does
/// the dense `h^T P h` for every component). When nothing can be pruned (large
/// `reg`, overlapping classes), every row is computed, at about the cost of the
/// triangular product alone.
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

/// Rows of `L^-1` per block of the scoring product (see [`Gmm`]). 64 measured
/// fastest with MKL on the 2-core machine for the triangular blocks (1.7x the
/// dense product; 32: 1.5x, 128: 1.0x, the larger blocks losing what they skip
/// to a slower kernel shape); it also covers the 63 directions a CIFAR-100
/// class (450 samples, D = 512) cannot span.
pub const GMM_BLOCK: i64 = 64;

/// Components whose log-term is provably more than this many nats below a
/// sample's best are left out of its logsumexp: together (at most K of them)
/// they weigh at most K e^-60 < 1e-24 of it, far below f64's resolution.
pub const GMM_PRUNE_NATS: f64 = 60.0;

/// The fitted mixture, per component (present class `c`, dimensions ordered by
/// `perm_c`, decreasing variance):
/// - `projection` `[K, D, D + 1]`: `[-L_c^-1 mu_c, L_c^-1]` in that order, so
///   that it times `[1; h_perm]` is `L_c^-1 (h - mu_c)` (lower triangular after
///   its first column);
/// - `perm` `[K, D + 1]`: the rows of `[1; h]` in that order (`0` first);
/// - `bound` `[K, B, D + 1]`: the last `B` rows of the projection with their
///   columns back in the original order, for the lower bound on every sample;
/// - `offsets` `[K]`: `log pi_c - (log det Sigma_c + D log 2 pi) / 2`.
#[derive(Debug)]
pub struct FittedGmm {
    /// The classes that have a component.
    pub classes: Vec<i64>,
    pub projection: Tensor,
    pub perm: Tensor,
    pub bound: Tensor,
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
        let (mut classes, mut ws, mut offs, mut perms, mut bounds) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for k in 0..c {
            let rows: Vec<i64> = (0..labels.len() as i64).filter(|&i| labels[i as usize] == k).collect();
            if rows.is_empty() {
                continue;
            }
            let xc = x.index_select(0, &Tensor::from_slice(&rows).to_device(x.device()));
            let mu = xc.mean_dim(0, false, Kind::Double);
            let centred = &xc - &mu;
            let cov = centred.tr().matmul(&centred) / rows.len() as f64;
            // Decreasing variance: the directions the class lacks end up in the last rows.
            let order = cov.diagonal(0, 0, 1).argsort_stable(true, 0, true);
            let cov = cov.index_select(0, &order).index_select(1, &order) + &eye * self.reg;
            let mu = mu.index_select(0, &order);
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
            let proj = Tensor::cat(&[-w.matmul(&mu).unsqueeze(1), w], 1);
            let perm = Tensor::cat(&[Tensor::zeros([1], (Kind::Int64, x.device())), &order + 1], 0);
            let b = GMM_BLOCK.min(d);
            // Row i of the projection reads [1; h] at perm[i]: scatter the last rows back to that order.
            let last = proj.narrow(0, d - b, b);
            bounds.push(last.zeros_like().index_copy(1, &perm, &last));
            ws.push(proj);
            perms.push(perm);
            classes.push(k);
        }
        if classes.is_empty() {
            return Err(Error::data(ctx, "no training sample"));
        }
        Ok(FittedGmm {
            classes,
            projection: Tensor::stack(&ws, 0),
            perm: Tensor::stack(&perms, 0),
            bound: Tensor::stack(&bounds, 0),
            offsets: Tensor::from_slice(&offs).to_device(x.device()),
            dim: d,
        })
    }
}

/// `sum_rows ||W[r..r+b, ..r+b+1] x||^2` over `blocks` (row start, rows) of one
/// projection `w` `[D, D + 1]`, for the columns `xt` (rows of `[1; h]` in the
/// projection's order; only the first `r + b + 1` are read): each row block
/// against only the columns it needs (`L^-1` is lower triangular).
fn block_sq(w: &Tensor, xt: &Tensor, blocks: &[(i64, i64)]) -> Tensor {
    let mut acc = Tensor::zeros([xt.size()[1]], (Kind::Double, xt.device()));
    for &(r, b) in blocks {
        let e = r + b + 1; // the mean column and h_0 .. h_{r+b-1}
        let mut y = w.narrow(0, r, b).narrow(1, 0, e).matmul(&xt.narrow(0, 0, e));
        let _ = acc.g_add_(&y.square_().sum_dim_intlist(&[0i64][..], false, Kind::Double));
    }
    acc
}

impl FittedGmm {
    /// The scores (see [`Gmm`] for the pruning, which is exact) and how many
    /// (component, sample) pairs were completed: `N` at least, `K N` when
    /// nothing could be pruned.
    pub fn score_counted(&self, f: &FeatureSet) -> Result<(Tensor, i64)> {
        let x = feats(f, self.dim, "gmm score")?;
        let (n, d, dev) = (x.size()[0], self.dim, x.device());
        // [1; h^T] [D + 1, N].
        let xt = Tensor::empty([d + 1, n], (Kind::Double, dev));
        let _ = xt.get(0).fill_(1.0);
        xt.narrow(0, 1, d).copy_(&x.tr());
        let b = GMM_BLOCK.min(d);
        // The other rows, in blocks of GMM_BLOCK counted back from the bound's.
        let blocks: Vec<(i64, i64)> = (0..d - b)
            .rev()
            .step_by(GMM_BLOCK as usize)
            .map(|end| {
                let r = (end + 1 - GMM_BLOCK).max(0);
                (r, end + 1 - r)
            })
            .collect();
        let k = self.classes.len() as i64;
        // q [K, N]: the last rows for every component and sample, a lower bound.
        let q = Tensor::stack(
            &(0..k).map(|j| self.bound.get(j).matmul(&xt).square_().sum_dim_intlist(&[0i64][..], false, Kind::Double)).collect::<Vec<_>>(),
            0,
        );
        let off = self.offsets.unsqueeze(1);
        let best = (&off - &q * 0.5).argmax(0, false); // [N]
        let all = Tensor::arange(n, (Kind::Int64, dev));
        // Adds the other rows' sum of squares for component j at the samples idx.
        let complete = |j: i64, idx: &Tensor| {
            let m = idx.size()[0];
            if m == 0 || blocks.is_empty() {
                return;
            }
            let (w, perm) = (self.projection.get(j), self.perm.get(j));
            let part = if 2 * m > n {
                block_sq(&w, &xt.index_select(0, &perm), &blocks).index_select(0, idx)
            } else {
                block_sq(&w, &xt.index_select(1, idx).index_select(0, &perm), &blocks)
            };
            let _ = q.get(j).index_add_(0, idx, &part);
        };
        // Each sample's best-bounded component, exactly: x*.
        for j in 0..k {
            complete(j, &all.masked_select(&best.eq(j)));
        }
        let floor = (&off - &q * 0.5).gather(0, &best.unsqueeze(0), false) - GMM_PRUNE_NATS; // [1, N]
                                                                                             // The others whose bound is within GMM_PRUNE_NATS of x*.
        let live = (&off - &q * 0.5).ge_tensor(&floor);
        let others = live.logical_and(&Tensor::arange(k, (Kind::Int64, dev)).unsqueeze(1).ne_tensor(&best.unsqueeze(0)));
        for j in 0..k {
            complete(j, &all.masked_select(&others.get(j)));
        }
        let completed = i64::try_from(live.sum(Kind::Int64))?;
        let ll = (&off - &q * 0.5).masked_fill(&live.logical_not(), f64::NEG_INFINITY);
        Ok((ll.logsumexp(&[0i64][..], false), completed))
    }
}

impl Scorer for FittedGmm {
    /// See [`FittedGmm::score_counted`].
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        Ok(self.score_counted(f)?.0)
    }
}
