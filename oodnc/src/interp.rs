//! Neural Collapse meets mechanistic interpretability (notebook 06, `oodnc interp`).
//!
//! NC describes the *geometry* of the class means and the classifier; it is
//! invariant to any rotation of feature space, so it says nothing about
//! individual units. Mechanistic interpretability studies units, circuits and
//! superposition. This module computes quantities that sit on both sides, from
//! the layer taps of a run's feature cache (one extraction pass with taps):
//!
//! 1. **Probes per layer** ([`probe`]): nearest-class-centre (NCC) accuracy
//!    (at the penultimate layer on ID train this is NC4's `ncc_accuracy`), a
//!    ridge linear probe fitted on ID train and scored on ID test, and the
//!    effective rank of the centred class means (Roy & Vetterli 2007:
//!    exp(H(p)), p_i = s_i / sum s, s the singular values; C - 1 for a simplex ETF).
//! 2. **Class selectivity** ([`selectivity`], Morcos et al. 2018):
//!    (mu_max - mu_rest) / (mu_max + mu_rest) per unit over its class-conditional
//!    mean activations mu_c (mu_rest the mean over the other classes).
//! 3. **Privileged basis** ([`privileged_basis`]): per class, the participation
//!    ratio PR = (sum_i m_i^2)^2 / sum_i m_i^4 of its mean activation (how many
//!    units a class uses; 1 for one-hot codes) and of its centred mean; per unit,
//!    the same ratio over classes (how many classes a unit serves:
//!    polysemanticity); and Elhage et al.'s test: the kurtosis of the centred
//!    class-mean coordinates against the same means under random rotations (a
//!    basis-aligned code has heavy tails that a rotation destroys; NC metrics do
//!    not change under the rotation).
//! 4. **Feature dimensionality** ([`feature_dimensionality`], Elhage et al. 2022,
//!    "Toy Models of Superposition"): D_c = ||w_c||^2 / sum_j (w_c_hat . w_j)^2
//!    for the rows of W and of the centred means; an exact simplex ETF gives
//!    (C - 1) / C for every class.
//! 5. **Causal subspace ablation** ([`Subspace`], [`ablate`]): penultimate
//!    features projected onto (or off) the span of the centred class means (the
//!    ETF subspace, rank <= C - 1) or the top-k principal directions (NECO's),
//!    then accuracy through the head and OOD AUROC of a few detectors; and the
//!    share of each set's centred energy inside the ETF span (NC5 predicts OOD
//!    features are more orthogonal to it than ID ones).
//!
//! Units are only "privileged" where the network applies a coordinate-wise
//! non-linearity: every tap and the penultimate feature of the ResNet are
//! post-ReLU (>= 0). A linear bottleneck (`model.bottleneck`) is signed; for
//! signed features, selectivity and the uncentred participation ratios are
//! computed on the class means shifted per unit so the least active class is 0
//! (the row `signed = 1` says so).

use crate::error::{Error, Result};
use crate::features::{ExtractOptions, FeatureSet};
use crate::numerics::{check_2d, class_means, finite_f64};
use crate::results::Row;
use polars::prelude::*;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

/// The fewest ID-train samples per class the probes accept.
pub const MIN_PER_CLASS: i64 = 2;

fn counts_ok(counts: &Tensor, ctx: &str) -> Result<()> {
    let min = counts.min().double_value(&[]) as i64;
    if min < MIN_PER_CLASS {
        return Err(Error::data(
            ctx,
            format!("a class has {min} sample(s); the probes need at least {MIN_PER_CLASS} per class (use a larger split)"),
        ));
    }
    Ok(())
}

