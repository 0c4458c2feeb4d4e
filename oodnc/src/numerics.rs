//! The numerics room: small f64 linear-algebra helpers, moments and percentiles
//! shared by the features, the OOD detectors and NC (libtorch underneath).

use crate::error::{Error, Result};
use tch::{Kind, Tensor};

/// Errors on NaN / inf, and returns the f64 copy (no copy when `x` is f64).
///
/// Fast path: a finite sum proves every element finite (a NaN or an infinity
/// makes the sum NaN or infinite); only when the sum is not finite (a bad value,
/// or finite values overflowing) is every element checked.
pub fn finite_f64(x: &Tensor, context: &str) -> Result<Tensor> {
    let x = x.to_kind(Kind::Double);
    check_finite(&x, context)?;
    Ok(x)
}

/// Errors (naming `context`) when `x` holds a NaN or an infinity. One sum when
/// it is finite (the common case); the element-wise test only when the sum is
/// not (which finite values can also cause, by overflow).
pub fn check_finite(x: &Tensor, context: &str) -> Result<()> {
    if x.numel() > 0 && !x.sum(x.kind()).double_value(&[]).is_finite() && !bool::try_from(x.isfinite().all()).unwrap_or(false) {
        return Err(Error::data(context, "features contain NaN or infinite values"));
    }
    Ok(())
}

/// Checks that `x` is `[N, D]` with N > 0 and, when given, D = `dim`.
pub fn check_2d(x: &Tensor, dim: Option<i64>, context: &str) -> Result<(i64, i64)> {
    let s = x.size();
    if s.len() != 2 {
        return Err(Error::shape(context, format!("expected [N, D], got {s:?}")));
    }
    if s[0] == 0 {
        return Err(Error::data(context, "no samples"));
    }
    if let Some(d) = dim {
        if s[1] != d {
            return Err(Error::shape(context, format!("feature dimension {} but the detector was fitted on {d}", s[1])));
        }
    }
    Ok((s[0], s[1]))
}

/// Symmetric eigendecomposition, eigenvalues descending.
pub fn eigh_desc(sym: &Tensor) -> (Tensor, Tensor) {
    let (vals, vecs) = sym.linalg_eigh("L");
    (vals.flip([0]), vecs.flip([1]))
}

/// Pseudo-inverse square root of a PSD matrix: `L` with `L L^T = A^+`, dropping
/// eigenvalues below `rel_tol * max eigenvalue` (deterministic, no random start).
pub fn pinv_sqrt(a: &Tensor, rel_tol: f64) -> Result<Tensor> {
    let (vals, vecs) = eigh_desc(a);
    let max = vals.max().double_value(&[]);
    #[allow(clippy::neg_cmp_op_on_partial_ord)] // NaN must fail too
    if !(max > 0.0) {
        return Err(Error::numerical("pseudo-inverse", "matrix is zero (all features identical?)"));
    }
    let keep = vals.gt(rel_tol * max);
    let r = keep.sum(Kind::Int64).int64_value(&[]);
    let vals = vals.narrow(0, 0, r);
    let vecs = vecs.narrow(1, 0, r);
    Ok(vecs * vals.rsqrt().unsqueeze(0))
}

/// Moore-Penrose pseudo-inverse of a PSD matrix through [`pinv_sqrt`].
pub fn pinv_psd(a: &Tensor, rel_tol: f64) -> Result<Tensor> {
    let l = pinv_sqrt(a, rel_tol)?;
    Ok(l.matmul(&l.tr()))
}

/// `labels` as i64 `[n]` with every value in `0..c`, or a typed error.
pub fn check_labels(labels: &Tensor, n: i64, c: i64, context: &str) -> Result<Tensor> {
    if labels.size() != [n] {
        return Err(Error::shape(context, format!("{n} features but labels {:?}", labels.size())));
    }
    let y = labels.to_kind(Kind::Int64);
    if n > 0 {
        let (minl, maxl) = (y.min().int64_value(&[]), y.max().int64_value(&[]));
        if minl < 0 || maxl >= c {
            return Err(Error::data(context, format!("labels span {minl}..={maxl}, expected 0..{c}")));
        }
    }
    Ok(y)
}

/// Per-class means `[C, D]` and counts; every class in `0..c` must have a sample.
pub fn class_means(x: &Tensor, labels: &Tensor, c: i64, context: &str) -> Result<(Tensor, Tensor)> {
    let (n, d) = check_2d(x, None, context)?;
    let y = check_labels(labels, n, c, context)?;
    let counts = y.bincount::<Tensor>(None, c).to_kind(Kind::Double);
    let empty = counts.eq(0.0).nonzero();
    if empty.size()[0] > 0 {
        return Err(Error::data(context, format!("class {} has no training sample", empty.int64_value(&[0, 0]))));
    }
    let sums = Tensor::zeros([c, d], (Kind::Double, x.device())).index_add(0, &y, &x.to_kind(Kind::Double));
    Ok((sums / counts.unsqueeze(1), counts))
}

