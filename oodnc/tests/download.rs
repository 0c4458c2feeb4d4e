//! Downloads against a local HTTP server on 127.0.0.1 started by the test,
//! serving archives the test builds: a good one, a truncated one, one with a
//! wrong checksum, and a missing one. Also resume with `Range`.
#![cfg(feature = "download")]

mod common;

use common::TempDir;
use md5::{Digest, Md5};
use oodnc::data::download::{download_path, fetch_resource, Resource, Unpack};
use oodnc::Error;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
enum Mode {
    Full,
    /// Announce the full length but close after this many bytes.
    TruncateAt(usize),
}

type Files = Arc<Mutex<HashMap<String, (Vec<u8>, Mode)>>>;

struct Server {
    base: String,
    files: Files,
    ranges: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let files: Files = Arc::default();
        let ranges: Arc<Mutex<Vec<String>>> = Arc::default();
        let (f, r) = (files.clone(), ranges.clone());
        std::thread::spawn(move || {
            // Bounded: the test suite never needs more than a few dozen requests.
            for stream in listener.incoming().take(64) {
                let Ok(mut s) = stream else { continue };
                let mut reader = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                let mut range_start = 0usize;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        r.lock().unwrap().push(v.trim().to_string());
                        range_start = v.trim().trim_end_matches('-').parse().unwrap_or(0);
                    }
                }
                let entry = f.lock().unwrap().get(&path).cloned();
                match entry {
                    None => {
                        let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    }
                    Some((body, mode)) => {
                        let partial = range_start > 0;
                        let slice = &body[range_start.min(body.len())..];
                        let head = if partial {
                            format!(
                                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {}-{}/{}\r\nConnection: close\r\n\r\n",
                                slice.len(), range_start, body.len() - 1, body.len()
                            )
                        } else {
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", slice.len())
                        };
                        let _ = s.write_all(head.as_bytes());
                        let n = match mode {
                            Mode::TruncateAt(k) if !partial => k.min(slice.len()),
                            _ => slice.len(),
                        };
                        let _ = s.write_all(&slice[..n]);
                        let _ = s.flush();
                    }
                }
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        });
        Server { base, files, ranges }
    }

    fn serve(&self, path: &str, body: Vec<u8>, mode: Mode) {
        self.files.lock().unwrap().insert(path.to_string(), (body, mode));
    }
}

fn md5_hex(b: &[u8]) -> String {
    let mut h = Md5::new();
    h.update(b);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A .tar.gz with `top/hello.txt` and `top/sub/data.bin`.
fn archive(top: &str) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, data) in [("hello.txt", b"hello".to_vec()), ("sub/data.bin", (0..50_000u32).map(|i| (i % 251) as u8).collect())] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, format!("{top}/{name}"), &data[..]).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

fn resource(server: &Server, file: &str, md5: String, unpack: Unpack, dest: &str) -> Resource {
    Resource {
        dataset: "test",
        url: format!("{}/{file}", server.base),
        file_name: file.to_string(),
        md5,
        size: None,
        unpack,
        dest: PathBuf::from(dest),
    }
}

#[test]
fn good_archive_is_verified_and_extracted_atomically() {
    let server = Server::start();
    let body = archive("goodset");
    server.serve("/good.tar.gz", body.clone(), Mode::Full);
    let t = TempDir::new("dl-good");
    let res = resource(&server, "good.tar.gz", md5_hex(&body), Unpack::TarGz { top: "goodset" }, "goodset");
    let dest = fetch_resource(t.path(), &res, false).unwrap();
    assert_eq!(std::fs::read_to_string(dest.join("hello.txt")).unwrap(), "hello");
    assert_eq!(std::fs::read(dest.join("sub/data.bin")).unwrap().len(), 50_000);
    // No temporary extraction folders are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".extract"))
        .collect();
    assert!(leftovers.is_empty());
    // Second call: already installed, no network needed.
    server.files.lock().unwrap().clear();
    assert_eq!(fetch_resource(t.path(), &res, false).unwrap(), dest);
}

