//! Is a difference between two detectors real? DeLong's test for the
//! difference of two correlated AUROCs (both detectors score the same ID and
//! OOD samples), Holm's step-down correction for comparing many detectors with
//! the best, and the group of detectors statistically tied with the best.
//!
//! - **DeLong** (DeLong, DeLong & Clarke-Pearson, Biometrics 1988), with the
//!   structural components computed from midranks (Sun & Xu, IEEE SPL 2014):
//!   for detector r, V10_i = (rank of ID sample i among all - rank among ID) / m,
//!   V01_j = 1 - (rank of OOD sample j among all - rank among OOD) / n; the
//!   covariance of (AUC_a, AUC_b) is S10 / n + S01 / m with S the sample
//!   covariances (ddof 1) of the components; z = (AUC_a - AUC_b) / sqrt(var),
//!   two-sided p from the normal distribution. Ties count one half, as in AUROC.
//! - **Holm** (1979): sort the m p-values ascending, p_(i) * (m - i + 1), running
//!   maximum, capped at 1.
//! - **Tied with the best**: per dataset the detector with the highest AUROC is
//!   the best; every other detector whose Holm-adjusted p-value against it is at
//!   least `alpha` (default 0.05) is tied with it.

use crate::error::{Error, Result};

/// Midranks (1-based; ties share the mean of their ranks) of `x`.
fn midranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = mid;
        }
        i = j + 1;
    }
    r
}

/// AUROC (ID = positive) and DeLong's structural components (V10 over ID, V01 over OOD).
fn components(id: &[f64], ood: &[f64]) -> (f64, Vec<f64>, Vec<f64>) {
    let (n, m) = (id.len(), ood.len());
    let all: Vec<f64> = id.iter().chain(ood).copied().collect();
    let r_all = midranks(&all);
    let (r_id, r_ood) = (midranks(id), midranks(ood));
    let v10: Vec<f64> = (0..n).map(|i| (r_all[i] - r_id[i]) / m as f64).collect();
    let v01: Vec<f64> = (0..m).map(|j| 1.0 - (r_all[n + j] - r_ood[j]) / n as f64).collect();
    let auc = v10.iter().sum::<f64>() / n as f64;
    (auc, v10, v01)
}

fn cov(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum::<f64>() / (n - 1.0)
}

/// Standard normal upper tail, through [`erfc`].
fn normal_sf(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// erfc by the Numerical Recipes Chebyshev fit (fractional error < 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07 + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// DeLong's test of AUROC(a) - AUROC(b) for two detectors scored on the same samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeLong {
    pub auroc_a: f64,
    pub auroc_b: f64,
    /// AUROC(a) - AUROC(b).
    pub diff: f64,
    /// Standard error of the difference.
    pub se: f64,
    pub z: f64,
    /// Two-sided p-value (1 when the difference has no variance, e.g. identical scores).
    pub p_value: f64,
}

/// DeLong's paired test: `id_a`/`ood_a` and `id_b`/`ood_b` are two detectors'
/// scores of the same ID and OOD samples, in the same order.
pub fn delong(id_a: &[f64], ood_a: &[f64], id_b: &[f64], ood_b: &[f64]) -> Result<DeLong> {
    let (n, m) = (id_a.len(), ood_a.len());
    if n < 2 || m < 2 {
        return Err(Error::data("DeLong test", format!("needs at least 2 ID and 2 OOD samples, got {n} and {m}")));
    }
    if id_b.len() != n || ood_b.len() != m {
        return Err(Error::shape(
            "DeLong test",
            format!("detector b has {} ID and {} OOD scores, a has {n} and {m}", id_b.len(), ood_b.len()),
        ));
    }
    if let Some(x) = id_a.iter().chain(ood_a).chain(id_b).chain(ood_b).find(|x| !x.is_finite()) {
        return Err(Error::data("DeLong test", format!("non-finite score {x}")));
    }
    let (auc_a, v10a, v01a) = components(id_a, ood_a);
    let (auc_b, v10b, v01b) = components(id_b, ood_b);
    let var = (cov(&v10a, &v10a) + cov(&v10b, &v10b) - 2.0 * cov(&v10a, &v10b)) / n as f64
        + (cov(&v01a, &v01a) + cov(&v01b, &v01b) - 2.0 * cov(&v01a, &v01b)) / m as f64;
    let diff = auc_a - auc_b;
    let se = var.max(0.0).sqrt();
    let (z, p_value) = if se > 0.0 {
        let z = diff / se;
        (z, (2.0 * normal_sf(z.abs())).min(1.0))
    } else {
        (0.0, 1.0)
    };
    Ok(DeLong { auroc_a: auc_a, auroc_b: auc_b, diff, se, z, p_value })
}