/// Effective rank exp(H(p)) of a matrix, p the singular values normalised to sum 1
/// (Roy & Vetterli 2007). 0 for a zero matrix.
pub fn effective_rank(m: &Tensor) -> f64 {
    let m = m.to_kind(Kind::Double);
    let (ev, _) = crate::numerics::eigh_desc(&m.matmul(&m.tr()));
    // Eigenvalues of the Gram matrix carry an absolute error of about
    // n * eps * the largest one; below that they are zero (a zero left as 1e-15
    // would count as a singular value of 3e-8 and shift the rank by 1e-7).
    let tol = ev.max().double_value(&[]).max(0.0) * ev.size()[0] as f64 * f64::EPSILON;
    let s = ev.where_scalarother(&ev.gt(tol), 0.0).sqrt();
    let total = s.sum(Kind::Double).double_value(&[]);
    if total <= 0.0 {
        return 0.0;
    }
    let p = &s / total;
    let p = p.masked_select(&p.gt(1e-15));
    (-(&p * p.log()).sum(Kind::Double)).exp().double_value(&[])
}

/// Accuracy of the nearest-class-centre rule with `means` `[C, D]` on `x` `[N, D]`.
pub fn ncc_accuracy(means: &Tensor, x: &Tensor, labels: &Tensor) -> f64 {
    let d = crate::numerics::sq_dists(&x.to_kind(Kind::Double), means);
    let pred = d.argmin(1, false);
    pred.eq_tensor(&labels.to_kind(Kind::Int64).to_device(pred.device())).to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
}

/// A ridge-regression linear probe: features standardised with the training
/// mean and standard deviation, one-hot targets, weights
/// B = (X^T X + lambda I)^-1 X^T Y with lambda = `rel_lambda` * N (the trace of
/// X^T X over D, for standardised X), predictions argmax(X B + b).
#[derive(Debug)]
pub struct LinearProbe {
    mean: Tensor,
    scale: Tensor,
    weight: Tensor,
    bias: Tensor,
    /// The ridge penalty used.
    pub lambda: f64,
}

impl LinearProbe {
    /// The default relative ridge penalty.
    pub const REL_LAMBDA: f64 = 1e-3;

    /// Fits on `x` `[N, D]` with labels in `0..c`.
    pub fn fit(x: &Tensor, labels: &Tensor, c: i64, rel_lambda: f64) -> Result<Self> {
        let ctx = "linear probe";
        let (n, d) = check_2d(x, None, ctx)?;
        if !(rel_lambda > 0.0 && rel_lambda.is_finite()) {
            return Err(Error::param("linear probe lambda", format!("{rel_lambda} (must be positive)")));
        }
        let x = finite_f64(x, ctx)?;
        let y = crate::numerics::check_labels(labels, n, c, ctx)?;
        let mean = x.mean_dim(&[0i64][..], true, Kind::Double);
        let sd = x.std_dim(&[0i64][..], false, true);
        let scale = sd.clamp_min(1e-12).reciprocal() * sd.gt(1e-12).to_kind(Kind::Double);
        let z = (&x - &mean) * &scale;
        let onehot = Tensor::zeros([n, c], (Kind::Double, x.device())).scatter_value(1, &y.unsqueeze(1), 1.0);
        let ymean = onehot.mean_dim(&[0i64][..], true, Kind::Double);
        let lambda = rel_lambda * n as f64;
        let gram = z.tr().matmul(&z) + Tensor::eye(d, (Kind::Double, x.device())) * lambda;
        let weight = Tensor::linalg_solve(&gram, &z.tr().matmul(&(&onehot - &ymean)), true);
        Ok(LinearProbe { mean, scale, weight, bias: ymean, lambda })
    }

    /// Class predictions for `x`.
    pub fn predict(&self, x: &Tensor) -> Result<Tensor> {
        let x = finite_f64(x, "linear probe")?;
        let z = (&x - &self.mean) * &self.scale;
        Ok((z.matmul(&self.weight) + &self.bias).argmax(1, false))
    }

    /// Accuracy on `x` with `labels`.
    pub fn accuracy(&self, x: &Tensor, labels: &Tensor) -> Result<f64> {
        let p = self.predict(x)?;
        Ok(p.eq_tensor(&labels.to_kind(Kind::Int64).to_device(p.device())).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]))
    }
}