#[test]
fn truncated_download_fails_then_resumes_with_range() {
    let server = Server::start();
    let body = archive("resumed");
    server.serve("/trunc.tar.gz", body.clone(), Mode::TruncateAt(body.len() / 3));
    let t = TempDir::new("dl-trunc");
    let res = resource(&server, "trunc.tar.gz", md5_hex(&body), Unpack::TarGz { top: "resumed" }, "resumed");
    let e = fetch_resource(t.path(), &res, false).unwrap_err();
    assert!(matches!(e, Error::Download { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&res.url) && msg.contains("place it by hand"), "{msg}");
    assert!(!t.path().join("resumed").exists(), "a failed fetch must not look like a dataset");
    // The rerun asks for the rest only, and succeeds.
    let dest = fetch_resource(t.path(), &res, false).unwrap();
    assert_eq!(std::fs::read_to_string(dest.join("hello.txt")).unwrap(), "hello");
    let ranges = server.ranges.lock().unwrap().clone();
    assert_eq!(ranges, vec![format!("{}-", body.len() / 3)]);
}

#[test]
fn wrong_checksum_is_rejected_and_partial_file_removed() {
    let server = Server::start();
    let body = archive("bad");
    server.serve("/bad.tar.gz", body, Mode::Full);
    let t = TempDir::new("dl-sum");
    let res = resource(&server, "bad.tar.gz", "0".repeat(32), Unpack::TarGz { top: "bad" }, "bad");
    let e = fetch_resource(t.path(), &res, false).unwrap_err();
    assert!(matches!(e, Error::Checksum { .. }), "{e}");
    assert!(e.to_string().contains("checksum mismatch"));
    assert!(!t.path().join(".downloads/bad.tar.gz.part").exists());
    assert!(!t.path().join("bad").exists());
}

#[test]
fn missing_file_and_no_server_name_the_url_and_the_manual_path() {
    let server = Server::start();
    let t = TempDir::new("dl-404");
    let res = resource(&server, "absent.mat", "0".repeat(32), Unpack::File, "svhn/absent.mat");
    let e = fetch_resource(t.path(), &res, false).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("404") && msg.contains(&res.url), "{msg}");
    assert!(msg.contains(&download_path(t.path(), &res).display().to_string()), "{msg}");

    // Nothing listening: the offline case.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let offline = Resource { url: format!("http://127.0.0.1:{port}/x.mat"), ..res.clone() };
    let e = fetch_resource(t.path(), &offline, false).unwrap_err();
    assert!(matches!(e, Error::Download { .. }));
    assert!(e.to_string().contains("expected file: absent.mat"), "{e}");
}

#[test]
fn file_placed_by_hand_is_verified_and_installed_offline() {
    let t = TempDir::new("dl-hand");
    let body = b"pretend this is SVHN".to_vec();
    let res = Resource {
        dataset: "svhn",
        url: "http://127.0.0.1:9/never".into(),
        file_name: "test_32x32.mat".into(),
        md5: md5_hex(&body),
        size: None,
        unpack: Unpack::File,
        dest: PathBuf::from("svhn/test_32x32.mat"),
    };
    let hand = download_path(t.path(), &res);
    std::fs::create_dir_all(hand.parent().unwrap()).unwrap();
    std::fs::write(&hand, &body).unwrap();
    let dest = fetch_resource(t.path(), &res, false).unwrap();
    assert_eq!(std::fs::read(dest).unwrap(), body);
    // A wrong file placed by hand is reported, not used.
    let t2 = TempDir::new("dl-hand2");
    let hand = download_path(t2.path(), &res);
    std::fs::create_dir_all(hand.parent().unwrap()).unwrap();
    std::fs::write(&hand, b"something else").unwrap();
    assert!(matches!(fetch_resource(t2.path(), &res, false), Err(Error::Checksum { .. })));
}

/// The same two files as [`archive`], as a plain .tar or a .zip.
fn archive_as(top: &str, kind: &str) -> Vec<u8> {
    let files = [("hello.txt", b"hello".to_vec()), ("sub/data.bin", (0..50_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>())];
    if kind == "zip" {
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in &files {
            z.start_file(format!("{top}/{name}"), opts).unwrap();
            std::io::Write::write_all(&mut z, data).unwrap();
        }
        return z.finish().unwrap().into_inner();
    }
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in &files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, format!("{top}/{name}"), &data[..]).unwrap();
    }
    tar.into_inner().unwrap()
}

#[test]
fn plain_tar_and_zip_archives_are_verified_and_extracted() {
    // TinyImageNet ships as a .zip, Places365's val_256 as a plain .tar.
    let server = Server::start();
    let t = TempDir::new("dl-zip-tar");
    for (kind, unpack) in [("zip", Unpack::Zip { top: "zipset" }), ("tar", Unpack::Tar { top: "tarset" })] {
        let top = if kind == "zip" { "zipset" } else { "tarset" };
        let body = archive_as(top, kind);
        let file = format!("set.{kind}");
        server.serve(&format!("/{file}"), body.clone(), Mode::Full);
        let res = resource(&server, &file, md5_hex(&body), unpack, &format!("nested/{top}"));
        let dest = fetch_resource(t.path(), &res, false).unwrap();
        assert_eq!(std::fs::read_to_string(dest.join("hello.txt")).unwrap(), "hello", "{kind}");
        assert_eq!(std::fs::read(dest.join("sub/data.bin")).unwrap().len(), 50_000, "{kind}");
    }
    // A corrupt zip is a typed error naming the file.
    let body = b"PK\x03\x04 not really a zip".to_vec();
    server.serve("/broken.zip", body.clone(), Mode::Full);
    let res = resource(&server, "broken.zip", md5_hex(&body), Unpack::Zip { top: "x" }, "broken");
    let e = fetch_resource(t.path(), &res, false).unwrap_err().to_string();
    assert!(e.contains("cannot extract archive") && e.contains("broken.zip"), "{e}");
}

#[test]
fn the_openood_sets_have_urls_and_checksums() {
    for d in ["mnist", "tin", "places365"] {
        let rs = oodnc::data::download::resources(d).unwrap();
        assert!(!rs.is_empty());
        for r in rs {
            assert_eq!(r.md5.len(), 32, "{d}");
            assert!(r.url.starts_with("http"), "{d}");
        }
    }
    assert_eq!(oodnc::data::download::resources("openood").unwrap().len(), 4);
}
