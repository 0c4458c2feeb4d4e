//! The KNN detector and its bank: the k largest inner products against a bank
//! of vectors, batched over queries, exact (the neighbours of the f32 product).
//!
//! On a GPU: one `matmul` per block of queries, then `topk`. On a CPU with
//! native bf16 dot products (AVX512-BF16): the certified two-stage search of
//! [`Search::Bf16Rerank`] (bf16 product, exact re-rank of the candidates a
//! proven error bound leaves). On other CPUs: the f32 product through oneDNN
//! (`mkldnn_linear`) when libtorch has it, else BLAS, then `topk`.

use super::Head;
use crate::error::{Error, Result};
use crate::features::{FeatureId, FeatureSet};
use crate::numerics::check_2d;
use crate::ood::detector::{FitData, GridContext, ParamReader, ParamValue, Registered, Scorer};
use tch::{Device, Kind, Tensor};

/// **KNN** (Sun et al., ICML 2022): -(distance to the k-th nearest
/// L2-normalised ID training feature), exact (every training feature, no
/// approximate index). Default k = 50 (the paper's for CIFAR); grid k in
/// {1, 5, 10, 50, 100, 200} (those <= N). On unit vectors
/// ||a - b|| = sqrt(2 - 2 a.b), so the k-th nearest is the k-th most similar;
/// similarities in f32 (as pytorch-ood and OpenOOD's faiss), the score in f64.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Knn {
    /// Neighbour rank, >= 1 (at most the number of training samples).
    pub k: i64,
}

impl Default for Knn {
    fn default() -> Self {
        Knn { k: 50 }
    }
}

/// The bank of normalised training features (shared by every KNN fitted on
/// the same training set: the grid of k).
pub struct FittedKnn {
    pub bank: SharedBank,
    pub k: i64,
    pub dim: i64,
}

impl Registered for Knn {
    const NAME: &'static str = "knn";
    const SUMMARY: &'static str = "distance to the k-th nearest normalised train feature (Sun et al. 2022)";
    type Fitted = FittedKnn;
    fn read(p: &mut ParamReader) -> Result<Self> {
        Ok(Knn { k: p.int("k", Self::default().k)? })
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
        [1, 5, 10, 50, 100, 200].iter().filter(|&&k| k <= ctx.n).map(|&k| Knn { k }).collect()
    }
    fn defaults(ctx: &GridContext) -> Self {
        Knn { k: Self::default().k.min(ctx.n.max(1)) }
    }
    /// One pass over the bank per set serves the whole grid of k.
    fn prepare_grid(grid: &[&Self], data: &FitData, sets: &[&FeatureSet]) -> Result<()> {
        let k_max = grid.iter().map(|d| d.k).max().unwrap_or(1);
        let bank = bank(data.train, crate::device::best_device(), "knn selection")?;
        let bank = bank.lock().unwrap_or_else(|e| e.into_inner());
        for s in sets {
            prepare(s, &bank, k_max, &format!("knn selection ({})", s.name))?;
        }
        Ok(())
    }
    fn fit(&self, data: &FitData) -> Result<FittedKnn> {
        let h = Head::of(data, Self::NAME)?;
        let (d, ctx) = (h.d, h.ctx);
        let n_train = data.train.len() as i64;
        if self.k > n_train {
            return Err(Error::param("knn.k", format!("{} neighbours but only {n_train} training samples", self.k)));
        }
        check_2d(&data.train.penultimate, Some(d), &ctx)?;
        Ok(FittedKnn { bank: bank(data.train, crate::device::best_device(), &ctx)?, k: self.k, dim: d })
    }
}

impl Scorer for FittedKnn {
    fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        let sc = "knn score";
        check_2d(&f.penultimate, Some(self.dim), sc)?;
        let bank = self.bank.lock().unwrap_or_else(|e| e.into_inner());
        let kth = kth_similarity(f, &bank, self.k, sc)?.to_kind(Kind::Double);
        let two_minus: Tensor = 2.0 - kth * 2.0;
        Ok(-two_minus.clamp_min(0.0).sqrt())
    }
}

#[derive(Clone)]
struct BankMemo {
    key: (FeatureId, Device),
    bank: SharedBank,
}