/// One layer's probes.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResult {
    pub dim: i64,
    pub ncc_train: f64,
    pub ncc_test: f64,
    pub linear_train: f64,
    pub linear_test: f64,
    /// Effective rank of the centred class means (at most min(D, C - 1)).
    pub effective_rank: f64,
}

/// Probes of one layer: NCC and ridge probes fitted on `train`, scored on `train` and `test`.
pub fn probe(train: &Tensor, train_labels: &Tensor, test: &Tensor, test_labels: &Tensor, c: i64) -> Result<ProbeResult> {
    let ctx = "probes";
    let (_, dim) = check_2d(train, None, ctx)?;
    check_2d(test, Some(dim), ctx)?;
    let tr = finite_f64(train, ctx)?;
    let (means, counts) = class_means(&tr, train_labels, c, ctx)?;
    counts_ok(&counts, ctx)?;
    let lin = LinearProbe::fit(&tr, train_labels, c, LinearProbe::REL_LAMBDA)?;
    let centred = &means - means.mean_dim(&[0i64][..], true, Kind::Double);
    Ok(ProbeResult {
        dim,
        ncc_train: ncc_accuracy(&means, &tr, train_labels),
        ncc_test: ncc_accuracy(&means, test, test_labels),
        linear_train: lin.accuracy(&tr, train_labels)?,
        linear_test: lin.accuracy(test, test_labels)?,
        effective_rank: effective_rank(&centred),
    })
}

/// Class means made non-negative for the unit-level statistics: unchanged when
/// every mean is >= 0 (post-ReLU features), else shifted per unit so its least
/// active class is 0. Returns (means, signed).
pub fn nonnegative_means(means: &Tensor) -> (Tensor, bool) {
    let m = means.to_kind(Kind::Double);
    if m.min().double_value(&[]) >= 0.0 {
        (m, false)
    } else {
        let lo = m.amin(&[0i64][..], true);
        (&m - lo, true)
    }
}

/// Per-unit class selectivity `[D]` of class means `[C, D]` (>= 0; see
/// [`nonnegative_means`]): (mu_max - mu_rest) / (mu_max + mu_rest), mu_rest the
/// mean of the other classes; 0 for a unit that is never active (a dead unit).
pub fn selectivity(means: &Tensor) -> Result<Tensor> {
    let (c, _) = check_2d(means, None, "class selectivity")?;
    if c < 2 {
        return Err(Error::data("class selectivity", "needs at least 2 classes"));
    }
    let m = means.to_kind(Kind::Double);
    if m.min().double_value(&[]) < 0.0 {
        return Err(Error::data("class selectivity", "class means must be >= 0 (use nonnegative_means for signed features)"));
    }
    let max = m.amax(&[0i64][..], false);
    let rest = (m.sum_dim_intlist(&[0i64][..], false, Kind::Double) - &max) / (c - 1) as f64;
    let den = &max + &rest;
    let live = den.gt(1e-300);
    Ok(((&max - &rest) / den.clamp_min(1e-300)) * live.to_kind(Kind::Double))
}

/// Participation ratio (sum_i x_i^2)^2 / sum_i x_i^4 of every row of `x` `[R, K]`
/// (between 1 and K; NaN for a zero row).
pub fn participation_ratio(x: &Tensor) -> Tensor {
    let x = x.to_kind(Kind::Double);
    let s2 = x.square().sum_dim_intlist(&[1i64][..], false, Kind::Double);
    let s4 = x.pow_tensor_scalar(4).sum_dim_intlist(&[1i64][..], false, Kind::Double);
    s2.square() / s4
}

