//! Neural Collapse metrics on exact and perturbed simplex ETFs, against an
//! independent computation, and on bad input.
// The reference formulations are explicit index loops, to read like the formulas.
#![allow(clippy::needless_range_loop)]

use oodnc::nc::metrics::{nc5, nc_metrics, nc_with_ood_class};
use oodnc::nc::study::terminal_phase;
use oodnc::nc::{separation_fuzziness_slope, ClassStats};
use oodnc::util::SplitMix64;
use tch::{Device, Kind, Tensor};

fn dd() -> (Kind, Device) {
    (Kind::Double, Device::Cpu)
}

/// Simplex ETF: C unit vectors in R^D (D >= C) with pairwise cosine -1/(C-1).
fn etf(c: i64, d: i64) -> Tensor {
    let i = Tensor::eye(c, dd());
    let m = (&i - Tensor::ones([c, c], dd()) / c as f64) * (c as f64 / (c - 1) as f64).sqrt();
    // Embed in D dimensions with a fixed rotation-free padding.
    Tensor::cat(&[m, Tensor::zeros([c, d - c], dd())], 1)
}

/// `per` samples per class at mean + offset + noise.
fn samples(means: &Tensor, per: i64, noise: f64, seed: u64) -> (Tensor, Tensor) {
    let (c, d) = (means.size()[0], means.size()[1]);
    let y = Tensor::arange(c, (Kind::Int64, Device::Cpu)).repeat_interleave_self_int(per, 0, None);
    let mut g = SplitMix64::new(seed);
    let n: Vec<f64> = (0..c * per * d).map(|_| g.normal() * noise).collect();
    let h = means.index_select(0, &y) + 3.0 + Tensor::from_slice(&n).view([c * per, d]);
    (h, y)
}

#[test]
fn exact_etf_collapses_every_metric() {
    let (c, d) = (5, 8);
    let m = etf(c, d) * 2.0;
    let (h, y) = samples(&m, 4, 0.0, 0);
    let w = &m * 0.7; // W equal to the (centred) means up to scale
    let logits = h.matmul(&w.tr());
    let (r, _) = nc_metrics(&h, &y, c, Some(&logits), Some(&w)).unwrap();
    for (name, v) in r.named() {
        match name {
            "ncc_accuracy" | "accuracy" => assert!((v - 1.0).abs() < 1e-9, "{name} = {v}"),
            _ => assert!(v.abs() < 1e-9, "{name} = {v}"),
        }
    }
}

#[test]
fn perturbations_move_each_metric_the_right_way() {
    let (c, d) = (6, 10);
    let m = etf(c, d) * 2.0;
    let w = m.copy();
    let run = |means: &Tensor, noise: f64, w: &Tensor| {
        let (h, y) = samples(means, 30, noise, 1);
        let logits = h.matmul(&w.tr());
        nc_metrics(&h, &y, c, Some(&logits), Some(w)).unwrap().0
    };
    let base = run(&m, 0.05, &w);
    let noisy = run(&m, 0.3, &w);
    assert!(noisy.nc1 > base.nc1 * 5.0, "NC1 {} -> {}", base.nc1, noisy.nc1);
    assert!(noisy.cdnv > base.cdnv);
    assert!(noisy.nc4_ncc_mismatch.unwrap() >= base.nc4_ncc_mismatch.unwrap());
    // One class mean twice as long: equinorm and angles worsen.
    let scale = Tensor::ones([c, 1], dd()).index_fill(0, &Tensor::from_slice(&[0i64]), 2.0);
    let unequal = run(&(&m * &scale), 0.05, &w);
    assert!(unequal.nc2_equinorm_m > base.nc2_equinorm_m + 0.1);
    // A classifier that is not aligned with the means: NC3 grows, NC2(W) stays ETF-like.
    let rot = {
        let mut g = SplitMix64::new(3);
        let a = Tensor::from_slice(&(0..d * d).map(|_| g.normal()).collect::<Vec<_>>()).view([d, d]);
        let (q, _) = Tensor::linalg_qr(&a, "reduced");
        q
    };
    let w_rot = m.matmul(&rot);
    let turned = run(&m, 0.05, &w_rot);
    assert!(turned.nc3.unwrap() > base.nc3.unwrap() + 0.5, "NC3 {} -> {}", base.nc3.unwrap(), turned.nc3.unwrap());
    assert!(turned.nc2_maxangle_w.unwrap() < 1e-9);
}

