//! SVHN cropped digits (`train_32x32.mat`, `test_32x32.mat`, MATLAB level 5).
//!
//! `X` is `32 x 32 x 3 x N` uint8 in MATLAB's column-major order, i.e. element
//! `X(h, w, c, n)` sits at `h + 32 w + 1024 c + 3072 n`; `y` is `N x 1` with
//! labels 1..10 where 10 means the digit 0 (mapped here to label 0).

use super::mat::{write_mat, MatData, MatFile};
use super::{fetch_hint, read_file, Dataset, Part};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Folder of SVHN under a data root.
pub const SVHN_DIR: &str = "svhn";

/// Path of the SVHN file for `part`.
pub fn path(root: &Path, part: Part) -> PathBuf {
    root.join(SVHN_DIR).join(match part {
        Part::Train => "train_32x32.mat",
        Part::Test => "test_32x32.mat",
    })
}

/// Digit class names "0".."9".
pub fn class_names() -> Vec<String> {
    (0..10).map(|d| d.to_string()).collect()
}

/// Decodes the `X` / `y` variables of an SVHN MAT-file.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<(Vec<u8>, Vec<i64>)> {
    let mat = MatFile::read(path, bytes)?;
    let dims = mat.dims("X")?;
    if dims.len() != 4 || dims[0] != 32 || dims[1] != 32 || dims[2] != 3 {
        return Err(Error::format(path, format!("X has dims {dims:?}, expected [32, 32, 3, N]")));
    }
    let n = dims[3];
    if n == 0 {
        return Err(Error::format(path, "X holds no images"));
    }
    let x = mat.u8_data("X")?;
    let y = mat.i64_data("y")?;
    if y.len() != n {
        return Err(Error::format(path, format!("y has {} labels for {n} images", y.len())));
    }
    let mut labels = Vec::with_capacity(n);
    for (i, &l) in y.iter().enumerate() {
        if !(1..=10).contains(&l) {
            return Err(Error::format(path, format!("label {l} of image {i} outside 1..=10")));
        }
        labels.push(if l == 10 { 0 } else { l });
    }
    // Column-major (h fastest, then w, then c) -> CHW row-major (w fastest).
    let mut pixels = vec![0u8; n * 3072];
    for img in 0..n {
        let src = &x[img * 3072..(img + 1) * 3072];
        let dst = &mut pixels[img * 3072..(img + 1) * 3072];
        for c in 0..3 {
            for w in 0..32 {
                for h in 0..32 {
                    dst[c * 1024 + h * 32 + w] = src[c * 1024 + w * 32 + h];
                }
            }
        }
    }
    Ok((pixels, labels))
}

/// Loads SVHN train or test from a data root.
pub fn load_svhn(root: impl AsRef<Path>, part: Part) -> Result<Dataset> {
    let root = root.as_ref();
    let p = path(root, part);
    let bytes = read_file(&p, &format!("SVHN {part} file"), &fetch_hint("svhn", root))?;
    let (pixels, labels) = decode(&p, &bytes)?;
    Dataset::from_raw(format!("svhn-{part}"), pixels, labels, class_names())
}

/// Writes CHW images and digit labels (0..9) as an SVHN MAT-file (`y` as double, 0 -> 10).
pub fn write_svhn(path: impl AsRef<Path>, pixels: &[u8], labels: &[i64], compress: bool) -> Result<()> {
    let n = labels.len();
    if pixels.len() != n * 3072 {
        return Err(Error::shape("SVHN writer", format!("{} bytes for {n} labels", pixels.len())));
    }
    let mut x = vec![0u8; n * 3072];
    for img in 0..n {
        for c in 0..3 {
            for h in 0..32 {
                for w in 0..32 {
                    x[img * 3072 + c * 1024 + w * 32 + h] = pixels[img * 3072 + c * 1024 + h * 32 + w];
                }
            }
        }
    }
    let y: Vec<f64> = labels.iter().map(|&l| if l == 0 { 10.0 } else { l as f64 }).collect();
    write_mat(path, &[("X", vec![32, 32, 3, n], MatData::U8(&x)), ("y", vec![n, 1], MatData::F64(&y))], compress)
}

/// Reads just the image count of an SVHN file (for `oodnc data check`).
pub fn count(root: &Path, part: Part) -> Result<usize> {
    let p = path(root, part);
    let bytes = read_file(&p, "SVHN file", &fetch_hint("svhn", root))?;
    Ok(MatFile::read(&p, &bytes)?.dims("X")?.get(3).copied().unwrap_or(0))
}
