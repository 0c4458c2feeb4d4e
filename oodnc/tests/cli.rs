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

#[test]
fn selftest_command_prints_a_line_per_check_and_refuses_a_missing_cuda() {
    let out = oodnc(&["selftest", "--device", "cpu"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.lines().filter(|l| l.starts_with("PASS ")).count() >= 10, "{text}");
    assert!(!text.contains("FAIL "), "{text}");
    assert!(text.contains("checks passed on Cpu"), "{text}");
    if !oodnc::device::cuda_available() {
        let out = oodnc(&["selftest", "--device", "cuda"]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("CUDA is not available"));
    }
}

/// The sweep recipe end to end with two ci-profile seeds: the SLURM array script
/// run as `sbatch` would run each task (its `#SBATCH` lines are comments to bash),
/// then `oodnc report` over the two runs; a re-run task resumes and changes nothing.
#[test]
fn sweep_recipe_two_ci_seeds_then_report() {
    let t = TempDir::new("cli-sweep");
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let runs = t.path().join("runs");
    let task = |id: &str| {
        Command::new("bash")
            .arg(repo.join("scripts/sweep.slurm"))
            .current_dir(&repo)
            .env("SLURM_SUBMIT_DIR", &repo)
            .env("SLURM_ARRAY_TASK_ID", id)
            .env("OODNC_PROFILE", "ci")
            .env("OODNC_BIN", env!("CARGO_BIN_EXE_oodnc"))
            .env("OODNC_RUNS", &runs)
            .env("OODNC_DATA_ROOT", t.path().join("data"))
            .env("OODNC_BOOTSTRAP", "20")
            .env("OODNC_QUIET", "1")
            .output()
            .unwrap()
    };
    for id in ["0", "1"] {
        let out = task(id);
        assert!(out.status.success(), "task {id}: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    // A requeued task resumes, trains nothing, and its tables keep their rows.
    let csv = runs.join("seed-1/ood/metrics.csv");
    let before = std::fs::read_to_string(&csv).unwrap().lines().count();
    let out = task("1");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), before);
    let summary = t.path().join("seeds.csv");
    let pattern = format!("{}/seed-*", runs.display());
    let out =
        oodnc(&["report", "--runs", &pattern, "--out", summary.to_str().unwrap(), "--figures", t.path().join("fig").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("2 runs (seeds [0, 1])") && text.contains(" ± "), "{text}");
    let df = oodnc::results::read_csv(&summary).unwrap();
    assert!(df.column("run:seed-0").is_ok() && df.column("run:seed-1").is_ok());
    assert!(t.path().join("fig/seed_spread_auroc.png").exists());
    // The summary is never overwritten; a run of another recipe is refused by name.
    let out = oodnc(&["report", "--runs", &pattern, "--out", summary.to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("exists"));
    let cfg_path = runs.join("seed-1/config.toml");
    let other = runs.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("config.toml"), std::fs::read_to_string(&cfg_path).unwrap().replace("lr = 0.05", "lr = 0.07")).unwrap();
    std::fs::create_dir_all(other.join("ood")).unwrap();
    std::fs::copy(&csv, other.join("ood/metrics.csv")).unwrap();
    let out = oodnc(&[
        "report",
        "--runs",
        runs.join("seed-0").to_str().unwrap(),
        other.to_str().unwrap(),
        "--out",
        t.path().join("x.csv").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("train.lr"), "{err}");
}

/// The Python baselines are found without the build's manifest layout being
/// assumed (the torch 2.11 variant's manifest lives under build/), and a
/// missing one is a typed error naming the variable that fixes it.
#[test]
fn baseline_scripts_are_located_or_named_with_the_fix() {
    let p = oodnc::bench::python_script("torch_resnet.py").unwrap();
    assert!(p.is_file(), "{}", p.display());
    let err = oodnc::bench::python_script("no_such_baseline.py").unwrap_err().to_string();
    assert!(err.contains("no_such_baseline.py") && err.contains("OODNC_PYTHON_DIR"), "{err}");
}

/// `bench ood` end to end on tiny sizes (no timing is asserted: timings belong to
/// benchmarks): oodnc's side, the numpy and pytorch-ood baselines answering the
/// per-detector repetitions, one line per baseline, and the repetition rule.
#[test]
fn bench_ood_runs_both_baselines_on_tiny_sizes() {
    assert_eq!(oodnc::bench::reps_for(0.001, 3), 31);
    assert_eq!(oodnc::bench::reps_for(0.125, 3), 5);
    assert_eq!(oodnc::bench::reps_for(2.0, 3), 3);
    assert_eq!(oodnc::bench::reps_for(0.0, 3), 31);
    let lines = oodnc::bench::ood(tch::Device::Cpu, 300, 16, 5, 40, 60, &["maxlogit", "ash_b", "vim", "relation"]).unwrap();
    // Relation's grid: one shared pass against each point alone.
    let grid: Vec<_> = lines.iter().filter(|l| l.name == "ood relation grid of 5, 300 rows").collect();
    assert!(grid.len() == 1 && grid[0].ours > 0.0 && grid[0].baseline > 0.0, "{lines:?}");
    for d in ["maxlogit", "ash_b", "vim"] {
        let ours: Vec<_> = lines.iter().filter(|l| l.name == format!("ood {d} fit+score")).collect();
        assert!(ours.iter().any(|l| l.baseline_name == "numpy/sklearn"), "{d}: {lines:?}");
        assert!(ours.iter().all(|l| l.ours > 0.0 && l.baseline > 0.0), "{d}: {ours:?}");
    }
    // pytorch-ood has MaxLogit, ASH and ViM.
    let peer = lines.iter().filter(|l| l.baseline_name == "pytorch-ood").count();
    assert!(peer >= 3, "{lines:?}");
}

/// `bench ood-model` end to end on a tiny network (no timing asserted): one line
/// per model-based detector against pytorch-ood, and the total.
#[test]
fn bench_ood_model_runs_pytorch_ood_on_a_tiny_network() {
    let lines = oodnc::bench::ood_model(tch::Device::Cpu, 0.125, 10, 40, 20, 1).unwrap();
    let names: Vec<&str> = lines.iter().map(|l| l.name.as_str()).collect();
    for d in ["odin", "rankfeat", "gram", "mahalanobis_noise", "nac"] {
        assert!(names.iter().any(|n| n.starts_with(&format!("ood-model {d}"))), "{d}: {names:?}");
    }
    assert!(names.contains(&"ood-model these 5 (total)"), "{names:?}");
    assert!(lines.iter().all(|l| l.baseline_name == "pytorch-ood" && l.ours > 0.0 && l.baseline > 0.0), "{lines:?}");
}

/// `oodnc detectors` lists every detector, feature-based and model-based, with what it needs.
#[test]
fn detectors_command_lists_every_detector() {
    let out = oodnc(&["detectors"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for name in oodnc::ood::detector_names().into_iter().chain(oodnc::ood::model_detectors::names()) {
        assert!(text.lines().any(|l| l.split_whitespace().next() == Some(name)), "{name} missing:\n{text}");
    }
    let gram = text.lines().find(|l| l.starts_with("gram ")).unwrap();
    assert!(gram.contains("network") && gram.contains("poles"), "{gram}");
    let pnml = text.lines().find(|l| l.starts_with("pnml ")).unwrap();
    assert!(pnml.contains("features"), "{pnml}");
}
