//! NNGuide and Relation: scores guided by similarities to the whole ID training bank.

use super::knn::Bank;
use super::{energy_of, feats, feats_in, Head};
use crate::error::{Error, Result};
use crate::features::{FeatureId, FeatureSet};
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
        // The bank answers on the CPU; the energies are on the features' device.
        let guidance = self.bank.top_k_mean(&q, self.k)?.to_kind(self.kind).to_device(e.device());
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

/// The normalised ID training features (a [`Bank`], searched exactly: every
/// similarity is used) and their softmax, f32.
#[derive(Debug)]
pub struct FittedRelation {
    pub bank: Bank,
    pub probs: Tensor,
    pub weight: Tensor,
    pub bias: Tensor,
    pub pow: i64,
    /// What the fit was made from: the training features and the head (the key
    /// of the sums [`Relation`]'s `prepare_grid` keeps on each scored set).
    key: (FeatureId, FeatureId, FeatureId),
}

/// A scored set's sums for every power of a grid, kept on the set.
struct RelationMemo {
    /// (training features, head weight, head bias, this set's features).
    key: (FeatureId, FeatureId, FeatureId, FeatureId),
    pows: Vec<i64>,
    /// `[N, pows.len()]` f64.
    sums: Tensor,
}

impl Clone for RelationMemo {
    fn clone(&self) -> Self {
        RelationMemo { key: self.key.clone(), pows: self.pows.clone(), sums: self.sums.shallow_clone() }
    }
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
    /// Every power's sums on each set from one pass over the training set (the
    /// similarities and the threshold do not depend on the power).
    fn prepare_grid(grid: &[&Self], data: &FitData, sets: &[&FeatureSet]) -> Result<()> {
        let mut pows: Vec<i64> = grid.iter().map(|r| r.pow).collect();
        pows.sort_unstable();
        pows.dedup();
        let Some(&first) = grid.first() else { return Ok(()) };
        let fitted = first.fit(data)?;
        for f in sets {
            let (tr, w, b) = fitted.key.clone();
            let key = (tr, w, b, f.penultimate_id());
            if let Some(m) = f.memo_get::<RelationMemo>("relation.sums") {
                if m.key == key && pows.iter().all(|p| m.pows.contains(p)) {
                    continue;
                }
            }
            let sums = fitted.sums(f, &pows)?;
            f.memo_put("relation.sums", RelationMemo { key, pows: pows.clone(), sums });
        }
        Ok(())
    }
    fn fit(&self, data: &FitData) -> Result<FittedRelation> {
        let h = Head::of(data, Self::NAME)?;
        check_2d(&data.train.penultimate, Some(h.d), &h.ctx)?;
        let x = data.train.penultimate_f64(&h.ctx)?;
        let probs = (x.matmul(&h.w.tr()) + &h.b).softmax(1, Kind::Double).to_kind(Kind::Float);
        let bank = Bank::with_search(&normalized_f32(&x, 1e-10), crate::device::best_device(), super::knn::Search::Exact);
        let key = (data.train.penultimate_id(), FeatureId::of(data.weight), FeatureId::of(data.bias));
        Ok(FittedRelation { bank, probs, weight: h.w, bias: h.b, pow: self.pow, key })
    }
}

impl FittedRelation {
    /// `[N, pows.len()]` f64: the score of `f` for each power, from one pass.
    pub fn sums(&self, f: &FeatureSet, pows: &[i64]) -> Result<Tensor> {
        let x = feats(f, self.weight.size()[1], "relation score")?;
        let p = (x.matmul(&self.weight.tr()) + &self.bias).softmax(1, Kind::Double).to_kind(Kind::Float);
        let q = normalized_f32(&x, 1e-10);
        let probs = self.probs.to_device(self.bank.device()).tr();
        let n = q.size()[0];
        let mut parts = Vec::new();
        for s in (0..n).step_by(BLOCK as usize) {
            let len = BLOCK.min(n - s);
            let qb = q.narrow(0, s, len).to_device(self.bank.device());
            let sim = self.bank.similarities(&qb);
            let agree = p.narrow(0, s, len).to_device(self.bank.device()).matmul(&probs);
            parts.push(relation_sums(&sim, &agree, pows).to_device(q.device()));
        }
        if parts.is_empty() {
            return Ok(Tensor::zeros([0, pows.len() as i64], (Kind::Double, q.device())));
        }
        Ok(Tensor::cat(&parts, 0))
    }
}

