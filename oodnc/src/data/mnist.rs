//! MNIST in its own IDX format (LeCun et al.), as an OOD test set (OpenOOD v1.5
//! lists it among CIFAR-100's far-OOD sets).
//!
//! IDX: a big-endian header `00 00 <type> <ndim>` (type `08` = unsigned bytes),
//! then `ndim` big-endian u32 sizes, then the data. Images are `idx3` (`[N, 28,
//! 28]`), labels `idx1` (`[N]`). The files are read plain or gzipped
//! (`t10k-images-idx3-ubyte` or `t10k-images-idx3-ubyte.gz`, as downloaded).
//!
//! Each 28x28 grey image becomes 32x32 RGB as OpenOOD feeds it to CIFAR models:
//! resized to 32x32 (bilinear), the grey value copied to the three channels.

use super::{Dataset, Part, SIDE};
use crate::error::{Error, IoContext, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// File stem of the images and labels of `part`.
pub fn file_stems(part: Part) -> (&'static str, &'static str) {
    match part {
        Part::Train => ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        Part::Test => ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
}

/// The IDX file `stem` in `dir`, plain or `.gz`.
fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
    for name in [stem.to_string(), format!("{stem}.gz")] {
        let p = dir.join(&name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::Missing {
        what: format!("MNIST file {stem}"),
        path: dir.join(format!("{stem}.gz")),
        hint: format!("; `oodnc data fetch --dataset mnist --root <data root>` puts it in <data root>/mnist, or copy {stem}[.gz] there"),
    })
}

/// An IDX array: its sizes and its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Parses IDX bytes of unsigned bytes (type 0x08); anything else is an error naming `path`.
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<Idx> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(Error::format(path, "not an IDX file (its first two bytes must be zero)"));
    }
    if bytes[2] != 0x08 {
        return Err(Error::format(path, format!("IDX data type 0x{:02x}; only unsigned bytes (0x08) are MNIST's", bytes[2])));
    }
    let nd = bytes[3] as usize;
    let header = 4 + 4 * nd;
    if nd == 0 || bytes.len() < header {
        return Err(Error::format(path, format!("IDX header of {nd} dimensions is truncated")));
    }
    let dims: Vec<usize> = (0..nd).map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap_or([0; 4])) as usize).collect();
    let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| Error::format(path, "IDX sizes overflow"))?;
    if bytes.len() - header != n {
        return Err(Error::format(
            path,
            format!("IDX sizes {dims:?} need {n} data bytes, the file has {} (truncated?)", bytes.len() - header),
        ));
    }
    Ok(Idx { dims, data: bytes[header..].to_vec() })
}

/// Reads an IDX file, gunzipping `.gz`.
pub fn read_idx(path: &Path) -> Result<Idx> {
    let raw = std::fs::read(path).at(path)?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::format(path, format!("gzip stream is corrupt ({e}); download it again")))?;
        out
    } else {
        raw
    };
    parse_idx(&bytes, path)
}