/// Kurtosis E[x^4] / E[x^2]^2 of all entries of `x` (moments about 0: `x` is
/// centred, e.g. centred class means). 3 for Gaussian entries; large for a sparse,
/// basis-aligned code.
pub fn kurtosis(x: &Tensor) -> f64 {
    let x = x.to_kind(Kind::Double);
    let m2 = x.square().mean(Kind::Double).double_value(&[]);
    let m4 = x.pow_tensor_scalar(4).mean(Kind::Double).double_value(&[]);
    m4 / (m2 * m2)
}

/// A Haar-random `d x d` rotation (QR of a Gaussian matrix with the signs of R's
/// diagonal folded in), seeded.
pub fn random_rotation(d: i64, seed: u64) -> Tensor {
    let mut rng = crate::util::SplitMix64::new(seed);
    let v: Vec<f64> = (0..d * d).map(|_| rng.normal()).collect();
    let g = Tensor::from_slice(&v).reshape([d, d]);
    let (q, r) = Tensor::linalg_qr(&g, "reduced");
    q * r.diagonal(0, 0, 1).sign().unsqueeze(0)
}

/// Elhage et al.'s privileged-basis statistics of one layer's class means `[C, D]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PrivilegedBasis {
    /// Mean over classes of the participation ratio of the class mean (units per class).
    pub units_per_class: f64,
    /// The same for the centred class means.
    pub units_per_class_centred: f64,
    /// Mean over live units of the participation ratio over classes (classes per unit).
    pub classes_per_unit: f64,
    /// Kurtosis of the centred class-mean coordinates in the unit basis.
    pub kurtosis_units: f64,
    /// Its mean over `rotations` random rotations of the same means.
    pub kurtosis_rotated: f64,
    /// Whether the means were shifted (signed features).
    pub signed: bool,
}

/// [`PrivilegedBasis`] of `means` `[C, D]`; `rotations` seeded random rotations.
pub fn privileged_basis(means: &Tensor, rotations: usize, seed: u64) -> Result<PrivilegedBasis> {
    let (_, d) = check_2d(means, None, "privileged basis")?;
    let (nn, signed) = nonnegative_means(means);
    let centred = means.to_kind(Kind::Double) - means.to_kind(Kind::Double).mean_dim(&[0i64][..], true, Kind::Double);
    let nan_mean = |t: Tensor| {
        let ok = t.isfinite();
        let v = t.masked_select(&ok);
        if v.numel() == 0 {
            f64::NAN
        } else {
            v.mean(Kind::Double).double_value(&[])
        }
    };
    let kurtosis_rotated = if rotations == 0 {
        f64::NAN
    } else {
        let cm = centred.to_device(Device::Cpu);
        (0..rotations).map(|i| kurtosis(&cm.matmul(&random_rotation(d, seed.wrapping_add(i as u64))))).sum::<f64>() / rotations as f64
    };
    Ok(PrivilegedBasis {
        units_per_class: nan_mean(participation_ratio(&nn)),
        units_per_class_centred: nan_mean(participation_ratio(&centred)),
        classes_per_unit: nan_mean(participation_ratio(&nn.tr())),
        kurtosis_units: kurtosis(&centred),
        kurtosis_rotated,
        signed,
    })
}

/// Feature dimensionality D_c = ||w_c||^2 / sum_j (w_c_hat . w_j)^2 of every row
/// `[C]` of `w` `[C, D]` (Elhage et al. 2022). Between 0 and 1; (C - 1) / C for
/// the rows of a simplex ETF; 1 for orthogonal rows. A zero row gets 0.
pub fn feature_dimensionality(w: &Tensor) -> Tensor {
    let w = w.to_kind(Kind::Double);
    let norms = w.square().sum_dim_intlist(&[1i64][..], false, Kind::Double);
    let hat = &w / norms.sqrt().clamp_min(1e-300).unsqueeze(1);
    let inter = hat.matmul(&w.tr()).square().sum_dim_intlist(&[1i64][..], false, Kind::Double);
    (&norms / inter.clamp_min(1e-300)) * norms.gt(0.0).to_kind(Kind::Double)
}

