//! The detectors. Notation: z = logits `[C]`, p = softmax(z), h = penultimate
//! feature `[D]`, W `[C, D]` and b `[C]` the classifier, mu_c class means of the
//! ID training features. Every score is higher = more in-distribution.

use super::linalg::{check_2d, check_labels, class_means, eigh_desc, finite_f64, pinv_sqrt, sq_dists};
use super::{DetectorSpec, FitData, Fitted};
use crate::error::{Error, Result};
use crate::features::FeatureSet;
use tch::{Kind, Tensor};

/// Relative eigenvalue threshold of every pseudo-inverse (documented regularisation
/// for singular covariances, e.g. fewer samples than dimensions).
pub const PINV_REL_TOL: f64 = 1e-10;

/// Default hyperparameters.
pub fn defaults(name: &str) -> Vec<(&'static str, f64)> {
    match name {
        "energy" => vec![("t", 1.0)],
        "gen" => vec![("gamma", 0.1), ("m", 100.0)],
        "knn" => vec![("k", 50.0)],
        "vim" | "residual" => vec![("dim", 64.0)],
        "neco" => vec![("d", 50.0), ("maxlogit", 0.0)],
        "neco_seed" => vec![("d", 100.0)],
        "react" => vec![("p", 90.0)],
        "ash_p" | "ash_b" | "ash_s" => vec![("p", 90.0)],
        "dice" => vec![("p", 90.0)],
        _ => vec![],
    }
}

/// Range checks of hyperparameters that do not depend on the data.
pub fn validate(spec: &DetectorSpec) -> Result<()> {
    let bad = |k: &str, why: &str| Err(Error::param(format!("{}.{k}", spec.name), format!("{} {why}", spec.get(k))));
    for (k, v) in &spec.params {
        if !v.is_finite() {
            return bad(k, "is not finite");
        }
    }
    match spec.name.as_str() {
        "energy" if spec.get("t") <= 0.0 => bad("t", "must be > 0"),
        "gen" if !(spec.get("gamma") > 0.0 && spec.get("gamma") <= 1.0) => bad("gamma", "must be in (0, 1]"),
        "gen" if spec.get("m") < 1.0 || spec.get("m").fract() != 0.0 => bad("m", "must be a positive integer"),
        "knn" if spec.get("k") < 1.0 || spec.get("k").fract() != 0.0 => bad("k", "must be a positive integer"),
        "vim" | "residual" if spec.get("dim") < 1.0 || spec.get("dim").fract() != 0.0 => bad("dim", "must be a positive integer"),
        "neco" | "neco_seed" if spec.get("d") < 1.0 || spec.get("d").fract() != 0.0 => bad("d", "must be a positive integer"),
        "neco" if spec.get("maxlogit") != 0.0 && spec.get("maxlogit") != 1.0 => bad("maxlogit", "must be 0 or 1"),
        "react" | "ash_p" | "ash_b" | "ash_s" | "dice" if !(0.0..100.0).contains(&spec.get("p")) => bad("p", "must be in [0, 100)"),
        _ => Ok(()),
    }
}

fn logits(f: &FeatureSet, c: i64, ctx: &str) -> Result<Tensor> {
    check_2d(&f.logits, Some(c), ctx)?;
    f.logits_f64(ctx)
}

fn feats(f: &FeatureSet, d: i64, ctx: &str) -> Result<Tensor> {
    check_2d(&f.penultimate, Some(d), ctx)?;
    f.penultimate_f64(ctx)
}

fn energy_of(z: &Tensor, t: f64) -> Tensor {
    (z / t).logsumexp(&[1i64][..], false) * t
}

fn max_dim1(x: &Tensor) -> Tensor {
    x.max_dim(1, false).0
}