/// Gauss-Jordan inverse of a small matrix given as rows.
fn inverse(a: Vec<Vec<f64>>) -> Vec<Vec<f64>> {
    let n = a.len();
    let mut m: Vec<Vec<f64>> = a
        .into_iter()
        .enumerate()
        .map(|(i, mut r)| {
            r.extend((0..n).map(|j| if i == j { 1.0 } else { 0.0 }));
            r
        })
        .collect();
    for col in 0..n {
        let piv = (col..n).max_by(|&p, &q| m[p][col].abs().total_cmp(&m[q][col].abs())).unwrap();
        m.swap(col, piv);
        let pv = m[col][col];
        m[col].iter_mut().for_each(|v| *v /= pv);
        for r in 0..n {
            if r != col {
                let f = m[r][col];
                for k in 0..2 * n {
                    m[r][k] -= f * m[col][k];
                }
            }
        }
    }
    m.into_iter().map(|r| r[n..].to_vec()).collect()
}

#[test]
fn nc1_against_an_independent_computation() {
    // C = 4 classes in D = 3: Sigma_B has full rank 3, so its inverse is the pseudo-inverse.
    let (c, d, per) = (4usize, 3usize, 7usize);
    let mut g = SplitMix64::new(9);
    let means: Vec<Vec<f64>> = (0..c).map(|_| (0..d).map(|_| 3.0 * g.normal()).collect()).collect();
    let mut h = Vec::new();
    let mut y = Vec::new();
    for (k, mu) in means.iter().enumerate() {
        for _ in 0..per {
            h.push(mu.iter().map(|m| m + g.normal()).collect::<Vec<f64>>());
            y.push(k as i64);
        }
    }
    // Plain loops.
    let n = h.len() as f64;
    let mut mu = vec![vec![0.0; d]; c];
    for (x, &k) in h.iter().zip(&y) {
        for j in 0..d {
            mu[k as usize][j] += x[j] / per as f64;
        }
    }
    let g_mean: Vec<f64> = (0..d).map(|j| mu.iter().map(|m| m[j]).sum::<f64>() / c as f64).collect();
    let mut sw = vec![vec![0.0; d]; d];
    for (x, &k) in h.iter().zip(&y) {
        for a in 0..d {
            for b in 0..d {
                sw[a][b] += (x[a] - mu[k as usize][a]) * (x[b] - mu[k as usize][b]) / n;
            }
        }
    }
    let mut sb = vec![vec![0.0; d]; d];
    for m in &mu {
        for a in 0..d {
            for b in 0..d {
                sb[a][b] += (m[a] - g_mean[a]) * (m[b] - g_mean[b]) / c as f64;
            }
        }
    }
    let sbi = inverse(sb);
    let mut tr = 0.0;
    for a in 0..d {
        for b in 0..d {
            tr += sw[a][b] * sbi[b][a];
        }
    }
    let ht = Tensor::from_slice(&h.concat()).view([(c * per) as i64, d as i64]);
    let (r, _) = nc_metrics(&ht, &Tensor::from_slice(&y), c as i64, None, None).unwrap();
    assert!((r.nc1_raw - tr).abs() < 1e-9 * tr.abs().max(1.0), "{} vs {tr}", r.nc1_raw);
    assert!((r.nc1 - tr / c as f64).abs() < 1e-9 * tr.abs().max(1.0));
    // And against an SVD-based pseudo-inverse (a second route) when D > C - 1.
    let (h2, y2) = samples(&(etf(3, 6) * 1.5), 10, 0.2, 4);
    let (r2, st) = nc_metrics(&h2, &y2, 3, None, None).unwrap();
    let (u, s, v) = st.sigma_b.svd(true, true);
    let vh = v.tr();
    let keep = s.gt(1e-10 * s.max().double_value(&[]));
    let sinv = s.reciprocal().where_self(&keep, &s.zeros_like());
    let pinv = vh.tr().matmul(&sinv.diag_embed(0, -2, -1)).matmul(&u.tr());
    let t2 = st.sigma_w(&h2, &y2).unwrap().matmul(&pinv).trace().double_value(&[]);
    assert!((r2.nc1_raw - t2).abs() < 1e-8 * t2.max(1.0), "{} vs {t2}", r2.nc1_raw);
}

