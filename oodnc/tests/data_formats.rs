//! Loaders against fixture files written in the real formats, and bad input.

mod common;

use common::{run_python, TempDir};
use oodnc::data::cifar::{self, Variant};
use oodnc::data::dtd::{self, DtdKind, DtdSplit};
use oodnc::data::image_folder::{load_image_folder, Resize};
use oodnc::data::mat::{write_mat, MatData};
use oodnc::data::{svhn, Part};
use oodnc::Error;
use tch::Kind;

fn px(img: &tch::Tensor, n: i64, c: i64, y: i64, x: i64) -> i64 {
    img.int64_value(&[n, c, y, x])
}

#[test]
fn cifar100_records_by_hand() {
    let t = TempDir::new("c100");
    let dir = t.path().join("cifar-100-binary");
    std::fs::create_dir_all(&dir).unwrap();
    // Two records written byte by byte: coarse, fine, R plane, G plane, B plane.
    let mut bytes = Vec::new();
    for (coarse, fine, base) in [(3u8, 2u8, 10u8), (0, 0, 20)] {
        bytes.push(coarse);
        bytes.push(fine);
        for c in 0..3u8 {
            for i in 0..1024usize {
                bytes.push(base + c * 50 + (i % 7) as u8);
            }
        }
    }
    std::fs::write(dir.join("train.bin"), &bytes).unwrap();
    std::fs::write(dir.join("fine_label_names.txt"), "apple\nbee\ncan\n\n").unwrap();
    let ds = cifar::load_cifar100(t.path(), Part::Train).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.class_names, vec!["apple", "bee", "can"]);
    assert_eq!(Vec::<i64>::try_from(&ds.labels).unwrap(), vec![2, 0]);
    assert_eq!(ds.images.kind(), Kind::Uint8);
    assert_eq!(px(&ds.images, 0, 0, 0, 0), 10);
    assert_eq!(px(&ds.images, 0, 1, 0, 0), 60);
    assert_eq!(px(&ds.images, 0, 2, 0, 1), 111);
    assert_eq!(px(&ds.images, 1, 0, 1, 0), 20 + (32 % 7));
}

#[test]
fn cifar10_writer_round_trip_over_five_batches() {
    let t = TempDir::new("c10");
    let n = 12;
    let pixels: Vec<u8> = (0..n * 3072).map(|i| (i * 7 % 256) as u8).collect();
    let labels: Vec<i64> = (0..n as i64).map(|i| i % 10).collect();
    let names: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    cifar::write(t.path(), Variant::Cifar10, Part::Train, &pixels, &labels, &names).unwrap();
    for i in 1..=5 {
        assert!(t.path().join(format!("cifar-10-batches-bin/data_batch_{i}.bin")).exists());
    }
    let ds = cifar::load_cifar10(t.path(), Part::Train).unwrap();
    assert_eq!(Vec::<i64>::try_from(&ds.labels).unwrap(), labels);
    let back: Vec<u8> = Vec::<u8>::try_from(ds.images.flatten(0, -1)).unwrap();
    assert_eq!(back, pixels);
    assert_eq!(ds.class_counts().iter().sum::<i64>(), n as i64);
}

#[test]
fn cifar_bad_inputs_are_typed_errors() {
    let t = TempDir::new("c100bad");
    // Missing: the error points at `oodnc data fetch`.
    let e = cifar::load_cifar100(t.path(), Part::Test).unwrap_err();
    assert!(matches!(e, Error::Missing { .. }), "{e}");
    assert!(e.to_string().contains("oodnc data fetch"), "{e}");

    let dir = t.path().join("cifar-100-binary");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("fine_label_names.txt"), "a\nb\n").unwrap();
    // Truncated record.
    std::fs::write(dir.join("test.bin"), vec![0u8; 3074 + 100]).unwrap();
    let e = cifar::load_cifar100(t.path(), Part::Test).unwrap_err();
    assert!(matches!(e, Error::Format { .. }) && e.to_string().contains("test.bin"), "{e}");
    assert!(e.to_string().contains("not a multiple"), "{e}");
    // Label out of range.
    let mut rec = vec![0u8; 3074];
    rec[1] = 7;
    std::fs::write(dir.join("test.bin"), &rec).unwrap();
    let e = cifar::load_cifar100(t.path(), Part::Test).unwrap_err();
    assert!(e.to_string().contains("label 7 outside 0..2"), "{e}");
    // Empty file.
    std::fs::write(dir.join("test.bin"), b"").unwrap();
    assert!(matches!(cifar::load_cifar100(t.path(), Part::Test), Err(Error::Format { .. })));
    // Wrong variant: a CIFAR-10 file (3073-byte records) read as CIFAR-100.
    std::fs::write(dir.join("test.bin"), vec![0u8; 3073 * 2]).unwrap();
    assert!(cifar::load_cifar100(t.path(), Part::Test).is_err());
}

