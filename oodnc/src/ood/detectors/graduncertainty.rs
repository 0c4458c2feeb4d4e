//! GradUncertainty on the classifier head, in closed form.

use super::{feats, Head};
use crate::error::Result;
use crate::features::FeatureSet;
use crate::ood::detector::{FitData, ParamReader, ParamValue, Registered, Scorer};
use tch::{Kind, Tensor};

/// **GradUncertainty** (Oberdiek, Rottmann & Gottschalk, "Gradients as a
/// measure of uncertainty in neural networks", ICIP 2020; pytorch-ood's
/// `GradUncertainty`): the squared L2 norm of the gradient, with respect to the
/// classifier's weight W and bias b, of the binary cross-entropy between the
/// softmax and a "confounding label" of all ones. A familiar input gives a
/// confident softmax and a large gradient, an unfamiliar one a flat softmax and
/// a small one. No backward pass is needed: with L = -sum_c log p_c and
/// z = W h + b,
///
/// ```text
/// dL/dz_j   = C p_j - 1
/// dL/dW     = (C p - 1) h^T,      dL/db = C p - 1
/// score(h)  = ||dL/dW||^2 + ||dL/db||^2 = ||C p - 1||^2 (||h||^2 + 1)
/// ```
///
/// (checked against autograd in f64 and against pytorch-ood with its parameters
/// restricted to the head, as OpenOOD does). No hyperparameters, nothing fitted
/// but the head; f64.
///
/// Differences: the paper trains a small classifier on per-layer gradient norms
/// of ID and OOD samples; pytorch-ood (and oodnc) use the plain sum, which needs
/// no OOD data. pytorch-ood differentiates through every parameter of the model
/// it is given; oodnc through the head only, which the features determine (the
/// whole-network variant needs a backward pass per image). pytorch-ood's
/// `binary_cross_entropy` clamps `p (1 - p)` at 1e-12 in its backward, so for a
/// probability below about 1e-12 (or above 1 - 1e-12) its gradient is smaller
/// than the derivative of the loss; the closed form is the derivative.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct GradUncertainty;

/// The head.
#[derive(Debug)]
pub struct FittedGradUncertainty {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Registered for GradUncertainty {
    const NAME: &'static str = "graduncertainty";
    const SUMMARY: &'static str = "squared norm of the head's gradient of BCE(softmax, all ones), closed form (Oberdiek et al. 2020)";
    type Fitted = FittedGradUncertainty;
    fn read(_: &mut ParamReader) -> Result<Self> {
        Ok(GradUncertainty)
    }
    fn params(&self) -> Vec<(&'static str, ParamValue)> {
        vec![]
    }
    fn check(&self) -> Result<()> {
        Ok(())
    }
    fn fit(&self, data: &FitData) -> Result<FittedGradUncertainty> {
        let h = Head::of(data, Self::NAME)?;
        Ok(FittedGradUncertainty { weight: h.w, bias: h.b })
    }
}

impl Scorer for FittedGradUncertainty {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        let (c, d) = (self.weight.size()[0], self.weight.size()[1]);
        let x = feats(f, d, "graduncertainty score")?;
        let p = (x.matmul(&self.weight.tr()) + &self.bias).softmax(1, Kind::Double);
        let g = (p * c as f64 - 1.0).square().sum_dim_intlist(&[1i64][..], false, Kind::Double);
        Ok(g * (x.square().sum_dim_intlist(&[1i64][..], false, Kind::Double) + 1.0))
    }
}
