//! OOD detection metrics. Scores are "higher = more in-distribution".
//!
//! All metrics are computed exactly from the scores grouped by value (ties count
//! half for AUROC; thresholds at every distinct score, no vertex dropping):
//!
//! - **AUROC** = P(s_ID > s_OOD) + 1/2 P(s_ID = s_OOD) (Mann-Whitney U / (n_ID n_OOD));
//!   the same whichever class is called positive.
//! - **fpr95_ood_accepted_at_95_id** (ODIN / ViM / NECO convention, OpenOOD v1
//!   `fpr_recall`): lower the threshold until at least 95 % of ID samples are
//!   accepted (score >= t); the fraction of OOD samples accepted at that threshold.
//! - **fpr95_id_rejected_at_95_ood** (the original project's, pytorch-ood's):
//!   OOD is the positive class; raise the threshold until at least 95 % of OOD
//!   samples are flagged (score <= t); the fraction of ID samples flagged.
//! - **aupr_in_ap**: average precision with ID positive, ranking by score;
//!   **aupr_out_ap**: OOD positive, ranking by -score. AP = sum_k (R_k - R_{k-1}) P_k
//!   over distinct thresholds (scikit-learn's `average_precision_score`).
//! - **aupr_in_trapz** / **aupr_out_trapz**: the trapezoidal area under the same
//!   precision-recall points, starting from (R, P) = (0, 1): scikit-learn's
//!   `auc(recall, precision)` after `precision_recall_curve`, what OpenOOD and
//!   pytorch-ood report. The two forms differ by ~1e-3.
//! - **detection_error**: min over thresholds (accept when score >= t, and the
//!   threshold above every score) of (FPR + FNR) / 2, with ID positive.
//!
//! - **ccr_fpr_1e-k** (OpenOOD's CCR@FPR, Dhamija et al. 2018): the fraction of ID
//!   samples that are correctly classified *and* scored above the threshold
//!   t = the ceil(fpr * n_OOD)-th largest OOD score (strictly above, as OpenOOD's
//!   `ccr_fpr`), for fpr in 1e-4, 1e-3, 1e-2, 1e-1. "Correct" is the network's own
//!   prediction (argmax of its logits); OpenOOD takes each postprocessor's
//!   prediction, which differs only for detectors that change the logits' argmax
//!   (feature shaping: ReAct, ASH, DICE, SCALE). No bootstrap interval.
//!
//! Confidence intervals: a seeded bootstrap that resamples ID and OOD scores
//! separately (stratified); every replicate re-weights the pre-sorted scores by
//! multinomial counts, so a replicate is one O(n) pass.

use crate::error::{Error, Result};
use crate::util::SplitMix64;

/// The metrics of one (ID, OOD) pair.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OodMetrics {
    pub auroc: f64,
    pub fpr95_ood_accepted_at_95_id: f64,
    pub fpr95_id_rejected_at_95_ood: f64,
    pub aupr_in_ap: f64,
    pub aupr_out_ap: f64,
    pub aupr_in_trapz: f64,
    pub aupr_out_trapz: f64,
    pub detection_error: f64,
}

impl OodMetrics {
    /// (name, value) pairs in a fixed order.
    pub fn named(&self) -> [(&'static str, f64); 8] {
        use crate::names::metric as m;
        [
            (m::AUROC, self.auroc),
            (m::FPR95_OOD_ACCEPTED, self.fpr95_ood_accepted_at_95_id),
            (m::FPR95_ID_REJECTED, self.fpr95_id_rejected_at_95_ood),
            (m::AUPR_IN_AP, self.aupr_in_ap),
            (m::AUPR_OUT_AP, self.aupr_out_ap),
            (m::AUPR_IN_TRAPZ, self.aupr_in_trapz),
            (m::AUPR_OUT_TRAPZ, self.aupr_out_trapz),
            (m::DETECTION_ERROR, self.detection_error),
        ]
    }
}

/// Scores of both classes merged and grouped by distinct value, descending.
#[derive(Debug, Clone)]
pub struct Ranked {
    /// For every sample in descending score order: (group index, is_id, original index).
    order: Vec<(u32, bool, u32)>,
    groups: usize,
    n_id: usize,
    n_ood: usize,
}

fn check(scores: &[f64], what: &str) -> Result<()> {
    if scores.is_empty() {
        return Err(Error::data("OOD metrics", format!("{what} scores are empty")));
    }
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        return Err(Error::data("OOD metrics", format!("{what} score {i} is {}", scores[i])));
    }
    Ok(())
}