struct TopMemo {
    key: (u64, FeatureId),
    top: Tensor,
}

impl Clone for TopMemo {
    fn clone(&self) -> Self {
        TopMemo { key: self.key.clone(), top: self.top.shallow_clone() }
    }
}

/// The L2-normalised `penultimate` features of `train` as a [`Bank`] on
/// `device` (built once per feature set, remembered on it).
pub fn bank(train: &FeatureSet, device: Device, context: &str) -> Result<SharedBank> {
    let key = (train.penultimate_id(), device);
    if let Some(m) = train.memo_get::<BankMemo>("knn.bank") {
        if m.key == key {
            return Ok(m.bank);
        }
    }
    let bank = std::sync::Arc::new(std::sync::Mutex::new(Bank::new(&unit_rows(train, context)?, device)));
    train.memo_put("knn.bank", BankMemo { key, bank: bank.clone() });
    Ok(bank)
}

/// `f`'s penultimate features with each row scaled to unit L2 norm, in f32
/// (the precision the bank searches in; no f64 copy), checked finite.
fn unit_rows(f: &FeatureSet, context: &str) -> Result<Tensor> {
    let x = f.penultimate.to_kind(Kind::Float);
    crate::numerics::check_finite(&x, context)?;
    Ok(&x / x.norm_scalaropt_dim(2, &[1i64][..], true).clamp_min(1e-12))
}

/// For each sample of `f`, its `k`-th largest cosine similarity to `bank`
/// (`[N]` f32): from the values kept by [`prepare`] when they cover `k`, else
/// by a pass over the bank.
pub fn kth_similarity(f: &FeatureSet, bank: &Bank, k: i64, context: &str) -> Result<Tensor> {
    let key = (bank.id(), f.penultimate_id());
    if let Some(m) = f.memo_get::<TopMemo>("knn.top") {
        if m.key == key && m.top.size()[1] >= k {
            return Ok(m.top.select(1, k - 1));
        }
    }
    bank.kth_largest(&unit_rows(f, context)?, k)
}

/// Computes and keeps `f`'s `k_max` largest similarities to `bank`, so that
/// [`kth_similarity`] serves every k <= k_max (a hyperparameter grid) without
/// another pass over the bank.
pub fn prepare(f: &FeatureSet, bank: &Bank, k_max: i64, context: &str) -> Result<()> {
    let key = (bank.id(), f.penultimate_id());
    let k_max = k_max.clamp(1, bank.len());
    if let Some(m) = f.memo_get::<TopMemo>("knn.top") {
        if m.key == key && m.top.size()[1] >= k_max {
            return Ok(());
        }
    }
    let top = bank.top_sorted(&unit_rows(f, context)?, k_max)?;
    f.memo_put("knn.top", TopMemo { key, top });
    Ok(())
}

/// Rows per block of queries (a `[block, N]` similarity matrix is live at a time).
const BLOCK: i64 = 1024;

/// A bank shared between fitted detectors (a Mutex: tensors are not `Sync`).
pub type SharedBank = std::sync::Arc<std::sync::Mutex<Bank>>;

static NEXT_BANK_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// How a bank on the CPU finds each query's largest inner products. Both give
/// the k largest of the f32 inner products (the same neighbours; the values
/// agree to f32 rounding, ~1e-7): [`Search::Bf16Rerank`] only does less work
/// where the CPU multiplies bf16 natively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Search {
    /// Every query times every bank vector in f32 (oneDNN or BLAS, see [`Product`]), then `topk`.
    Exact,
    /// A certified two-stage search: every similarity in bf16 (twice the f32
    /// rate on CPUs with AVX512-BF16), then every bank vector whose bf16
    /// similarity lies within a proven error bound of the bf16 k-th largest is
    /// re-scored exactly (f32 inputs, f64 accumulation) and the k largest kept.
    ///
    /// The product is shifted: each query row gets an extra entry -m (m a bf16
    /// estimate of its k-th similarity, from a 1-in-(N/2048) sample of the bank)
    /// and each bank row an extra 1, so the bf16 output is s - m, small near the
    /// k-th, and its rounding costs little. With u = 2^-9 (bf16's unit round-off):
    /// rounding the inputs costs at most (2u + u^2) sum_i |q_i b_i| <= (2u + u^2) ||q|| B
    /// (B the largest bank norm; the shift column is exact), the f32 accumulation
    /// at most 1.01 (d + 1) 2^-24 (1 + u)^2 (||q|| B + |m|) in any order; call
    /// their sum E. The output x~ = fl(x) is within w |x~| of x, w = 2u / (1 - 2u)
    /// (rounding or truncating). So every exact shifted similarity lies in
    /// [g(x~), h(x~)], g(x) = x - w|x| - E, h(x) = x + w|x| + E, both increasing.
    /// With t~ the bf16 k-th largest of the row, k vectors are >= g(t~), so
    /// every one of the true k largest has h(x~) >= g(t~): those are the
    /// candidates (the threshold h^-1(g(t~)) rounded down). A row with more
    /// than max(4k, N / 64) candidates (near-duplicate bank vectors) takes its
    /// candidates from the f32 product instead (error at most 1.01 (d + 2) 2^-24
    /// ||q|| B), re-scored by the same f64 dot: every returned value is computed
    /// the same way, whatever path its row took.
    Bf16Rerank,
}