/// Squared distances `[N, C]` between rows of `a` and rows of `b`.
pub fn sq_dists(a: &Tensor, b: &Tensor) -> Tensor {
    let an = a.square().sum_dim_intlist(&[1i64][..], true, Kind::Double);
    let bn = b.square().sum_dim_intlist(&[1i64][..], true, Kind::Double).tr();
    (an + bn - a.matmul(&b.tr()) * 2.0).clamp_min(0.0)
}

/// Mean and covariance of a feature set: `mean` `[1, D]` and
/// `cov = (1/N) sum_i (h_i - mean)(h_i - mean)^T` `[D, D]`, f64. Shared by the
/// detectors that fit on the same training features (RMDS, ViM, Residual, NECO,
/// fDBD; DICE reads only the mean), see [`crate::features::FeatureSet::global_moments`].
#[derive(Debug)]
pub struct GlobalMoments {
    pub n: i64,
    pub mean: Tensor,
    pub cov: Tensor,
}

impl GlobalMoments {
    /// From finite f64 features `[N, D]`.
    pub fn compute(h: &Tensor) -> Self {
        let n = h.size()[0];
        let mean = h.mean_dim(&[0i64][..], true, Kind::Double);
        let c = h - &mean;
        let cov = c.tr().matmul(&c) / n as f64;
        GlobalMoments { n, mean, cov }
    }
}

/// Class means `[C, D]`, class counts `[C]` and the tied (within-class)
/// covariance `(1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T`, f64 (Mahalanobis,
/// RMDS, SHE), see [`crate::features::FeatureSet::class_moments`].
#[derive(Debug)]
pub struct ClassMoments {
    pub means: Tensor,
    pub counts: Tensor,
    pub within: Tensor,
}

impl ClassMoments {
    /// From finite f64 features `[N, D]` and labels in `0..c` (every class present).
    pub fn compute(h: &Tensor, labels: &Tensor, c: i64, context: &str) -> Result<Self> {
        let (means, counts) = class_means(h, labels, c, context)?;
        let centred = h - means.index_select(0, &labels.to_kind(Kind::Int64));
        let within = centred.tr().matmul(&centred) / h.size()[0] as f64;
        Ok(ClassMoments { means, counts, within })
    }
}