/// Holm's step-down adjustment of `p` (same order as given).
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut adj = vec![0.0; m];
    let mut running: f64 = 0.0;
    for (i, &k) in order.iter().enumerate() {
        running = running.max((p[k] * (m - i) as f64).min(1.0));
        adj[k] = running;
    }
    adj
}

/// One detector against the best on one dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct VersusBest {
    pub detector: String,
    pub best: String,
    pub test: DeLong,
    /// Holm-adjusted over the detectors compared with the best on this dataset.
    pub p_holm: f64,
    /// Not significantly worse than the best at level `alpha` (the best itself is tied).
    pub tied: bool,
}

/// For one dataset: every detector (name, ID scores, OOD scores) against the
/// one with the highest AUROC, DeLong p-values Holm-adjusted over the others,
/// and whether each is tied with the best at `alpha`.
pub fn versus_best(detectors: &[(String, Vec<f64>, Vec<f64>)], alpha: f64) -> Result<Vec<VersusBest>> {
    if detectors.is_empty() {
        return Ok(Vec::new());
    }
    let aucs = detectors.iter().map(|(_, i, o)| Ok(components(i, o).0)).collect::<Result<Vec<f64>>>()?;
    let best = (0..detectors.len()).fold(0, |b, k| if aucs[k] > aucs[b] { k } else { b });
    let (bn, bi, bo) = &detectors[best];
    let tests = detectors.iter().map(|(_, i, o)| delong(i, o, bi, bo)).collect::<Result<Vec<_>>>()?;
    let others: Vec<usize> = (0..detectors.len()).filter(|&k| k != best).collect();
    let adj = holm(&others.iter().map(|&k| tests[k].p_value).collect::<Vec<_>>());
    let mut out = Vec::with_capacity(detectors.len());
    for (k, (name, _, _)) in detectors.iter().enumerate() {
        let p_holm = others.iter().position(|&o| o == k).map(|i| adj[i]).unwrap_or(1.0);
        out.push(VersusBest { detector: name.clone(), best: bn.clone(), test: tests[k], p_holm, tied: k == best || p_holm >= alpha });
    }
    Ok(out)
}

/// Significance level below which a detector is not tied with the best.
pub const ALPHA: f64 = 0.05;