/// Percentile (0..100) of all values of `x` (linear interpolation between the
/// order statistics around `p / 100 * (n - 1)`, like numpy's default), by
/// selection (O(n)) rather than a full sort: on the CPU through Rust's
/// introselect on a copy of the values (in their own dtype: the order statistics
/// of f32 values are the same in f64), elsewhere through `kthvalue`.
fn percentile(x: &Tensor, p: f64) -> f64 {
    let v = x.flatten(0, -1);
    let n = v.size()[0];
    let pos = p / 100.0 * (n - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let (a, b) = if v.device() == tch::Device::Cpu {
        match v.kind() {
            Kind::Float => select_pair(Vec::<f32>::try_from(&v).unwrap_or_default(), lo, hi, f32::total_cmp),
            _ => select_pair(Vec::<f64>::try_from(&v.to_kind(Kind::Double)).unwrap_or_default(), lo, hi, f64::total_cmp),
        }
    } else {
        // kthvalue's k is 1-based.
        let a = v.kthvalue(lo as i64 + 1, 0, false).0.double_value(&[]);
        let b = if hi == lo { a } else { v.kthvalue(hi as i64 + 1, 0, false).0.double_value(&[]) };
        (a, b)
    };
    a + (b - a) * (pos - lo as f64)
}

/// The `lo`-th and `hi`-th smallest values (0-based, `hi` is `lo` or `lo + 1`).
fn select_pair<T: Copy + Into<f64>>(mut v: Vec<T>, lo: usize, hi: usize, cmp: fn(&T, &T) -> std::cmp::Ordering) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let (_, a, right) = v.select_nth_unstable_by(lo, cmp);
    let a = *a;
    // After the selection everything right of `lo` is >= a: the next order
    // statistic is their minimum.
    let b = if hi > lo { right.iter().copied().min_by(cmp).unwrap_or(a) } else { a };
    (a.into(), b.into())
}