impl Ranked {
    /// Sorts and groups the scores (NaN / inf or an empty side is an error).
    pub fn new(id: &[f64], ood: &[f64]) -> Result<Self> {
        check(id, "ID")?;
        check(ood, "OOD")?;
        let mut all: Vec<(f64, bool, u32)> = id
            .iter()
            .enumerate()
            .map(|(i, &s)| (s, true, i as u32))
            .chain(ood.iter().enumerate().map(|(i, &s)| (s, false, i as u32)))
            .collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut order = Vec::with_capacity(all.len());
        let mut g = 0u32;
        for (k, &(s, is_id, i)) in all.iter().enumerate() {
            if k > 0 && s != all[k - 1].0 {
                g += 1;
            }
            order.push((g, is_id, i));
        }
        Ok(Ranked { order, groups: g as usize + 1, n_id: id.len(), n_ood: ood.len() })
    }

    /// Per-group (ID weight, OOD weight), descending score; `w_id`/`w_ood` weight each sample.
    fn group_weights(&self, w_id: Option<&[f64]>, w_ood: Option<&[f64]>) -> Vec<(f64, f64)> {
        let mut g = vec![(0.0, 0.0); self.groups];
        for &(gi, is_id, i) in &self.order {
            let e = &mut g[gi as usize];
            if is_id {
                e.0 += w_id.map(|w| w[i as usize]).unwrap_or(1.0);
            } else {
                e.1 += w_ood.map(|w| w[i as usize]).unwrap_or(1.0);
            }
        }
        g
    }

    /// All metrics, optionally with per-sample weights (bootstrap counts).
    pub fn metrics_weighted(&self, w_id: Option<&[f64]>, w_ood: Option<&[f64]>) -> OodMetrics {
        let g = self.group_weights(w_id, w_ood);
        let (wi, wo): (f64, f64) = g.iter().fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        // Descending sweep: ID accepted (TP), OOD accepted (FP).
        let (mut tp, mut fp) = (0.0, 0.0);
        let mut auc = 0.0;
        let mut fpr_at_95_id = f64::NAN;
        let mut ap_in = 0.0;
        // Trapezoids from (R, P) = (0, 1); the detection error starts at "accept none".
        let (mut trapz_in, mut r_prev, mut p_prev) = (0.0, 0.0, 1.0);
        let mut det_err: f64 = 0.5;
        for &(gid, good) in &g {
            auc += good * (tp + 0.5 * gid);
            tp += gid;
            fp += good;
            if gid > 0.0 {
                ap_in += gid / wi * tp / (tp + fp);
            }
            if gid + good > 0.0 {
                // (A group of zero weight, e.g. in a bootstrap replicate, is no threshold.)
                let (r, p) = (tp / wi, tp / (tp + fp));
                trapz_in += (r - r_prev) * (p + p_prev) / 2.0;
                (r_prev, p_prev) = (r, p);
            }
            det_err = det_err.min((1.0 - tp / wi + fp / wo) / 2.0);
            if fpr_at_95_id.is_nan() && tp / wi >= 0.95 - 1e-12 {
                fpr_at_95_id = fp / wo;
            }
        }
        // Ascending sweep: OOD flagged (TP), ID flagged (FP).
        let (mut to, mut fi) = (0.0, 0.0);
        let mut fpr_at_95_ood = f64::NAN;
        let mut ap_out = 0.0;
        let (mut trapz_out, mut r_prev, mut p_prev) = (0.0, 0.0, 1.0);
        for &(gid, good) in g.iter().rev() {
            to += good;
            fi += gid;
            if good > 0.0 {
                ap_out += good / wo * to / (to + fi);
            }
            if gid + good > 0.0 {
                let (r, p) = (to / wo, to / (to + fi));
                trapz_out += (r - r_prev) * (p + p_prev) / 2.0;
                (r_prev, p_prev) = (r, p);
            }
            if fpr_at_95_ood.is_nan() && to / wo >= 0.95 - 1e-12 {
                fpr_at_95_ood = fi / wi;
            }
        }
        OodMetrics {
            auroc: auc / (wi * wo),
            fpr95_ood_accepted_at_95_id: fpr_at_95_id,
            fpr95_id_rejected_at_95_ood: fpr_at_95_ood,
            aupr_in_ap: ap_in,
            aupr_out_ap: ap_out,
            aupr_in_trapz: trapz_in,
            aupr_out_trapz: trapz_out,
            detection_error: det_err,
        }
    }