thread_local! {
    static PORTABLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the CPU-only kernels (Rust loops over a tensor's memory, oneDNN and
/// bf16 search banks) may run on tensors on `device`: on the CPU, except inside
/// [`portable_route`].
pub fn cpu_kernels(device: tch::Device) -> bool {
    device == tch::Device::Cpu && !PORTABLE.with(|p| p.get())
}

/// Runs `f` with every detector and helper on this thread taking the route it
/// takes off the CPU (on a GPU): libtorch tensor operations only, none of the
/// CPU row kernels. The tests run each detector both ways on the CPU, so the
/// arithmetic a GPU runs is checked on machines without one. Nested calls and
/// panics restore the previous route.
pub fn portable_route<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            PORTABLE.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(PORTABLE.with(|p| p.replace(true)));
    f()
}

/// Percentile (0..100) of all values of `x` (linear interpolation between the
/// order statistics around `p / 100 * (n - 1)`, like numpy's default), by
/// selection (O(n)) rather than a full sort: on the CPU through Rust's
/// introselect on a copy of the values (in their own dtype: the order statistics
/// of f32 values are the same in f64), elsewhere through `kthvalue`.
pub fn percentile(x: &Tensor, p: f64) -> f64 {
    let v = x.flatten(0, -1);
    let n = v.size()[0];
    let pos = p / 100.0 * (n - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let (a, b) = if cpu_kernels(v.device()) {
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
pub fn select_pair<T: Copy + Into<f64>>(mut v: Vec<T>, lo: usize, hi: usize, cmp: fn(&T, &T) -> std::cmp::Ordering) -> (f64, f64) {
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

/// A 2-D PCA: the mean and the two leading principal axes of a fit set.
#[derive(Debug)]
pub struct Pca2 {
    pub mean: Tensor,
    /// `[D, 2]`.
    pub axes: Tensor,
}

impl Pca2 {
    /// Fits on the rows of `x` (`[N, D]`), in f64.
    pub fn fit(x: &Tensor) -> Self {
        let x = x.to_kind(Kind::Double);
        let mean = x.mean_dim(&[0i64][..], true, Kind::Double);
        let xc = &x - &mean;
        let cov = xc.tr().matmul(&xc) / x.size()[0] as f64;
        let (_, vecs) = eigh_desc(&cov);
        Pca2 { mean, axes: vecs.narrow(1, 0, 2) }
    }

    /// The first `max_points` rows of `t` projected.
    pub fn project(&self, t: &Tensor, max_points: i64) -> Result<Vec<(f64, f64)>> {
        let n = t.size()[0].min(max_points);
        let z = (t.narrow(0, 0, n).to_kind(Kind::Double) - &self.mean).matmul(&self.axes);
        let v = Vec::<f64>::try_from(z.flatten(0, -1))?;
        Ok(v.chunks(2).map(|c| (c[0], c[1])).collect())
    }
}

/// What [`row_top_k`] makes of each row besides its statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowShaping {
    /// Nothing: only the statistics.
    None,
    /// Every value >= the row's k-th largest t kept, the rest 0 (ASH-P).
    Prune,
    /// Exactly the k largest set to s1 / k, the rest 0, ties at t to the lower
    /// index (ASH-B).
    Binarize,
    /// Every value >= t multiplied by exp(s1 / s_ge), the rest 0 (ASH-S).
    PruneScale,
}

/// Per-row order statistics of a finite `[N, D]` f32 CPU tensor, in one pass
/// per row (a selection, O(D), instead of libtorch's `topk` plus the masks
/// built from it), on the libtorch threads' count of OS threads.
#[derive(Debug)]
pub struct RowTopK {
    /// The k-th largest value t of each row.
    pub threshold: Vec<f32>,
    /// s1: the sum of the row (f64 accumulation).
    pub sum: Vec<f64>,
    /// The sum of the k largest values (ties do not matter: same values).
    pub top_sum: Vec<f64>,
    /// The sum of every value >= t (more than k values when t is tied).
    pub ge_sum: Vec<f64>,
    /// The shaped rows (`[N, D]` f32) unless [`RowShaping::None`].
    pub shaped: Option<Tensor>,
}

/// See [`RowTopK`]; `k` in 1..=D.
pub fn row_top_k(x: &Tensor, k: usize, shaping: RowShaping) -> RowTopK {
    let (n, d) = (x.size()[0] as usize, x.size()[1] as usize);
    let k = k.clamp(1, d.max(1));
    let mut out = RowTopK { threshold: vec![0.0; n], sum: vec![0.0; n], top_sum: vec![0.0; n], ge_sum: vec![0.0; n], shaped: None };
    if n == 0 || d == 0 {
        return out;
    }
    let shaped = (shaping != RowShaping::None).then(|| Tensor::empty([n as i64, d as i64], (Kind::Float, tch::Device::Cpu)));
    // SAFETY: a fresh contiguous f32 CPU tensor of n * d elements, not shared:
    // this is the only view of its memory while the kernel fills it; every
    // element is written (each shaping assigns every entry of its row).
    let shaped_data: Option<&mut [f32]> =
        shaped.as_ref().map(|t| unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n * d) });
    let shaped_parts = shaped_data.map(Disjoint::new);
    let (thr, sum, top, ge) =
        (Disjoint::new(&mut out.threshold), Disjoint::new(&mut out.sum), Disjoint::new(&mut out.top_sum), Disjoint::new(&mut out.ge_sum));
    with_f32_data(x, |data| {
        parallel_for(n, ROW_GRAIN, |b, e| {
            // SAFETY: parallel_for's ranges do not overlap (nor, times d, their rows).
            let (thr, sum, top, ge) = unsafe { (thr.part(b, e), sum.part(b, e), top.part(b, e), ge.part(b, e)) };
            let shaped = shaped_parts.as_ref().map(|s| unsafe { s.part(b * d, e * d) });
            top_k_rows(&data[b * d..e * d], d, k, shaping, thr, sum, top, ge, shaped)
        })
    });
    out.shaped = shaped;
    out
}

/// The fewest rows a row kernel gives one thread.
pub(crate) const ROW_GRAIN: usize = 256;

extern "C" {
    // csrc/parallel.cpp: at::parallel_for(0, n, grain, f(ctx, begin, end)).
    fn oodnc_parallel_for(n: i64, grain: i64, f: extern "C" fn(*mut std::ffi::c_void, i64, i64), ctx: *mut std::ffi::c_void);
}

/// Runs `f(begin, end)` over consecutive ranges covering `0..n` (one per
/// thread, of equal lengths but the last; no more threads than n / `grain`
/// rounded up), in parallel on libtorch's own
/// intra-op threads (`at::parallel_for`, so as many as `tch::get_num_threads`):
/// threads of our own would compete with libtorch's OpenMP workers, which spin
/// for a while after each parallel libtorch operation (on 2 cores a row kernel
/// gained nothing from a second thread of its own). A call from inside a
/// parallel region runs inline. A panic in `f` is raised again here, once every
/// range has run.
pub(crate) fn parallel_for<F: Fn(usize, usize) + Sync>(n: usize, grain: usize, f: F) {
    struct Ctx<'a, F> {
        f: &'a F,
        panic: std::sync::Mutex<Option<Box<dyn std::any::Any + Send>>>,
    }
    extern "C" fn call<F: Fn(usize, usize) + Sync>(ctx: *mut std::ffi::c_void, begin: i64, end: i64) {
        // SAFETY: `ctx` is the `Ctx<F>` below, alive for the whole call of
        // oodnc_parallel_for, and only read (through shared references).
        let ctx = unsafe { &*(ctx as *const Ctx<'_, F>) };
        // No unwinding into C++: the panic is kept and raised after the join.
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (ctx.f)(begin as usize, end as usize)));
        if let Err(p) = run {
            ctx.panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(p);
        }
    }
    if n == 0 {
        return;
    }
    let ctx = Ctx { f: &f, panic: std::sync::Mutex::new(None) };
    // SAFETY: `call::<F>` matches the C signature, never unwinds, and `ctx`
    // outlives the call, which returns only when every range has run.
    unsafe { oodnc_parallel_for(n as i64, grain.max(1) as i64, call::<F>, &ctx as *const Ctx<'_, F> as *mut std::ffi::c_void) };
    if let Some(p) = ctx.panic.into_inner().unwrap_or_else(|e| e.into_inner()) {
        std::panic::resume_unwind(p);
    }
}

/// A mutable slice that [`parallel_for`]'s ranges write to side by side: each
/// takes the part matching its own range, and the ranges never overlap.
pub(crate) struct Disjoint<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: shared across threads only to hand out non-overlapping parts (see `part`).
unsafe impl<T: Send> Sync for Disjoint<'_, T> {}

impl<'a, T> Disjoint<'a, T> {
    pub(crate) fn new(s: &'a mut [T]) -> Self {
        Disjoint { ptr: s.as_mut_ptr(), len: s.len(), _borrow: std::marker::PhantomData }
    }

    /// Elements `begin..end`.
    ///
    /// # Safety
    /// No two parts in use at the same time may overlap (ranges from one
    /// [`parallel_for`] call, scaled by the same row length, never do).
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn part(&self, begin: usize, end: usize) -> &mut [T] {
        assert!(begin <= end && end <= self.len, "part {begin}..{end} of {}", self.len);
        // SAFETY: in bounds (checked); exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(begin), end - begin) }
    }
}

/// Runs `f` on the elements of `x` as f32, row-major, without copying them when
/// `x` already is a contiguous f32 CPU tensor (else on a converted copy).
pub fn with_f32_data<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> R) -> R {
    let t = x.to_device(tch::Device::Cpu).to_kind(Kind::Float).contiguous();
    let n = t.numel();
    if n == 0 {
        return f(&[]);
    }
    // SAFETY: `t` is a contiguous f32 CPU tensor holding `n` elements; it is
    // owned here and outlives the slice, which is only read, during `f`.
    let data = unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, n) };
    f(data)
}

