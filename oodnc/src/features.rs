//! Feature extraction and its cache.
//!
//! For a checkpoint and a dataset: logits, penultimate features and (on request)
//! the stem and 8 block outputs, global-average pooled (and optionally 2x2
//! adaptive-average pooled), in eval mode, batched, on the best device. Results
//! are cached as safetensors under `runs/<run>/features/epoch_XXX/<dataset>.safetensors`
//! with a key made of the checkpoint's MD5, the dataset's MD5 (images and labels)
//! and the options, so a changed checkpoint, transform or dataset invalidates it.
//! OOD detection and Neural Collapse both read from this cache.

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::{ResNet18, TAP_NAMES};
use crate::numerics::{ClassMoments, GlobalMoments};
use crate::tensor_io;
use md5::{Digest, Md5};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// What to extract besides logits and penultimate features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ExtractOptions {
    /// The stem and the 8 block outputs, global-average pooled.
    pub taps: bool,
    /// Also 2x2 adaptive-average pooled taps (4x the channels), keeping some spatial layout.
    pub pool2x2: bool,
}

/// Features of one dataset under one checkpoint, on the CPU.
pub struct FeatureSet {
    pub name: String,
    /// `[N, C]` f32.
    pub logits: Tensor,
    /// `[N, D]` f32 (the fc input).
    pub penultimate: Tensor,
    /// `[N]` i64 (the dataset's own labels).
    pub labels: Tensor,
    /// Tap name (`stem`, `layer1.0`, ..., optionally `+2x2`) -> `[N, D_l]`.
    pub taps: BTreeMap<String, Tensor>,
    /// Validated f64 copies of `logits` / `penultimate`, made on first use by the
    /// detectors (every detector of a study reads the same sets).
    f64_cache: F64Cache,
}

/// One cached value and the key it was computed for.
type Slot<K, V> = std::sync::Mutex<Option<(K, V)>>;

/// The f64 copies, each remembered with the identity of the tensor it was made
/// from: assigning a new tensor to the field (e.g. `to_device`) invalidates it.
/// Feature tensors are treated as immutable: an in-place edit of their values is
/// not noticed.
#[derive(Default)]
struct F64Cache {
    logits: Slot<TensorKey, Tensor>,
    penultimate: Slot<TensorKey, Tensor>,
    global: Slot<TensorKey, Arc<GlobalMoments>>,
    class: Slot<(TensorKey, TensorKey, i64), Arc<ClassMoments>>,
    /// Values detectors derive from this set (KNN's bank and top similarities),
    /// by tag; each holds the [`FeatureId`] it was made from.
    memo: std::sync::Mutex<Vec<(&'static str, Box<dyn std::any::Any + Send>)>>,
}

/// The identity of one feature tensor of a set (see [`FeatureSet::penultimate_id`]):
/// equal while the field holds the same tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureId(TensorKey);

impl FeatureId {
    /// The identity of any tensor (a classifier head's weight, say), as a key
    /// for values derived from it.
    pub fn of(t: &Tensor) -> Self {
        FeatureId(TensorKey::of(t))
    }
}

/// Identity of a tensor: its data pointer and layout. The key also holds a
/// reference to the tensor, so that its memory cannot be freed and reused by
/// another tensor (which could then match the pointer) while the key lives.
#[derive(Debug)]
struct TensorKey {
    ptr: usize,
    size: Vec<i64>,
    stride: Vec<i64>,
    kind: Kind,
    device: Device,
    _keep: Tensor,
}

impl PartialEq for TensorKey {
    fn eq(&self, o: &Self) -> bool {
        (self.ptr, &self.size, &self.stride, self.kind, self.device) == (o.ptr, &o.size, &o.stride, o.kind, o.device)
    }
}

impl Clone for TensorKey {
    fn clone(&self) -> Self {
        TensorKey {
            ptr: self.ptr,
            size: self.size.clone(),
            stride: self.stride.clone(),
            kind: self.kind,
            device: self.device,
            _keep: self._keep.shallow_clone(),
        }
    }
}

impl TensorKey {
    fn of(t: &Tensor) -> Self {
        TensorKey {
            ptr: t.data_ptr() as usize,
            size: t.size(),
            stride: t.stride(),
            kind: t.kind(),
            device: t.device(),
            _keep: t.shallow_clone(),
        }
    }
}

fn cached_f64(slot: &std::sync::Mutex<Option<(TensorKey, Tensor)>>, t: &Tensor, context: &str) -> Result<Tensor> {
    let key = TensorKey::of(t);
    let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((k, v)) = guard.as_ref() {
        if *k == key {
            return Ok(v.shallow_clone());
        }
    }
    let v = crate::numerics::finite_f64(t, context)?;
    *guard = Some((key, v.shallow_clone()));
    Ok(v)
}

impl std::fmt::Debug for FeatureSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FeatureSet({}: {:?} features, {} taps)", self.name, self.penultimate.size(), self.taps.len())
    }
}