#[test]
fn nc5_centred_reaches_zero_uncentred_does_not() {
    let (c, d) = (3, 5);
    let m = etf(c, d) * 2.0;
    let (h, y) = samples(&m, 10, 0.0, 0);
    let (_, st) = nc_metrics(&h, &y, c, None, None).unwrap();
    // OOD mean = ID mean + a direction orthogonal to every centred class mean (axis 4).
    let dir = Tensor::zeros([d], dd()).index_fill(0, &Tensor::from_slice(&[4i64]), 1.0);
    let ood = (st.sample_mean.shallow_clone() + dir * 2.0).unsqueeze(0).repeat([7, 1]);
    let (centred, uncentred) = nc5(&st, &ood).unwrap();
    assert!(centred.abs() < 1e-12, "{centred}");
    assert!(uncentred > 0.3, "{uncentred}");
    // OOD as class C+1 at a new ETF-like vertex: finite, non-negative statistics.
    let (nc1o, ang) = nc_with_ood_class(&st, &h, &y, &ood).unwrap();
    assert!(nc1o.is_finite() && nc1o >= 0.0 && ang.is_finite());
}

#[test]
fn fuzziness_slope_and_terminal_phase_rule() {
    let d: Vec<f64> = (0..6).map(|l| 100.0 * 0.5f64.powi(l)).collect();
    let (a, b) = separation_fuzziness_slope(&d).unwrap();
    assert!((b - 0.5f64.ln()).abs() < 1e-12 && (a - 100f64.ln()).abs() < 1e-12);
    assert!(separation_fuzziness_slope(&[1.0]).is_err());
    assert!(separation_fuzziness_slope(&[1.0, -1.0]).is_err());
    assert_eq!(terminal_phase(&[(0, 0.1), (25, 0.98), (50, 0.9995), (75, 0.9999)], 0.999), Some(50));
    assert_eq!(terminal_phase(&[(0, 0.1), (25, 0.5)], 0.999), None);
}

#[test]
fn edge_cases() {
    // D < C: the pseudo-inverse gives a finite NC1 (documented: Sigma_B has rank <= D).
    let mut g = SplitMix64::new(2);
    let h = Tensor::from_slice(&(0..40 * 2).map(|_| g.normal()).collect::<Vec<_>>()).view([40, 2]);
    let y = Tensor::arange(40, (Kind::Int64, Device::Cpu)).remainder(5);
    let (r, _) = nc_metrics(&h, &y, 5, None, None).unwrap();
    assert!(r.nc1.is_finite());
    // A single class is an error; so is a class with no sample, NaN, and a wrong W.
    assert!(ClassStats::compute(&h, &y.zeros_like(), 1).is_err());
    assert!(ClassStats::compute(&h, &y.clamp_max(3), 5).unwrap_err().to_string().contains("class 4 has no"));
    let nan = h.copy();
    let _ = nan.get(3).get(1).fill_(f64::NAN);
    assert!(ClassStats::compute(&nan, &y, 5).unwrap_err().to_string().contains("NaN"));
    assert!(nc_metrics(&h, &y, 5, None, Some(&Tensor::zeros([5, 3], dd()))).is_err());
    // A class with a single sample is fine (zero within-class variance for it).
    let y1 = Tensor::from_slice(&[0i64, 1, 1, 1, 2, 2]);
    let h1 = Tensor::from_slice(&[0.0, 0.0, 1.0, 1.0, 1.1, 0.9, 0.9, 1.1, -1.0, 1.0, -1.2, 1.0]).view([6, 2]);
    let st = ClassStats::compute(&h1, &y1, 3).unwrap();
    assert_eq!(st.class_var.double_value(&[0]), 0.0);
}

