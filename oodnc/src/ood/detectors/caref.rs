//! CARef and CADRef: class-aware relative feature errors.

use super::{energy_of, feats, max_dim1, Head};
use crate::error::Result;
use crate::features::FeatureSet;
use crate::numerics::check_2d;
use crate::ood::detector::{FitData, ParamReader, ParamValue, Registered, Scorer};
use tch::{Kind, Tensor};

/// Centroids of the ID training features per *predicted* class (argmax of the
/// head), `[C, D]`; a class never predicted gets the global mean (pytorch-ood's
/// fallback; the reference implementation leaves it empty, i.e. NaN scores).
fn predicted_centroids(x: &Tensor, w: &Tensor, b: &Tensor, c: i64) -> Tensor {
    let pred = (x.matmul(&w.tr()) + b).argmax(1, false);
    let d = x.size()[1];
    let sums = Tensor::zeros([c, d], (Kind::Double, x.device())).index_add(0, &pred, x);
    let counts = Tensor::zeros([c], (Kind::Double, x.device())).index_add(0, &pred, &Tensor::ones_like(&pred).to_kind(Kind::Double));
    let means = sums / counts.clamp_min(1.0).unsqueeze(1);
    let empty = counts.eq(0.0).unsqueeze(1);
    means.where_self(&empty.logical_not(), &x.mean_dim(&[0i64][..], true, Kind::Double))
}

/// **CARef** (Ling et al., 2025, "CADRef: robust out-of-distribution detection
/// via class-aware decoupled relative feature leveraging", arXiv 2503.00325):
/// the relative error of the feature to the centroid of its predicted class,
///
/// ```text
/// score(h) = -||h - mu_c||_1 / ||h||_1,   c = argmax (W h + b),  mu_c = mean of the ID training features predicted as c
/// ```
///
/// (centroids over *predicted* labels, as the paper). No hyperparameters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Caref;

/// The head and the predicted-class centroids.
#[derive(Debug)]
pub struct FittedCaref {
    pub weight: Tensor,
    pub bias: Tensor,
    /// `[C, D]`.
    pub centroids: Tensor,
}

impl Registered for Caref {
    const NAME: &'static str = "caref";
    const SUMMARY: &'static str = "relative L1 error to the predicted class's centroid (CARef, Ling et al. 2025)";
    type Fitted = FittedCaref;
    fn read(_: &mut ParamReader) -> Result<Self> {
        Ok(Caref)
    }
    fn fit(&self, data: &FitData) -> Result<FittedCaref> {
        let h = Head::of(data, Self::NAME)?;
        check_2d(&data.train.penultimate, Some(h.d), &h.ctx)?;
        let x = data.train.penultimate_f64(&h.ctx)?;
        let centroids = predicted_centroids(&x, &h.w, &h.b, h.c);
        Ok(FittedCaref { weight: h.w, bias: h.b, centroids })
    }
}

impl Scorer for FittedCaref {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        let x = feats(f, self.weight.size()[1], "caref score")?;
        let pred = (x.matmul(&self.weight.tr()) + &self.bias).argmax(1, false);
        let rel = (&x - self.centroids.index_select(0, &pred)).abs().sum_dim_intlist(&[1i64][..], false, Kind::Double);
        Ok(-rel / x.abs().sum_dim_intlist(&[1i64][..], false, Kind::Double).clamp_min(1e-12))
    }
}

/// **CADRef** (Ling et al., 2025, same paper): CARef's relative feature h - mu_c
/// split by the sign of the predicted class's weight w_c into the part that
/// raises the logit and the part that lowers it,
///
/// ```text
/// a      = (h - mu_c) * sign(w_c)
/// E_p    = sum relu(a) / ||h||_1,     E_n = sum relu(-a) / ||h||_1
/// score  = -(E_p / S(h) + E_n / S_bar)
/// ```
///
/// with S a logit confidence (energy by default, the paper's) and S_bar its mean
/// over the ID training features. As the official code and pytorch-ood (the
/// paper's printed equations split on sign(w_c h) instead; see pytorch-ood's
/// note). `conf`: 0 = energy, 1 = max softmax probability, 2 = max-logit.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Cadref {
    /// The confidence S: 0 = energy, 1 = max softmax probability, 2 = max-logit.
    pub conf: i64,
}

/// CARef's state, the confidence and its ID training mean.
#[derive(Debug)]
pub struct FittedCadref {
    pub weight: Tensor,
    pub bias: Tensor,
    pub centroids: Tensor,
    pub conf: i64,
    /// S_bar.
    pub mean_confidence: f64,
}

fn confidence(z: &Tensor, conf: i64) -> Tensor {
    match conf {
        0 => energy_of(z, 1.0),
        1 => z.softmax(1, Kind::Double).max_dim(1, false).0,
        _ => max_dim1(z),
    }
}

impl Registered for Cadref {
    const NAME: &'static str = "cadref";
    const SUMMARY: &'static str = "CARef's error decoupled by the sign of the class weight, scaled by confidence (Ling et al. 2025)";
    type Fitted = FittedCadref;
    fn read(r: &mut ParamReader) -> Result<Self> {
        Ok(Cadref { conf: r.int("conf", 0)? })
    }
    fn params(&self) -> Vec<(&'static str, ParamValue)> {
        vec![("conf", ParamValue::Int(self.conf))]
    }
    fn check(&self) -> Result<()> {
        if !(0..=2).contains(&self.conf) {
            return Err(super::bad_param(Self::NAME, "conf", self.conf, "must be 0 (energy), 1 (max softmax) or 2 (max-logit)"));
        }
        Ok(())
    }
    fn fit(&self, data: &FitData) -> Result<FittedCadref> {
        let h = Head::of(data, Self::NAME)?;
        check_2d(&data.train.penultimate, Some(h.d), &h.ctx)?;
        let x = data.train.penultimate_f64(&h.ctx)?;
        let centroids = predicted_centroids(&x, &h.w, &h.b, h.c);
        let mean_confidence = confidence(&(x.matmul(&h.w.tr()) + &h.b), self.conf).mean(Kind::Double).double_value(&[]);
        Ok(FittedCadref { weight: h.w, bias: h.b, centroids, conf: self.conf, mean_confidence })
    }
}

impl Scorer for FittedCadref {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        let x = feats(f, self.weight.size()[1], "cadref score")?;
        let z = x.matmul(&self.weight.tr()) + &self.bias;
        let pred = z.argmax(1, false);
        let a = (&x - self.centroids.index_select(0, &pred)) * self.weight.index_select(0, &pred).sign();
        let norm = x.abs().sum_dim_intlist(&[1i64][..], false, Kind::Double).clamp_min(1e-12);
        let ep = a.relu().sum_dim_intlist(&[1i64][..], false, Kind::Double) / &norm;
        let en = (-a).relu().sum_dim_intlist(&[1i64][..], false, Kind::Double) / &norm;
        Ok(-(ep / confidence(&z, self.conf) + en / self.mean_confidence))
    }
    fn fitted_values(&self) -> Vec<(&'static str, f64)> {
        vec![("mean_confidence", self.mean_confidence)]
    }
}
