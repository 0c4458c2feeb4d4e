//! pNML.

use super::{feats_in, logits_in, Head, PINV_REL_TOL};
use crate::error::{Error, Result};
use crate::features::{normalize_rows, FeatureSet};
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
/// log-softmax in f64, so no probability needs clamping. The projection is kept
/// as `L` with `L L^T = (X^T X)^+` (eigendecomposition in f64, the library's
/// pseudo-inverse threshold). Under [`Precision::Auto`](crate::ood::Precision)
/// the products are f32: the Gram matrix is formed from the normalised features
/// centred on their mean (so its rounding scales with their spread, not with the
/// dominant mean direction of post-ReLU features) and the mean's rank-one part is
/// added back in f64; the scored features are projected by one f32 product and
/// divided by their squared norm, the regret computed in f64. No hyperparameters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pnml;

/// The head (its shape; the scores use the network's logits) and the whitening
/// of the normalised training features' Gram matrix.
#[derive(Debug)]
pub struct FittedPnml {
    pub weight: Tensor,
    pub bias: Tensor,
    /// `L` `[D, r]`, `L L^T = (X^T X)^+`.
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
        let gram = if kind == Kind::Double {
            let x = normalize_rows(&x);
            x.tr().matmul(&x)
        } else {
            // X^T X = (X - m)^T (X - m) + N m m^T with m the mean normalised feature: the f32
            // product then rounds relative to the spread of the features, not to their mean,
            // the dominant direction. (m's own rounding only tilts the estimate along m, the
            // top eigenvector: the small eigenvalues, which pNML weighs most, hardly move.)
            let n = x.size()[0];
            let inv = x.norm_scalaropt_dim(2, &[1i64][..], true).clamp_min(1e-12).reciprocal();
            let m = x.tr().matmul(&inv).tr() / n as f64;
            let xc = (-&m).addcmul(&x, &inv); // x / ||x|| - m in one pass
            let m = m.to_kind(Kind::Double);
            symmetric_gram(&xc).to_kind(Kind::Double) + m.tr().matmul(&m) * n as f64
        };
        let projection = pinv_sqrt(&gram, PINV_REL_TOL)?.to_kind(kind);
        Ok(FittedPnml { weight: h.w, bias: h.b, projection })
    }
}

impl Scorer for FittedPnml {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        let kind = self.projection.kind();
        let (c, d) = (self.weight.size()[0], self.weight.size()[1]);
        let x = feats_in(f, d, "pnml score", kind)?;
        // ||x L||^2 / ||x||^2: the projection of the normalised feature without normalising it.
        let sq_norm = x.square().sum_dim_intlist(&[1i64][..], true, kind).to_kind(Kind::Double).clamp_min(1e-24);
        let proj = x.matmul(&self.projection).square().sum_dim_intlist(&[1i64][..], true, kind).to_kind(Kind::Double) / sq_norm;
        let k = &proj / (&proj + 1.0);
        let log_p = logits_in(f, c, "pnml score", kind)?.log_softmax(1, Kind::Double);
        let one_minus_p: Tensor = 1.0 - log_p.exp();
        let terms: Tensor = ((k - 1.0) * &log_p).exp() * one_minus_p + 1.0;
        let regret = terms.reciprocal().sum_dim_intlist(&[1i64][..], false, Kind::Double).log() / (c as f64).ln();
        Ok(-regret)
    }
}

/// `X^T X` (`[D, D]`) from the two diagonal blocks and one off-diagonal block of
/// the column halves of `X`: three quarters of the full product's flops.
fn symmetric_gram(x: &Tensor) -> Tensor {
    let d = x.size()[1];
    if d < 64 {
        return x.tr().matmul(x);
    }
    let h = d / 2;
    let (a, b) = (x.narrow(1, 0, h), x.narrow(1, h, d - h));
    let g11 = a.tr().matmul(&a);
    let g12 = a.tr().matmul(&b);
    let g22 = b.tr().matmul(&b);
    Tensor::cat(&[Tensor::cat(&[&g11, &g12], 1), Tensor::cat(&[&g12.tr(), &g22], 1)], 0)
}
