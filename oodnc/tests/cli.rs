//! The command line on the embedded dataset: synth, check, info, errors.

mod common;

use common::TempDir;
use std::process::Command;

fn oodnc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_oodnc")).args(args).env("OODNC_QUIET", "1").output().unwrap()
}

#[test]
fn synth_then_check_reports_every_split() {
    let t = TempDir::new("cli-data");
    let root = t.path().join("synthetic");
    let out = oodnc(&["data", "synth", "--root", root.to_str().unwrap(), "--train-per-class", "8", "--test-per-class", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = oodnc(&["data", "check", "--root", root.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("cifar100 train") && text.contains("80 images, 10 classes"), "{text}");
    assert!(text.contains("svhn test") && text.contains("dtd partitions"), "{text}");
    // A missing dataset makes check fail and say so.
    std::fs::remove_file(root.join("svhn/test_32x32.mat")).unwrap();
    let out = oodnc(&["data", "check", "--root", root.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("MISSING svhn test"));
}

#[test]
fn info_and_clear_errors() {
    let out = oodnc(&["info", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tch_version"], "0.26.0");
    assert!(v["libtorch_version"].as_str().unwrap_or("").starts_with("2.13.0"), "{v}");
    let out = oodnc(&["data", "fetch", "--dataset", "imagenet"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown dataset 'imagenet'"));
    let out = oodnc(&["ood", "--run", "does-not-exist", "--runs", "/nonexistent"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("train first"));
}