/// exp(x) in f32 for x <= 0 without a libm call, so that a loop of it
/// vectorises: x = n ln 2 + r with |r| <= ln 2 / 2, Cephes' degree-6 minimax
/// polynomial for exp(r) (relative error ~1e-7, within 2 ulp of the correctly
/// rounded value), times 2^n built in the exponent bits. Below -87.3 (where
/// exp leaves f32's normal range) it returns 0.
#[inline(always)]
pub fn exp_nonpositive_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let xc = x.max(-87.33);
    // t's low mantissa bits hold round(xc log2 e) (in -126..=0), n its value as f32.
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^n from the integer in t's bits (no float-to-int conversion: vectorises).
    let scale = f32::from_bits((t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127)) << 23);
    if x < -87.33 {
        0.0
    } else {
        y * scale
    }
}

/// The negative predictive entropy sum_j p_j log p_j of each row of f32 logits
/// `[N, C]` (Entropy's f32 score, `[N]` f32), fused, without an `[N, C]`
/// temporary: per row one pass for the max z_max, one computing, with
/// s_j = z_j - z_max and e_j = exp(s_j), S = sum_{z_j != z_max} e_j,
/// sum_j e_j s_j and the number m of entries equal to z_max (16 f32 lanes,
/// flushed into f64 every 128 classes); then S += m - 1 (the other maxima's
/// e_j = 1, exactly) and the score (sum_j e_j s_j) / (1 + S) - log1p(S).
/// A row holding a NaN or an infinity scores NaN (see [`logit_rows`]).
pub fn row_entropy(z: &Tensor) -> Tensor {
    logit_rows(z, RowStat::Entropy)
}

/// log max_j softmax(z)_j = -log1p(S) of each row of f32 logits `[N, C]`
/// (MSP's f32 score, `[N]` f32), S as in [`row_entropy`], by the same kernel.
pub fn row_log_msp(z: &Tensor) -> Tensor {
    logit_rows(z, RowStat::LogMsp)
}

/// A statistic of each row of logits that [`logit_rows`] computes in one fused pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RowStat {
    /// sum_j p_j log p_j (Entropy), see [`row_entropy`].
    Entropy,
    /// log max_j p_j = -log1p(S) (MSP), see [`row_log_msp`].
    LogMsp,
    /// T logsumexp(z / T) = z_max + T log1p(S_T), S_T = sum_{j != argmax}
    /// exp((z_j - z_max) / T) (Energy at temperature T > 0).
    LogSumExp { t: f64 },
    /// max_j z_j (MaxLogit): the max pass alone.
    Max,
}