/// A subspace of penultimate space to keep (or remove) in an ablation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subspace {
    /// Nothing removed (the reference).
    Full,
    /// The span of the centred class means (the ETF subspace), about their mean mu_G.
    Etf,
    /// Its orthogonal complement (ViM's residual, in spirit).
    EtfComplement,
    /// The top-k principal directions of the training features, about their mean (NECO's).
    Pca(i64),
    /// Their complement.
    PcaComplement(i64),
}

impl Subspace {
    /// Name used in tables: `full`, `etf`, `etf_complement`, `pca<k>`, `pca<k>_complement`.
    pub fn name(&self) -> String {
        match self {
            Subspace::Full => "full".into(),
            Subspace::Etf => "etf".into(),
            Subspace::EtfComplement => "etf_complement".into(),
            Subspace::Pca(k) => format!("pca{k}"),
            Subspace::PcaComplement(k) => format!("pca{k}_complement"),
        }
    }
}

/// An affine projection f -> origin + P (f - origin), P = U U^T (or I - U U^T).
#[derive(Debug)]
pub struct Projection {
    pub origin: Tensor,
    /// Orthonormal basis `[D, r]` of the kept (or removed) subspace.
    pub basis: Tensor,
    pub complement: bool,
}

impl Projection {
    /// The projection of `sub` fitted on ID training features `h` with `labels`.
    /// For D < C - 1 the ETF span is the whole space (rank D): `etf` is then the
    /// identity and `etf_complement` maps every feature to mu_G (documented fallback).
    pub fn fit(sub: Subspace, h: &Tensor, labels: &Tensor, c: i64) -> Result<Self> {
        let ctx = "subspace ablation";
        let (_, d) = check_2d(h, None, ctx)?;
        let h = finite_f64(h, ctx)?;
        let dev = h.device();
        let (origin, basis, complement) = match sub {
            Subspace::Full => (Tensor::zeros([d], (Kind::Double, dev)), Tensor::zeros([d, 0], (Kind::Double, dev)), true),
            Subspace::Etf | Subspace::EtfComplement => {
                let (means, counts) = class_means(&h, labels, c, ctx)?;
                counts_ok(&counts, ctx)?;
                let mu = means.mean_dim(&[0i64][..], false, Kind::Double);
                let centred = &means - mu.unsqueeze(0);
                (mu, orthonormal_span(&centred.tr()), sub == Subspace::EtfComplement)
            }
            Subspace::Pca(k) | Subspace::PcaComplement(k) => {
                if !(1..=d).contains(&k) {
                    return Err(Error::param("subspace ablation pca k", format!("{k} is outside 1..={d}")));
                }
                let mu = h.mean_dim(&[0i64][..], false, Kind::Double);
                let x = &h - mu.unsqueeze(0);
                let (_, vecs) = crate::numerics::eigh_desc(&x.tr().matmul(&x));
                (mu, vecs.narrow(1, 0, k), matches!(sub, Subspace::PcaComplement(_)))
            }
        };
        Ok(Projection { origin, basis, complement })
    }

    /// Applies the projection to `x` `[N, D]` (f64).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let x = finite_f64(x, "subspace ablation")?.to_device(self.origin.device());
        let z = &x - self.origin.unsqueeze(0);
        let inside = z.matmul(&self.basis).matmul(&self.basis.tr());
        Ok(if self.complement { &x - inside } else { inside + self.origin.unsqueeze(0) })
    }

    /// Mean over rows of ||P (x - origin)||^2 / ||x - origin||^2: the share of each
    /// feature's centred energy in the kept subspace (the basis, or its complement).
    pub fn energy_share(&self, x: &Tensor) -> Result<f64> {
        let x = finite_f64(x, "subspace energy")?.to_device(self.origin.device());
        let z = &x - self.origin.unsqueeze(0);
        let all = z.square().sum_dim_intlist(&[1i64][..], false, Kind::Double).clamp_min(1e-300);
        let inside = z.matmul(&self.basis).square().sum_dim_intlist(&[1i64][..], false, Kind::Double) / &all;
        let share = if self.complement { 1.0 - inside } else { inside };
        Ok(share.mean(Kind::Double).double_value(&[]))
    }
}