impl FeatureSet {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.size()[0] as usize
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Builds a set from tensors (tests, user features), checking shapes and values.
    pub fn new(name: impl Into<String>, logits: Tensor, penultimate: Tensor, labels: Tensor) -> Result<Self> {
        let name = name.into();
        let (l, p, y) = (logits.size(), penultimate.size(), labels.size());
        if l.len() != 2 || p.len() != 2 || y.len() != 1 || l[0] != p[0] || l[0] != y[0] {
            return Err(Error::shape(
                format!("features {name}"),
                format!("logits {l:?}, penultimate {p:?}, labels {y:?} (need [N,C], [N,D], [N])"),
            ));
        }
        Ok(FeatureSet {
            name,
            logits: logits.to_kind(Kind::Float),
            penultimate: penultimate.to_kind(Kind::Float),
            labels: labels.to_kind(Kind::Int64),
            taps: BTreeMap::new(),
            f64_cache: F64Cache::default(),
        })
    }

    /// `logits` as f64, checked finite (cached; see [`FeatureSet`]).
    pub fn logits_f64(&self, context: &str) -> Result<Tensor> {
        cached_f64(&self.f64_cache.logits, &self.logits, context)
    }

    /// `penultimate` as f64, checked finite (cached).
    pub fn penultimate_f64(&self, context: &str) -> Result<Tensor> {
        cached_f64(&self.f64_cache.penultimate, &self.penultimate, context)
    }