impl Search {
    /// [`Search::Bf16Rerank`] on a CPU with native bf16 dot products
    /// (AVX512-BF16: AMD Zen 4 and later, Intel Cooper Lake / Sapphire Rapids
    /// and later), else [`Search::Exact`] (GPUs: the f32 product is fast there).
    pub fn auto(device: Device) -> Self {
        if crate::numerics::cpu_kernels(device) && native_bf16() {
            Search::Bf16Rerank
        } else {
            Search::Exact
        }
    }
}

/// How a bank on the CPU multiplies a block of f32 queries by the bank: both
/// are libtorch's, give the same products up to f32 rounding (~1e-7), and
/// [`Product::auto`] picks the faster one for the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Product {
    /// oneDNN's `mkldnn_linear` against a oneDNN copy of the bank.
    OneDnn,
    /// libtorch's `matmul` (MKL's sgemm in the PyPI builds).
    Blas,
}

impl Product {
    /// [`Product::OneDnn`] on CPUs with AVX-512 (where oneDNN runs its AVX-512
    /// kernels and MKL, on AMD, does not: 215-330 GFLOP/s against less on the Zen 4
    /// machine the earlier benchmarks ran on), else [`Product::Blas`] (on an AVX2-only
    /// AMD EPYC, 8 December 2026: MKL 132 GFLOP/s, oneDNN 112; KNN's whole product
    /// at CIFAR-100 sizes 12.7 s against 17.4 s), or when libtorch lacks oneDNN.
    pub fn auto() -> Self {
        if tch::utils::has_mkldnn() && avx512() {
            Product::OneDnn
        } else {
            Product::Blas
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn native_bf16() -> bool {
    std::arch::is_x86_feature_detected!("avx512bf16")
}

#[cfg(not(target_arch = "x86_64"))]
fn native_bf16() -> bool {
    false
}

/// bf16's unit round-off, 2^-9.
const BF16_U: f64 = 1.0 / 512.0;

/// The bf16 copies [`Search::Bf16Rerank`] reads.
struct Bf16Bank {
    /// `[N, D + 1]`: the bank in bf16 and a column of ones (the shift).
    shifted: Tensor,
    /// `[S, D]`: every (N / 2048)-th row in bf16 (the k-th estimates).
    sample: Tensor,
    /// The largest row norm of the f32 bank.
    max_norm: f64,
}

/// A bank of f32 vectors `[N, D]` on a device, ready for similarity queries.
pub struct Bank {
    dense: Tensor,
    /// oneDNN copy of the bank (CPU only).
    onednn: Option<Tensor>,
    /// The bf16 copies for [`Search::Bf16Rerank`] (CPU only).
    bf16: Option<Bf16Bank>,
    device: Device,
    /// Unique for the process (never reused): the key of results cached elsewhere.
    id: u64,
}

impl std::fmt::Debug for Bank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bank({:?} on {:?}, oneDNN {}, {:?})", self.dense.size(), self.device, self.onednn.is_some(), self.search())
    }
}

/// What a search keeps of each query's k largest similarities.
#[derive(Clone, Copy, PartialEq)]
enum Keep {
    Kth,
    Sorted,
    Mean,
}

impl Bank {
    /// Moves `bank` (`[N, D]`) to `device` as f32, searched as [`Search::auto`] says.
    pub fn new(bank: &Tensor, device: Device) -> Self {
        Self::with_search(bank, device, Search::auto(device))
    }