/// Orthonormal basis `[D, r]` of the column span of `a` `[D, K]` (singular values above
/// 1e-6 of the largest: eigenvalues of A^T A above 1e-12 of the largest, clear of rounding).
pub fn orthonormal_span(a: &Tensor) -> Tensor {
    // U = A V S^-1 from the eigendecomposition A^T A = V S^2 V^T (K x K, K <= C).
    let a = a.to_kind(Kind::Double);
    let (ev, v) = crate::numerics::eigh_desc(&a.tr().matmul(&a));
    let s = ev.clamp_min(0.0).sqrt();
    let top = s.max().double_value(&[]);
    let r = if top > 0.0 { s.gt(top * 1e-6).sum(Kind::Int64).int64_value(&[]) } else { 0 };
    let u = a.matmul(&v.narrow(1, 0, r)) / s.narrow(0, 0, r).unsqueeze(0);
    // One Gram-Schmidt pass through QR keeps the basis orthonormal to rounding.
    Tensor::linalg_qr(&u, "reduced").0
}

/// A feature set with its penultimate features replaced by `projection(f)` and the logits recomputed through the head.
pub fn ablate(f: &FeatureSet, projection: &Projection, w: &Tensor, b: &Tensor) -> Result<FeatureSet> {
    let pen = projection.apply(&f.penultimate)?;
    let logits = pen.matmul(&w.to_kind(Kind::Double).to_device(pen.device()).tr()) + b.to_kind(Kind::Double).to_device(pen.device());
    FeatureSet::new(f.name.clone(), logits.to_kind(Kind::Float), pen.to_kind(Kind::Float), f.labels.shallow_clone())
}

/// Options of the interpretability study.
#[derive(Debug, Clone)]
pub struct InterpOptions {
    /// Random rotations for the kurtosis test.
    pub rotations: usize,
    /// Detectors re-measured under each ablation (registry names, defaults).
    pub detectors: Vec<String>,
    /// Seed of the rotations.
    pub seed: u64,
}

impl Default for InterpOptions {
    fn default() -> Self {
        InterpOptions { rotations: 8, detectors: vec!["msp".into(), "energy".into(), "knn".into()], seed: 0 }
    }
}

/// Results of [`study`]: the per-layer table and the ablation table.
pub struct InterpStudy {
    /// `interp/layers.csv` rows: (epoch, layer, id-train | id-test, metric, value).
    pub layers: Vec<Row>,
    /// `interp/ablation.csv` rows: (epoch, subspace, dataset, metric, value).
    pub ablation: Vec<Row>,
    pub layers_csv: PathBuf,
    pub ablation_csv: PathBuf,
}

impl InterpStudy {
    /// The per-layer rows as a DataFrame.
    pub fn layers_frame(&self) -> Result<DataFrame> {
        crate::results::to_frame(&self.layers, crate::results::TableKind::Nc)
    }
}

