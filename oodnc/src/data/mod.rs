//! Datasets: readers for the real on-disk formats, splits, downloads, the
//! embedded procedural dataset, and device-side batching.
//!
//! Every reader returns a [`Dataset`]: `u8` images `[N, 3, 32, 32]` (CHW, RGB)
//! and `i64` labels `[N]` on the CPU, with the class names. Normalisation and
//! augmentation happen later, batch-wise, in [`loader`].
//!
//! Expected layout under a data root (what `oodnc data fetch` and
//! `oodnc data synth` write):
//! ```text
//! <root>/cifar-100-binary/{train.bin, test.bin, fine_label_names.txt, coarse_label_names.txt}
//! <root>/cifar-10-batches-bin/{data_batch_1..5.bin, test_batch.bin, batches.meta.txt}
//! <root>/svhn/{train_32x32.mat, test_32x32.mat}
//! <root>/dtd/images/<class>/*.jpg  and  <root>/dtd/labels/{train,val,test}{1..10}.txt
//! ```

pub mod cifar;
#[cfg(feature = "download")]
pub mod download;
pub mod dtd;
pub mod image_folder;
pub mod loader;
pub mod mat;
pub mod mnist;
pub mod protocol;
pub mod split;
pub mod svhn;
pub mod synthetic;

use crate::error::{Error, Result};
use tch::{Device, Kind, Tensor};

pub use loader::{BatchLoader, Normalize};
pub use split::{SplitIndices, SplitProtocol};

/// Per-channel mean of CIFAR-100 train images (in [0, 1]); applied to every set.
pub const CIFAR100_MEAN: [f64; 3] = [0.5071, 0.4867, 0.4408];
/// Per-channel standard deviation of CIFAR-100 train images.
pub const CIFAR100_STD: [f64; 3] = [0.2675, 0.2565, 0.2761];

/// Image side length used throughout (CIFAR resolution).
pub const SIDE: i64 = 32;

/// Train or test part of a dataset with an official split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Train,
    Test,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Part::Train => "train",
            Part::Test => "test",
        })
    }
}

/// Images and labels of one dataset split.
pub struct Dataset {
    /// A short name used in file names and tables (e.g. "cifar100-test", "svhn").
    pub name: String,
    /// `u8 [N, 3, 32, 32]`, RGB, channel-first.
    pub images: Tensor,
    /// `i64 [N]`; OOD sets keep their own labels (unused by the detectors).
    pub labels: Tensor,
    /// Class names, indexed by label.
    pub class_names: Vec<String>,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dataset({}: {} images, {} classes, {:?})", self.name, self.len(), self.class_names.len(), self.images.device())
    }
}

impl Dataset {
    /// Builds a dataset from raw CHW bytes (`N * 3072` of them) and labels, checking sizes and ranges.
    pub fn from_raw(name: impl Into<String>, pixels: Vec<u8>, labels: Vec<i64>, class_names: Vec<String>) -> Result<Self> {
        let name = name.into();
        let per = (3 * SIDE * SIDE) as usize;
        if pixels.len() != labels.len() * per {
            return Err(Error::shape(
                format!("dataset {name}"),
                format!("{} pixel bytes for {} labels (expected {} per image)", pixels.len(), labels.len(), per),
            ));
        }
        let c = class_names.len() as i64;
        if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l < 0 || l >= c) {
            return Err(Error::data(format!("dataset {name}"), format!("label {l} of sample {i} is outside 0..{c}")));
        }
        let n = labels.len() as i64;
        Ok(Dataset { name, images: Tensor::from_slice(&pixels).view([n, 3, SIDE, SIDE]), labels: Tensor::from_slice(&labels), class_names })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.size()[0] as usize
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// The samples at `indices` (in that order), under a new name.
    pub fn subset(&self, indices: &[i64], name: impl Into<String>) -> Result<Self> {
        let n = self.len() as i64;
        if let Some(&bad) = indices.iter().find(|&&i| i < 0 || i >= n) {
            return Err(Error::data(format!("subset of {}", self.name), format!("index {bad} outside 0..{n}")));
        }
        let idx = Tensor::from_slice(indices).to_device(self.images.device());
        Ok(Dataset {
            name: name.into(),
            images: self.images.index_select(0, &idx),
            labels: self.labels.index_select(0, &idx),
            class_names: self.class_names.clone(),
        })
    }

    /// The first `n` samples (or all when fewer).
    pub fn take(&self, n: usize) -> Self {
        let n = n.min(self.len()) as i64;
        Dataset {
            name: self.name.clone(),
            images: self.images.narrow(0, 0, n),
            labels: self.labels.narrow(0, 0, n),
            class_names: self.class_names.clone(),
        }
    }

    /// A copy on `device`.
    pub fn to_device(&self, device: Device) -> Self {
        Dataset {
            name: self.name.clone(),
            images: self.images.to_device(device),
            labels: self.labels.to_device(device),
            class_names: self.class_names.clone(),
        }
    }

    /// Images per class label.
    pub fn class_counts(&self) -> Vec<i64> {
        let counts = self.labels.to_device(Device::Cpu).bincount::<Tensor>(None, self.num_classes() as i64);
        Vec::<i64>::try_from(counts.to_kind(Kind::Int64)).unwrap_or_default()
    }

    /// Images as `f32 [N,3,32,32]` in [0, 1] (no normalisation), e.g. for plotting.
    pub fn images_f32(&self) -> Tensor {
        self.images.to_kind(Kind::Float) / 255.0
    }
}

pub(crate) use crate::util::read_file;

/// Reads a list of names, one per line (empty lines dropped).
pub(crate) fn read_names(path: &std::path::Path, what: &str, hint: &str) -> Result<Vec<String>> {
    let bytes = read_file(path, what, hint)?;
    let text = String::from_utf8(bytes).map_err(|_| Error::format(path, "not UTF-8 text"))?;
    Ok(text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect())
}

/// True when `root` holds (or is being filled with) the embedded dataset.
pub fn is_synthetic_root(root: &std::path::Path) -> bool {
    root.join(synthetic::MANIFEST).exists() || root.join(synthetic::PARTIAL).exists()
}

/// The hint appended to "not found" errors for the real datasets.
pub(crate) fn fetch_hint(dataset: &str, root: &std::path::Path) -> String {
    if is_synthetic_root(root) {
        return format!(
            "; {} holds the embedded dataset: regenerate it with `oodnc data synth --root {}` (never fetch real data into it)",
            root.display(),
            root.display()
        );
    }
    format!("; run `oodnc data fetch --dataset {dataset} --root {}` (or `oodnc data synth` for the offline demo data)", root.display())
}