/// IDX bytes of `data` with sizes `dims` (unsigned bytes), for fixtures.
pub fn idx_bytes(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend((d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// 28x28 (or any size) grey images `[N, H, W]` to 32x32 CHW RGB bytes.
fn to_rgb32(images: &Idx, path: &Path) -> Result<Vec<u8>> {
    if images.dims.len() != 3 {
        return Err(Error::format(path, format!("images must be idx3 [N, H, W], found sizes {:?}", images.dims)));
    }
    let (n, h, w) = (images.dims[0], images.dims[1], images.dims[2]);
    if h == 0 || w == 0 {
        return Err(Error::format(path, "images have zero size"));
    }
    let side = SIDE as u32;
    let mut out = Vec::with_capacity(n * 3072);
    for i in 0..n {
        let grey = image::GrayImage::from_raw(w as u32, h as u32, images.data[i * h * w..(i + 1) * h * w].to_vec())
            .ok_or_else(|| Error::format(path, "image buffer size"))?;
        let r = image::imageops::resize(&grey, side, side, image::imageops::FilterType::Triangle);
        for _ in 0..3 {
            out.extend_from_slice(r.as_raw());
        }
    }
    Ok(out)
}

/// Loads MNIST's `part` from `dir` as a 32x32 RGB [`Dataset`] named `name`.
pub fn load_mnist(dir: impl AsRef<Path>, part: Part, name: &str) -> Result<Dataset> {
    let dir = dir.as_ref();
    let (img_stem, lab_stem) = file_stems(part);
    let (ip, lp) = (find(dir, img_stem)?, find(dir, lab_stem)?);
    let images = read_idx(&ip)?;
    let labels = read_idx(&lp)?;
    if labels.dims.len() != 1 {
        return Err(Error::format(&lp, format!("labels must be idx1 [N], found sizes {:?}", labels.dims)));
    }
    if images.dims.first() != labels.dims.first() {
        return Err(Error::format(
            &lp,
            format!("{} labels for {} images in {}", labels.dims[0], images.dims.first().unwrap_or(&0), ip.display()),
        ));
    }
    if let Some(&l) = labels.data.iter().find(|&&l| l > 9) {
        return Err(Error::format(&lp, format!("label {l} is not a digit")));
    }
    let pixels = to_rgb32(&images, &ip)?;
    Dataset::from_raw(name, pixels, labels.data.iter().map(|&l| l as i64).collect(), (0..10).map(|d| d.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_fixture(dir: &Path, n: usize, gz: bool) {
        let px: Vec<u8> = (0..n * 28 * 28).map(|i| ((i * 7) % 256) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        for (stem, bytes) in
            [("t10k-images-idx3-ubyte", idx_bytes(&[n, 28, 28], &px)), ("t10k-labels-idx1-ubyte", idx_bytes(&[n], &labels))]
        {
            if gz {
                let f = std::fs::File::create(dir.join(format!("{stem}.gz"))).unwrap();
                let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::default());
                e.write_all(&bytes).unwrap();
                e.finish().unwrap();
            } else {
                std::fs::write(dir.join(stem), bytes).unwrap();
            }
        }
    }

    #[test]
    fn reads_plain_and_gzipped_idx_and_makes_grey_rgb_32() {
        for gz in [false, true] {
            let d = tempdir(if gz { "gz" } else { "plain" });
            write_fixture(&d, 5, gz);
            let ds = load_mnist(&d, Part::Test, "mnist").unwrap();
            assert_eq!(ds.images.size(), vec![5, 3, 32, 32]);
            assert_eq!(Vec::<i64>::try_from(&ds.labels).unwrap(), vec![0, 1, 2, 3, 4]);
            // The three channels are equal (grey), and a constant image stays constant.
            let img = ds.images.get(2);
            assert!(img.get(0).equal(&img.get(1)) && img.get(1).equal(&img.get(2)));
        }
        // Resizing a constant 28x28 image keeps its value.
        let d = tempdir("const");
        std::fs::write(d.join("t10k-images-idx3-ubyte"), idx_bytes(&[1, 28, 28], &[77u8; 784])).unwrap();
        std::fs::write(d.join("t10k-labels-idx1-ubyte"), idx_bytes(&[1], &[3])).unwrap();
        let ds = load_mnist(&d, Part::Test, "mnist").unwrap();
        let raw: Vec<u8> = Vec::try_from(ds.images.flatten(0, -1)).unwrap();
        assert!(raw.iter().all(|&b| b == 77), "{:?}", &raw[..8]);
    }

    #[test]
    fn bad_files_are_typed_errors_naming_the_file() {
        let d = tempdir("bad");
        write_fixture(&d, 3, false);
        let p = d.join("t10k-images-idx3-ubyte");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
        let e = load_mnist(&d, Part::Test, "mnist").unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("t10k-images-idx3-ubyte"), "{e}");
        std::fs::write(&p, b"\x01\x02\x08\x03").unwrap();
        assert!(load_mnist(&d, Part::Test, "mnist").unwrap_err().to_string().contains("not an IDX file"));
        std::fs::remove_file(&p).unwrap();
        let e = load_mnist(&d, Part::Test, "mnist").unwrap_err().to_string();
        assert!(e.contains("oodnc data fetch --dataset mnist"), "{e}");
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("oodnc-mnist-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