/// The layer rows of one epoch: probes, selectivity, privileged basis, dimensionality.
pub fn layer_rows(epoch: i64, train: &FeatureSet, test: &FeatureSet, w: &Tensor, c: i64, opts: &InterpOptions) -> Result<Vec<Row>> {
    use crate::names::{ID_TEST, ID_TRAIN};
    let mut rows = Vec::new();
    let names = crate::nc::layers::layer_names(train, false);
    if names.len() == 1 {
        return Err(Error::data("interp", "the features carry no taps; extract with taps (oodnc extract --taps)"));
    }
    for name in names {
        let (h, ht) = (train.layer(&name)?, test.layer(&name)?);
        let p = probe(h, &train.labels, ht, &test.labels, c)?;
        let mut push = |set: &str, metric: &str, v: f64| rows.push(Row::point(epoch, name.as_str(), set, metric, v));
        push(ID_TRAIN, "dim", p.dim as f64);
        push(ID_TRAIN, "dim_below_classes", if p.dim < c - 1 { 1.0 } else { 0.0 });
        push(ID_TRAIN, "ncc_probe_accuracy", p.ncc_train);
        push(ID_TEST, "ncc_probe_accuracy", p.ncc_test);
        push(ID_TRAIN, "linear_probe_accuracy", p.linear_train);
        push(ID_TEST, "linear_probe_accuracy", p.linear_test);
        push(ID_TRAIN, "effective_rank_means", p.effective_rank);
        let (means, _) = class_means(&finite_f64(h, "interp")?, &train.labels, c, "interp")?;
        let (nn, signed) = nonnegative_means(&means);
        let sel = Vec::<f64>::try_from(selectivity(&nn)?.to_device(Device::Cpu))?;
        let live: Vec<f64> = sel.iter().copied().filter(|v| *v > 0.0).collect();
        push(ID_TRAIN, "selectivity_mean", sel.iter().sum::<f64>() / sel.len() as f64);
        push(ID_TRAIN, "selectivity_median", crate::numerics::percentile(&Tensor::from_slice(&sel), 50.0));
        push(ID_TRAIN, "selectivity_p90", crate::numerics::percentile(&Tensor::from_slice(&sel), 90.0));
        push(ID_TRAIN, "dead_unit_fraction", 1.0 - live.len() as f64 / sel.len() as f64);
        let pb = privileged_basis(&means, opts.rotations, opts.seed)?;
        push(ID_TRAIN, "signed", if signed { 1.0 } else { 0.0 });
        push(ID_TRAIN, "units_per_class", pb.units_per_class);
        push(ID_TRAIN, "units_per_class_centred", pb.units_per_class_centred);
        push(ID_TRAIN, "classes_per_unit", pb.classes_per_unit);
        push(ID_TRAIN, "kurtosis_units", pb.kurtosis_units);
        push(ID_TRAIN, "kurtosis_rotated", pb.kurtosis_rotated);
        let centred = &means - means.mean_dim(&[0i64][..], true, Kind::Double);
        push(ID_TRAIN, "dimensionality_means", feature_dimensionality(&centred).mean(Kind::Double).double_value(&[]));
        if name == "penultimate" {
            push(ID_TRAIN, "dimensionality_w", feature_dimensionality(w).mean(Kind::Double).double_value(&[]));
            push(ID_TRAIN, "dimensionality_etf", (c - 1) as f64 / c as f64);
        }
    }
    Ok(rows)
}