#[test]
fn svhn_mat_column_major_layout_and_label_10() {
    let t = TempDir::new("svhn");
    let n = 3;
    // Build X in MATLAB order by hand: X(h, w, c, n) at h + 32w + 1024c + 3072n.
    let mut x = vec![0u8; 3072 * n];
    x[1 + 32 * 2] = 200; // h=1, w=2, c=0, n=0
    x[5 + 32 * 3 + 1024 * 2 + 3072 * 2] = 99; // h=5, w=3, c=2, n=2
    let y = [10.0, 3.0, 1.0];
    let p = svhn::path(t.path(), Part::Test);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    for compress in [false, true] {
        write_mat(&p, &[("X", vec![32, 32, 3, n], MatData::U8(&x)), ("y", vec![n, 1], MatData::F64(&y))], compress).unwrap();
        let ds = svhn::load_svhn(t.path(), Part::Test).unwrap();
        assert_eq!(Vec::<i64>::try_from(&ds.labels).unwrap(), vec![0, 3, 1]);
        assert_eq!(px(&ds.images, 0, 0, 1, 2), 200);
        assert_eq!(px(&ds.images, 0, 0, 2, 1), 0);
        assert_eq!(px(&ds.images, 2, 2, 5, 3), 99);
    }
}

#[test]
fn svhn_written_by_scipy_is_read() {
    // An independent writer: scipy.io.savemat, compressed like the published files.
    let t = TempDir::new("svhn-scipy");
    let p = svhn::path(t.path(), Part::Train);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    run_python(
        "import sys, numpy as np, scipy.io as sio\n\
         X = np.zeros((32, 32, 3, 4), dtype=np.uint8)\n\
         X[3, 7, 1, 2] = 123\n\
         y = np.array([[10], [1], [9], [5]], dtype=np.uint8)\n\
         sio.savemat(sys.argv[1], {'X': X, 'y': y}, do_compression=True)",
        &[p.to_str().unwrap()],
    );
    let ds = svhn::load_svhn(t.path(), Part::Train).unwrap();
    assert_eq!(Vec::<i64>::try_from(&ds.labels).unwrap(), vec![0, 1, 9, 5]);
    assert_eq!(px(&ds.images, 2, 1, 3, 7), 123);
    assert_eq!(ds.images.sum(Kind::Int64).int64_value(&[]), 123);
}

