//! CIFAR-10 and CIFAR-100 in their official binary formats.
//!
//! - CIFAR-10 (`cifar-10-batches-bin/`): records of 3073 bytes, `label, R[1024], G[1024], B[1024]`,
//!   in `data_batch_1..5.bin` (train) and `test_batch.bin`; names in `batches.meta.txt`.
//! - CIFAR-100 (`cifar-100-binary/`): records of 3074 bytes, `coarse, fine, R, G, B`, in
//!   `train.bin` and `test.bin`; names in `fine_label_names.txt` / `coarse_label_names.txt`.
//!
//! The number of classes is the number of names in the meta file, so the same
//! reader serves the embedded procedural dataset (written in these formats with
//! fewer classes).

use super::{fetch_hint, read_file, read_names, Dataset, Part};
use crate::error::{Error, IoContext, Result};
use std::path::{Path, PathBuf};

const PIXELS: usize = 3072;
/// Folder of CIFAR-10 under a data root.
pub const CIFAR10_DIR: &str = "cifar-10-batches-bin";
/// Folder of CIFAR-100 under a data root.
pub const CIFAR100_DIR: &str = "cifar-100-binary";

/// Which CIFAR variant a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// 1 label byte per record.
    Cifar10,
    /// 2 label bytes (coarse, fine) per record; the fine label is used.
    Cifar100,
}

impl Variant {
    /// Bytes per record.
    pub fn record_len(self) -> usize {
        match self {
            Variant::Cifar10 => 1 + PIXELS,
            Variant::Cifar100 => 2 + PIXELS,
        }
    }
}

/// Parses one CIFAR binary file: CHW pixels and labels (fine labels for CIFAR-100).
pub fn parse_records(path: &Path, bytes: &[u8], variant: Variant, num_classes: usize) -> Result<(Vec<u8>, Vec<i64>)> {
    let rec = variant.record_len();
    if bytes.is_empty() {
        return Err(Error::format(path, "empty file"));
    }
    if !bytes.len().is_multiple_of(rec) {
        return Err(Error::format(
            path,
            format!("size {} is not a multiple of the {rec}-byte {variant:?} record (truncated or wrong variant?)", bytes.len()),
        ));
    }
    let n = bytes.len() / rec;
    let mut pixels = Vec::with_capacity(n * PIXELS);
    let mut labels = Vec::with_capacity(n);
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        let label = match variant {
            Variant::Cifar10 => r[0],
            Variant::Cifar100 => r[1],
        } as usize;
        if label >= num_classes {
            return Err(Error::format(path, format!("record {i}: label {label} outside 0..{num_classes}")));
        }
        labels.push(label as i64);
        pixels.extend_from_slice(&r[rec - PIXELS..]);
    }
    Ok((pixels, labels))
}

fn files(root: &Path, variant: Variant, part: Part) -> (PathBuf, Vec<PathBuf>, PathBuf) {
    match variant {
        Variant::Cifar10 => {
            let dir = root.join(CIFAR10_DIR);
            let files = match part {
                Part::Train => (1..=5).map(|i| dir.join(format!("data_batch_{i}.bin"))).collect(),
                Part::Test => vec![dir.join("test_batch.bin")],
            };
            (dir.clone(), files, dir.join("batches.meta.txt"))
        }
        Variant::Cifar100 => {
            let dir = root.join(CIFAR100_DIR);
            let file = dir.join(match part {
                Part::Train => "train.bin",
                Part::Test => "test.bin",
            });
            (dir.clone(), vec![file], dir.join("fine_label_names.txt"))
        }
    }
}

/// Loads CIFAR-10 or CIFAR-100 (`part` = train or test) from a data root.
pub fn load(root: impl AsRef<Path>, variant: Variant, part: Part) -> Result<Dataset> {
    let root = root.as_ref();
    let key = match variant {
        Variant::Cifar10 => "cifar10",
        Variant::Cifar100 => "cifar100",
    };
    let hint = fetch_hint(key, root);
    let (_, paths, meta) = files(root, variant, part);
    let names = read_names(&meta, &format!("{key} class names"), &hint)?;
    if names.is_empty() || names.len() > 256 {
        return Err(Error::format(&meta, format!("{} class names (expected 1..=256)", names.len())));
    }
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for p in &paths {
        let bytes = read_file(p, &format!("{key} {part} file"), &hint)?;
        let (px, lb) = parse_records(p, &bytes, variant, names.len())?;
        pixels.extend(px);
        labels.extend(lb);
    }
    if labels.is_empty() {
        return Err(Error::format(&paths[0], "holds no images"));
    }
    Dataset::from_raw(format!("{key}-{part}"), pixels, labels, names)
}

/// CIFAR-100 train or test.
pub fn load_cifar100(root: impl AsRef<Path>, part: Part) -> Result<Dataset> {
    load(root, Variant::Cifar100, part)
}

/// CIFAR-10 train or test.
pub fn load_cifar10(root: impl AsRef<Path>, part: Part) -> Result<Dataset> {
    load(root, Variant::Cifar10, part)
}

/// Serialises images (`N*3072` CHW bytes) and labels as CIFAR records.
/// For CIFAR-100, `coarse` gives the coarse label of each fine label.
pub fn encode_records(pixels: &[u8], labels: &[i64], variant: Variant, coarse: Option<&[u8]>) -> Result<Vec<u8>> {
    if pixels.len() != labels.len() * PIXELS {
        return Err(Error::shape("CIFAR encoding", format!("{} bytes for {} labels", pixels.len(), labels.len())));
    }
    let mut out = Vec::with_capacity(labels.len() * variant.record_len());
    for (i, &l) in labels.iter().enumerate() {
        let l = u8::try_from(l).map_err(|_| Error::data("CIFAR encoding", format!("label {l} does not fit a byte")))?;
        if variant == Variant::Cifar100 {
            let c = coarse.and_then(|c| c.get(l as usize).copied()).unwrap_or(0);
            out.push(c);
        }
        out.push(l);
        out.extend_from_slice(&pixels[i * PIXELS..(i + 1) * PIXELS]);
    }
    Ok(out)
}

/// Writes a dataset in CIFAR binary layout under `root` (used by the synthetic
/// generator and the tests). For CIFAR-10 the train part is split over 5 batch files.
pub fn write(root: impl AsRef<Path>, variant: Variant, part: Part, pixels: &[u8], labels: &[i64], class_names: &[String]) -> Result<()> {
    let root = root.as_ref();
    let (dir, paths, meta) = files(root, variant, part);
    std::fs::create_dir_all(&dir).at(&dir)?;
    let coarse: Vec<u8> = (0..class_names.len()).map(|c| (c / 5) as u8).collect();
    let n = labels.len();
    let chunks = paths.len();
    for (k, p) in paths.iter().enumerate() {
        let (a, b) = (k * n / chunks, (k + 1) * n / chunks);
        let bytes = encode_records(&pixels[a * PIXELS..b * PIXELS], &labels[a..b], variant, Some(&coarse))?;
        crate::util::write_atomic(p, &bytes)?;
    }
    let mut names = class_names.join("\n");
    names.push('\n');
    crate::util::write_atomic(&meta, names.as_bytes())?;
    if variant == Variant::Cifar100 {
        let nc = class_names.len().div_ceil(5);
        let coarse_names: Vec<String> = (0..nc).map(|i| format!("superclass_{i}")).collect();
        crate::util::write_atomic(dir.join("coarse_label_names.txt"), (coarse_names.join("\n") + "\n").as_bytes())?;
    }
    Ok(())
}
