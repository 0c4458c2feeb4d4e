//! NNGuide and Relation: scores guided by similarities to the whole ID training bank.

use super::knn::Bank;
use super::{energy_of, feats, feats_in, Head};
use crate::error::{Error, Result};
use crate::features::FeatureSet;
use crate::numerics::check_2d;
use crate::ood::detector::{FitData, GridContext, ParamReader, ParamValue, Registered, Scorer};
use tch::{Kind, Tensor};

/// Queries per block of the similarity products (bounds memory at block x N_train).
const BLOCK: i64 = 256;

/// Rows L2-normalised in f32 (as pytorch-ood and OpenOOD), `x / sqrt(||x||^2 + eps)`.
fn normalized_f32(x: &Tensor, eps: f64) -> Tensor {
    let x = x.to_kind(Kind::Float);
    let n = (x.square().sum_dim_intlist(&[1i64][..], true, Kind::Float) + eps).sqrt();
    x / n
}

/// **NNGuide** (Park, Jung & Teoh, ICCV 2023, "Nearest neighbor guidance for
/// out-of-distribution detection"): energy times the mean of the k largest
/// similarities to a bank of normalised ID training features, each scaled by
/// its own energy,
///
/// ```text
/// b_i       = E(z_i) h_i / ||h_i||             (ID training features)
/// score(h)  = E(z) * mean of the k largest <h / ||h||, b_i>
/// ```
///
/// Similarities in f32 (as pytorch-ood), exact (every bank entry). The bank is
/// the whole training split (the paper subsamples 1 % of ImageNet; fit on a
/// subset for that). Default k = 100 (the paper's); grid k in {1, 10, 50, 100,
/// 200} (those <= N).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NnGuide {
    pub k: i64,
}

impl Default for NnGuide {
    fn default() -> Self {
        NnGuide { k: 100 }
    }
}

/// The confidence-scaled bank `[N, D]` (f32, on the best device, through
/// oneDNN on a CPU: the KNN detector's [`Bank`]) and the head.
#[derive(Debug)]
pub struct FittedNnGuide {
    pub bank: Bank,
    pub weight: Tensor,
    pub bias: Tensor,
    pub k: i64,
    /// The working precision of the energies.
    pub kind: Kind,
}

impl Registered for NnGuide {
    const NAME: &'static str = "nnguide";
    const SUMMARY: &'static str = "energy times the mean top-k similarity to an energy-scaled ID bank (Park et al. 2023)";
    /// The energies (the head's product and logsumexp) in f32 under `Auto`;
    /// the similarities are f32 either way.
    const AUTO_F32: bool = true;
    type Fitted = FittedNnGuide;
    fn read(r: &mut ParamReader) -> Result<Self> {
        Ok(NnGuide { k: r.int("k", Self::default().k)? })
    }
    fn params(&self) -> Vec<(&'static str, ParamValue)> {
        vec![("k", ParamValue::Int(self.k))]
    }
    fn check(&self) -> Result<()> {
        if self.k < 1 {
            return Err(super::bad_param(Self::NAME, "k", self.k, "must be a positive integer"));
        }
        Ok(())
    }
    fn grid(ctx: &GridContext) -> Vec<Self> {
        [1, 10, 50, 100, 200].iter().filter(|&&k| k <= ctx.n).map(|&k| NnGuide { k }).collect()
    }
    fn defaults(ctx: &GridContext) -> Self {
        NnGuide { k: Self::default().k.min(ctx.n.max(1)) }
    }
    fn fit(&self, data: &FitData) -> Result<FittedNnGuide> {
        let kind = data.precision.kind();
        let h = Head::of_kind(data, Self::NAME, kind)?;
        let n = data.train.len() as i64;
        if self.k > n {
            return Err(Error::param("nnguide.k", format!("{} neighbours but only {n} training samples", self.k)));
        }
        let x = feats_in(data.train, h.d, &h.ctx, kind)?;
        let e = energy_of(&(x.matmul(&h.w.tr()) + &h.b), 1.0).to_kind(Kind::Float);
        // F.normalize: x / max(||x||, 1e-12).
        let xf = x.to_kind(Kind::Float);
        let unit = &xf / xf.norm_scalaropt_dim(2, &[1i64][..], true).clamp_min(1e-12);
        let bank = Bank::new(&(unit * e.unsqueeze(1)), crate::device::best_device());
        Ok(FittedNnGuide { bank, weight: h.w, bias: h.b, k: self.k, kind })
    }
}