    /// Mean and covariance of `penultimate` (f64; computed once, cached like the
    /// f64 copy).
    pub fn global_moments(&self, context: &str) -> Result<Arc<GlobalMoments>> {
        let h = self.penultimate_f64(context)?;
        let key = TensorKey::of(&self.penultimate);
        let mut guard = self.f64_cache.global.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, m)) = guard.as_ref() {
            if *k == key {
                return Ok(m.clone());
            }
        }
        #[allow(clippy::arc_with_non_send_sync)] // shared between detectors on one thread
        let m = Arc::new(GlobalMoments::compute(&h));
        *guard = Some((key, m.clone()));
        Ok(m)
    }

    /// The mean of `penultimate` (`[1, D]` f64), the same values as
    /// [`global_moments`](Self::global_moments)`.mean`: taken from the moments
    /// when they are cached, else computed alone (no covariance, for detectors
    /// that need only the mean).
    pub fn global_mean(&self, context: &str) -> Result<Tensor> {
        let key = TensorKey::of(&self.penultimate);
        if let Some((k, m)) = self.f64_cache.global.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            if *k == key {
                return Ok(m.mean.shallow_clone());
            }
        }
        Ok(self.penultimate_f64(context)?.mean_dim(&[0i64][..], true, Kind::Double))
    }

    /// Class means, counts and tied covariance of `penultimate` under `labels`
    /// for `classes` classes (f64; computed once, cached).
    pub fn class_moments(&self, classes: i64, context: &str) -> Result<Arc<ClassMoments>> {
        let h = self.penultimate_f64(context)?;
        let key = (TensorKey::of(&self.penultimate), TensorKey::of(&self.labels), classes);
        let mut guard = self.f64_cache.class.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, m)) = guard.as_ref() {
            if *k == key {
                return Ok(m.clone());
            }
        }
        #[allow(clippy::arc_with_non_send_sync)] // shared between detectors on one thread
        let m = Arc::new(ClassMoments::compute(&h, &self.labels, classes, context)?);
        *guard = Some((key, m.clone()));
        Ok(m)
    }

    /// The identity of the `penultimate` tensor (a key for values derived from it).
    pub fn penultimate_id(&self) -> FeatureId {
        FeatureId(TensorKey::of(&self.penultimate))
    }

    /// A value stored by [`memo_put`](Self::memo_put) under `tag`, if any.
    pub fn memo_get<V: Clone + 'static>(&self, tag: &'static str) -> Option<V> {
        let guard = self.f64_cache.memo.lock().unwrap_or_else(|e| e.into_inner());
        guard.iter().find(|(t, _)| *t == tag).and_then(|(_, v)| v.downcast_ref::<V>().cloned())
    }

    /// Remembers `value` under `tag` (replacing the previous one) for as long as
    /// this set lives (a copy made by [`rows`](Self::rows) starts empty).
    pub fn memo_put<V: Send + 'static>(&self, tag: &'static str, value: V) {
        let mut guard = self.f64_cache.memo.lock().unwrap_or_else(|e| e.into_inner());
        guard.retain(|(t, _)| *t != tag);
        guard.push((tag, Box::new(value)));
    }

    /// The features of layer `name` (`penultimate`, `logits`, or a tap).
    pub fn layer(&self, name: &str) -> Result<&Tensor> {
        match name {
            "penultimate" => Ok(&self.penultimate),
            "logits" => Ok(&self.logits),
            other => self.taps.get(other).ok_or_else(|| Error::Unknown {
                kind: "layer".into(),
                name: other.into(),
                known: std::iter::once("penultimate".to_string()).chain(self.taps.keys().cloned()).collect::<Vec<_>>().join(", "),
            }),
        }
    }

    /// A subset of rows (e.g. a seed-compatible OOD subset), on the set's device.
    pub fn rows(&self, idx: &[i64], name: impl Into<String>) -> FeatureSet {
        let i = Tensor::from_slice(idx).to_device(self.penultimate.device());
        FeatureSet {
            name: name.into(),
            logits: self.logits.index_select(0, &i),
            penultimate: self.penultimate.index_select(0, &i),
            labels: self.labels.index_select(0, &i),
            taps: self.taps.iter().map(|(k, v)| (k.clone(), v.index_select(0, &i))).collect(),
            f64_cache: F64Cache::default(),
        }
    }

    /// The same features (logits, penultimate, labels and taps) on `device`: a
    /// new set, nothing cached carried over (no copy when already there).
    pub fn to_device(&self, device: Device) -> FeatureSet {
        FeatureSet {
            name: self.name.clone(),
            logits: self.logits.to_device(device),
            penultimate: self.penultimate.to_device(device),
            labels: self.labels.to_device(device),
            taps: self.taps.iter().map(|(k, v)| (k.clone(), v.to_device(device))).collect(),
            f64_cache: F64Cache::default(),
        }
    }
}

/// Rows scaled to unit L2 norm (rows of zeros stay zero).
pub fn normalize_rows(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, &[1i64][..], true).clamp_min(1e-12)
}

/// Runs `model` in eval mode over `data`.
pub fn extract(model: &ResNet18, data: &Dataset, opts: ExtractOptions, device: Device, batch: usize) -> Result<FeatureSet> {
    if data.is_empty() {
        return Err(Error::data(format!("extract {}", data.name), "dataset is empty"));
    }
    let loader = crate::data::BatchLoader::new(data, batch, device)?;
    let mut logits = Vec::new();
    let mut pen = Vec::new();
    let mut taps: BTreeMap<String, Vec<Tensor>> = BTreeMap::new();
    tch::no_grad(|| -> Result<()> {
        for b in loader.epoch(0) {
            let b = b?;
            if opts.taps {
                let t = model.forward_taps(&b.images, false)?;
                for (i, m) in t.maps.iter().enumerate() {
                    let name = TAP_NAMES[i];
                    taps.entry(name.to_string()).or_default().push(m.mean_dim(&[2i64, 3][..], false, Kind::Float).to_device(Device::Cpu));
                    if opts.pool2x2 {
                        taps.entry(format!("{name}+2x2"))
                            .or_default()
                            .push(m.adaptive_avg_pool2d([2, 2]).flatten(1, -1).to_device(Device::Cpu));
                    }
                }
                pen.push(t.penultimate.to_device(Device::Cpu));
                logits.push(t.logits.to_device(Device::Cpu));
            } else {
                let (p, l) = model.features_t(&b.images, false)?;
                pen.push(p.to_device(Device::Cpu));
                logits.push(l.to_device(Device::Cpu));
            }
        }
        Ok(())
    })?;
    let mut fs = FeatureSet::new(data.name.clone(), Tensor::cat(&logits, 0), Tensor::cat(&pen, 0), data.labels.to_device(Device::Cpu))?;
    fs.taps = taps.into_iter().map(|(k, v)| (k, Tensor::cat(&v, 0))).collect();
    Ok(fs)
}

