//! Describable Textures Dataset (DTD r1.0.1): `dtd/images/<class>/*.jpg` with the
//! official partitions `dtd/labels/{train,val,test}{1..10}.txt` (lines `class/file.jpg`).
//!
//! 47 classes x 120 images; each partition file lists 40 per class. Images have
//! various sizes and become 32x32 through [`Resize`]: by default the short side is
//! resized to 32 and the centre cropped (OpenOOD); `Resize::Squash` reproduces the
//! original project (both sides forced to 32).

use super::image_folder::{decode_many, sorted_subdirs, Resize};
use super::{fetch_hint, read_file, Dataset};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Folder of DTD under a data root.
pub const DTD_DIR: &str = "dtd";

/// One official DTD split file: `kind` in train/val/test, partition 1..=10.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DtdSplit {
    pub kind: DtdKind,
    pub partition: u8,
}

/// Which list of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DtdKind {
    Train,
    Val,
    Test,
}

impl DtdSplit {
    /// The test list of partition 1 (what torchvision's `DTD(split="test")` uses).
    pub const TEST1: DtdSplit = DtdSplit { kind: DtdKind::Test, partition: 1 };

    /// File name of the list, e.g. `test1.txt`.
    pub fn file_name(&self) -> String {
        let k = match self.kind {
            DtdKind::Train => "train",
            DtdKind::Val => "val",
            DtdKind::Test => "test",
        };
        format!("{k}{}.txt", self.partition)
    }
}

/// The image paths and labels of a split, in the order of the list file.
pub fn list(root: &Path, split: DtdSplit) -> Result<(Vec<PathBuf>, Vec<i64>, Vec<String>)> {
    if !(1..=10).contains(&split.partition) {
        return Err(Error::param("DTD partition", format!("{} is outside 1..=10", split.partition)));
    }
    let dir = root.join(DTD_DIR);
    let images = dir.join("images");
    let hint = fetch_hint("dtd", root);
    if !images.is_dir() {
        return Err(Error::Missing { what: "DTD images folder".into(), path: images, hint });
    }
    let classes = sorted_subdirs(&images)?;
    let list_path = dir.join("labels").join(split.file_name());
    let text =
        String::from_utf8(read_file(&list_path, "DTD partition file", &hint)?).map_err(|_| Error::format(&list_path, "not UTF-8 text"))?;
    let mut paths = Vec::new();
    let mut labels = Vec::new();
    for (ln, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((class, file)) = line.split_once('/') else {
            return Err(Error::format(&list_path, format!("line {}: '{line}' is not class/file.jpg", ln + 1)));
        };
        let plain = |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\\');
        if !plain(class) || !plain(file) || line.starts_with('/') {
            return Err(Error::format(
                &list_path,
                format!(
                    "line {}: '{line}' is not class/file.jpg inside {} (no '..', no absolute or deeper paths)",
                    ln + 1,
                    images.display()
                ),
            ));
        }
        let Ok(ci) = classes.binary_search_by(|c| c.as_str().cmp(class)) else {
            return Err(Error::format(&list_path, format!("line {}: class '{class}' has no folder in {}", ln + 1, images.display())));
        };
        let p = images.join(line);
        if !p.is_file() {
            return Err(Error::Missing {
                what: format!("DTD image listed at line {} of {}", ln + 1, list_path.display()),
                path: p,
                hint: String::new(),
            });
        }
        paths.push(p);
        labels.push(ci as i64);
    }
    if paths.is_empty() {
        return Err(Error::format(&list_path, "lists no images"));
    }
    Ok((paths, labels, classes))
}

/// Loads a DTD split as 32x32 images.
pub fn load_dtd(root: impl AsRef<Path>, split: DtdSplit, resize: Resize) -> Result<Dataset> {
    let (paths, labels, classes) = list(root.as_ref(), split)?;
    let pixels = decode_many(&paths, resize)?;
    let name = format!("dtd-{}", split.file_name().trim_end_matches(".txt"));
    Dataset::from_raw(name, pixels, labels, classes)
}

/// All 5,640 images (every class folder, sorted), for the "all of DTD" protocol.
pub fn load_dtd_all(root: impl AsRef<Path>, resize: Resize) -> Result<Dataset> {
    let root = root.as_ref();
    let images = root.join(DTD_DIR).join("images");
    let mut ds = super::image_folder::load_image_folder(&images, "dtd-all", resize).map_err(|e| match e {
        Error::Missing { path, .. } => Error::Missing { what: "DTD images folder".into(), path, hint: fetch_hint("dtd", root) },
        e => e,
    })?;
    ds.name = "dtd-all".into();
    Ok(ds)
}
