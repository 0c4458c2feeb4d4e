//! OOD metrics against hand-derived values, brute-force formulations and scikit-learn.

mod common;

use oodnc::ood::metrics::{ood_metrics, ood_metrics_ci, Ranked};
use oodnc::util::SplitMix64;

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn hand_derived_example() {
    let id = [0.9, 0.8, 0.7, 0.6];
    let ood = [0.75, 0.5, 0.4];
    let m = ood_metrics(&id, &ood).unwrap();
    assert!(close(m.auroc, 10.0 / 12.0, 1e-12), "{m:?}");
    assert!(close(m.fpr95_ood_accepted_at_95_id, 1.0 / 3.0, 1e-12));
    assert!(close(m.fpr95_id_rejected_at_95_ood, 0.5, 1e-12));
    assert!(close(m.aupr_in_ap, 0.25 * (1.0 + 1.0 + 0.75 + 0.8), 1e-12));
    assert!(close(m.aupr_out_ap, (1.0 + 1.0 + 0.6) / 3.0, 1e-12));
}

#[test]
fn ties_count_half() {
    let m = ood_metrics(&[1.0, 1.0], &[1.0, 0.0]).unwrap();
    // Pairs: (1,1) tie x2 -> 1, (1,0) win x2 -> 2; total 3 of 4.
    assert!(close(m.auroc, 0.75, 1e-12));
    let all_tied = ood_metrics(&[0.5; 5], &[0.5; 7]).unwrap();
    assert!(close(all_tied.auroc, 0.5, 1e-12));
    assert!(close(all_tied.fpr95_ood_accepted_at_95_id, 1.0, 1e-12));
}

fn random_scores(seed: u64, n: usize, shift: f64, round: bool) -> Vec<f64> {
    let mut g = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let v = g.normal() + shift;
            if round {
                (v * 4.0).round() / 4.0
            } else {
                v
            }
        })
        .collect()
}

fn brute_auroc(id: &[f64], ood: &[f64]) -> f64 {
    let mut s = 0.0;
    for &a in id {
        for &b in ood {
            s += if a > b {
                1.0
            } else if a == b {
                0.5
            } else {
                0.0
            };
        }
    }
    s / (id.len() * ood.len()) as f64
}

/// Sweep every candidate threshold t (each distinct score), accept score >= t.
fn brute_fpr_at_95_id(id: &[f64], ood: &[f64]) -> f64 {
    let mut ts: Vec<f64> = id.iter().chain(ood).copied().collect();
    ts.sort_by(|a, b| b.total_cmp(a));
    ts.dedup();
    for t in ts {
        let tpr = id.iter().filter(|&&s| s >= t).count() as f64 / id.len() as f64;
        if tpr >= 0.95 {
            return ood.iter().filter(|&&s| s >= t).count() as f64 / ood.len() as f64;
        }
    }
    unreachable!()
}

/// OOD positive: flag score <= t; smallest t flagging >= 95 % of OOD.
fn brute_fpr_at_95_ood(id: &[f64], ood: &[f64]) -> f64 {
    let mut ts: Vec<f64> = id.iter().chain(ood).copied().collect();
    ts.sort_by(|a, b| a.total_cmp(b));
    ts.dedup();
    for t in ts {
        let tpr = ood.iter().filter(|&&s| s <= t).count() as f64 / ood.len() as f64;
        if tpr >= 0.95 {
            return id.iter().filter(|&&s| s <= t).count() as f64 / id.len() as f64;
        }
    }
    unreachable!()
}

#[test]
fn against_brute_force_with_and_without_ties() {
    for (seed, round) in [(1, false), (2, true), (3, true)] {
        let id = random_scores(seed, 257, 1.0, round);
        let ood = random_scores(seed + 100, 191, 0.0, round);
        let m = ood_metrics(&id, &ood).unwrap();
        assert!(close(m.auroc, brute_auroc(&id, &ood), 1e-12));
        assert!(close(m.fpr95_ood_accepted_at_95_id, brute_fpr_at_95_id(&id, &ood), 1e-12));
        assert!(close(m.fpr95_id_rejected_at_95_ood, brute_fpr_at_95_ood(&id, &ood), 1e-12));
    }
}