#[test]
fn layer_names_keep_the_2x2_form_of_the_last_block() {
    use oodnc::features::FeatureSet;
    use tch::{Kind, Tensor};
    let z = Tensor::zeros([2, 2], (Kind::Float, tch::Device::Cpu));
    let mut f = FeatureSet::new("x", z.shallow_clone(), z.shallow_clone(), Tensor::from_slice(&[0i64, 1])).unwrap();
    for n in &oodnc::model::TAP_NAMES[..9] {
        f.taps.insert(n.to_string(), z.shallow_clone());
        f.taps.insert(format!("{n}+2x2"), z.shallow_clone());
    }
    let gap = oodnc::nc::layers::layer_names(&f, false);
    assert!(!gap.contains(&"layer4.1".to_string()) && gap.last().unwrap() == "penultimate" && gap.len() == 9);
    let pooled = oodnc::nc::layers::layer_names(&f, true);
    assert!(pooled.contains(&"layer4.1+2x2".to_string()), "{pooled:?}");
    assert_eq!(pooled.len(), 10);
}

#[test]
fn separation_fuzziness_weights_classes_by_their_counts() {
    // Imbalanced classes: He & Su's SS_b = (1/N) sum_c n_c (mu_c - mean)(mu_c - mean)^T,
    // computed here explicitly with a pseudo-inverse, against ours; nc1_raw (unweighted,
    // about the mean of means) differs. Balanced classes: the two agree.
    let (h, y) = samples(&etf(4, 6), 30, 0.4, 11);
    let keep: Vec<i64> = (0..h.size()[0]).filter(|&i| i % 4 != 0 || i < 30).collect();
    let idx = Tensor::from_slice(&keep);
    let (h, y) = (h.index_select(0, &idx), y.index_select(0, &idx));
    let st = ClassStats::compute(&h, &y, 4).unwrap();
    let n = h.size()[0] as f64;
    let mean = h.mean_dim(&[0i64][..], true, Kind::Double);
    let mut ss_b = Tensor::zeros([6, 6], dd());
    let mut ss_w = Tensor::zeros([6, 6], dd());
    for c in 0..4 {
        let hc = h.index_select(0, &y.eq(c).nonzero().squeeze_dim(1));
        let mc = hc.mean_dim(&[0i64][..], true, Kind::Double);
        let dm = &mc - &mean;
        ss_b += dm.tr().matmul(&dm) * (hc.size()[0] as f64 / n);
        let dc = &hc - &mc;
        ss_w += dc.tr().matmul(&dc) / n;
    }
    let expected = ss_w.matmul(&ss_b.linalg_pinv(1e-10, true)).trace().double_value(&[]);
    assert!((st.separation_fuzziness - expected).abs() < 1e-8 * expected, "{} vs {expected}", st.separation_fuzziness);
    assert!((st.separation_fuzziness - st.tr_sw_sb_pinv).abs() > 1e-6 * expected, "imbalance must matter");
    let (hb, yb) = samples(&etf(4, 6), 30, 0.4, 11);
    let sb = ClassStats::compute(&hb, &yb, 4).unwrap();
    assert_eq!(sb.separation_fuzziness, sb.tr_sw_sb_pinv);
}

#[test]
fn nc5_with_either_centre() {
    // Class means (1, 0) x3 samples and (-1, 0) x1: mean of means (0, 0), sample mean (0.5, 0).
    // OOD mean (0, 1): about mu_G it is orthogonal to both centred class means (0); about
    // the sample mean |cos| = 0.5 / sqrt(1.25) for both classes.
    let h = Tensor::from_slice(&[1.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0]).view([4, 2]);
    let y = Tensor::from_slice(&[0i64, 0, 0, 1]);
    let st = ClassStats::compute(&h, &y, 2).unwrap();
    let ood = Tensor::from_slice(&[0.0, 1.0, 0.0, 1.0]).view([2, 2]);
    assert!(oodnc::nc::metrics::nc5_classmean_centred(&st, &ood).unwrap().abs() < 1e-12);
    let (sample_centred, _) = nc5(&st, &ood).unwrap();
    assert!((sample_centred - 0.5 / 1.25f64.sqrt()).abs() < 1e-12, "{sample_centred}");
}

// ------------------------------------------------------------ interpretability (oodnc::interp)