impl Scorer for FittedNnGuide {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        let x = feats_in(f, self.weight.size()[1], "nnguide score", self.kind)?;
        let e = energy_of(&(x.matmul(&self.weight.tr()) + &self.bias), 1.0);
        let xf = f.penultimate.to_kind(Kind::Float);
        let q = &xf / xf.norm_scalaropt_dim(2, &[1i64][..], true).clamp_min(1e-12);
        let guidance = self.bank.top_k_mean(&q, self.k)?.to_kind(self.kind);
        Ok(guidance * e)
    }
}

/// **Relation** (Kim et al., NeurIPS 2023, "Neural relation graph: a unified
/// framework for identifying label noise and outlier data"): the sum, over every
/// ID training sample j, of the relation
///
/// ```text
/// r_j = max(0, <h^, h^_j>) * <p, p_j>,      h^ = h / sqrt(||h||^2 + 1e-10), p = softmax(z)
/// score(h) = sum_j r_j^pow [r_j > 0.03]
/// ```
///
/// as OpenOOD's `relation_postprocessor.py` (threshold 0.03 fixed). Products in
/// f32 in blocks of queries. Default pow = 8; grid pow in {1, 2, 4, 6, 8}
/// (OpenOOD's sweep).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Relation {
    pub pow: i64,
}

impl Default for Relation {
    fn default() -> Self {
        Relation { pow: 8 }
    }
}

/// The normalised ID training features and their softmax, f32.
#[derive(Debug)]
pub struct FittedRelation {
    pub feats: Tensor,
    pub probs: Tensor,
    pub weight: Tensor,
    pub bias: Tensor,
    pub pow: i64,
}

/// Relations below this are dropped (OpenOOD's `thres`).
pub const RELATION_THRESHOLD: f64 = 0.03;

impl Registered for Relation {
    const NAME: &'static str = "relation";
    const SUMMARY: &'static str = "sum of feature-and-prediction relations to every ID training sample (Kim et al. 2023)";
    type Fitted = FittedRelation;
    fn read(r: &mut ParamReader) -> Result<Self> {
        Ok(Relation { pow: r.int("pow", Self::default().pow)? })
    }
    fn params(&self) -> Vec<(&'static str, ParamValue)> {
        vec![("pow", ParamValue::Int(self.pow))]
    }
    fn check(&self) -> Result<()> {
        if !(1..=64).contains(&self.pow) {
            return Err(super::bad_param(Self::NAME, "pow", self.pow, "must be in 1..=64"));
        }
        Ok(())
    }
    fn grid(_: &GridContext) -> Vec<Self> {
        [1, 2, 4, 6, 8].iter().map(|&pow| Relation { pow }).collect()
    }
    fn fit(&self, data: &FitData) -> Result<FittedRelation> {
        let h = Head::of(data, Self::NAME)?;
        check_2d(&data.train.penultimate, Some(h.d), &h.ctx)?;
        let x = data.train.penultimate_f64(&h.ctx)?;
        let probs = (x.matmul(&h.w.tr()) + &h.b).softmax(1, Kind::Double).to_kind(Kind::Float);
        Ok(FittedRelation { feats: normalized_f32(&x, 1e-10), probs, weight: h.w, bias: h.b, pow: self.pow })
    }
}

impl Scorer for FittedRelation {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        let x = feats(f, self.weight.size()[1], "relation score")?;
        let p = (x.matmul(&self.weight.tr()) + &self.bias).softmax(1, Kind::Double).to_kind(Kind::Float);
        let q = normalized_f32(&x, 1e-10);
        let (ft, pt) = (self.feats.tr(), self.probs.tr());
        let n = q.size()[0];
        let block = 64.min(BLOCK);
        let mut parts = Vec::new();
        for s in (0..n).step_by(block as usize) {
            let len = block.min(n - s);
            let rel = q.narrow(0, s, len).matmul(&ft).clamp_min(0.0) * p.narrow(0, s, len).matmul(&pt);
            let kept = rel.gt(RELATION_THRESHOLD).to_kind(Kind::Float) * rel.pow_tensor_scalar(self.pow);
            parts.push(kept.sum_dim_intlist(&[1i64][..], false, Kind::Double));
        }
        Ok(Tensor::cat(&parts, 0))
    }
}