    /// [`Bank::new`] with the search chosen (a bank off the CPU is always
    /// searched exactly). [`Search::Bf16Rerank`] works on every CPU; without
    /// native bf16 it is slower than [`Search::Exact`].
    pub fn with_search(bank: &Tensor, device: Device, search: Search) -> Self {
        Self::with(bank, device, search, Product::auto())
    }

    /// [`Bank::with_search`] with the CPU product chosen too ([`Product::OneDnn`]
    /// falls back to [`Product::Blas`] where libtorch lacks oneDNN; off the CPU
    /// the product is always libtorch's `matmul`).
    pub fn with(bank: &Tensor, device: Device, search: Search, product: Product) -> Self {
        let dense = bank.to_kind(Kind::Float).to_device(device).contiguous();
        let onednn = if crate::numerics::cpu_kernels(device) && product == Product::OneDnn && tch::utils::has_mkldnn() {
            dense.f_to_mkldnn(None).ok()
        } else {
            None
        };
        let bf16 = (crate::numerics::cpu_kernels(device) && search == Search::Bf16Rerank && dense.numel() > 0).then(|| {
            tch::no_grad(|| {
                let max_norm = dense.to_kind(Kind::Double).norm_scalaropt_dim(2, &[1i64][..], false).max().double_value(&[]);
                let b16 = dense.to_kind(Kind::BFloat16);
                let ones = Tensor::ones([dense.size()[0], 1], (Kind::BFloat16, Device::Cpu));
                let stride = (dense.size()[0] / 2048).max(1);
                let sample = b16.slice(0, 0, None, stride).contiguous();
                Bf16Bank { shifted: Tensor::cat(&[b16, ones], 1).contiguous(), sample, max_norm }
            })
        });
        let id = NEXT_BANK_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Bank { dense, onednn, bf16, device, id }
    }

    /// How this bank is searched.
    pub fn search(&self) -> Search {
        if self.bf16.is_some() {
            Search::Bf16Rerank
        } else {
            Search::Exact
        }
    }

    /// The bank's process-unique id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Number of vectors in the bank.
    pub fn len(&self) -> i64 {
        self.dense.size()[0]
    }

    /// True for an empty bank.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `[M, N]` f32 inner products of a block of queries with the bank, dense, on the bank's device.
    pub(crate) fn similarities(&self, q: &Tensor) -> Tensor {
        if let Some(w) = &self.onednn {
            let fast = q
                .contiguous()
                .f_to_mkldnn(None)
                .and_then(|qm| qm.f_mkldnn_linear(w, None::<Tensor>))
                .and_then(|s| s.f_to_dense(None, false));
            if let Ok(s) = fast {
                return s;
            }
        }
        q.matmul(&self.dense.tr())
    }

    /// The exact search of one block: `[M, k]` (sorted) or `[M]` (k-th, mean) on the CPU.
    fn exact_block(&self, q: &Tensor, k: i64, keep: Keep) -> Tensor {
        let sims = self.similarities(&q.to_device(self.device));
        if keep != Keep::Sorted && crate::numerics::cpu_kernels(self.device) && sims.kind() == Kind::Float {
            // The k-th largest or the mean of the k largest without sorting each row.
            let (kth, mean) = crate::numerics::row_top_k_long(&sims, k as usize);
            return match keep {
                Keep::Kth => Tensor::from_slice(&kth),
                _ => Tensor::from_slice(&mean).to_kind(Kind::Float),
            };
        }
        let top = sims.topk(k, 1, true, keep == Keep::Sorted).0;
        match keep {
            Keep::Kth => top.min_dim(1, false).0,
            Keep::Sorted => top,
            Keep::Mean => top.mean_dim(&[1i64][..], false, Kind::Float),
        }
        .to_device(Device::Cpu)
    }