#[test]
fn invariances() {
    let id = random_scores(7, 300, 0.8, true);
    let ood = random_scores(8, 200, 0.0, true);
    let m = ood_metrics(&id, &ood).unwrap();
    // Negated scores with the roles swapped: AUROC = 1 - AUROC(negated), and the two FPR conventions swap.
    let neg = |v: &[f64]| v.iter().map(|x| -x).collect::<Vec<_>>();
    let n = ood_metrics(&neg(&id), &neg(&ood)).unwrap();
    assert!(close(n.auroc, 1.0 - m.auroc, 1e-12));
    let swapped = ood_metrics(&neg(&ood), &neg(&id)).unwrap();
    assert!(close(swapped.auroc, m.auroc, 1e-12));
    assert!(close(swapped.fpr95_ood_accepted_at_95_id, m.fpr95_id_rejected_at_95_ood, 1e-12));
    assert!(close(swapped.aupr_in_ap, m.aupr_out_ap, 1e-12));
    // Permutation invariance.
    let mut g = SplitMix64::new(1);
    let p = g.permutation(id.len());
    let id_p: Vec<f64> = p.iter().map(|&i| id[i as usize]).collect();
    assert_eq!(ood_metrics(&id_p, &ood).unwrap(), m);
    // Monotone transforms do not change anything.
    let exp = |v: &[f64]| v.iter().map(|x| x.exp()).collect::<Vec<_>>();
    let e = ood_metrics(&exp(&id), &exp(&ood)).unwrap();
    assert!(close(e.auroc, m.auroc, 1e-12) && close(e.aupr_in_ap, m.aupr_in_ap, 1e-12));
}

#[test]
fn aupr_and_auroc_match_scikit_learn() {
    let id = random_scores(11, 400, 0.7, true);
    let ood = random_scores(12, 333, 0.0, true);
    let m = ood_metrics(&id, &ood).unwrap();
    let fmt = |v: &[f64]| v.iter().map(|x| format!("{x}")).collect::<Vec<_>>().join(",");
    let out = common::run_python(
        "import sys, numpy as np\n\
         from sklearn.metrics import roc_auc_score, average_precision_score, precision_recall_curve, auc\n\
         i = np.array([float(x) for x in sys.argv[1].split(',')]); o = np.array([float(x) for x in sys.argv[2].split(',')])\n\
         y = np.r_[np.ones(len(i)), np.zeros(len(o))]; s = np.r_[i, o]\n\
         pi, ri, _ = precision_recall_curve(y, s); po, ro, _ = precision_recall_curve(1 - y, -s)\n\
         print(roc_auc_score(y, s), average_precision_score(y, s), average_precision_score(1 - y, -s), auc(ri, pi), auc(ro, po))",
        &[&fmt(&id), &fmt(&ood)],
    );
    let v: Vec<f64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert!(close(m.auroc, v[0], 1e-12), "{} vs {}", m.auroc, v[0]);
    assert!(close(m.aupr_in_ap, v[1], 1e-12), "{} vs {}", m.aupr_in_ap, v[1]);
    assert!(close(m.aupr_out_ap, v[2], 1e-12), "{} vs {}", m.aupr_out_ap, v[2]);
    // The trapezoidal form OpenOOD and pytorch-ood report: auc(recall, precision).
    assert!(close(m.aupr_in_trapz, v[3], 1e-12), "{} vs {}", m.aupr_in_trapz, v[3]);
    assert!(close(m.aupr_out_trapz, v[4], 1e-12), "{} vs {}", m.aupr_out_trapz, v[4]);
    assert!((m.aupr_in_trapz - m.aupr_in_ap).abs() > 1e-6, "the two forms should differ on these scores");
}

#[test]
fn detection_error_against_every_threshold() {
    // Brute force: every distinct score as threshold (accept when >= t) and one above all.
    let id = random_scores(31, 300, 0.8, true);
    let ood = random_scores(32, 200, 0.0, true);
    let m = ood_metrics(&id, &ood).unwrap();
    let mut ts: Vec<f64> = id.iter().chain(&ood).copied().collect();
    ts.push(f64::INFINITY);
    let best = ts
        .iter()
        .map(|&t| {
            let fnr = id.iter().filter(|&&s| s < t).count() as f64 / id.len() as f64;
            let fpr = ood.iter().filter(|&&s| s >= t).count() as f64 / ood.len() as f64;
            (fnr + fpr) / 2.0
        })
        .fold(f64::INFINITY, f64::min);
    assert!(close(m.detection_error, best, 1e-12), "{} vs {best}", m.detection_error);
    // Perfect separation: 0; identical distributions: 0.5 at most.
    assert_eq!(ood_metrics(&[2.0, 3.0], &[0.0, 1.0]).unwrap().detection_error, 0.0);
    assert!(ood_metrics(&[1.0, 1.0], &[1.0, 1.0]).unwrap().detection_error <= 0.5);
}

