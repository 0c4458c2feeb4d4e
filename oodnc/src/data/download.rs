//! Verified downloads of the real datasets.
//!
//! Each [`Resource`] has its official URL and published MD5 (the checksums
//! torchvision uses). [`fetch`] downloads into `<root>/.downloads/<file>.part`,
//! resuming a partial file with an HTTP `Range` request, shows a progress bar,
//! verifies the checksum, then extracts archives into a temporary folder under
//! `<root>` and renames the result into place (atomic on one filesystem), so a
//! half-done fetch never looks like a dataset. Without internet, the error names
//! the URL, the expected file and the exact path to place it by hand; a file
//! placed there is verified and used.

use crate::error::{Error, IoContext, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// What to do with a downloaded file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unpack {
    /// A `.tar.gz` whose top folder `top` is moved to `<root>/<dest>`.
    TarGz { top: &'static str },
    /// A plain `.tar` whose top folder `top` is moved to `<root>/<dest>`.
    Tar { top: &'static str },
    /// A `.zip` whose top folder `top` is moved to `<root>/<dest>`.
    Zip { top: &'static str },
    /// A plain file moved to `<root>/<dest>`.
    File,
}

/// One downloadable file.
#[derive(Debug, Clone)]
pub struct Resource {
    /// Dataset key (`cifar100`, `cifar10`, `svhn`, `dtd`).
    pub dataset: &'static str,
    pub url: String,
    pub file_name: String,
    /// Published MD5, lowercase hex.
    pub md5: String,
    /// Size in bytes, when known (progress only).
    pub size: Option<u64>,
    pub unpack: Unpack,
    /// Destination relative to the data root (a folder for archives, a file otherwise).
    pub dest: PathBuf,
}

/// The official files of each dataset.
pub fn resources(dataset: &str) -> Result<Vec<Resource>> {
    let r = |dataset, url: &str, md5: &str, size: u64, unpack, dest: &str| Resource {
        dataset,
        url: url.to_string(),
        file_name: url.rsplit('/').next().unwrap_or(url).to_string(),
        md5: md5.to_string(),
        size: (size > 0).then_some(size),
        unpack,
        dest: PathBuf::from(dest),
    };
    let all = match dataset {
        "cifar100" => vec![r(
            "cifar100",
            "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
            "03b5dce01913d631647c71ecec9e9cb8",
            168_513_733,
            Unpack::TarGz { top: "cifar-100-binary" },
            "cifar-100-binary",
        )],
        "cifar10" => vec![r(
            "cifar10",
            "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
            "c32a1d4ab5d03f1284b67883e8d87530",
            170_052_171,
            Unpack::TarGz { top: "cifar-10-batches-bin" },
            "cifar-10-batches-bin",
        )],
        "svhn" => vec![
            r(
                "svhn",
                "http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
                "e26dedcc434d2e4c54c9b2d4a06d8373",
                182_040_794,
                Unpack::File,
                "svhn/train_32x32.mat",
            ),
            r(
                "svhn",
                "http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
                "eb5a983be6a315427106f1b164d9cef3",
                64_275_384,
                Unpack::File,
                "svhn/test_32x32.mat",
            ),
        ],
        "dtd" => vec![r(
            "dtd",
            "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
            "fff73e5086ae6bdbea199a49dfb8a4c1",
            625_239_812,
            Unpack::TarGz { top: "dtd" },
            "dtd",
        )],
        // OpenOOD v1.5's other CIFAR-100 sets: MNIST (far), TinyImageNet (its val
        // folder is the held-out OOD validation set), Places365 (far; val_256).
        "mnist" => ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
            .iter()
            .zip([("9fb629c4189551a2d022fa330f9573f3", 1_648_877), ("ec29112dd5afa0611ce80d1b7f02629c", 4_542)])
            .map(|(f, (md5, size))| {
                r("mnist", &format!("https://ossci-datasets.s3.amazonaws.com/mnist/{f}"), md5, size, Unpack::File, &format!("mnist/{f}"))
            })
            .collect(),
        "tin" => vec![r(
            "tin",
            "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
            "90528d7ca1a48142e341f4ef8d21d0de",
            248_100_043,
            Unpack::Zip { top: "tiny-imagenet-200" },
            "tiny-imagenet-200",
        )],
        "places365" => vec![r(
            "places365",
            "http://data.csail.mit.edu/places/places365/val_256.tar",
            "e27b17d8d44f4af9a78502beb927f808",
            0,
            Unpack::Tar { top: "val_256" },
            "places365/val_256",
        )],
        "all" | "openood" => {
            let mut v = Vec::new();
            for d in if dataset == "all" { &DATASETS[..] } else { &OPENOOD_EXTRA[..] } {
                v.extend(resources(d)?);
            }
            v
        }
        other => {
            return Err(Error::Unknown {
                kind: "dataset".into(),
                name: other.into(),
                known: "cifar100, cifar10, svhn, dtd, all (these four), mnist, tin, places365, openood (these three)".into(),
            })
        }
    };
    Ok(all)
}

/// The datasets `fetch --dataset all` covers (the coursework's).
pub const DATASETS: [&str; 4] = ["cifar100", "cifar10", "svhn", "dtd"];
/// The datasets `fetch --dataset openood` covers: OpenOOD v1.5's other CIFAR-100
/// sets. Configure them as `data.extra_ood` (`mnist` with `format = "mnist"`,
/// `places365` as a folder) and TinyImageNet's `val/` as `ood.heldout`.
pub const OPENOOD_EXTRA: [&str; 3] = ["mnist", "tin", "places365"];

/// MD5 of a file, lowercase hex.
pub fn md5_file(path: &Path) -> Result<String> {
    crate::util::md5_file(path)
}

/// Where a resource's download lands before verification.
pub fn download_path(root: &Path, res: &Resource) -> PathBuf {
    root.join(".downloads").join(&res.file_name)
}

fn download_error(res: &Resource, root: &Path, reason: impl Into<String>) -> Error {
    Error::Download {
        url: res.url.clone(),
        file: format!("{} (md5 {})", res.file_name, res.md5),
        dest: download_path(root, res),
        reason: reason.into(),
    }
}

/// Downloads `res` into `<root>/.downloads/`, resuming a partial file. Returns the
/// verified file. A complete file already there (e.g. placed by hand) is verified
/// and reused without network access.
pub fn download(root: &Path, res: &Resource, show_progress: bool) -> Result<PathBuf> {
    let final_path = download_path(root, res);
    let dir = final_path.parent().map(Path::to_path_buf).unwrap_or_else(|| root.to_path_buf());
    std::fs::create_dir_all(&dir).at(&dir)?;
    if final_path.is_file() {
        let got = md5_file(&final_path)?;
        if got == res.md5 {
            return Ok(final_path);
        }
        return Err(Error::Checksum { path: final_path, expected: res.md5.clone(), actual: got });
    }
    let part = dir.join(format!("{}.part", res.file_name));
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let mut req = ureq::get(&res.url);
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let mut resp = req.call().map_err(|e| download_error(res, root, e.to_string()))?;
    let status = resp.status().as_u16();
    let resumed = status == 206;
    if !(status == 200 || resumed) {
        return Err(download_error(res, root, format!("HTTP status {status}")));
    }
    let content_len: Option<u64> = resp.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let start = if resumed { have } else { 0 };
    let total = content_len.map(|l| l + start).or(res.size);
    let mut file = std::fs::OpenOptions::new().create(true).append(resumed).write(true).truncate(!resumed).open(&part).at(&part)?;
    let pb = if show_progress {
        let pb = ProgressBar::new(total.unwrap_or(0));
        pb.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb.set_message(res.file_name.clone());
        pb.set_position(start);
        pb
    } else {
        ProgressBar::hidden()
    };
    let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut received = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| download_error(res, root, format!("connection broken after {} bytes: {e}", start + received)))?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n]).at(&part)?;
        received += n as u64;
        pb.inc(n as u64);
    }
    file.sync_all().at(&part)?;
    drop(file);
    pb.finish_and_clear();
    if let Some(l) = content_len {
        if received < l {
            return Err(download_error(res, root, format!("truncated: got {received} of {l} bytes (rerun to resume)")));
        }
    }
    let got = md5_file(&part)?;
    if got != res.md5 {
        let _ = std::fs::remove_file(&part);
        return Err(Error::Checksum { path: part, expected: res.md5.clone(), actual: got });
    }
    std::fs::rename(&part, &final_path).at(&final_path)?;
    Ok(final_path)
}

