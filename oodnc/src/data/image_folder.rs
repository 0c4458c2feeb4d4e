//! Image files to 32x32 tensors: decoding, resizing, and the generic
//! `<root>/<class>/<image>` folder reader for user-supplied OOD sets
//! (MNIST-like digits, TinyImageNet, Places365 copies, ...).

use super::{Dataset, SIDE};
use crate::error::{Error, IoContext, Result};
use image::imageops::FilterType;
use std::path::{Path, PathBuf};

/// How an image of arbitrary size becomes 32x32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resize {
    /// Resize the shorter side to 32 (bilinear, antialiased), then centre-crop 32x32
    /// (torchvision `Resize(32)` + `CenterCrop(32)`, as OpenOOD does). Keeps aspect ratio.
    #[default]
    ShortSideCenterCrop,
    /// Resize both sides to 32 (torchvision `Resize((32, 32))`), distorting the aspect
    /// ratio: the original project's choice for Textures.
    Squash,
}

/// File extensions recognised as images.
pub const IMAGE_EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff"];

/// Whether a JPEG file is whole: its end-of-image marker (`FF D9`) follows its
/// last start-of-scan (`FF DA`). A truncated file lacks it, and decoders fill
/// the missing part silently (grey or repeated rows) instead of failing.
/// Embedded EXIF thumbnails come before the main image's scans, so their own
/// markers do not count; bytes after the end marker are allowed.
pub fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_sos {
        None => false,
        Some(i) => bytes[i..].windows(2).any(|w| w == [0xFF, 0xD9]),
    }
}

/// Decodes one image file and returns its 32x32 CHW RGB bytes. A truncated
/// JPEG is an error (see [`jpeg_is_complete`]).
pub fn decode_to_chw(path: &Path, resize: Resize) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).at(path)?;
    if bytes.starts_with(&[0xFF, 0xD8]) && !jpeg_is_complete(&bytes) {
        return Err(Error::format(path, "truncated JPEG (no end-of-image marker after its last scan); download or copy it again"));
    }
    let img = image::load_from_memory(&bytes).map_err(|e| Error::format(path, format!("unreadable image: {e}")))?.to_rgb8();
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err(Error::format(path, "image has zero size"));
    }
    let side = SIDE as u32;
    let out = match resize {
        Resize::Squash => image::imageops::resize(&img, side, side, FilterType::Triangle),
        Resize::ShortSideCenterCrop => {
            // torchvision: the short side becomes 32, the long side int(32 * long / short).
            let (nw, nh) = if w <= h {
                (side, ((side as u64 * h as u64) / w as u64).max(side as u64) as u32)
            } else {
                (((side as u64 * w as u64) / h as u64).max(side as u64) as u32, side)
            };
            let r = image::imageops::resize(&img, nw, nh, FilterType::Triangle);
            // CenterCrop: top-left at round((size - 32) / 2).
            let x0 = ((nw - side) as f64 / 2.0).round() as u32;
            let y0 = ((nh - side) as f64 / 2.0).round() as u32;
            image::imageops::crop_imm(&r, x0, y0, side, side).to_image()
        }
    };
    let mut chw = vec![0u8; 3 * 1024];
    for (x, y, p) in out.enumerate_pixels() {
        for c in 0..3 {
            chw[c * 1024 + (y * side + x) as usize] = p.0[c];
        }
    }
    Ok(chw)
}

/// Decodes many files in parallel (all cores), keeping their order.
pub fn decode_many(paths: &[PathBuf], resize: Resize) -> Result<Vec<u8>> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(16);
    let chunk = paths.len().div_ceil(threads.max(1)).max(1);
    let parts: Vec<Result<Vec<u8>>> = std::thread::scope(|s| {
        let handles: Vec<_> = paths
            .chunks(chunk)
            .map(|ps| {
                s.spawn(move || {
                    let mut out = Vec::with_capacity(ps.len() * 3072);
                    for p in ps {
                        out.extend(decode_to_chw(p, resize)?);
                    }
                    Ok(out)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(Error::data("image decoding", "a decoder thread panicked")))).collect()
    });
    let mut all = Vec::with_capacity(paths.len() * 3072);
    for p in parts {
        all.extend(p?);
    }
    Ok(all)
}

/// Reads the images an image list names (OpenOOD's `benchmark_imglist` format:
/// one `relative/path [label]` per line, blank lines and `#` comments skipped),
/// relative to `root`. Labels (when given) are kept; a path that is missing or
/// leaves `root` is an error naming the list and its line.
pub fn load_image_list(root: impl AsRef<Path>, list: impl AsRef<Path>, name: &str, resize: Resize) -> Result<Dataset> {
    let (root, list) = (root.as_ref(), list.as_ref());
    let text = std::fs::read_to_string(list).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Missing {
            what: format!("image list for '{name}'"),
            path: list.to_path_buf(),
            hint: "; one `relative/path [label]` per line (OpenOOD's benchmark_imglist format)".into(),
        },
        _ => Error::io(list, e),
    })?;
    let (mut paths, mut labels) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let rel = Path::new(parts.next().unwrap_or_default());
        if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(Error::format(
                list,
                format!("line {}: '{}' must be relative to {} without '..'", i + 1, rel.display(), root.display()),
            ));
        }
        let label = match parts.next() {
            None => 0,
            Some(l) => l.parse::<i64>().map_err(|_| Error::format(list, format!("line {}: label '{l}' is not an integer", i + 1)))?.max(0),
        };
        let p = root.join(rel);
        if !p.is_file() {
            return Err(Error::Missing {
                what: format!("image listed on line {} of {}", i + 1, list.display()),
                path: p,
                hint: format!("; the list's paths are relative to {}", root.display()),
            });
        }
        paths.push(p);
        labels.push(label);
    }
    if paths.is_empty() {
        return Err(Error::format(list, "lists no images"));
    }
    let classes = (0..=labels.iter().copied().max().unwrap_or(0)).map(|c| c.to_string()).collect();
    let pixels = decode_many(&paths, resize)?;
    Dataset::from_raw(name, pixels, labels, classes)
}

fn is_image(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str())).unwrap_or(false)
}

/// Sorted sub-folder names of `dir`.
pub(crate) fn sorted_subdirs(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).at(dir)? {
        let e = e.at(dir)?;
        if e.file_type().at(e.path())?.is_dir() {
            names.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Reads `<root>/<class>/<image>` (classes = sorted sub-folders, images sorted by name).
///
/// An image folder with no class sub-folders but images directly inside is read
/// as a single class named after the folder.
pub fn load_image_folder(root: impl AsRef<Path>, name: &str, resize: Resize) -> Result<Dataset> {
    let root = root.as_ref();
    if !root.is_dir() {
        return Err(Error::Missing {
            what: format!("image folder for '{name}'"),
            path: root.to_path_buf(),
            hint: "; expected <folder>/<class>/<image files>".into(),
        });
    }
    let mut classes = sorted_subdirs(root)?;
    let mut paths = Vec::new();
    let mut labels = Vec::new();
    let single = classes.is_empty();
    if single {
        classes = vec![root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| name.into())];
    }
    for (ci, class) in classes.iter().enumerate() {
        let dir = if single { root.to_path_buf() } else { root.join(class) };
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(&dir).at(&dir)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file() && is_image(p)).collect();
        files.sort();
        labels.extend(std::iter::repeat_n(ci as i64, files.len()));
        paths.extend(files);
    }
    if paths.is_empty() {
        return Err(Error::data(format!("image folder {}", root.display()), "no image files found"));
    }
    let pixels = decode_many(&paths, resize)?;
    Dataset::from_raw(name, pixels, labels, classes)
}