#[test]
fn bootstrap_is_seeded_and_brackets_the_value() {
    let id = random_scores(21, 500, 1.0, false);
    let ood = random_scores(22, 400, 0.0, false);
    let a = ood_metrics_ci(&id, &ood, 200, 0.95, 5).unwrap();
    let b = ood_metrics_ci(&id, &ood, 200, 0.95, 5).unwrap();
    assert_eq!(a, b);
    for (name, c) in &a {
        assert!(c.ci_low <= c.value + 1e-9 && c.value <= c.ci_high + 1e-9, "{name}: {c:?}");
    }
    let au = a.iter().find(|(n, _)| *n == "auroc").unwrap().1;
    // AUROC standard error ~ 0.015 here: the 95 % interval is a few hundredths wide.
    assert!(au.ci_high - au.ci_low > 0.01 && au.ci_high - au.ci_low < 0.12, "{au:?}");
    // Unit weights reproduce the point estimate.
    let r = Ranked::new(&id, &ood).unwrap();
    assert_eq!(r.metrics_weighted(Some(&vec![1.0; 500]), Some(&vec![1.0; 400])), r.metrics_weighted(None, None));
}

#[test]
fn bad_inputs_are_errors() {
    assert!(ood_metrics(&[], &[1.0]).is_err());
    assert!(ood_metrics(&[1.0], &[]).is_err());
    assert!(ood_metrics(&[f64::NAN, 1.0], &[0.0]).is_err());
    assert!(ood_metrics(&[1.0], &[f64::INFINITY]).is_err());
    assert!(ood_metrics_ci(&[1.0], &[0.0], 10, 1.5, 0).is_err());
}

#[test]
fn ccr_at_fpr_by_hand_and_against_openoods_formula() {
    use oodnc::ood::metrics::ccr_at_fpr;
    // OOD sorted: 0.9, 0.5, 0.3, 0.1. fpr 0.25 -> ceil(1) -> t = 0.9; fpr 0.5 -> t = 0.5.
    let id = [0.95, 0.8, 0.6, 0.5, 0.2];
    let ood = [0.1, 0.9, 0.3, 0.5];
    let correct = [true, false, true, true, true];
    // t = 0.9: only 0.95 is above (correct) -> 1/5.
    assert!(close(ccr_at_fpr(&id, &ood, &correct, 0.25).unwrap(), 0.2, 1e-15));
    // t = 0.5: 0.95 (correct), 0.8 (wrong), 0.6 (correct); 0.5 is not strictly above -> 2/5.
    assert!(close(ccr_at_fpr(&id, &ood, &correct, 0.5).unwrap(), 0.4, 1e-15));
    // A tiny fpr still takes the largest OOD score (ceil >= 1).
    assert!(close(ccr_at_fpr(&id, &ood, &correct, 1e-4).unwrap(), 0.2, 1e-15));
    assert!(ccr_at_fpr(&id, &ood, &correct[..3], 0.1).is_err());
    // OpenOOD's ccr_fpr (evaluators/metrics.py) written in numpy, on scores with ties.
    let id = random_scores(41, 300, 0.8, true);
    let ood = random_scores(42, 250, 0.0, true);
    let correct: Vec<bool> = (0..300).map(|i| i % 3 != 0).collect();
    let fmt = |v: &[f64]| v.iter().map(|x| format!("{x}")).collect::<Vec<_>>().join(",");
    let out = common::run_python(
        "import sys, numpy as np\n\
         i = np.array([float(x) for x in sys.argv[1].split(',')]); o = np.array([float(x) for x in sys.argv[2].split(',')])\n\
         c = np.array([x == '1' for x in sys.argv[3].split(',')])\n\
         conf = np.r_[i, o]; label = np.r_[np.zeros(len(i)), -np.ones(len(o))]; pred = np.r_[np.where(c, 0, 1), np.zeros(len(o))]\n\
         def ccr_fpr(conf, fpr, pred, label):\n\
         \x20   ind_conf = conf[label != -1]; ind_pred = pred[label != -1]; ind_label = label[label != -1]\n\
         \x20   ood_conf = conf[label == -1]; num_ind = len(ind_conf); num_ood = len(ood_conf)\n\
         \x20   fp_num = int(np.ceil(fpr * num_ood)); thresh = np.sort(ood_conf)[-fp_num]\n\
         \x20   return np.sum((ind_conf > thresh) * (ind_pred == ind_label)) / num_ind\n\
         print(*[ccr_fpr(conf, f, pred, label) for f in (1e-4, 1e-3, 1e-2, 1e-1)])",
        &[&fmt(&id), &fmt(&ood), &correct.iter().map(|&b| if b { "1" } else { "0" }).collect::<Vec<_>>().join(",")],
    );
    let v: Vec<f64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    for (k, (_, fpr)) in oodnc::names::metric::CCR.iter().enumerate() {
        assert!(close(ccr_at_fpr(&id, &ood, &correct, *fpr).unwrap(), v[k], 1e-15), "fpr {fpr}: {v:?}");
    }
}