/// Extracts or moves a verified download into `<root>/<dest>`.
pub fn install(root: &Path, res: &Resource, file: &Path) -> Result<PathBuf> {
    let dest = root.join(&res.dest);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).at(parent)?;
    }
    match res.unpack {
        Unpack::File => {
            std::fs::copy(file, dest.with_extension("tmp-install")).at(&dest)?;
            std::fs::rename(dest.with_extension("tmp-install"), &dest).at(&dest)?;
        }
        Unpack::TarGz { top } | Unpack::Tar { top } | Unpack::Zip { top } => {
            let tmp = root.join(format!(".extract-{}-{}", res.dataset, std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp).at(&tmp)?;
            let f = std::fs::File::open(file).at(file)?;
            let bad = |e: String| Error::format(file, format!("cannot extract archive: {e}"));
            match res.unpack {
                Unpack::TarGz { .. } => tar::Archive::new(flate2::read::GzDecoder::new(f)).unpack(&tmp).map_err(|e| bad(e.to_string()))?,
                Unpack::Tar { .. } => tar::Archive::new(f).unpack(&tmp).map_err(|e| bad(e.to_string()))?,
                _ => zip::ZipArchive::new(f).and_then(|mut z| z.extract(&tmp)).map_err(|e| bad(e.to_string()))?,
            }
            let extracted = tmp.join(top);
            if !extracted.is_dir() {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(Error::format(file, format!("archive has no top folder '{top}'")));
            }
            if dest.exists() {
                std::fs::remove_dir_all(&dest).at(&dest)?;
            }
            std::fs::rename(&extracted, &dest).at(&dest)?;
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    Ok(dest)
}

/// Downloads, verifies and installs every resource of `dataset` under `root`.
/// Already installed resources (their destination exists) are skipped.
pub fn fetch(dataset: &str, root: impl AsRef<Path>, show_progress: bool) -> Result<Vec<PathBuf>> {
    let root = root.as_ref();
    if super::is_synthetic_root(root) {
        return Err(Error::data(
            format!("data root {}", root.display()),
            "it holds the embedded (synthetic) dataset; real datasets go to their own root (e.g. --root data), never mixed into it",
        ));
    }
    crate::run::ensure_dir(root, "data root")?;
    let mut out = Vec::new();
    for res in resources(dataset)? {
        out.push(fetch_resource(root, &res, show_progress)?);
    }
    Ok(out)
}

/// Downloads, verifies and installs one resource (skipped when installed).
pub fn fetch_resource(root: &Path, res: &Resource, show_progress: bool) -> Result<PathBuf> {
    let dest = root.join(&res.dest);
    if dest.exists() {
        return Ok(dest);
    }
    let file = download(root, res, show_progress)?;
    install(root, res, &file)
}