mod interp {
    use super::{dd, etf, samples};
    use oodnc::interp::*;
    use oodnc::nc::metrics::nc_metrics;
    use oodnc::util::SplitMix64;
    use tch::{Kind, Tensor};

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn exact_etf_dimensionality_rank_and_ncc() {
        let c = 6;
        let m = etf(c, 10);
        // Feature dimensionality of every row of a simplex ETF: (C - 1) / C.
        for v in Vec::<f64>::try_from(feature_dimensionality(&m)).unwrap() {
            assert!(close(v, (c - 1) as f64 / c as f64, 1e-12), "{v}");
        }
        // Invariant to rotation and scale.
        let r = random_rotation(10, 3);
        let dims = Vec::<f64>::try_from(feature_dimensionality(&(m.matmul(&r) * 7.0))).unwrap();
        assert!(dims.iter().all(|v| close(*v, (c - 1) as f64 / c as f64, 1e-12)));
        assert!(close(effective_rank(&m), (c - 1) as f64, 1e-9), "{}", effective_rank(&m));
        // Orthogonal rows: 1; two identical rows: 1/2 each.
        let eye = Tensor::eye(4, dd());
        assert!(Vec::<f64>::try_from(feature_dimensionality(&eye)).unwrap().iter().all(|v| close(*v, 1.0, 1e-12)));
        let twin = Tensor::from_slice(&[1.0f64, 0.0, 1.0, 0.0]).reshape([2, 2]);
        assert!(Vec::<f64>::try_from(feature_dimensionality(&twin)).unwrap().iter().all(|v| close(*v, 0.5, 1e-12)));
        // Samples at the ETF vertices: the NCC probe is exact on train and test.
        let (x, y) = samples(&m, 20, 0.05, 1);
        let (xt, yt) = samples(&m, 10, 0.05, 2);
        let p = probe(&x, &y, &xt, &yt, c).unwrap();
        assert_eq!((p.ncc_train, p.ncc_test), (1.0, 1.0));
        assert_eq!((p.linear_train, p.linear_test), (1.0, 1.0));
        assert!(close(p.effective_rank, (c - 1) as f64, 0.05));
        assert_eq!(p.dim, 10);
    }

    #[test]
    fn ncc_probe_on_train_is_nc4_ncc_accuracy() {
        // Overlapping classes, so the accuracy is neither 0 nor 1.
        let m = etf(5, 8);
        let (x, y) = samples(&m, 30, 0.6, 4);
        let (nc, _) = nc_metrics(&x, &y, 5, None, None).unwrap();
        let p = probe(&x, &y, &x, &y, 5).unwrap();
        assert!(nc.ncc_accuracy > 0.3 && nc.ncc_accuracy < 1.0, "{}", nc.ncc_accuracy);
        assert!(close(p.ncc_train, nc.ncc_accuracy, 1e-15));
    }

    #[test]
    fn linear_probe_is_the_ridge_closed_form() {
        // Two classes on a line: x = -1 or +1 plus noise; the probe separates them,
        // and its weights solve the normal equations (checked through predictions on
        // points whose side is known).
        let x = Tensor::from_slice(&[-1.2f64, -0.9, -1.0, 1.1, 0.8, 1.0]).reshape([6, 1]);
        let y = Tensor::from_slice(&[0i64, 0, 0, 1, 1, 1]);
        let lp = LinearProbe::fit(&x, &y, 2, LinearProbe::REL_LAMBDA).unwrap();
        assert_eq!(lp.accuracy(&x, &y).unwrap(), 1.0);
        let q = Tensor::from_slice(&[-5.0f64, 5.0, -0.1, 0.1]).reshape([4, 1]);
        assert_eq!(Vec::<i64>::try_from(lp.predict(&q).unwrap()).unwrap(), vec![0, 1, 0, 1]);
        assert!(close(lp.lambda, 6.0 * LinearProbe::REL_LAMBDA, 1e-15));
        assert!(LinearProbe::fit(&x, &y, 2, 0.0).is_err());
    }