/// MD5 (hex) of a file.
pub fn file_md5(path: &Path) -> Result<String> {
    crate::util::md5_file(path)
}

/// MD5 (hex) of a dataset's pixels and labels.
pub fn dataset_md5(data: &Dataset) -> Result<String> {
    let mut h = Md5::new();
    h.update(tensor_io::tensor_bytes(&data.images)?);
    h.update(tensor_io::tensor_bytes(&data.labels)?);
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The cache file of `dataset` features at `epoch` of a run.
pub fn cache_path(run_dir: &Path, epoch: i64, dataset: &str) -> PathBuf {
    crate::run::layout::features(run_dir, epoch, dataset)
}

/// MD5 (hex) of named tensors: names, shapes, dtypes and bytes, in name order.
pub fn tensors_md5(tensors: &[(String, Tensor)]) -> Result<String> {
    let mut sorted: Vec<&(String, Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Md5::new();
    for (name, t) in sorted {
        h.update(name.as_bytes());
        h.update(format!("{:?}{:?}", t.size(), t.kind()).as_bytes());
        h.update(tensor_io::tensor_bytes(t)?);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn feature_tensors(fs: &FeatureSet) -> Vec<(String, Tensor)> {
    let mut tensors = vec![
        ("logits".to_string(), fs.logits.shallow_clone()),
        ("penultimate".to_string(), fs.penultimate.shallow_clone()),
        ("labels".to_string(), fs.labels.shallow_clone()),
    ];
    tensors.extend(fs.taps.iter().map(|(k, v)| (format!("tap.{k}"), v.shallow_clone())));
    tensors
}

/// Keeps the taps `opts` asks for (a cache may hold more).
fn restrict(mut fs: FeatureSet, opts: ExtractOptions) -> FeatureSet {
    if !opts.taps {
        fs.taps.clear();
    } else if !opts.pool2x2 {
        fs.taps.retain(|k, _| !k.ends_with("+2x2"));
    }
    fs
}

/// Why a cache file cannot serve a request (`Ok(None)`: it can, here it is).
fn read_cache(
    path: &Path,
    ckpt_md5: &str,
    data: &Dataset,
    data_md5: &str,
    opts: ExtractOptions,
) -> Result<std::result::Result<(FeatureSet, ExtractOptions), String>> {
    let mut l = match tensor_io::load(path) {
        Ok(l) => l,
        Err(e) => return Ok(Err(format!("unreadable ({e})"))),
    };
    let md = l.metadata.clone();
    if md.get("format").map(String::as_str) != Some(CACHE_FORMAT) {
        return Ok(Err("written by an older oodnc".into()));
    }
    if md.get("checkpoint_md5").map(String::as_str) != Some(ckpt_md5) {
        return Ok(Err("the checkpoint changed".into()));
    }
    if md.get("data_md5").map(String::as_str) != Some(data_md5) {
        return Ok(Err("the dataset changed".into()));
    }
    let held: ExtractOptions = match md.get("opts").and_then(|o| serde_json::from_str(o).ok()) {
        Some(o) => o,
        None => return Ok(Err("no extraction options recorded".into())),
    };
    if (opts.taps && !held.taps) || (opts.pool2x2 && !held.pool2x2) {
        return Ok(Err("it lacks the layer taps asked for (they are added now)".into()));
    }
    let tensors: Vec<(String, Tensor)> = l.tensors.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
    if md.get("content_md5") != Some(&tensors_md5(&tensors)?) {
        return Ok(Err("its content does not match its recorded checksum (edited or corrupt)".into()));
    }
    let (Ok(logits), Ok(pen), Ok(labels)) = (l.take(path, "logits"), l.take(path, "penultimate"), l.take(path, "labels")) else {
        return Ok(Err("a tensor is missing".into()));
    };
    let mut fs = match FeatureSet::new(data.name.clone(), logits, pen, labels) {
        Ok(fs) => fs,
        Err(e) => return Ok(Err(e.to_string())),
    };
    if fs.len() != data.len() || !fs.labels.equal(&data.labels.to_device(Device::Cpu)) {
        return Ok(Err("its rows or labels differ from the dataset's".into()));
    }
    fs.taps = l.tensors.into_iter().filter_map(|(k, v)| k.strip_prefix("tap.").map(|s| (s.to_string(), v))).collect();
    if fs.taps.values().any(|t| t.size().first() != Some(&(data.len() as i64))) {
        return Ok(Err("a layer tap has the wrong number of rows".into()));
    }
    Ok(Ok((fs, held)))
}

/// Format tag of feature cache files.
pub const CACHE_FORMAT: &str = "oodnc-features-v2";

/// Features of `data` under the run's checkpoint at `epoch`, from the cache when
/// it serves the request, else extracted (on `device`) and cached.
///
/// The cache records the checkpoint's and the dataset's MD5, the extraction
/// options and the MD5 of its own content; it is verified on every load and
/// rebuilt (with a message saying why) when anything differs. A cache holding
/// more layer taps than asked for serves the request; one holding fewer is
/// re-extracted with the union, so alternating studies never thrash it.
/// Non-finite features are an error naming the checkpoint (a diverged run).
pub fn cached(run_dir: &Path, epoch: i64, data: &Dataset, opts: ExtractOptions, device: Device) -> Result<FeatureSet> {
    let opts = ExtractOptions { taps: opts.taps, pool2x2: opts.taps && opts.pool2x2 };
    let ckpt = crate::run::layout::checkpoint(run_dir, epoch);
    if !ckpt.exists() {
        return Err(Error::Missing {
            what: format!("checkpoint of epoch {epoch}"),
            path: ckpt,
            hint: "; train first (`oodnc train` or notebook 01)".into(),
        });
    }
    let ckpt_md5 = file_md5(&ckpt)?;
    let data_md5 = dataset_md5(data)?;
    let path = cache_path(run_dir, epoch, &data.name);
    let mut want = opts;
    if path.exists() {
        match read_cache(&path, &ckpt_md5, data, &data_md5, opts)? {
            Ok((fs, _)) => return check_finite(restrict(fs, opts), &ckpt, epoch),
            Err(why) => {
                eprintln!("feature cache {} rebuilt: {why}", path.display());
                if let Some(held) = tensor_io::read_metadata(&path)
                    .ok()
                    .and_then(|m| m.get("opts").and_then(|o| serde_json::from_str::<ExtractOptions>(o).ok()))
                {
                    want = ExtractOptions { taps: want.taps || held.taps, pool2x2: want.pool2x2 || held.pool2x2 };
                }
            }
        }
    }
    let (_vs, model, _) = crate::run::load_run_model(run_dir, epoch, device)?;
    let fs = extract(&model, data, want, device, 500)?;
    let tensors = feature_tensors(&fs);
    let mut md = BTreeMap::new();
    md.insert("format".to_string(), CACHE_FORMAT.to_string());
    md.insert("checkpoint_md5".to_string(), ckpt_md5);
    md.insert("data_md5".to_string(), data_md5);
    md.insert("opts".to_string(), serde_json::to_string(&want).unwrap_or_default());
    md.insert("content_md5".to_string(), tensors_md5(&tensors)?);
    md.insert("epoch".to_string(), epoch.to_string());
    tensor_io::save(&path, &tensors, &md)?;
    check_finite(restrict(fs, opts), &ckpt, epoch)
}

/// An error naming the checkpoint when any feature is NaN or infinite.
fn check_finite(fs: FeatureSet, ckpt: &Path, epoch: i64) -> Result<FeatureSet> {
    let all = std::iter::once(("logits", &fs.logits))
        .chain(std::iter::once(("penultimate", &fs.penultimate)))
        .chain(fs.taps.iter().map(|(k, v)| (k.as_str(), v)));
    for (name, t) in all {
        if t.numel() > 0 && !bool::try_from(t.isfinite().all()).unwrap_or(false) {
            return Err(Error::data(
                format!("features '{name}' of {} at epoch {epoch}", fs.name),
                format!(
                    "contain NaN or infinite values: the checkpoint {} has non-finite weights (did training diverge?); analyse an earlier epoch with --epochs",
                    ckpt.display()
                ),
            ));
        }
    }
    Ok(fs)
}