/// `stat` of each row of a `[N, C]` tensor of logits, as f32 `[N]`: one read of
/// the logits in place when they already are a contiguous f32 CPU tensor (else
/// of a converted copy), split over the libtorch thread count, compiled for the
/// widest vectors the CPU has. The max pass also tests every entry for
/// finiteness, so no separate pass is needed to reject bad features: a row
/// holding a NaN or an infinity scores NaN (callers turn that into an error
/// naming the feature set).
pub fn logit_rows(z: &Tensor, stat: RowStat) -> Tensor {
    match stat {
        RowStat::Entropy => stat_tensor::<ENTROPY>(z, 1.0),
        RowStat::LogMsp => stat_tensor::<LOG_MSP>(z, 1.0),
        RowStat::LogSumExp { t } => stat_tensor::<LOG_SUM_EXP>(z, t),
        RowStat::Max => stat_tensor::<MAX>(z, 1.0),
    }
}

/// [`logit_rows`]' statistic, as a const parameter (one compiled kernel each).
const ENTROPY: u8 = 0;
const LOG_MSP: u8 = 1;
const LOG_SUM_EXP: u8 = 2;
const MAX: u8 = 3;

fn stat_tensor<const STAT: u8>(z: &Tensor, t: f64) -> Tensor {
    let (n, c) = (z.size()[0] as usize, z.size()[1] as usize);
    let mut out = vec![0f32; n];
    if n > 0 && c > 0 {
        let shared = Disjoint::new(&mut out);
        with_f32_data(z, |data| {
            parallel_for(n, ROW_GRAIN, |begin, end| {
                // SAFETY: parallel_for's ranges do not overlap.
                let out = unsafe { shared.part(begin, end) };
                stat_rows::<STAT>(&data[begin * c..end * c], c, t, out)
            })
        });
    }
    Tensor::from_slice(&out)
}