    #[test]
    fn one_hot_codes_are_selective_and_sparse() {
        let c = 10;
        // Class c activates unit c only; two extra units are never active (dead).
        let means = Tensor::cat(&[Tensor::eye(c, dd()) * 3.0, Tensor::zeros([c, 2], dd())], 1);
        let sel = Vec::<f64>::try_from(selectivity(&means).unwrap()).unwrap();
        assert!(sel[..c as usize].iter().all(|v| close(*v, 1.0, 1e-15)));
        assert!(sel[c as usize..].iter().all(|v| *v == 0.0), "dead units get 0");
        let pb = privileged_basis(&means, 4, 0).unwrap();
        assert!(close(pb.units_per_class, 1.0, 1e-15));
        assert!(close(pb.classes_per_unit, 1.0, 1e-15), "dead units are left out");
        // Centred: m = 3 (e_c - 1/C) on the live units; PR = C^2 (C - 1) / ((C - 1)^3 + 1).
        let cf = c as f64;
        assert!(close(pb.units_per_class_centred, cf * cf * (cf - 1.0) / ((cf - 1.0).powi(3) + 1.0), 1e-12));
        // Kurtosis of the centred code over all C x D entries (two zero columns):
        // E x^4 / (E x^2)^2 with per-row sums 3^4 ((C-1)^4 + (C-1)) / C^4 and 3^2 (C-1) / C.
        let d = cf + 2.0;
        let m4 = 81.0 * ((cf - 1.0).powi(4) + (cf - 1.0)) / cf.powi(4) / d;
        let m2 = 9.0 * (cf - 1.0) / cf / d;
        assert!(close(pb.kurtosis_units, m4 / (m2 * m2), 1e-12), "{}", pb.kurtosis_units);
        assert!(!pb.signed);
        // Uniform class means: no selectivity.
        let flat = Tensor::ones([4, 3], dd());
        assert!(Vec::<f64>::try_from(selectivity(&flat).unwrap()).unwrap().iter().all(|v| *v == 0.0));
        // Negative means are refused by selectivity; nonnegative_means shifts them.
        let signed = Tensor::from_slice(&[-1.0f64, 2.0, 1.0, 0.0]).reshape([2, 2]);
        assert!(selectivity(&signed).is_err());
        let (shifted, was_signed) = nonnegative_means(&signed);
        assert!(was_signed && shifted.min().double_value(&[]) == 0.0);
        assert!(privileged_basis(&signed, 2, 0).unwrap().signed);
    }

    #[test]
    fn a_rotation_keeps_nc_and_changes_the_kurtosis() {
        let c = 8;
        let code = Tensor::eye(c, dd()) * 2.0;
        let (x, y) = samples(&code, 25, 0.1, 7);
        let r = random_rotation(c, 11);
        // A rotation: R^T R = I.
        assert!(r.tr().matmul(&r).allclose(&Tensor::eye(c, dd()), 1e-12, 1e-12, false));
        let xr = x.matmul(&r);
        let (a, _) = nc_metrics(&x, &y, c, None, None).unwrap();
        let (b, _) = nc_metrics(&xr, &y, c, None, None).unwrap();
        for ((n, u), (_, v)) in a.named().iter().zip(b.named().iter()) {
            assert!(close(*u, *v, 1e-9 * u.abs().max(1.0)), "{n}: {u} vs {v}");
        }
        let (means, _) = oodnc::numerics::class_means(&x, &y, c, "test").unwrap();
        let (means_r, _) = oodnc::numerics::class_means(&xr, &y, c, "test").unwrap();
        let k_axis = privileged_basis(&means, 8, 0).unwrap();
        let k_rot = privileged_basis(&means_r, 8, 0).unwrap();
        assert!(k_axis.kurtosis_units > k_rot.kurtosis_units + 2.0, "{} vs {}", k_axis.kurtosis_units, k_rot.kurtosis_units);
        // The rotated-basis statistic does not see the difference: it rotates both at random.
        assert!(close(k_axis.kurtosis_rotated, k_rot.kurtosis_rotated, 1.5), "{} vs {}", k_axis.kurtosis_rotated, k_rot.kurtosis_rotated);
        assert!(k_axis.kurtosis_units > k_axis.kurtosis_rotated + 2.0);
    }

