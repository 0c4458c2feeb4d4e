//! The KNN detector and its bank: exact k-th largest inner product against a
//! bank of vectors, batched over queries.
//!
//! On a GPU: one `matmul` per block of queries. On a CPU: the product goes
//! through oneDNN (`mkldnn_linear`) when libtorch has it: measured on the 2-core
//! AMD machine it runs the f32 product at ~330 GFLOP/s against ~180 for the BLAS
//! behind `matmul` (both exact f32 products, only the summation order differs).
//! Either way the k-th largest value of each row is taken by `topk` on the block.

use super::Head;
use crate::error::{Error, Result};
use crate::features::{normalize_rows, FeatureId, FeatureSet};
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
    fn prepare_grid(grid: &[&Self], train: &FeatureSet, sets: &[&FeatureSet]) -> Result<()> {
        let k_max = grid.iter().map(|d| d.k).max().unwrap_or(1);
        let bank = bank(train, crate::device::best_device(), "knn selection")?;
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
    let bank = std::sync::Arc::new(std::sync::Mutex::new(Bank::new(&normalize_rows(&train.penultimate_f64(context)?), device)));
    train.memo_put("knn.bank", BankMemo { key, bank: bank.clone() });
    Ok(bank)
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
    bank.kth_largest(&normalize_rows(&f.penultimate_f64(context)?), k)
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
    let top = bank.top_sorted(&normalize_rows(&f.penultimate_f64(context)?), k_max)?;
    f.memo_put("knn.top", TopMemo { key, top });
    Ok(())
}

/// Rows per block of queries (a `[block, N]` f32 similarity matrix is live at a time).
const BLOCK: i64 = 1024;

/// A bank shared between fitted detectors (a Mutex: tensors are not `Sync`).
pub type SharedBank = std::sync::Arc<std::sync::Mutex<Bank>>;

static NEXT_BANK_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A bank of f32 vectors `[N, D]` on a device, ready for similarity queries.
pub struct Bank {
    dense: Tensor,
    /// oneDNN copy of the bank (CPU only).
    onednn: Option<Tensor>,
    device: Device,
    /// Unique for the process (never reused): the key of results cached elsewhere.
    id: u64,
}

impl std::fmt::Debug for Bank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bank({:?} on {:?}, oneDNN {})", self.dense.size(), self.device, self.onednn.is_some())
    }
}

impl Bank {
    /// Moves `bank` (`[N, D]`) to `device` as f32.
    pub fn new(bank: &Tensor, device: Device) -> Self {
        let dense = bank.to_kind(Kind::Float).to_device(device).contiguous();
        let onednn = if device == Device::Cpu && tch::utils::has_mkldnn() { dense.f_to_mkldnn(None).ok() } else { None };
        let id = NEXT_BANK_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Bank { dense, onednn, device, id }
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

    /// `[M, N]` inner products of a block of queries with the bank, dense, on the bank's device.
    fn similarities(&self, q: &Tensor) -> Tensor {
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

    /// For each row of `queries` (`[M, D]`), the `k`-th largest inner product with
    /// the bank (`k` in 1..=N), as f32 `[M]` on the CPU.
    pub fn kth_largest(&self, queries: &Tensor, k: i64) -> Result<Tensor> {
        let q = queries.to_kind(Kind::Float);
        let mut out = Vec::new();
        tch::no_grad(|| {
            for block in q.split(BLOCK, 0) {
                let sims = self.similarities(&block.to_device(self.device));
                // The k largest (unordered); the smallest of them is the k-th largest.
                let (top, _) = sims.topk(k, 1, true, false);
                out.push(top.min_dim(1, false).0.to_device(Device::Cpu));
            }
        });
        Ok(Tensor::cat(&out, 0))
    }

    /// For each row of `queries`, the `k` largest inner products with the bank in
    /// descending order, f32 `[M, k]` on the CPU (column j is the (j+1)-th largest).
    pub fn top_sorted(&self, queries: &Tensor, k: i64) -> Result<Tensor> {
        let q = queries.to_kind(Kind::Float);
        let mut out = Vec::new();
        tch::no_grad(|| {
            for block in q.split(BLOCK, 0) {
                let sims = self.similarities(&block.to_device(self.device));
                out.push(sims.topk(k, 1, true, true).0.to_device(Device::Cpu));
            }
        });
        Ok(Tensor::cat(&out, 0))
    }

    /// For each row of `queries`, the mean of its `k` largest inner products with
    /// the bank, f32 `[M]` on the CPU (NNGuide's guidance).
    pub fn top_k_mean(&self, queries: &Tensor, k: i64) -> Result<Tensor> {
        let q = queries.to_kind(Kind::Float);
        let mut out = Vec::new();
        tch::no_grad(|| {
            for block in q.split(BLOCK, 0) {
                let sims = self.similarities(&block.to_device(self.device));
                let (top, _) = sims.topk(k, 1, true, false);
                out.push(top.mean_dim(&[1i64][..], false, Kind::Float).to_device(Device::Cpu));
            }
        });
        Ok(Tensor::cat(&out, 0))
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