/// [`logit_rows`] of consecutive rows, compiled for the widest vectors the CPU
/// has (AVX-512, else AVX2 + FMA, else the baseline), chosen at run time.
fn stat_rows<const STAT: u8>(rows: &[f32], c: usize, t: f64, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { stat_rows_avx512::<STAT>(rows, c, t, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { stat_rows_avx2::<STAT>(rows, c, t, out) };
        }
    }
    stat_rows_any::<STAT>(rows, c, t, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn stat_rows_avx512<const STAT: u8>(rows: &[f32], c: usize, t: f64, out: &mut [f32]) {
    stat_rows_any::<STAT>(rows, c, t, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn stat_rows_avx2<const STAT: u8>(rows: &[f32], c: usize, t: f64, out: &mut [f32]) {
    stat_rows_any::<STAT>(rows, c, t, out)
}

#[inline(always)]
fn stat_rows_any<const STAT: u8>(rows: &[f32], c: usize, t: f64, out: &mut [f32]) {
    let inv_t = (1.0 / t) as f32;
    for (row, o) in rows.chunks_exact(c).zip(out.iter_mut()) {
        let (top, finite, sum, es) = softmax_sums::<STAT>(row, inv_t);
        *o = match STAT {
            _ if !finite => f32::NAN,
            MAX => top,
            ENTROPY => (es / (1.0 + sum) - sum.ln_1p()) as f32,
            LOG_MSP => -sum.ln_1p() as f32,
            _ => (top as f64 + t * sum.ln_1p()) as f32,
        };
    }
}

/// One row's max z_max, whether every entry is finite, S (ties included) and,
/// for the entropy, sum_j e_j s_j (see [`row_entropy`]), with
/// s_j = (z_j - z_max) / T (S_T for the log-sum-exp; T = 1 otherwise).
/// Finiteness: 0 v is 0 for a finite v, NaN for a NaN or an infinity.
#[inline(always)]
fn softmax_sums<const STAT: u8>(row: &[f32], inv_t: f32) -> (f32, bool, f64, f64) {
    let blocks = row.chunks_exact(16);
    let tail = blocks.remainder();
    // The tail padded to a block with -inf (e = 0, not a maximum).
    let mut last = [f32::NEG_INFINITY; 16];
    last[..tail.len()].copy_from_slice(tail);
    let full = || blocks.clone().map(|b| <&[f32; 16]>::try_from(b).unwrap_or(&last)).chain(std::iter::once(&last));
    // The max over 16 lanes (no serial compare chain).
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut zero = [0f32; 16];
    for block in blocks.clone().map(|b| <&[f32; 16]>::try_from(b).unwrap_or(&last)) {
        for l in 0..16 {
            lanes[l] = lanes[l].max(block[l]);
            zero[l] += block[l] * 0.0;
        }
    }
    let mut top = lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut finite = zero.iter().all(|&z| z == 0.0);
    for &v in tail {
        top = top.max(v);
        finite &= v.is_finite();
    }
    if STAT == MAX || !finite {
        return (top, finite, 0.0, 0.0);
    }
    let (mut sum, mut es, mut ties) = (0f64, 0f64, 0f64);
    let (mut sum32, mut es32, mut ties32) = ([0f32; 16], [0f32; 16], [0f32; 16]);
    for (b, block) in full().enumerate() {
        for l in 0..16 {
            let v = block[l];
            let s = ((v - top) * inv_t).max(-3.0e38);
            let at_top = v == top;
            let e = if at_top { 0.0 } else { exp_nonpositive_f32(s) };
            sum32[l] += e;
            if STAT == ENTROPY {
                es32[l] += e * s;
            }
            ties32[l] += at_top as u8 as f32;
        }
        if b % 8 == 7 {
            sum += sum32.iter().map(|&x| x as f64).sum::<f64>();
            es += es32.iter().map(|&x| x as f64).sum::<f64>();
            ties += ties32.iter().map(|&x| x as f64).sum::<f64>();
            (sum32, es32, ties32) = ([0.0; 16], [0.0; 16], [0.0; 16]);
        }
    }
    sum += sum32.iter().map(|&x| x as f64).sum::<f64>() + (ties + ties32.iter().map(|&x| x as f64).sum::<f64>() - 1.0);
    es += es32.iter().map(|&x| x as f64).sum::<f64>();
    (top, true, sum, es)
}

/// Per row of a finite f32 CPU tensor `x` `[M, N]` with `k` (1..=N) much smaller
/// than N (a KNN search's similarities to a bank): the k-th largest value and the
/// mean of the k largest (summed in f64). Exact, like `topk`, without sorting or
/// selecting the whole row: a threshold from every 16th entry (its j-th largest,
/// j a little above k / 16) keeps ~2k candidates in one pass, the selection runs
/// on those; a row with fewer than k candidates (unlucky or tied values) is
/// selected whole. `topk` of a [1024, 45,000] block costs about a fifth of the
/// block's similarity product; this, a few per cent.
pub fn row_top_k_long(x: &Tensor, k: usize) -> (Vec<f32>, Vec<f64>) {
    let (m, n) = (x.size()[0] as usize, x.size()[1] as usize);
    let k = k.clamp(1, n.max(1));
    let (mut kth, mut mean) = (vec![0f32; m], vec![0f64; m]);
    if m == 0 || n == 0 {
        return (kth, mean);
    }
    let (kth_parts, mean_parts) = (Disjoint::new(&mut kth), Disjoint::new(&mut mean));
    with_f32_data(x, |data| {
        parallel_for(m, 16, |b, e| {
            // SAFETY: parallel_for's ranges do not overlap.
            let (kth, mean) = unsafe { (kth_parts.part(b, e), mean_parts.part(b, e)) };
            let stride = 16usize;
            let samples = n.div_ceil(stride);
            let j = ((k / stride) + 3 * ((k / stride) as f64).sqrt() as usize + 3).min(samples);
            let mut sample = Vec::with_capacity(samples);
            let mut cand: Vec<f32> = Vec::with_capacity(4 * k + 64);
            for (i, row) in data[b * n..e * n].chunks_exact(n).enumerate() {
                sample.clear();
                sample.extend(row.iter().step_by(stride).copied());
                // The j-th largest of the sample: at least j entries of the row are >= it.
                let (_, t, _) = sample.select_nth_unstable_by(samples - j, |a, b| a.total_cmp(b));
                let t = *t;
                cand.clear();
                for &v in row {
                    if v >= t {
                        cand.push(v);
                    }
                }
                // With k or more candidates, the k largest of the row are all >= t, so among them.
                if cand.len() < k {
                    cand.clear();
                    cand.extend_from_slice(row);
                }
                let c = cand.len();
                let (_, t, right) = cand.select_nth_unstable_by(c - k, |a, b| a.total_cmp(b));
                kth[i] = *t;
                mean[i] = (*t as f64 + right.iter().map(|&v| v as f64).sum::<f64>()) / k as f64;
            }
        })
    });
    (kth, mean)
}

/// Per row of a CPU tensor `v` `[N, M]` (computed in f64), the fraction of its M
/// values whose bin `floor((x - lo) * scale)` is in `0..bins` (`[N, bins]` f64):
/// WeiPer's histograms in one pass per row, where the tensor route
/// (`ood::detectors::weiper::histograms`) makes ten passes over `[N, M]`. The bin
/// of each value is the same expression in the same f64 operations, so both
/// routes give identical counts; a NaN falls in no bin.
pub fn row_histograms(v: &Tensor, lo: f64, scale: f64, bins: usize) -> Tensor {
    let t = v.to_device(tch::Device::Cpu).to_kind(Kind::Double).contiguous();
    let (n, m) = (t.size()[0] as usize, t.size()[1] as usize);
    let out = Tensor::zeros([n as i64, bins as i64], (Kind::Double, tch::Device::Cpu));
    if n == 0 || m == 0 || bins == 0 {
        return out;
    }
    // SAFETY: `t` is a contiguous f64 CPU tensor of n * m elements, owned here and
    // only read; `out` is a fresh contiguous f64 CPU tensor of n * bins elements,
    // not shared, written only through the disjoint row parts below.
    let data = unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f64, n * m) };
    let out_data = unsafe { std::slice::from_raw_parts_mut(out.data_ptr() as *mut f64, n * bins) };
    let parts = Disjoint::new(out_data);
    let (limit, len) = (bins as f64, m as f64);
    parallel_for(n, 8, |b, e| {
        // SAFETY: parallel_for's ranges do not overlap (nor, times bins, their rows).
        let out = unsafe { parts.part(b * bins, e * bins) };
        let mut counts = vec![0u32; bins];
        for (r, o) in (b..e).zip(out.chunks_mut(bins)) {
            counts.fill(0);
            for &x in &data[r * m..(r + 1) * m] {
                let i = ((x - lo) * scale).floor();
                if i >= 0.0 && i < limit {
                    counts[i as usize] += 1;
                }
            }
            for (o, &c) in o.iter_mut().zip(&counts) {
                *o = c as f64 / len;
            }
        }
    });
    out
}

/// Per row i of a finite `[N, D]` f32 CPU tensor `x`, with `center` `[D]` and
/// `rows` `[N, D']` (the row of `table` `[R, D]` that `index[i]` picks):
/// ||x_i - center|| (L2), (x_i - center) . table\[index\[i\]\] and ||x_i||_1, in one
/// pass with f64 accumulation and no `[N, D]` temporary (NCI's and fDBD's norms).
#[derive(Debug)]
pub struct CentredRows {
    pub dist: Vec<f64>,
    pub dot: Vec<f64>,
    pub l1: Vec<f64>,
}

/// See [`CentredRows`]; `table` and `index` are optional (then `dot` is 0).
pub fn centred_rows(x: &Tensor, center: &Tensor, table: Option<(&Tensor, &Tensor)>) -> CentredRows {
    let (n, d) = (x.size()[0] as usize, x.size()[1] as usize);
    let mut out = CentredRows { dist: vec![0.0; n], dot: vec![0.0; n], l1: vec![0.0; n] };
    if n == 0 || d == 0 {
        return out;
    }
    let c: Vec<f64> = Vec::<f64>::try_from(center.to_device(tch::Device::Cpu).to_kind(Kind::Double).view([-1])).unwrap_or_default();
    let (tab, idx): (Vec<f64>, Vec<i64>) = match table {
        Some((t, i)) => (
            Vec::<f64>::try_from(t.to_device(tch::Device::Cpu).to_kind(Kind::Double).contiguous().view([-1])).unwrap_or_default(),
            Vec::<i64>::try_from(i.to_device(tch::Device::Cpu).to_kind(Kind::Int64).view([-1])).unwrap_or_default(),
        ),
        None => (Vec::new(), Vec::new()),
    };
    let (dist, dot, l1) = (Disjoint::new(&mut out.dist), Disjoint::new(&mut out.dot), Disjoint::new(&mut out.l1));
    with_f32_data(x, |data| {
        parallel_for(n, ROW_GRAIN, |b, e| {
            // SAFETY: parallel_for's ranges do not overlap.
            let (dist, dot, l1) = unsafe { (dist.part(b, e), dot.part(b, e), l1.part(b, e)) };
            for (r, row) in data[b * d..e * d].chunks_exact(d).enumerate() {
                let w = idx.get(b + r).map(|&k| &tab[k as usize * d..(k as usize + 1) * d]);
                let (mut sq, mut dt, mut a) = (0.0f64, 0.0f64, 0.0f64);
                for j in 0..d {
                    let v = row[j] as f64;
                    let centred = v - c[j];
                    sq += centred * centred;
                    a += v.abs();
                    if let Some(w) = w {
                        dt += centred * w[j];
                    }
                }
                dist[r] = sq.sqrt();
                dot[r] = dt;
                l1[r] = a;
            }
        })
    });
    out
}

#[allow(clippy::too_many_arguments)]
fn top_k_rows(
    rows: &[f32],
    d: usize,
    k: usize,
    shaping: RowShaping,
    thr: &mut [f32],
    sum: &mut [f64],
    top: &mut [f64],
    ge: &mut [f64],
    mut shaped: Option<&mut [f32]>,
) {
    // The selection runs on integer keys ordered like the floats (IEEE total
    // order: integer comparisons are cheaper than float ones). It only puts -0
    // below +0, which changes neither the k-th largest value as a number nor any
    // sum; the comparisons below are on the floats (-0 == +0, as in libtorch).
    let key = |v: f32| {
        let b = v.to_bits() as i32;
        b ^ ((((b >> 31) as u32) >> 1) as i32)
    };
    let unkey = |k: i32| f32::from_bits((k ^ ((((k >> 31) as u32) >> 1) as i32)) as u32);
    let mut buf = vec![0i32; d];
    for (i, row) in rows.chunks_exact(d).enumerate() {
        for (b, &v) in buf.iter_mut().zip(row) {
            *b = key(v);
        }
        let (_, t, right) = buf.select_nth_unstable(d - k);
        let t = unkey(*t);
        thr[i] = t;
        top[i] = t as f64 + right.iter().map(|&v| unkey(v) as f64).sum::<f64>();
        let s1: f64 = row.iter().map(|&v| v as f64).sum();
        let s_ge: f64 = row.iter().filter(|&&v| v >= t).map(|&v| v as f64).sum();
        sum[i] = s1;
        ge[i] = s_ge;
        let Some(out) = shaped.as_deref_mut().map(|s| &mut s[i * d..(i + 1) * d]) else { continue };
        match shaping {
            RowShaping::None => {}
            RowShaping::Prune => {
                for (o, &v) in out.iter_mut().zip(row) {
                    *o = if v >= t { v } else { 0.0 };
                }
            }
            RowShaping::PruneScale => {
                let f = (s1 / s_ge.max(1e-12)).exp();
                for (o, &v) in out.iter_mut().zip(row) {
                    *o = if v >= t { (v as f64 * f) as f32 } else { 0.0 };
                }
            }
            RowShaping::Binarize => {
                let b = (s1 / k as f64) as f32;
                let mut ties_left = k - row.iter().filter(|&&v| v > t).count();
                for (o, &v) in out.iter_mut().zip(row) {
                    *o = if v > t {
                        b
                    } else if v == t && ties_left > 0 {
                        ties_left -= 1;
                        b
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every compiled variant of the entropy and log-MSP kernels this CPU can run gives the
    /// same scores (FMA may round the polynomial differently: 1e-6 relative).
    /// parallel_for's ranges cover 0..n once, no more of them than n / grain
    /// rounded up; a panic in one range comes back to the
    /// caller (not through C++) after the others ran.
    #[test]
    fn parallel_for_covers_each_row_once_and_returns_panics() {
        for (n, grain) in [(1usize, 256usize), (255, 256), (257, 256), (10_000, 256), (10_000, 1)] {
            let mut seen = vec![0u8; n];
            let parts = Disjoint::new(&mut seen);
            let ranges = std::sync::Mutex::new(Vec::new());
            parallel_for(n, grain, |b, e| {
                ranges.lock().unwrap().push((b, e));
                // SAFETY: parallel_for's ranges do not overlap.
                for x in unsafe { parts.part(b, e) } {
                    *x += 1;
                }
            });
            assert!(seen.iter().all(|&x| x == 1), "n = {n}: a row missed or seen twice");
            let mut ranges = ranges.into_inner().unwrap();
            ranges.sort();
            assert!(ranges.len() <= n.div_ceil(grain), "n = {n}, grain = {grain}: {ranges:?}");
            for (i, &(b, e)) in ranges.iter().enumerate() {
                assert!(b < e && (i == 0 || ranges[i - 1].1 == b), "n = {n}: {ranges:?}");
            }
        }
        let ran = std::sync::atomic::AtomicUsize::new(0);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            parallel_for(4096, 256, |b, _| {
                ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                assert!(b != 0, "boom");
            })
        }));
        assert!(r.is_err(), "the panic of the first range is raised again");
        assert!(ran.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    }

    #[test]
    fn softmax_kernel_variants_agree() {
        let mut state = 7u64;
        let rows: Vec<f32> = (0..300 * 37)
            .map(|_| {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 30.0
            })
            .collect();
        for_every_stat(&rows);
    }

    fn for_every_stat(rows: &[f32]) {
        check::<ENTROPY>(rows, 1.0);
        check::<LOG_MSP>(rows, 1.0);
        check::<LOG_SUM_EXP>(rows, 1.0);
        check::<LOG_SUM_EXP>(rows, 2.0);
        check::<MAX>(rows, 1.0);
    }

    fn check<const STAT: u8>(rows: &[f32], t: f64) {
        let mut base = vec![0f32; 300];
        stat_rows_any::<STAT>(rows, 37, t, &mut base);
        let mut variants = vec![];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                let mut v = vec![0f32; 300];
                // SAFETY: checked just above.
                unsafe { stat_rows_avx512::<STAT>(rows, 37, t, &mut v) };
                variants.push(("avx512", v));
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                let mut v = vec![0f32; 300];
                // SAFETY: checked just above.
                unsafe { stat_rows_avx2::<STAT>(rows, 37, t, &mut v) };
                variants.push(("avx2", v));
            }
        }
        for (name, v) in variants {
            for (a, b) in v.iter().zip(&base) {
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-30), "{name}: {a} vs baseline {b}");
            }
        }
    }
}