    #[test]
    fn projections_onto_known_subspaces() {
        let c = 4;
        let d = 7;
        let m = etf(c, d) * 3.0; // spans the first C coordinates, rank C - 1
        let (x, y) = samples(&m, 15, 0.2, 5);
        let etf_p = Projection::fit(Subspace::Etf, &x, &y, c).unwrap();
        assert_eq!(etf_p.basis.size(), [d, c - 1]);
        // Features in mu_G + span(M~) are unchanged; the complement sends them to mu_G.
        let (means, _) = oodnc::numerics::class_means(&x, &y, c, "test").unwrap();
        let mu = means.mean_dim(&[0i64][..], true, Kind::Double);
        let inside = &mu + (&means - &mu) * 0.7;
        assert!(etf_p.apply(&inside).unwrap().allclose(&inside, 1e-10, 1e-10, false));
        assert!(close(etf_p.energy_share(&inside).unwrap(), 1.0, 1e-12));
        let comp = Projection::fit(Subspace::EtfComplement, &x, &y, c).unwrap();
        assert!(comp.apply(&inside).unwrap().allclose(&mu.expand_as(&inside), 1e-10, 1e-10, false));
        // A direction orthogonal to the span keeps nothing in it.
        let mut off = vec![0.0f64; d as usize];
        off[d as usize - 1] = 1.0;
        let e = Tensor::from_slice(&off).unsqueeze(1);
        let orth = &e - etf_p.basis.matmul(&etf_p.basis.tr().matmul(&e));
        let outside = &mu + orth.tr();
        assert!(etf_p.energy_share(&outside).unwrap() < 1e-20);
        assert!(close(comp.energy_share(&outside).unwrap(), 1.0, 1e-12), "the complement keeps it all");
        // Complement + projection = identity.
        let sum = etf_p.apply(&x).unwrap() + comp.apply(&x).unwrap() - &mu;
        assert!(sum.allclose(&x, 1e-10, 1e-10, false));
        // PCA: data on a 2-d plane; its top-2 projection leaves it unchanged.
        let mut g = SplitMix64::new(9);
        let coef: Vec<f64> = (0..100).map(|_| g.normal()).collect();
        let plane = Tensor::from_slice(&coef).reshape([50, 2]).matmul(&Tensor::eye(d, dd()).narrow(0, 2, 2));
        let yy = Tensor::zeros([50], (Kind::Int64, tch::Device::Cpu));
        let pca = Projection::fit(Subspace::Pca(2), &plane, &yy, 1).unwrap();
        assert!(pca.apply(&plane).unwrap().allclose(&plane, 1e-10, 1e-10, false));
        let full = Projection::fit(Subspace::Full, &x, &y, c).unwrap();
        assert!(full.apply(&x).unwrap().allclose(&x, 0.0, 0.0, false));
        assert!(Projection::fit(Subspace::Pca(0), &x, &y, c).is_err());
        assert!(Projection::fit(Subspace::Pca(d + 1), &x, &y, c).is_err());
    }

    #[test]
    fn bad_input_is_a_typed_error_or_the_documented_fallback() {
        let c = 5;
        // A class with one sample: too few for the probes.
        let x = Tensor::from_slice(&[0.0f64, 1.0, 2.0, 3.0, 4.0, 0.1, 1.1, 2.1, 3.1]).reshape([9, 1]);
        let y = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 0, 1, 2, 3]);
        let e = probe(&x, &y, &x, &y, c).unwrap_err().to_string();
        assert!(e.contains("at least 2"), "{e}");
        // D = 2 < C - 1 = 4: the ETF span is the whole space (rank D), documented fallback.
        let m = Tensor::from_slice(&[1.0f64, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0, -1.0, 0.7, 0.7]).reshape([5, 2]);
        let (xs, ys) = samples(&m, 6, 0.05, 3);
        let p = Projection::fit(Subspace::Etf, &xs, &ys, c).unwrap();
        assert_eq!(p.basis.size(), [2, 2]);
        assert!(p.apply(&xs).unwrap().allclose(&xs, 1e-10, 1e-10, false));
        // Shapes and values.
        assert!(probe(&x, &y, &Tensor::zeros([3, 2], dd()), &y.narrow(0, 0, 3), c).is_err());
        let nan = Tensor::from_slice(&[f64::NAN, 0.0]).reshape([2, 1]);
        assert!(probe(&nan, &Tensor::from_slice(&[0i64, 1]), &nan, &Tensor::from_slice(&[0i64, 1]), 2).is_err());
        assert!(selectivity(&Tensor::ones([1, 3], dd())).is_err());
    }
}