    /// The certified bf16 search of one block of CPU f32 queries (see [`Search::Bf16Rerank`]).
    /// `scratch` (`[BLOCK, N]` bf16) receives the bf16 product: one buffer for
    /// every block instead of a fresh ~90 MB allocation (and its page faults) each.
    fn rerank_block(&self, q: &Tensor, k: i64, keep: Keep, scratch: &Tensor) -> Tensor {
        let Some(bb) = &self.bf16 else { return self.exact_block(q, k, keep) };
        let q = q.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        let (m, d, n, ku) = (q.size()[0] as usize, q.size()[1] as usize, self.len() as usize, k as usize);
        let q16 = q.to_kind(Kind::BFloat16);
        // From the sample: the shift m (an estimate of each row's k-th
        // similarity) and a lower estimate (a cut below which the k-th
        // almost never lies: the scan keeps what is above it in one pass).
        let ns = bb.sample.size()[0];
        let ks = ((k * ns + self.len() - 1) / self.len()).clamp(1, ns);
        let lo = (4 * ks + 4).min(ns);
        let est = q16.linear(&bb.sample, None::<Tensor>).topk(lo, 1, true, true).0;
        let shift = est.narrow(1, ks - 1, 1);
        let approx = Tensor::cat(&[q16, -&shift], 1).linear_out(&scratch.narrow(0, 0, m as i64), &bb.shifted, None::<Tensor>).contiguous();
        let low: Vec<f64> = Vec::try_from((est.select(1, lo - 1) - shift.view([-1])).to_kind(Kind::Double)).unwrap_or_default();
        let shift: Vec<f64> = Vec::try_from(shift.view([-1]).to_kind(Kind::Double)).unwrap_or_default();
        let qnorm: Vec<f64> = Vec::try_from(q.to_kind(Kind::Double).norm_scalaropt_dim(2, &[1i64][..], false)).unwrap_or_default();
        let u = BF16_U;
        let acc = 1.01 * (d as f64 + 1.0) * 2f64.powi(-24) * (1.0 + u).powi(2);
        // Per row: E (the bound on everything but the output rounding) and the cut.
        let bound: Vec<f64> = (0..m)
            .map(|r| {
                let big = qnorm[r] * bb.max_norm;
                ((2.0 * u + u * u) * big + acc * (big + shift[r].abs())) * (1.0 + 1e-3) + 1e-30
            })
            .collect();
        let cut: Vec<f32> = (0..m).map(|r| round_down_f32(low[r] - 3.0 * bound[r] - 1e-3)).collect();
        let cap = (4 * ku).max(n / 64);
        let buf_cap = (n / 16).max(8 * ku + 64);
        let mut top = vec![0f32; m * ku];
        let mut overflow = vec![false; m];
        // SAFETY: `approx` is a contiguous bf16 CPU tensor of m * n elements,
        // owned here and only read while the slice lives; a bf16 is 16 bits.
        let a = unsafe { std::slice::from_raw_parts(approx.data_ptr() as *const u16, m * n) };
        let (top_parts, overflow_parts) = (crate::numerics::Disjoint::new(&mut top), crate::numerics::Disjoint::new(&mut overflow));
        crate::numerics::with_f32_data(&q, |qd| {
            crate::numerics::with_f32_data(&self.dense, |bd| {
                crate::numerics::parallel_for(m, crate::numerics::ROW_GRAIN, |b, e| {
                    let (ar, qr, bnd, ct) = (&a[b * n..e * n], &qd[b * d..e * d], &bound[b..e], &cut[b..e]);
                    // SAFETY: parallel_for's ranges do not overlap (nor, times ku, their rows).
                    let (tr, of) = unsafe { (top_parts.part(b * ku, e * ku), overflow_parts.part(b, e)) };
                    let desc = |x: &f32, y: &f32| y.total_cmp(x);
                    let (mut buf, mut vals, mut cands) = (Vec::with_capacity(buf_cap), Vec::new(), Vec::with_capacity(cap));
                    for (r, (arow, qrow)) in ar.chunks_exact(n).zip(qr.chunks_exact(d)).enumerate() {
                        let dot = |j: usize| dot_f64(qrow, &bd[j * d..(j + 1) * d]) as f32;
                        cands.clear();
                        // One pass: what lies above the cut. When it holds the
                        // k-th and the threshold is above the cut, it holds
                        // every candidate.
                        buf.clear();
                        let held = above(arow, ct[r], buf_cap, |j, v| buf.push((v, j as u32)));
                        let mut done = false;
                        if held && buf.len() >= ku {
                            vals.clear();
                            vals.extend(buf.iter().map(|p| p.0));
                            vals.select_nth_unstable_by(ku - 1, desc);
                            let x = rerank_threshold(vals[ku - 1], bnd[r]);
                            if x >= ct[r] {
                                cands.extend(buf.iter().filter(|p| p.0 >= x).map(|p| dot(p.1 as usize)));
                                done = true;
                                of[r] = cands.len() > cap;
                            }
                        }
                        if !done {
                            // The cut was too high: the k-th from the whole row.
                            vals.clear();
                            vals.extend(arow.iter().map(|&h| bf16_value(h)));
                            vals.select_nth_unstable_by(ku - 1, desc);
                            let x = rerank_threshold(vals[ku - 1], bnd[r]);
                            of[r] = !above(arow, x, cap, |j, _| cands.push(dot(j)));
                        }
                        if of[r] {
                            continue;
                        }
                        if cands.len() > ku {
                            cands.select_nth_unstable_by(ku - 1, desc);
                        }
                        let kept = &mut cands[..ku];
                        kept.sort_unstable_by(desc);
                        tr[r * ku..(r + 1) * ku].copy_from_slice(kept);
                    }
                });
            });
        });
        // Rows with too many bf16 candidates: candidates from the f32 product instead
        // (its error is at most 1.01 (d + 2) 2^-24 ||q|| B in any order), re-scored by
        // the same f64 dot, so that every value this search returns is computed the
        // same way whichever path a row took (a grid of k, then one k, agree exactly).
        let rows: Vec<usize> = overflow.iter().enumerate().filter(|(_, &o)| o).map(|(i, _)| i).collect();
        if !rows.is_empty() {
            let idx = Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>());
            let sims = self.similarities(&q.index_select(0, &idx)).to_device(Device::Cpu).contiguous();
            let kth32: Vec<f32> = Vec::try_from(sims.topk(k, 1, true, false).0.min_dim(1, false).0).unwrap_or_default();
            let f32_bound = 1.01 * (d as f64 + 2.0) * 2f64.powi(-24) * (1.0 + 1e-3);
            crate::numerics::with_f32_data(&q, |qd| {
                crate::numerics::with_f32_data(&self.dense, |bd| {
                    crate::numerics::with_f32_data(&sims, |sd| {
                        for (i, &r) in rows.iter().enumerate() {
                            let qrow = &qd[r * d..(r + 1) * d];
                            let srow = &sd[i * n..(i + 1) * n];
                            let thr = round_down_f32(kth32[i] as f64 - 2.0 * f32_bound * qnorm[r] * bb.max_norm);
                            let mut cands: Vec<f32> = Vec::new();
                            for (j, &v) in srow.iter().enumerate() {
                                if v >= thr {
                                    cands.push(dot_f64(qrow, &bd[j * d..(j + 1) * d]) as f32);
                                }
                            }
                            let desc = |x: &f32, y: &f32| y.total_cmp(x);
                            if cands.len() > ku {
                                cands.select_nth_unstable_by(ku - 1, desc);
                            }
                            let kept = &mut cands[..ku];
                            kept.sort_unstable_by(desc);
                            top[r * ku..(r + 1) * ku].copy_from_slice(kept);
                        }
                    });
                });
            });
        }
        let top = Tensor::from_slice(&top).view([m as i64, k]);
        match keep {
            Keep::Kth => top.select(1, k - 1).contiguous(),
            Keep::Sorted => top,
            Keep::Mean => top.mean_dim(&[1i64][..], false, Kind::Float),
        }
    }