/// Fits `spec` (dispatch by name).
pub fn fit(spec: &DetectorSpec, data: &FitData) -> Result<Fitted> {
    let ctx = format!("{} fit", spec.name);
    let w = finite_f64(data.weight, &ctx)?;
    let b = finite_f64(data.bias, &ctx)?;
    let ws = w.size();
    if ws.len() != 2 || b.size() != [ws[0]] {
        return Err(Error::shape(&ctx, format!("classifier weight {ws:?}, bias {:?}", b.size())));
    }
    let (c, d) = (ws[0], ws[1]);
    let train = data.train;
    check_2d(&train.penultimate, Some(d), &format!("{ctx} (train features vs classifier)"))?;
    check_2d(&train.logits, Some(c), &format!("{ctx} (train logits)"))?;
    let n_train = train.len() as i64;
    let name = spec.name.clone();
    let sc = format!("{name} score");
    match spec.name.as_str() {
        // MSP: max_c softmax(z)_c, returned as its logarithm -log1p(sum_{j != max} exp(z_j - z_max)):
        // a monotone transform (identical metrics) that does not saturate at 1.0 in floating point.
        "msp" => Ok(Fitted::new(spec, move |f| Ok(log_msp(&logits(f, c, &sc)?)))),
        // MaxLogit: max_c z_c.
        "maxlogit" => Ok(Fitted::new(spec, move |f| Ok(max_dim1(&logits(f, c, &sc)?)))),
        // Energy: T logsumexp(z / T) (the negative free energy).
        "energy" => {
            let t = spec.get("t");
            Ok(Fitted::new(spec, move |f| Ok(energy_of(&logits(f, c, &sc)?, t))))
        }
        // Negative entropy: sum_c p_c log p_c.
        "entropy" => Ok(Fitted::new(spec, move |f| {
            let lp = logits(f, c, &sc)?.log_softmax(-1, Kind::Double);
            Ok((lp.exp() * &lp).sum_dim_intlist(&[1i64][..], false, Kind::Double))
        })),
        // GEN: -sum over the top-M probabilities of p^gamma (1 - p)^gamma.
        "gen" => {
            let (g, m) = (spec.get("gamma"), (spec.get("m") as i64).min(c));
            Ok(Fitted::new(spec, move |f| {
                let p = logits(f, c, &sc)?.softmax(-1, Kind::Double);
                // All classes: no need to select (the sum is order-free).
                let top = if m >= c { p } else { p.topk(m, 1, true, true).0 };
                let one_minus: Tensor = 1.0 - &top;
                Ok(-(top.pow_tensor_scalar(g) * one_minus.pow_tensor_scalar(g)).sum_dim_intlist(&[1i64][..], false, Kind::Double))
            }))
        }
        // TempScale: MSP of z / T, T minimising the NLL on ID validation data (golden-section on log T).
        "tempscale" => {
            let val = data.val.ok_or_else(|| Error::data(&ctx, "needs ID validation features"))?;
            let zv = logits(val, c, &ctx)?;
            let yv = val.labels.to_kind(Kind::Int64);
            let nll = |t: f64| -> f64 { (&zv / t).log_softmax(-1, Kind::Double).nll_loss(&yv).double_value(&[]) };
            let (mut a, mut bb) = ((0.05f64).ln(), (20.0f64).ln());
            let phi = (5f64.sqrt() - 1.0) / 2.0;
            for _ in 0..60 {
                let (x1, x2) = (bb - phi * (bb - a), a + phi * (bb - a));
                if nll(x1.exp()) < nll(x2.exp()) {
                    bb = x2;
                } else {
                    a = x1;
                }
            }
            let t = ((a + bb) / 2.0).exp();
            let mut fitted = Fitted::new(spec, move |f| Ok(log_msp(&(logits(f, c, &sc)? / t))));
            fitted.params.insert("t_fitted".into(), t);
            Ok(fitted)
        }
        // KLM: -min_c KL(p || d_c), d_c = mean softmax of train samples predicted as c.
        "klm" => {
            let p = logits(train, c, &ctx)?.softmax(-1, Kind::Double);
            let pred = p.argmax(1, false);
            let counts = pred.bincount::<Tensor>(None, c).to_kind(Kind::Double);
            let sums = Tensor::zeros([c, c], (Kind::Double, p.device())).index_add(0, &pred, &p);
            let present = counts.gt(0.0).nonzero().squeeze_dim(1);
            if present.size()[0] == 0 {
                return Err(Error::data(&ctx, "no training predictions"));
            }
            let templates = (sums.index_select(0, &present) / counts.index_select(0, &present).unsqueeze(1)).clamp_min(1e-12);
            let log_t = templates.log();
            Ok(Fitted::new(spec, move |f| {
                let lp = logits(f, c, &sc)?.log_softmax(-1, Kind::Double);
                let p = lp.exp();
                // KL(p || d_k) = sum p log p - sum p log d_k
                let self_term = (&p * &lp).sum_dim_intlist(&[1i64][..], true, Kind::Double);
                let kl = self_term - p.matmul(&log_t.tr());
                Ok(-kl.min_dim(1, false).0)
            }))
        }
        // Mahalanobis: -min_c (h - mu_c)^T Sigma^+ (h - mu_c), tied covariance about the class means.
        "mahalanobis" | "rmds" => {
            check_2d(&train.penultimate, Some(d), &ctx)?;
            let cm = train.class_moments(c, &ctx)?;
            let l = pinv_sqrt(&cm.within, PINV_REL_TOL)?;
            let mu_l = cm.means.matmul(&l);
            let rel = if spec.name == "rmds" {
                // RMDS background: one Gaussian on all training features.
                let gm = train.global_moments(&ctx)?;
                let l0 = pinv_sqrt(&gm.cov, PINV_REL_TOL)?;
                Some((gm.mean.shallow_clone(), l0))
            } else {
                None
            };
            Ok(Fitted::new(spec, move |f| {
                let x = feats(f, d, &sc)?;
                let md = sq_dists(&x.matmul(&l), &mu_l);
                let md = match &rel {
                    Some((mu0, l0)) => md - (&x - mu0).matmul(l0).square().sum_dim_intlist(&[1i64][..], true, Kind::Double),
                    None => md,
                };
                Ok(-md.min_dim(1, false).0)
            }))
        }
        // KNN: -(distance to the k-th nearest L2-normalised training feature).
        "knn" => {
            let k = spec.get("k") as i64;
            if k > n_train {
                return Err(Error::param("knn.k", format!("{k} neighbours but only {n_train} training samples")));
            }
            check_2d(&train.penultimate, Some(d), &ctx)?;
            // Shared by every KNN fitted on this training set (the grid of k).
            let bank = train.knn_bank(crate::device::best_device(), &ctx)?;
            Ok(Fitted::new(spec, move |f| {
                check_2d(&f.penultimate, Some(d), &sc)?;
                // For unit vectors ||a - b|| = sqrt(2 - 2 a.b): the k-th nearest is the k-th most similar.
                let bank = bank.lock().unwrap_or_else(|e| e.into_inner());
                let kth = f.knn_kth_similarity(&bank, k, &sc)?.to_kind(Kind::Double);
                let two_minus: Tensor = 2.0 - kth * 2.0;
                Ok(-two_minus.clamp_min(0.0).sqrt())
            }))
        }
        // ViM: logsumexp(z) - alpha ||NS^T (h - u)||, u = -W^+ b, NS = eigenvectors of the
        // (h - u) covariance beyond the top `dim`, alpha = mean max-logit / mean residual on train.
        "vim" | "residual" => {
            let dim = spec.get("dim") as i64;
            if dim >= d {
                return Err(Error::param(
                    format!("{name}.dim"),
                    format!("{dim} must be smaller than the feature dimension {d} (else the residual space is empty)"),
                ));
            }
            let u = -w.linalg_pinv(1e-15, false).matmul(&b);
            // (1/N) sum (h - u)(h - u)^T = Cov(h) + (mean - u)(mean - u)^T.
            check_2d(&train.penultimate, Some(d), &ctx)?;
            let gm = train.global_moments(&ctx)?;
            let dm = (&gm.mean - &u).reshape([d, 1]);
            let cov = &gm.cov + dm.matmul(&dm.tr());
            let (_, vecs) = eigh_desc(&cov);
            let ns = vecs.narrow(1, dim, d - dim);
            let vim = spec.name == "vim";
            // alpha only matters for ViM (Residual is the residual norm alone).
            let alpha = if vim {
                let res_train = (feats(train, d, &ctx)? - &u).matmul(&ns).norm_scalaropt_dim(2, &[1i64][..], false);
                max_dim1(&logits(train, c, &ctx)?).mean(Kind::Double).double_value(&[]) / res_train.mean(Kind::Double).double_value(&[]).max(1e-12)
            } else {
                1.0
            };
            let mut fitted = Fitted::new(spec, move |f| {
                let r = (feats(f, d, &sc)? - &u).matmul(&ns).norm_scalaropt_dim(2, &[1i64][..], false);
                Ok(if vim { energy_of(&logits(f, c, &sc)?, 1.0) - r * alpha } else { -r })
            });
            if vim {
                fitted.params.insert("alpha".into(), alpha);
            }
            Ok(fitted)
        }
        // NECO: ||P_d x|| / ||x||, x = standardised h, P_d the top-d principal directions
        // of standardised ID training features (optionally times max logit).
        "neco" => {
            let dd = spec.get("d") as i64;
            if dd >= d {
                return Err(Error::param("neco.d", format!("{dd} must be smaller than the feature dimension {d}")));
            }
            // Standardised features: their covariance is D^-1 Cov(h) D^-1, D = diag(std).
            check_2d(&train.penultimate, Some(d), &ctx)?;
            let gm = train.global_moments(&ctx)?;
            let mean = gm.mean.shallow_clone();
            let std = gm.cov.diagonal(0, 0, 1).clamp_min(0.0).sqrt().reshape([1, d]);
            let std = std.where_self(&std.gt(1e-12), &std.ones_like());
            let cov = &gm.cov / std.tr().matmul(&std);
            let (_, vecs) = eigh_desc(&cov);
            let pd = vecs.narrow(1, 0, dd);
            let use_ml = spec.get("maxlogit") == 1.0;
            Ok(Fitted::new(spec, move |f| {
                let x = (feats(f, d, &sc)? - &mean) / &std;
                let num = x.matmul(&pd).norm_scalaropt_dim(2, &[1i64][..], false);
                let den = x.norm_scalaropt_dim(2, &[1i64][..], false).clamp_min(1e-12);
                let r = num / den;
                Ok(if use_ml { r * max_dim1(&logits(f, c, &sc)?) } else { r })
            }))
        }
        // The original project's NECO: PCA fitted on centred h, projection of the
        // uncentred h, no standardisation, d = C: ||P_d h|| / (||h|| + 1e-8).
        "neco_seed" => {
            let dd = (spec.get("d") as i64).min(d);
            check_2d(&train.penultimate, Some(d), &ctx)?;
            let (_, vecs) = eigh_desc(&train.global_moments(&ctx)?.cov);
            let pd = vecs.narrow(1, 0, dd);
            Ok(Fitted::new(spec, move |f| {
                let h = feats(f, d, &sc)?;
                Ok(h.matmul(&pd).norm_scalaropt_dim(2, &[1i64][..], false) / (h.norm_scalaropt_dim(2, &[1i64][..], false) + 1e-8))
            }))
        }
        // ReAct: energy of W min(h, c) + b, c = p-th percentile of ID training activations.
        "react" => {
            check_2d(&train.penultimate, Some(d), &ctx)?;
            let _ = train.penultimate_f64(&ctx)?; // the finiteness check
            let clip = percentile(&train.penultimate, spec.get("p"));
            let mut fitted = Fitted::new(spec, move |f| {
                let h = feats(f, d, &sc)?.clamp_max(clip);
                Ok(energy_of(&(h.matmul(&w.tr()) + &b), 1.0))
            });
            fitted.params.insert("clip".into(), clip);
            Ok(fitted)
        }
        // ASH: per sample, keep the activations above the sample's p-th percentile;
        // -p: prune the rest; -b: set the kept ones to s1 / K; -s: scale them by exp(s1 / s2)
        // (s1, s2 the sums before and after pruning, K the number kept). Then energy.
        "ash_p" | "ash_b" | "ash_s" => {
            let p = spec.get("p");
            let variant = spec.name.clone();
            Ok(Fitted::new(spec, move |f| {
                let h = feats(f, d, &sc)?;
                let k = ((d as f64) * (1.0 - p / 100.0)).round().max(1.0) as i64;
                // The k-th largest value of each row, selected on the f32 features
                // (same values, half the memory traffic).
                let (top, _) = f.penultimate.topk(k, 1, true, false);
                let thresh = top.min_dim(1, true).0.to_kind(Kind::Double);
                let keep = h.ge_tensor(&thresh).to_kind(Kind::Double);
                let s1 = h.sum_dim_intlist(&[1i64][..], true, Kind::Double);
                let pruned = &h * &keep;
                let shaped = match variant.as_str() {
                    "ash_p" => pruned,
                    "ash_b" => {
                        let kept = keep.sum_dim_intlist(&[1i64][..], true, Kind::Double).clamp_min(1.0);
                        keep * (s1 / kept)
                    }
                    _ => {
                        let s2 = pruned.sum_dim_intlist(&[1i64][..], true, Kind::Double).clamp_min(1e-12);
                        &pruned * (s1 / s2).exp()
                    }
                };
                Ok(energy_of(&(shaped.matmul(&w.tr()) + &b), 1.0))
            }))
        }
        // DICE: energy with W masked to its top (100 - p) % contributions W_cd * mean_train(h_d).
        "dice" => {
            check_2d(&train.penultimate, Some(d), &ctx)?;
            let mean_h = train.global_moments(&ctx)?.mean.reshape([d]);
            let contrib = &w * mean_h.unsqueeze(0);
            let thresh = percentile(&contrib, spec.get("p"));
            let wm = &w * contrib.gt(thresh).to_kind(Kind::Double);
            Ok(Fitted::new(spec, move |f| Ok(energy_of(&(feats(f, d, &sc)?.matmul(&wm.tr()) + &b), 1.0))))
        }
        // SHE: <h, pattern of the predicted class>, patterns = mean feature of the
        // correctly classified training samples of each class (a class with none,
        // e.g. at initialisation, falls back to the mean of all its samples).
        "she" => {
            let h = feats(train, d, &ctx)?;
            let y = check_labels(&train.labels, h.size()[0], c, &ctx)?;
            // Misclassified samples go to an extra row C that is then dropped: one
            // pass over the features, no masked copy of them.
            let ok = logits(train, c, &ctx)?.argmax(1, false).eq_tensor(&y);
            let bucket = y.where_self(&ok, &Tensor::full([1], c, (Kind::Int64, y.device())));
            let counts = bucket.bincount::<Tensor>(None, c + 1).narrow(0, 0, c).to_kind(Kind::Double);
            let sums = Tensor::zeros([c + 1, d], (Kind::Double, h.device())).index_add(0, &bucket, &h).narrow(0, 0, c);
            let has = counts.gt(0.0);
            let mut patterns = sums / counts.clamp_min(1.0).unsqueeze(1);
            if !bool::try_from(has.all()).unwrap_or(false) {
                // Only the class means are needed (not the covariance of class_moments).
                let (all_means, _) = class_means(&h, &y, c, &ctx)?;
                patterns = patterns.where_self(&has.unsqueeze(1), &all_means);
            }
            Ok(Fitted::new(spec, move |f| {
                let x = feats(f, d, &sc)?;
                let pred = logits(f, c, &sc)?.argmax(1, false);
                // <x, pattern_pred> as one [N, C] product and a gather: no [N, D] temporaries.
                Ok(x.matmul(&patterns.tr()).gather(1, &pred.unsqueeze(1), false).squeeze_dim(1))
            }))
        }
        // fDBD: mean over j != c of |(w_c - w_j) h + b_c - b_j| / ||w_c - w_j||, divided by
        // ||h - mean_train(h)||; c the predicted class.
        "fdbd" => {
            check_2d(&train.penultimate, Some(d), &ctx)?;
            let mu = train.global_moments(&ctx)?.mean.shallow_clone();
            // ||w_c - w_j||^2 = |w_c|^2 + |w_j|^2 - 2 w_c.w_j, for all pairs once.
            let wn = w.square().sum_dim_intlist(&[1i64][..], false, Kind::Double);
            let dist_w = (wn.unsqueeze(1) + wn.unsqueeze(0) - w.matmul(&w.tr()) * 2.0).clamp_min(1e-12).sqrt();
            Ok(Fitted::new(spec, move |f| {
                let x = feats(f, d, &sc)?;
                let z = x.matmul(&w.tr()) + &b;
                let pred = z.argmax(1, false);
                let zc = z.gather(1, &pred.unsqueeze(1), false);
                // ||w_c - w_j|| for the predicted c: a row of the [C, C] table.
                let num = (&zc - &z).abs() / dist_w.index_select(0, &pred);
                let mask = Tensor::ones_like(&num).scatter_value(1, &pred.unsqueeze(1), 0.0);
                let mean = (num * &mask).sum_dim_intlist(&[1i64][..], false, Kind::Double) / (c - 1).max(1) as f64;
                Ok(mean / (x - &mu).norm_scalaropt_dim(2, &[1i64][..], false).clamp_min(1e-12))
            }))
        }
        other => Err(Error::Unknown {
            kind: "detector".into(),
            name: other.into(),
            known: super::detector_names().join(", "),
        }),
    }
}

/// log max-softmax, precise for confident samples: -log1p(sum_{j != argmax} exp(z_j - z_max)).
fn log_msp(z: &Tensor) -> Tensor {
    let (zmax, arg) = z.max_dim(1, true);
    let others = (z - &zmax).exp().scatter_value(1, &arg, 0.0).sum_dim_intlist(&[1i64][..], false, Kind::Double);
    -others.log1p()
}