/// The comparisons of every (epoch, protocol, dataset) of `scores` (each
/// detector against the best there, at [`ALPHA`]) as a table: epoch, protocol,
/// detector, dataset, best, auroc, diff_vs_best, se, z, p_value, p_holm, tied
/// (1/0), then the paired bootstrap (`reps` replicates, seeded; NaN when 0) of
/// the differences from the best: AUROC (`auroc_diff_ci_low/high`, 95 %) and
/// both FPR@95 conventions (`fpr95_ood_accepted_diff` with its interval,
/// `fpr95_id_rejected_diff` with its interval; negative = fewer errors than the best).
pub fn table(scores: &[&super::eval::DetectorScores], reps: usize, seed: u64) -> Result<polars::prelude::DataFrame> {
    use crate::names::metric as m;
    use polars::prelude::*;
    let mut groups: Vec<(i64, super::Protocol, String)> = Vec::new();
    for s in scores {
        for (d, _) in &s.ood {
            let g = (s.epoch, s.protocol, d.clone());
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
    }
    let mut cols: Vec<(&str, Vec<f64>)> = [
        "auroc",
        "diff_vs_best",
        "se",
        "z",
        "p_value",
        "p_holm",
        "auroc_diff_ci_low",
        "auroc_diff_ci_high",
        "fpr95_ood_accepted_diff",
        "fpr95_ood_accepted_diff_ci_low",
        "fpr95_ood_accepted_diff_ci_high",
        "fpr95_id_rejected_diff",
        "fpr95_id_rejected_diff_ci_low",
        "fpr95_id_rejected_diff_ci_high",
    ]
    .into_iter()
    .map(|c| (c, Vec::new()))
    .collect();
    let (mut ep, mut pr, mut det, mut ds, mut best, mut tied) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    for (e, p, d) in groups {
        let dets: Vec<(String, Vec<f64>, Vec<f64>)> = scores
            .iter()
            .filter(|s| s.epoch == e && s.protocol == p)
            .filter_map(|s| s.ood.iter().find(|(n, _)| *n == d).map(|(_, o)| (s.spec.name().to_string(), s.id.clone(), o.clone())))
            .collect();
        if dets.len() < 2 {
            continue;
        }
        let vb = versus_best(&dets, ALPHA)?;
        let bi = dets.iter().position(|(n, _, _)| *n == vb[0].best).unwrap_or(0);
        for (k, v) in vb.into_iter().enumerate() {
            let diffs = if reps > 0 {
                super::metrics::paired_differences((&dets[k].1, &dets[k].2), (&dets[bi].1, &dets[bi].2), reps, 0.95, seed)?
            } else {
                Vec::new()
            };
            let get = |name: &str| diffs.iter().find(|(n, _)| *n == name).map(|(_, c)| *c);
            let nan3 = |c: Option<super::metrics::WithCi>| c.map(|c| [c.value, c.ci_low, c.ci_high]).unwrap_or([f64::NAN; 3]);
            let (a, f1, f2) = (nan3(get(m::AUROC)), nan3(get(m::FPR95_OOD_ACCEPTED)), nan3(get(m::FPR95_ID_REJECTED)));
            let vals = [
                v.test.auroc_a,
                v.test.diff,
                v.test.se,
                v.test.z,
                v.test.p_value,
                v.p_holm,
                a[1],
                a[2],
                f1[0],
                f1[1],
                f1[2],
                f2[0],
                f2[1],
                f2[2],
            ];
            for (c, x) in cols.iter_mut().zip(vals) {
                c.1.push(x);
            }
            ep.push(e);
            pr.push(p.name().to_string());
            det.push(v.detector);
            ds.push(d.clone());
            best.push(v.best);
            tied.push(v.tied as i64);
        }
    }
    let n = ep.len();
    let mut out = vec![
        Column::new("epoch".into(), ep),
        Column::new("protocol".into(), pr),
        Column::new("detector".into(), det),
        Column::new("dataset".into(), ds),
        Column::new("best".into(), best),
    ];
    let (head, tail) = cols.split_at(6);
    out.extend(head.iter().map(|(c, v)| Column::new((*c).into(), v.clone())));
    out.push(Column::new("tied".into(), tied));
    out.extend(tail.iter().map(|(c, v)| Column::new((*c).into(), v.clone())));
    Ok(DataFrame::new(n, out)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holm_by_hand() {
        // p = (0.01, 0.04, 0.03): sorted 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 -> max 0.06.
        let a = holm(&[0.01, 0.04, 0.03]);
        assert!((a[0] - 0.03).abs() < 1e-15 && (a[1] - 0.06).abs() < 1e-15 && (a[2] - 0.06).abs() < 1e-15, "{a:?}");
        assert_eq!(holm(&[0.9, 0.8]), vec![1.0, 1.0]);
    }

    #[test]
    fn normal_tail() {
        assert!((normal_sf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_sf(1.959_963_985) - 0.025).abs() < 1e-7);
        assert!((normal_sf(-1.0) - 0.841_344_746).abs() < 1e-7);
    }

    /// DeLong's components from their definition, psi(x, y) = 1 if x > y, 1/2 if equal.
    fn naive(id: &[f64], ood: &[f64]) -> (f64, Vec<f64>, Vec<f64>) {
        let psi = |x: f64, y: f64| {
            if x > y {
                1.0
            } else if x == y {
                0.5
            } else {
                0.0
            }
        };
        let v10: Vec<f64> = id.iter().map(|&x| ood.iter().map(|&y| psi(x, y)).sum::<f64>() / ood.len() as f64).collect();
        let v01: Vec<f64> = ood.iter().map(|&y| id.iter().map(|&x| psi(x, y)).sum::<f64>() / id.len() as f64).collect();
        (v10.iter().sum::<f64>() / id.len() as f64, v10, v01)
    }

    #[test]
    fn delong_against_its_definition() {
        let mut g = crate::util::SplitMix64::new(3);
        let n = 40;
        let m = 30;
        let id_a: Vec<f64> = (0..n).map(|_| 1.0 + g.normal()).collect();
        let ood_a: Vec<f64> = (0..m).map(|_| g.normal()).collect();
        // b: a noisier, rounded copy of a (ties, correlation).
        let id_b: Vec<f64> = id_a.iter().map(|x| ((x + 0.8 * g.normal()) * 2.0).round() / 2.0).collect();
        let ood_b: Vec<f64> = ood_a.iter().map(|x| ((x + 0.8 * g.normal()) * 2.0).round() / 2.0).collect();
        let d = delong(&id_a, &ood_a, &id_b, &ood_b).unwrap();
        let (aa, a10, a01) = naive(&id_a, &ood_a);
        let (ab, b10, b01) = naive(&id_b, &ood_b);
        let var = (cov(&a10, &a10) + cov(&b10, &b10) - 2.0 * cov(&a10, &b10)) / n as f64
            + (cov(&a01, &a01) + cov(&b01, &b01) - 2.0 * cov(&a01, &b01)) / m as f64;
        assert!((d.auroc_a - aa).abs() < 1e-12 && (d.auroc_b - ab).abs() < 1e-12);
        assert!((d.se - var.sqrt()).abs() < 1e-12, "{} vs {}", d.se, var.sqrt());
        assert!((d.z - (aa - ab) / var.sqrt()).abs() < 1e-9);
        assert!(d.p_value > 0.0 && d.p_value < 1.0);
        // The same detector twice: no difference, p = 1.
        let same = delong(&id_a, &ood_a, &id_a, &ood_a).unwrap();
        assert_eq!((same.diff, same.p_value), (0.0, 1.0));
        // A perfect detector against a useless one: a tiny p-value.
        let perfect_id: Vec<f64> = (0..n).map(|i| 10.0 + i as f64).collect();
        let perfect_ood: Vec<f64> = (0..m).map(|j| -(j as f64)).collect();
        let flat: Vec<f64> = (0..n + m).map(|k| ((k * 7919) % 13) as f64).collect();
        let t = delong(&perfect_id, &perfect_ood, &flat[..n], &flat[n..]).unwrap();
        assert!(t.auroc_a == 1.0 && t.p_value < 1e-6, "{t:?}");
        assert!(delong(&[1.0], &[0.0, 1.0], &[1.0], &[0.0, 1.0]).is_err());
        assert!(delong(&id_a, &ood_a, &id_a[..3], &ood_a).is_err());
    }

    #[test]
    fn the_best_and_its_ties() {
        let mut g = crate::util::SplitMix64::new(5);
        let n = 200;
        let id: Vec<f64> = (0..n).map(|_| 2.0 + g.normal()).collect();
        let ood: Vec<f64> = (0..n).map(|_| g.normal()).collect();
        let jitter = |v: &[f64], s: f64, g: &mut crate::util::SplitMix64| v.iter().map(|x| x + s * g.normal()).collect::<Vec<f64>>();
        let dets = vec![
            ("good".to_string(), id.clone(), ood.clone()),
            ("good_too".to_string(), jitter(&id, 0.05, &mut g), jitter(&ood, 0.05, &mut g)),
            ("bad".to_string(), jitter(&id, 3.0, &mut g), jitter(&ood, 3.0, &mut g)),
        ];
        let r = versus_best(&dets, 0.05).unwrap();
        let tied: Vec<&str> = r.iter().filter(|v| v.tied).map(|v| v.detector.as_str()).collect();
        assert!(tied.contains(&"good") && tied.contains(&"good_too") && !tied.contains(&"bad"), "{r:?}");
        assert!(r.iter().all(|v| v.best == "good" || v.best == "good_too"));
    }

    #[test]
    fn midranks_share_ties() {
        assert_eq!(midranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
    }
}