    /// The search over every block of `queries`, concatenated.
    fn query(&self, queries: &Tensor, k: i64, keep: Keep) -> Result<Tensor> {
        let (n, k_ok) = (self.len(), k >= 1 && k <= self.len());
        if !k_ok {
            return Err(Error::param("k", format!("{k} neighbours asked of a bank of {n} vectors (1..={n})")));
        }
        let q = queries.to_kind(Kind::Float);
        let mut out = Vec::new();
        tch::no_grad(|| {
            let scratch = match self.search() {
                Search::Bf16Rerank => Tensor::empty([BLOCK.min(q.size()[0]), n], (Kind::BFloat16, Device::Cpu)),
                Search::Exact => Tensor::empty([0], (Kind::BFloat16, Device::Cpu)),
            };
            for block in q.split(BLOCK, 0) {
                out.push(match self.search() {
                    Search::Bf16Rerank => self.rerank_block(&block, k, keep, &scratch),
                    Search::Exact => self.exact_block(&block, k, keep),
                });
            }
        });
        Ok(Tensor::cat(&out, 0))
    }

    /// For each row of `queries` (`[M, D]`), the `k`-th largest inner product with
    /// the bank (`k` in 1..=N), as f32 `[M]` on the CPU.
    pub fn kth_largest(&self, queries: &Tensor, k: i64) -> Result<Tensor> {
        self.query(queries, k, Keep::Kth)
    }