#[test]
fn svhn_bad_inputs_are_typed_errors() {
    let t = TempDir::new("svhn-bad");
    let p = svhn::path(t.path(), Part::Test);
    assert!(matches!(svhn::load_svhn(t.path(), Part::Test), Err(Error::Missing { .. })));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let x = vec![0u8; 3072 * 2];
    // Wrong variable names.
    write_mat(&p, &[("images", vec![32, 32, 3, 2], MatData::U8(&x))], false).unwrap();
    let e = svhn::load_svhn(t.path(), Part::Test).unwrap_err();
    assert!(e.to_string().contains("no variable 'X'"), "{e}");
    // Wrong dims.
    write_mat(&p, &[("X", vec![64, 48, 1, 2], MatData::U8(&x)), ("y", vec![2, 1], MatData::F64(&[1.0, 2.0]))], false).unwrap();
    assert!(svhn::load_svhn(t.path(), Part::Test).unwrap_err().to_string().contains("expected [32, 32, 3, N]"));
    // Label outside 1..=10.
    write_mat(&p, &[("X", vec![32, 32, 3, 2], MatData::U8(&x)), ("y", vec![2, 1], MatData::F64(&[0.0, 2.0]))], false).unwrap();
    assert!(svhn::load_svhn(t.path(), Part::Test).unwrap_err().to_string().contains("outside 1..=10"));
    // Label count mismatch.
    write_mat(&p, &[("X", vec![32, 32, 3, 2], MatData::U8(&x)), ("y", vec![1, 1], MatData::F64(&[2.0]))], false).unwrap();
    assert!(svhn::load_svhn(t.path(), Part::Test).is_err());
    // Truncated file.
    write_mat(&p, &[("X", vec![32, 32, 3, 2], MatData::U8(&x)), ("y", vec![2, 1], MatData::F64(&[1.0, 2.0]))], true).unwrap();
    let full = std::fs::read(&p).unwrap();
    std::fs::write(&p, &full[..full.len() / 2]).unwrap();
    let e = svhn::load_svhn(t.path(), Part::Test).unwrap_err();
    assert!(matches!(e, Error::Format { .. }) && e.to_string().contains("test_32x32.mat"), "{e}");
    // Not a MAT file at all.
    std::fs::write(&p, b"<html>404 not found</html>").unwrap();
    assert!(matches!(svhn::load_svhn(t.path(), Part::Test), Err(Error::Format { .. })));
}

fn write_jpeg(path: &std::path::Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
    img.save(path).unwrap();
}

fn make_dtd(root: &std::path::Path) {
    let images = root.join("dtd/images");
    // A wide image, left half red, right half blue; and a tall one.
    write_jpeg(&images.join("banded/banded_0001.jpg"), 64, 32, |x, _| if x < 32 { [255, 0, 0] } else { [0, 0, 255] });
    write_jpeg(&images.join("dotted/dotted_0001.jpg"), 40, 90, |_, y| if y < 45 { [0, 255, 0] } else { [0, 0, 0] });
    write_jpeg(&images.join("dotted/dotted_0002.jpg"), 50, 50, |_, _| [128, 128, 128]);
    let labels = root.join("dtd/labels");
    std::fs::create_dir_all(&labels).unwrap();
    std::fs::write(labels.join("test1.txt"), "dotted/dotted_0002.jpg\nbanded/banded_0001.jpg\ndotted/dotted_0001.jpg\n").unwrap();
    std::fs::write(labels.join("train1.txt"), "banded/banded_0001.jpg\n").unwrap();
}

#[test]
fn dtd_partitions_and_both_resizes() {
    let t = TempDir::new("dtd");
    make_dtd(t.path());
    let ds = dtd::load_dtd(t.path(), DtdSplit::TEST1, Resize::ShortSideCenterCrop).unwrap();
    assert_eq!(ds.class_names, vec!["banded", "dotted"]);
    // Order of the list file is kept.
    assert_eq!(Vec::<i64>::try_from(&ds.labels).unwrap(), vec![1, 0, 1]);
    assert_eq!(ds.images.size(), vec![3, 3, 32, 32]);
    // Wide image, short side already 32: centre crop takes columns 16..48,
    // so the left half of the crop is red and the right half blue.
    assert!(px(&ds.images, 1, 0, 16, 2) > 200 && px(&ds.images, 1, 2, 16, 2) < 50);
    assert!(px(&ds.images, 1, 0, 16, 29) < 50 && px(&ds.images, 1, 2, 16, 29) > 200);
    // Squash: the whole width is kept, red on the far left, blue on the far right.
    let sq = dtd::load_dtd(t.path(), DtdSplit::TEST1, Resize::Squash).unwrap();
    assert!(px(&sq.images, 1, 0, 16, 0) > 200 && px(&sq.images, 1, 2, 16, 31) > 200);
    // Tall image: centre crop keeps the middle rows: green above the middle, black below.
    assert!(px(&ds.images, 2, 1, 4, 16) > 200 && px(&ds.images, 2, 1, 28, 16) < 50);
    let tr = dtd::load_dtd(t.path(), DtdSplit { kind: DtdKind::Train, partition: 1 }, Resize::default()).unwrap();
    assert_eq!(tr.len(), 1);
    let all = dtd::load_dtd_all(t.path(), Resize::default()).unwrap();
    assert_eq!(all.len(), 3);
}

