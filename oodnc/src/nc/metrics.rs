//! NC1-NC5 and the geometry behind the assignment's plots.
//!
//! - **NC1** (variability collapse) = Tr(Sigma_W Sigma_B^+) / C (`nc1`, Papyan et al.'s
//!   definition and the original project's) and without the 1/C (`nc1_raw`, the
//!   Han/Papyan notebook code). Sigma_B^+ by eigh, dropping eigenvalues below
//!   1e-10 x the largest. `separation_fuzziness` is He & Su's Tr(SS_w SS_b^+), whose
//!   between-class term is weighted by class counts about the sample mean: equal to
//!   `nc1_raw` for balanced classes only. **CDNV** (Galanti et al. 2022),
//!   a second within-class measure: the mean over class pairs of
//!   (sigma_c^2 + sigma_c'^2) / (2 ||mu_c - mu_c'||^2).
//! - **NC2** (simplex ETF): equinorm = CoV (std with ddof 1 / mean) of ||mu_c - mu_G||
//!   (`nc2_equinorm_m`) and of the classifier rows ||w_c|| (`nc2_equinorm_w`);
//!   equiangularity = std (ddof 1) of the pairwise cosines c != c' (`nc2_equiangular_*`);
//!   max-angle = mean |cos + 1/(C-1)| over pairs (`nc2_maxangle_*`, the original's
//!   "equiangularity"). All are 0 for a simplex ETF.
//! - **NC3** (self-duality) = || W^T/||W||_F - M~/||M~||_F ||_F^2.
//! - **NC4** (nearest class centre): `nc4_ncc_mismatch` = fraction of samples whose
//!   nearest class mean (Euclidean) differs from the network's prediction;
//!   `ncc_accuracy` = NCC accuracy against the labels.
//! - **NC5** (ID/OOD orthogonality, NECO, Ammar et al. 2024): the mean over classes of
//!   |cos(mu_c - mu_ID, mu_OOD - mu_ID)|, both centred by the ID sample mean (`nc5`).
//!   The NECO paper writes it with class means and the OOD global mean; with
//!   post-ReLU features, *uncentred* vectors all lie in the positive orthant, their
//!   cosines stay far from 0 and orthogonality cannot be reached, so the centred
//!   version is the meaningful one. `nc5_classmean_centred` centres both by the mean
//!   of the class means mu_G instead, the centre NC1-NC3 use (the two differ with
//!   imbalanced classes). `nc5_uncentred` = mean |cos(mu_c, mu_OOD)| is the
//!   original project's, kept for comparison.

use super::stats::ClassStats;
use crate::error::{Error, Result};
use crate::numerics::{check_2d, finite_f64, pinv_psd, sq_dists};
use tch::{Kind, Tensor};

/// Relative eigenvalue threshold of the Sigma_B pseudo-inverse.
pub use super::stats::NC_PINV_REL_TOL;

/// NC metrics of one feature set; W-based entries are `None` without a classifier.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct NcMetrics {
    pub nc1: f64,
    pub nc1_raw: f64,
    /// He & Su's separation fuzziness (see [`ClassStats::separation_fuzziness`]).
    pub separation_fuzziness: f64,
    pub cdnv: f64,
    pub nc2_equinorm_m: f64,
    pub nc2_equiangular_m: f64,
    pub nc2_maxangle_m: f64,
    pub nc2_equinorm_w: Option<f64>,
    pub nc2_equiangular_w: Option<f64>,
    pub nc2_maxangle_w: Option<f64>,
    pub nc3: Option<f64>,
    pub nc4_ncc_mismatch: Option<f64>,
    pub ncc_accuracy: f64,
    /// Network accuracy on these (unaugmented) samples, when logits are given.
    pub accuracy: Option<f64>,
}

impl NcMetrics {
    /// (name, value) pairs of the defined metrics.
    pub fn named(&self) -> Vec<(&'static str, f64)> {
        let mut v = vec![
            ("nc1", self.nc1),
            ("nc1_raw", self.nc1_raw),
            ("separation_fuzziness", self.separation_fuzziness),
            ("cdnv", self.cdnv),
            ("nc2_equinorm_m", self.nc2_equinorm_m),
            ("nc2_equiangular_m", self.nc2_equiangular_m),
            ("nc2_maxangle_m", self.nc2_maxangle_m),
            ("ncc_accuracy", self.ncc_accuracy),
        ];
        for (n, o) in [
            ("nc2_equinorm_w", self.nc2_equinorm_w),
            ("nc2_equiangular_w", self.nc2_equiangular_w),
            ("nc2_maxangle_w", self.nc2_maxangle_w),
            ("nc3", self.nc3),
            ("nc4_ncc_mismatch", self.nc4_ncc_mismatch),
            ("accuracy", self.accuracy),
        ] {
            if let Some(x) = o {
                v.push((n, x));
            }
        }
        v
    }
}