    /// For each row of `queries`, the `k` largest inner products with the bank in
    /// descending order, f32 `[M, k]` on the CPU (column j is the (j+1)-th largest).
    pub fn top_sorted(&self, queries: &Tensor, k: i64) -> Result<Tensor> {
        self.query(queries, k, Keep::Sorted)
    }

    /// For each row of `queries`, the mean of its `k` largest inner products with
    /// the bank, f32 `[M]` on the CPU (NNGuide's guidance).
    pub fn top_k_mean(&self, queries: &Tensor, k: i64) -> Result<Tensor> {
        self.query(queries, k, Keep::Mean)
    }

    /// The device the bank lives on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// [`kth_largest`](Self::kth_largest) through a plain `matmul` (the reference
    /// the tests compare the oneDNN path with).
    pub fn kth_largest_matmul(&self, queries: &Tensor, k: i64) -> Tensor {
        let q = queries.to_kind(Kind::Float).to_device(self.device);
        tch::no_grad(|| q.matmul(&self.dense.tr()).topk(k, 1, true, true).0.select(1, k - 1).to_device(Device::Cpu))
    }
}

/// The f32 value of a bf16 bit pattern.
fn bf16_value(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// The largest f32 <= x.
fn round_down_f32(x: f64) -> f32 {
    let x32 = x as f32;
    if (x32 as f64) > x {
        x32.next_down()
    } else {
        x32
    }
}

/// [`Search::Bf16Rerank`]'s candidate threshold on the shifted bf16 output x~,
/// from the bf16 k-th largest `t` and the bound `e`: the smallest x~ with
/// h(x~) >= g(t), rounded down to f32.
fn rerank_threshold(t: f32, e: f64) -> f32 {
    let u = BF16_U;
    let w = 2.0 * u / (1.0 - 2.0 * u);
    let t = t as f64;
    // g(t) - e; h(x) = x + w|x| + e >= g(t)  <=>  x + w|x| >= g(t) - e.
    let rhs = t - w * t.abs() - 2.0 * e;
    round_down_f32(if rhs >= 0.0 { rhs / (1.0 + w) } else { rhs / (1.0 - w) })
}

/// Calls `take(j, value)` for every j with bf16 `row[j]` >= `threshold`, 64
/// entries at a time through a bit mask; false (and stops) at the `cap + 1`-th.
fn above(row: &[u16], threshold: f32, cap: usize, mut take: impl FnMut(usize, f32)) -> bool {
    let mut count = 0;
    for (c, chunk) in row.chunks(64).enumerate() {
        let mut mask = 0u64;
        for (l, &h) in chunk.iter().enumerate() {
            mask |= ((bf16_value(h) >= threshold) as u64) << l;
        }
        while mask != 0 {
            if count == cap {
                return false;
            }
            let l = mask.trailing_zeros() as usize;
            take(c * 64 + l, bf16_value(chunk[l]));
            mask &= mask - 1;
            count += 1;
        }
    }
    true
}

/// The inner product of two f32 rows with f64 accumulation (8 independent lanes).
fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(&x, &y)| x as f64 * y as f64).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] as f64 * y[l] as f64;
        }
    }
    acc.iter().sum::<f64>() + tail
}