#[test]
fn dtd_bad_inputs_are_typed_errors() {
    let t = TempDir::new("dtd-bad");
    assert!(matches!(dtd::load_dtd(t.path(), DtdSplit::TEST1, Resize::default()), Err(Error::Missing { .. })));
    make_dtd(t.path());
    // Missing partition file.
    let val3 = DtdSplit { kind: DtdKind::Val, partition: 3 };
    let e = dtd::load_dtd(t.path(), val3, Resize::default()).unwrap_err();
    assert!(matches!(e, Error::Missing { .. }) && e.to_string().contains("val3.txt"), "{e}");
    // Partition outside 1..=10.
    assert!(matches!(
        dtd::load_dtd(t.path(), DtdSplit { kind: DtdKind::Test, partition: 11 }, Resize::default()),
        Err(Error::InvalidParam { .. })
    ));
    // Unreadable JPEG.
    std::fs::write(t.path().join("dtd/images/dotted/dotted_0002.jpg"), b"not a jpeg at all").unwrap();
    let e = dtd::load_dtd(t.path(), DtdSplit::TEST1, Resize::default()).unwrap_err();
    assert!(matches!(e, Error::Format { .. }) && e.to_string().contains("dotted_0002.jpg"), "{e}");
    // A listed file that does not exist, and an unknown class.
    std::fs::write(t.path().join("dtd/labels/test2.txt"), "dotted/nope.jpg\n").unwrap();
    let e = dtd::load_dtd(t.path(), DtdSplit { kind: DtdKind::Test, partition: 2 }, Resize::default()).unwrap_err();
    assert!(e.to_string().contains("nope.jpg"), "{e}");
    std::fs::write(t.path().join("dtd/labels/test3.txt"), "woven/woven_0001.jpg\n").unwrap();
    let e = dtd::load_dtd(t.path(), DtdSplit { kind: DtdKind::Test, partition: 3 }, Resize::default()).unwrap_err();
    assert!(e.to_string().contains("class 'woven'"), "{e}");
}

#[test]
fn image_folder_reads_classes_and_flat_folders() {
    let t = TempDir::new("folder");
    write_jpeg(&t.path().join("set/b/x.jpg"), 32, 32, |_, _| [10, 20, 30]);
    image::RgbImage::from_pixel(64, 64, image::Rgb([200, 100, 0])).save(t.path().join("set/b/y.png")).ok();
    std::fs::create_dir_all(t.path().join("set/a")).unwrap();
    image::RgbImage::from_pixel(16, 16, image::Rgb([0, 0, 0])).save(t.path().join("set/a/z.png")).unwrap();
    std::fs::write(t.path().join("set/a/readme.txt"), "not an image").unwrap();
    let ds = load_image_folder(t.path().join("set"), "mine", Resize::default()).unwrap();
    assert_eq!(ds.class_names, vec!["a", "b"]);
    assert_eq!(Vec::<i64>::try_from(&ds.labels).unwrap(), vec![0, 1, 1]);
    assert_eq!(px(&ds.images, 2, 0, 5, 5), 200);
    let flat = load_image_folder(t.path().join("set/b"), "flat", Resize::Squash).unwrap();
    assert_eq!(flat.len(), 2);
    assert!(matches!(load_image_folder(t.path().join("none"), "x", Resize::default()), Err(Error::Missing { .. })));
    std::fs::create_dir_all(t.path().join("empty/c")).unwrap();
    assert!(matches!(load_image_folder(t.path().join("empty"), "x", Resize::default()), Err(Error::InvalidData { .. })));
}