/// Coefficient of variation with the unbiased std (ddof = 1).
fn cov(x: &Tensor) -> f64 {
    let m = x.mean(Kind::Double).double_value(&[]);
    x.std(true).double_value(&[]) / m.max(1e-300)
}

/// Cosine Gram matrix of the rows of `x` `[K, D]`.
pub fn cosine_gram(x: &Tensor) -> Tensor {
    let u = x / x.norm_scalaropt_dim(2, &[1i64][..], true).clamp_min(1e-300);
    u.matmul(&u.tr())
}

/// (std of the off-diagonal cosines, mean |cos + 1/(K-1)|) of the rows of `x`.
pub fn angles(x: &Tensor) -> (f64, f64) {
    let k = x.size()[0];
    let g = cosine_gram(x);
    let off = Tensor::ones([k, k], (Kind::Bool, x.device())).logical_xor(&Tensor::eye(k, (Kind::Bool, x.device())));
    let vals = g.masked_select(&off);
    let std = vals.std(true).double_value(&[]);
    let maxangle = (vals + 1.0 / (k - 1) as f64).abs().mean(Kind::Double).double_value(&[]);
    (std, maxangle)
}

/// Tr(Sigma_W Sigma_B^+) with the documented pseudo-inverse.
pub fn trace_sw_sb_pinv(sigma_w: &Tensor, sigma_b: &Tensor) -> Result<f64> {
    let sb_pinv = pinv_psd(sigma_b, NC_PINV_REL_TOL)?;
    Ok((sigma_w * sb_pinv).sum(Kind::Double).double_value(&[]))
}

/// NC metrics of features `h` with `labels`; `logits` (for NC4 and accuracy) and
/// the classifier `w` `[C, D]` (for NC2-W and NC3) are optional.
pub fn nc_metrics(h: &Tensor, labels: &Tensor, c: i64, logits: Option<&Tensor>, w: Option<&Tensor>) -> Result<(NcMetrics, ClassStats)> {
    check_2d(h, None, "NC metrics")?;
    let hd = finite_f64(h, "NC metrics")?;
    let st = ClassStats::from_finite_f64(&hd, labels, c)?;
    let nc1_raw = st.tr_sw_sb_pinv;
    let mt = st.centred_means();
    // CDNV over pairs.
    let d2 = sq_dists(&st.means, &st.means);
    let vsum = st.class_var.unsqueeze(1) + st.class_var.unsqueeze(0);
    let off = Tensor::ones([c, c], (Kind::Bool, h.device())).logical_xor(&Tensor::eye(c, (Kind::Bool, h.device())));
    let cdnv = (vsum / (d2 * 2.0).clamp_min(1e-300)).masked_select(&off).mean(Kind::Double).double_value(&[]);
    let (eq_m, ma_m) = angles(&mt);
    // Nearest class mean: argmin_c ||h - mu_c||^2 = argmin_c (||mu_c||^2 - 2 h.mu_c)
    // (||h||^2 is the same for every c).
    let mn = st.means.square().sum_dim_intlist(&[1i64][..], false, Kind::Double);
    let ncc = (mn.unsqueeze(0) - hd.matmul(&st.means.tr()) * 2.0).argmin(1, false);
    let y = labels.to_kind(Kind::Int64);
    let ncc_accuracy = ncc.eq_tensor(&y).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
    let (mut nc4, mut acc) = (None, None);
    if let Some(z) = logits {
        check_2d(z, Some(c), "NC4 logits")?;
        if z.size()[0] != st.n {
            return Err(Error::shape("NC4", format!("{} logits for {} features", z.size()[0], st.n)));
        }
        let pred = z.argmax(1, false);
        nc4 = Some(ncc.ne_tensor(&pred).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]));
        acc = Some(pred.eq_tensor(&y).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]));
    }
    let mut m = NcMetrics {
        nc1: nc1_raw / c as f64,
        nc1_raw,
        separation_fuzziness: st.separation_fuzziness,
        cdnv,
        nc2_equinorm_m: cov(&mt.norm_scalaropt_dim(2, &[1i64][..], false)),
        nc2_equiangular_m: eq_m,
        nc2_maxangle_m: ma_m,
        ncc_accuracy,
        nc4_ncc_mismatch: nc4,
        accuracy: acc,
        ..Default::default()
    };
    if let Some(w) = w {
        let w = finite_f64(w, "NC classifier")?;
        if w.size() != [c, st.dim] {
            return Err(Error::shape("NC2/NC3 classifier", format!("W is {:?}, features need [{c}, {}]", w.size(), st.dim)));
        }
        let (eq_w, ma_w) = angles(&w);
        m.nc2_equinorm_w = Some(cov(&w.norm_scalaropt_dim(2, &[1i64][..], false)));
        m.nc2_equiangular_w = Some(eq_w);
        m.nc2_maxangle_w = Some(ma_w);
        let a = &w / w.norm(); // rows w_c = columns of W^T
        let b = &mt / mt.norm();
        m.nc3 = Some((a - b).square().sum(Kind::Double).double_value(&[]));
    }
    Ok((m, st))
}