    /// Seeded stratified bootstrap: `reps` replicates of every metric.
    pub fn bootstrap(&self, reps: usize, seed: u64) -> Vec<OodMetrics> {
        let mut rng = SplitMix64::derive(seed, &[0xb007]);
        let mut wi = vec![0.0; self.n_id];
        let mut wo = vec![0.0; self.n_ood];
        (0..reps)
            .map(|_| {
                wi.iter_mut().for_each(|w| *w = 0.0);
                wo.iter_mut().for_each(|w| *w = 0.0);
                for _ in 0..self.n_id {
                    wi[rng.below(self.n_id as u64) as usize] += 1.0;
                }
                for _ in 0..self.n_ood {
                    wo[rng.below(self.n_ood as u64) as usize] += 1.0;
                }
                self.metrics_weighted(Some(&wi), Some(&wo))
            })
            .collect()
    }
}

/// All metrics of ID scores against OOD scores.
pub fn ood_metrics(id: &[f64], ood: &[f64]) -> Result<OodMetrics> {
    Ok(Ranked::new(id, ood)?.metrics_weighted(None, None))
}

/// AUROC alone.
pub fn auroc(id: &[f64], ood: &[f64]) -> Result<f64> {
    Ok(ood_metrics(id, ood)?.auroc)
}

/// A metric value with a percentile bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct WithCi {
    pub value: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

/// The `p`-quantile of `v` (sorted in place; linear interpolation between order
/// statistics, numpy's default), NaN when empty.
fn quantile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = p * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Every metric with a `level` (e.g. 0.95) percentile bootstrap interval.
pub fn ood_metrics_ci(id: &[f64], ood: &[f64], reps: usize, level: f64, seed: u64) -> Result<Vec<(&'static str, WithCi)>> {
    if !(0.0 < level && level < 1.0) {
        return Err(Error::param("level", format!("{level} is outside (0, 1)")));
    }
    let r = Ranked::new(id, ood)?;
    let point = r.metrics_weighted(None, None);
    let boots = r.bootstrap(reps, seed);
    let q = quantile;
    Ok(point
        .named()
        .iter()
        .enumerate()
        .map(|(k, &(name, value))| {
            let mut vals: Vec<f64> = boots.iter().map(|m| m.named()[k].1).collect();
            let a = (1.0 - level) / 2.0;
            (name, WithCi { value, ci_low: q(&mut vals, a), ci_high: q(&mut vals, 1.0 - a) })
        })
        .collect())
}