/// The ablation rows of one epoch: accuracy through the head on ID test, AUROC of
/// each detector against every OOD set, and the share of centred energy in the
/// kept subspace, for `full`, `etf`, `etf_complement`, `pca<k>` and its complement
/// (k = the rank of the ETF subspace, for a like-for-like comparison).
pub fn ablation_rows(
    epoch: i64,
    train: &FeatureSet,
    test: &FeatureSet,
    ood: &[FeatureSet],
    head: (&Tensor, &Tensor),
    c: i64,
    opts: &InterpOptions,
) -> Result<Vec<Row>> {
    let (w, b) = head;
    let mut rows = Vec::new();
    let etf = Projection::fit(Subspace::Etf, &train.penultimate, &train.labels, c)?;
    let k = etf.basis.size()[1].max(1);
    let d = train.penultimate.size()[1];
    let mut subspaces = vec![Subspace::Full, Subspace::Etf, Subspace::EtfComplement];
    if k < d {
        subspaces.extend([Subspace::Pca(k), Subspace::PcaComplement(k)]);
    }
    // NC5's prediction: OOD features keep less of their centred energy in the ETF span than ID ones.
    rows.push(Row::point(epoch, "etf", crate::names::ID_TRAIN, "energy_in_etf_span", etf.energy_share(&train.penultimate)?));
    rows.push(Row::point(epoch, "etf", crate::names::ID_TEST, "energy_in_etf_span", etf.energy_share(&test.penultimate)?));
    for o in ood {
        rows.push(Row::point(epoch, "etf", o.name.as_str(), "energy_in_etf_span", etf.energy_share(&o.penultimate)?));
    }
    for sub in subspaces {
        let proj = Projection::fit(sub, &train.penultimate, &train.labels, c)?;
        let name = sub.name();
        let (tr, te) = (ablate(train, &proj, w, b)?, ablate(test, &proj, w, b)?);
        let oo: Vec<FeatureSet> = ood.iter().map(|o| ablate(o, &proj, w, b)).collect::<Result<_>>()?;
        rows.push(Row::point(
            epoch,
            name.as_str(),
            crate::names::ID_TEST,
            "accuracy",
            crate::ood::metrics::accuracy(&te.logits, &te.labels)?,
        ));
        let r = proj.basis.size()[1];
        let kept = if proj.complement { d - r } else { r };
        rows.push(Row::point(epoch, name.as_str(), crate::names::ID_TEST, "kept_dim", kept as f64));
        let fit = crate::ood::detector::FitData::new(&tr, None, w, b);
        for det in &opts.detectors {
            let fitted = crate::ood::DetectorSpec::new(det, &[])?.fit(&fit)?;
            let id = fitted.score_vec(&te)?;
            for o in &oo {
                let auroc = crate::ood::metrics::auroc(&id, &fitted.score_vec(o)?)?;
                rows.push(Row::point(epoch, name.as_str(), o.name.as_str(), format!("auroc_{det}"), auroc));
            }
        }
    }
    Ok(rows)
}

/// Runs the analyses on `run` at `epochs` (all checkpoints when empty): features
/// of ID train and ID test with taps, and the OOD sets' penultimate features,
/// from the feature cache (one extraction pass when missing). Writes
/// `interp/layers.csv` and `interp/ablation.csv`, merged with earlier rows (rows of
/// the epochs computed now replace theirs, the rest are kept), under the run's
/// tables lock.
pub fn study(run: &crate::run::Run, epochs: &[i64], opts: &InterpOptions, device: Device) -> Result<InterpStudy> {
    let _lock = run.lock_tables()?;
    let epochs = run.select_epochs(epochs)?;
    let sets = run.eval_sets()?;
    let c = run.config().model.num_classes;
    let taps = ExtractOptions { taps: true, pool2x2: false };
    let (mut layers, mut ablation) = (Vec::new(), Vec::new());
    let mut prog = crate::progress::Progress::new("interp", epochs.len() as u64);
    for &epoch in &epochs {
        let train = run.features(epoch, &sets.id_train, taps, device)?;
        let test = run.features(epoch, &sets.id_test, taps, device)?;
        let ood: Vec<FeatureSet> = sets.ood.iter().map(|d| run.features(epoch, d, taps, device)).collect::<Result<_>>()?;
        let (w, b) = run.head(epoch)?;
        layers.extend(layer_rows(epoch, &train, &test, &w, c, opts)?);
        ablation.extend(ablation_rows(epoch, &train, &test, &ood, (&w, &b), c, opts)?);
        prog.inc(1, || format!("epoch {epoch}"));
    }
    prog.finish();
    let layers_csv = run.table(crate::run::Table::InterpLayers);
    let ablation_csv = run.table(crate::run::Table::InterpAblation);
    crate::run::ensure_dir(layers_csv.parent().unwrap_or(run.dir()), "results folder")?;
    for (rows, path) in [(&layers, &layers_csv), (&ablation, &ablation_csv)] {
        let frame = crate::results::to_frame(rows, crate::results::TableKind::Nc)?;
        crate::report::merge_csv(path, &frame, &["epoch", "layer", "dataset"])?;
    }
    Ok(InterpStudy { layers, ablation, layers_csv, ablation_csv })
}