/// NC5 against one OOD set: (centred, uncentred).
pub fn nc5(st: &ClassStats, ood: &Tensor) -> Result<(f64, f64)> {
    check_2d(ood, Some(st.dim), "NC5 OOD features")?;
    let o = finite_f64(ood, "NC5 OOD features")?.mean_dim(&[0i64][..], false, Kind::Double);
    let cosabs = |m: &Tensor, v: &Tensor| -> f64 {
        let v = v / v.norm().clamp_min(1e-300);
        let mn = m / m.norm_scalaropt_dim(2, &[1i64][..], true).clamp_min(1e-300);
        mn.matmul(&v).abs().mean(Kind::Double).double_value(&[])
    };
    let centred = cosabs(&(&st.means - st.sample_mean.unsqueeze(0)), &(&o - &st.sample_mean));
    let uncentred = cosabs(&st.means, &o);
    Ok((centred, uncentred))
}

/// NC5 centred by the mean of the class means mu_G (the centre of NC1-NC3):
/// mean_c |cos(mu_c - mu_G, mu_OOD - mu_G)|.
pub fn nc5_classmean_centred(st: &ClassStats, ood: &Tensor) -> Result<f64> {
    check_2d(ood, Some(st.dim), "NC5 OOD features")?;
    let o = finite_f64(ood, "NC5 OOD features")?.mean_dim(&[0i64][..], false, Kind::Double) - &st.global_mean;
    let v = &o / o.norm().clamp_min(1e-300);
    let m = st.centred_means();
    let mn = &m / m.norm_scalaropt_dim(2, &[1i64][..], true).clamp_min(1e-300);
    Ok(mn.matmul(&v).abs().mean(Kind::Double).double_value(&[]))
}

/// The original notebook 04's "OOD as class C+1" statistics (documented as ad hoc:
/// OOD weighted by its sample count, everything centred by the ID mean of means):
/// (NC1 with OOD, max-angle equiangularity of the C+1 centred means).
pub fn nc_with_ood_class(st: &ClassStats, id: &Tensor, labels: &Tensor, ood: &Tensor) -> Result<(f64, f64)> {
    check_2d(ood, Some(st.dim), "ID+OOD NC")?;
    let h = finite_f64(id, "ID+OOD NC")?;
    let o = finite_f64(ood, "ID+OOD NC")?;
    let mu_o = o.mean_dim(&[0i64][..], true, Kind::Double);
    let y = labels.to_kind(Kind::Int64);
    let cw = &h - st.means.index_select(0, &y);
    let co = &o - &mu_o;
    let n_all = (h.size()[0] + o.size()[0]) as f64;
    let m_all = Tensor::cat(&[&st.means, &mu_o], 0) - st.global_mean.unsqueeze(0);
    let k = st.num_classes + 1;
    let sb = m_all.tr().matmul(&m_all) / k as f64;
    // Tr(S_W S_B^+) with S_W = (cw^T cw + co^T co) / n_all, as ||cw L||^2 + ||co L||^2
    // (L L^T = S_B^+), without forming S_W (see ClassStats::tr_sw_sb_pinv).
    let l = crate::numerics::pinv_sqrt(&sb, NC_PINV_REL_TOL)?;
    let tr = (cw.matmul(&l).square().sum(Kind::Double) + co.matmul(&l).square().sum(Kind::Double)).double_value(&[]) / n_all;
    let nc1 = tr / k as f64;
    let (_, maxangle) = angles(&m_all);
    Ok((nc1, maxangle))
}

/// The matrices the assignment asked for (and the original never plotted).
pub struct ClassGeometry {
    /// `[C, C]` Euclidean distances between centred class means.
    pub mean_distances: Tensor,
    /// `[C, C]` cosines between centred class means.
    pub mean_cosines: Tensor,
    /// `[C]` within-class variance Tr(Sigma_W,c).
    pub class_variance: Tensor,
    /// `[C, C]` cos(w_c, mu~_c') (rows: classifier, columns: means), when W is given.
    pub w_mean_cosines: Option<Tensor>,
}

impl ClassGeometry {
    /// From class statistics and an optional classifier.
    pub fn new(st: &ClassStats, w: Option<&Tensor>) -> Self {
        let mt = st.centred_means();
        let w_mean_cosines = w.map(|w| {
            let w = w.to_kind(Kind::Double);
            let a = &w / w.norm_scalaropt_dim(2, &[1i64][..], true).clamp_min(1e-300);
            let b = &mt / mt.norm_scalaropt_dim(2, &[1i64][..], true).clamp_min(1e-300);
            a.matmul(&b.tr())
        });
        ClassGeometry {
            mean_distances: sq_dists(&mt, &mt).sqrt(),
            mean_cosines: cosine_gram(&mt),
            class_variance: st.class_var.shallow_clone(),
            w_mean_cosines,
        }
    }
}