/// CCR@FPR (see the module docs): ID samples both correct and scored strictly
/// above the `ceil(fpr * n_ood)`-th largest OOD score, over all ID samples.
pub fn ccr_at_fpr(id: &[f64], ood: &[f64], correct: &[bool], fpr: f64) -> Result<f64> {
    check(id, "ID")?;
    check(ood, "OOD")?;
    if correct.len() != id.len() {
        return Err(Error::shape("CCR@FPR", format!("{} correctness flags for {} ID scores", correct.len(), id.len())));
    }
    if !(fpr > 0.0 && fpr <= 1.0) {
        return Err(Error::param("fpr", format!("{fpr} is outside (0, 1]")));
    }
    let mut o = ood.to_vec();
    o.sort_by(|a, b| b.total_cmp(a));
    let k = ((fpr * o.len() as f64).ceil() as usize).clamp(1, o.len());
    let t = o[k - 1];
    Ok(id.iter().zip(correct).filter(|(s, c)| **c && **s > t).count() as f64 / id.len() as f64)
}

/// Paired bootstrap of the difference of every metric between detector `a` and
/// detector `b` scored on the same samples (`a - b`): each replicate resamples
/// the ID and the OOD indices once (stratified, seeded as [`ood_metrics_ci`])
/// and applies the same resample to both detectors. Returns, per metric, the
/// point difference and its percentile interval at `level`.
pub fn paired_differences(
    a: (&[f64], &[f64]),
    b: (&[f64], &[f64]),
    reps: usize,
    level: f64,
    seed: u64,
) -> Result<Vec<(&'static str, WithCi)>> {
    if a.0.len() != b.0.len() || a.1.len() != b.1.len() {
        return Err(Error::shape(
            "paired bootstrap",
            format!("detectors scored different samples: {} / {} ID, {} / {} OOD", a.0.len(), b.0.len(), a.1.len(), b.1.len()),
        ));
    }
    if !(0.0 < level && level < 1.0) {
        return Err(Error::param("level", format!("{level} is outside (0, 1)")));
    }
    let (ra, rb) = (Ranked::new(a.0, a.1)?, Ranked::new(b.0, b.1)?);
    let (pa, pb) = (ra.metrics_weighted(None, None).named(), rb.metrics_weighted(None, None).named());
    // Same seed and sizes: the same resamples for both (see `Ranked::bootstrap`).
    let (ba, bb) = (ra.bootstrap(reps, seed), rb.bootstrap(reps, seed));
    let q = quantile;
    let al = (1.0 - level) / 2.0;
    Ok((0..pa.len())
        .map(|k| {
            let mut d: Vec<f64> = ba.iter().zip(&bb).map(|(x, y)| x.named()[k].1 - y.named()[k].1).collect();
            (pa[k].0, WithCi { value: pa[k].1 - pb[k].1, ci_low: q(&mut d, al), ci_high: q(&mut d, 1.0 - al) })
        })
        .collect())
}

/// Accuracy of logits `[N, C]` against labels `[N]`.
pub fn accuracy(logits: &tch::Tensor, labels: &tch::Tensor) -> Result<f64> {
    let (l, y) = (logits.size(), labels.size());
    if l.len() != 2 || y.len() != 1 || l[0] != y[0] || l[0] == 0 {
        return Err(Error::shape("accuracy", format!("logits {l:?}, labels {y:?}")));
    }
    Ok(logits.argmax(-1, false).eq_tensor(labels).to_kind(tch::Kind::Double).mean(tch::Kind::Double).double_value(&[]))
}

/// ROC curve points (FPR = OOD accepted, TPR = ID accepted), one per distinct
/// threshold from the highest score down, starting at (0, 0).
pub fn roc_points(id: &[f64], ood: &[f64]) -> Result<Vec<(f64, f64)>> {
    let r = Ranked::new(id, ood)?;
    let g = r.group_weights(None, None);
    let (wi, wo) = (r.n_id as f64, r.n_ood as f64);
    let mut pts = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0.0, 0.0);
    for (a, b) in g {
        tp += a;
        fp += b;
        pts.push((fp / wo, tp / wi));
    }
    Ok(pts)
}