impl Scorer for FittedRelation {
    /// From the sums `prepare_grid` kept on `f` for this fit when they include
    /// this power, else one pass.
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        if let Some(m) = f.memo_get::<RelationMemo>("relation.sums") {
            let (tr, w, b) = self.key.clone();
            if m.key == (tr, w, b, f.penultimate_id()) {
                if let Some(i) = m.pows.iter().position(|&p| p == self.pow) {
                    return Ok(m.sums.select(1, i as i64));
                }
            }
        }
        Ok(self.sums(f, &[self.pow])?.select(1, 0))
    }
}

/// `sum_j r_j^pow [r_j > RELATION_THRESHOLD]` per row and power (`[M, P]`
/// f64), `r = max(0, sim) * agree` (`[M, N]` f32 each). On the CPU one fused
/// pass per row for every power (the tensor route makes six passes over
/// `[M, N]` per power: clamp, product, mask, cast, power, product); elsewhere
/// those tensor operations.
fn relation_sums(sim: &Tensor, agree: &Tensor, pows: &[i64]) -> Tensor {
    let thr = RELATION_THRESHOLD as f32;
    if !crate::numerics::cpu_kernels(sim.device()) {
        let rel = sim.clamp_min(0.0) * agree;
        let (mask, rel) = (rel.gt(RELATION_THRESHOLD).to_kind(Kind::Double), rel.to_kind(Kind::Double));
        let cols: Vec<Tensor> =
            pows.iter().map(|&p| (&mask * rel.pow_tensor_scalar(p)).sum_dim_intlist(&[1i64][..], false, Kind::Double)).collect();
        return Tensor::stack(&cols, 1);
    }
    let (m, n, np) = (sim.size()[0] as usize, sim.size()[1] as usize, pows.len());
    let mut out = vec![0.0f64; m * np];
    let parts = crate::numerics::Disjoint::new(&mut out);
    let pows: Vec<i32> = pows.iter().map(|&p| p as i32).collect();
    crate::numerics::with_f32_data(sim, |a| {
        crate::numerics::with_f32_data(agree, |b| {
            crate::numerics::parallel_for(m, 4, |lo, hi| {
                // SAFETY: parallel_for's ranges do not overlap (nor, times np, their rows).
                let out = unsafe { parts.part(lo * np, hi * np) };
                for (i, acc) in (lo..hi).zip(out.chunks_mut(np)) {
                    let (a, b) = (&a[i * n..(i + 1) * n], &b[i * n..(i + 1) * n]);
                    if let [p] = pows[..] {
                        let mut s = 0.0f64;
                        for (&x, &g) in a.iter().zip(b) {
                            let r = x.max(0.0) * g;
                            if r > thr {
                                s += (r as f64).powi(p);
                            }
                        }
                        acc[0] = s;
                        continue;
                    }
                    for (&x, &g) in a.iter().zip(b) {
                        let r = x.max(0.0) * g;
                        if r > thr {
                            let r = r as f64;
                            for (s, &p) in acc.iter_mut().zip(&pows) {
                                *s += r.powi(p);
                            }
                        }
                    }
                }
            })
        })
    });
    Tensor::from_slice(&out).view([m as i64, np as i64])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused CPU pass against the tensor formulation (the route off the CPU):
    /// negative similarities, relations on both sides of the threshold, rows split
    /// between threads.
    #[test]
    fn relation_sums_fused_pass_matches_the_tensor_route() {
        tch::manual_seed(3);
        let sim = Tensor::rand([37, 1001], (Kind::Float, tch::Device::Cpu)) * 2.0 - 0.5;
        let agree = Tensor::rand([37, 1001], (Kind::Float, tch::Device::Cpu)) * 0.2;
        let all = relation_sums(&sim, &agree, &[1, 2, 8]);
        for (j, pow) in [1, 2, 8].into_iter().enumerate() {
            let fused = Vec::<f64>::try_from(relation_sums(&sim, &agree, &[pow]).select(1, 0)).unwrap();
            assert_eq!(fused, Vec::<f64>::try_from(all.select(1, j as i64)).unwrap(), "one power alone and among several");
            let rel = sim.clamp_min(0.0) * &agree;
            let kept = rel.gt(RELATION_THRESHOLD).to_kind(Kind::Double) * rel.to_kind(Kind::Double).pow_tensor_scalar(pow);
            let want = Vec::<f64>::try_from(kept.sum_dim_intlist(&[1i64][..], false, Kind::Double)).unwrap();
            assert!(want.iter().any(|&w| w > 0.0));
            for (a, b) in fused.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-12 * b.abs().max(1e-30), "pow {pow}: {a} vs {b}");
            }
        }
    }
}