#[test]
fn paired_bootstrap_differences_against_explicit_resampling() {
    use oodnc::ood::metrics::paired_differences;
    let n_id = 120;
    let n_ood = 90;
    let id_a = random_scores(51, n_id, 1.0, true);
    let ood_a = random_scores(52, n_ood, 0.0, true);
    // Detector b: a noisy version of a on the same samples.
    let noise = random_scores(53, n_id + n_ood, 0.0, false);
    let id_b: Vec<f64> = id_a.iter().zip(&noise).map(|(x, e)| x + 0.7 * e).collect();
    let ood_b: Vec<f64> = ood_a.iter().zip(&noise[n_id..]).map(|(x, e)| x + 0.7 * e).collect();
    let reps = 300;
    let d = paired_differences((&id_a, &ood_a), (&id_b, &ood_b), reps, 0.9, 7).unwrap();
    // The same draws as `Ranked::bootstrap` (SplitMix64::derive(seed, [0xb007]); n_id, then
    // n_ood uniform indices per replicate), applied as explicit index resamples to both.
    let mut rng = SplitMix64::derive(7, &[0xb007]);
    let mut diffs = Vec::new();
    for _ in 0..reps {
        let ii: Vec<usize> = (0..n_id).map(|_| rng.below(n_id as u64) as usize).collect();
        let oi: Vec<usize> = (0..n_ood).map(|_| rng.below(n_ood as u64) as usize).collect();
        let pick = |v: &[f64], ix: &[usize]| ix.iter().map(|&i| v[i]).collect::<Vec<f64>>();
        let ma = ood_metrics(&pick(&id_a, &ii), &pick(&ood_a, &oi)).unwrap().auroc;
        let mb = ood_metrics(&pick(&id_b, &ii), &pick(&ood_b, &oi)).unwrap().auroc;
        diffs.push(ma - mb);
    }
    diffs.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        let pos = p * (reps - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        diffs[lo] + (diffs[hi] - diffs[lo]) * (pos - lo as f64)
    };
    let au = d.iter().find(|(n, _)| *n == "auroc").unwrap().1;
    let point = ood_metrics(&id_a, &ood_a).unwrap().auroc - ood_metrics(&id_b, &ood_b).unwrap().auroc;
    assert!(close(au.value, point, 1e-15));
    assert!(close(au.ci_low, q(0.05), 1e-12) && close(au.ci_high, q(0.95), 1e-12), "{au:?} vs {} {}", q(0.05), q(0.95));
    // Pairing: a detector against itself differs by exactly 0 in every replicate.
    for (_, c) in paired_differences((&id_a, &ood_a), (&id_a, &ood_a), 50, 0.95, 1).unwrap() {
        assert!(c.value == 0.0 && c.ci_low == 0.0 && c.ci_high == 0.0, "{c:?}");
    }
    assert!(paired_differences((&id_a, &ood_a), (&id_b[..10], &ood_b), 10, 0.95, 1).is_err());
}
