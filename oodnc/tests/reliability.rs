//! Reliability: nothing deletes or overwrites a file oodnc did not write, one
//! writer per run, a config that no longer matches its checkpoints is refused,
//! results merge and never shrink, bad inputs are typed errors naming the file
//! and the fix. Each test reproduces a fault found by a hostile user (issue
//! #13) and failed before its fix. The README's table "Faults and bad inputs"
//! lists them.

mod common;

use common::TempDir;
use oodnc::config::RunConfig;
use oodnc::data::synthetic::{self, SynthConfig};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn oodnc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oodnc")).args(args).env("OODNC_QUIET", "1").env("OODNC_DEVICE", "cpu").output().unwrap()
}

/// `oodnc train --config CFG --run NAME --runs RUNS` in the background.
fn spawn_train(cfg: &Path, name: &str, runs: &Path, piped: bool) -> std::process::Child {
    let io = || if piped { std::process::Stdio::piped() } else { std::process::Stdio::null() };
    Command::new(env!("CARGO_BIN_EXE_oodnc"))
        .args(["train", "--config", s(cfg), "--run", name, "--runs", s(runs)])
        .env("OODNC_QUIET", "1")
        .env("OODNC_DEVICE", "cpu")
        .stdout(io())
        .stderr(io())
        .spawn()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn tiny_synth() -> SynthConfig {
    SynthConfig {
        classes: 10,
        train_per_class: 12,
        test_per_class: 4,
        near_per_class: 4,
        digits_test: 40,
        textures_per_class: 3,
        heldout_per_class: 2,
        seed: 0,
    }
}

fn tiny_config(root: &Path) -> RunConfig {
    let mut c = RunConfig::profile("ci").unwrap();
    c.data.root = root.join("data");
    c.data.synth = tiny_synth();
    c.data.split = oodnc::data::SplitProtocol::Seeded { n_val: 30, seed: 1 };
    c.train.epochs = 2;
    c.train.batch_size = 30;
    c.train.checkpoint_every = 1;
    c.seed = 3;
    c
}

/// A tiny trained run: (runs folder, run folder, config file).
fn trained(t: &TempDir, epochs: i64) -> (PathBuf, PathBuf, String) {
    let mut cfg = tiny_config(t.path());
    cfg.train.epochs = epochs;
    let cfg_path = t.path().join("cfg.toml");
    std::fs::write(&cfg_path, cfg.to_toml().unwrap()).unwrap();
    let runs = t.path().join("runs");
    let o = oodnc(&["train", "--config", cfg_path.to_str().unwrap(), "--run", "r", "--runs", runs.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    (runs.clone(), runs.join("r"), cfg_path.display().to_string())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ------------------------------------------------------------------ data loss

#[test]
fn synth_never_deletes_or_overwrites_files_it_did_not_write() {
    let t = TempDir::new("rel-synth-foreign");
    let root = t.path().join("data");
    std::fs::create_dir_all(root.join("dtd")).unwrap();
    std::fs::create_dir_all(root.join("svhn")).unwrap();
    std::fs::write(root.join("dtd/MY_NOTES.txt"), b"notes").unwrap();
    std::fs::write(root.join("svhn/test_32x32.mat"), b"my real svhn").unwrap();
    let o = oodnc(&["data", "synth", "--root", s(&root), "--train-per-class", "4", "--test-per-class", "2"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("was not written by oodnc"), "{}", text(&o));
    assert_eq!(std::fs::read(root.join("dtd/MY_NOTES.txt")).unwrap(), b"notes");
    assert_eq!(std::fs::read(root.join("svhn/test_32x32.mat")).unwrap(), b"my real svhn");
    // The same through a run of a synthetic profile whose root lacks train.bin.
    let mut cfg = tiny_config(t.path());
    cfg.data.root = root.clone();
    let e = oodnc::train::RunData::load(&cfg).err().unwrap();
    assert!(e.to_string().contains("not written by oodnc"), "{e}");
    assert_eq!(std::fs::read(root.join("dtd/MY_NOTES.txt")).unwrap(), b"notes");
    // A foreign file inside an oodnc-generated root is in the way too.
    let own = t.path().join("own");
    synthetic::generate(&own, &tiny_synth()).unwrap();
    std::fs::write(own.join("dtd/images/banded/mine.jpg"), b"x").unwrap();
    let e = synthetic::generate(&own, &tiny_synth()).err().unwrap();
    assert!(e.to_string().contains("mine.jpg") && e.to_string().contains("in the way"), "{e}");
    assert!(own.join("dtd/images/banded/mine.jpg").exists());
}

#[test]
fn synth_roots_that_are_links_files_or_empty_are_errors_not_deletes() {
    let t = TempDir::new("rel-synth-links");
    let dangling = t.path().join("dangling");
    std::os::unix::fs::symlink(t.path().join("nowhere"), &dangling).unwrap();
    let o = oodnc(&["data", "synth", "--root", s(&dangling)]);
    assert!(!o.status.success());
    assert!(text(&o).contains("not a folder"), "{}", text(&o));
    let file = t.path().join("a-file");
    std::fs::write(&file, b"keep").unwrap();
    let o = oodnc(&["data", "synth", "--root", s(&file)]);
    assert!(!o.status.success() && text(&o).contains("not a folder"), "{}", text(&o));
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    let mut cfg = tiny_config(t.path());
    cfg.data.root = PathBuf::new();
    assert!(matches!(cfg.validate(), Err(oodnc::Error::InvalidParam { .. })));
    // A data root that is a file is named as such (not "File exists (os error 17)").
    let o = oodnc(&["data", "fetch", "--dataset", "svhn", "--root", s(&file)]);
    assert!(text(&o).contains("is a file"), "{}", text(&o));
    let o = oodnc(&["data", "check", "--root", s(&file)]);
    assert!(!o.status.success() && text(&o).contains("is a file"), "{}", text(&o));
    let o = oodnc(&[
        "train",
        "--profile",
        "coursework",
        "--run",
        "x",
        "--runs",
        s(&t.path().join("runs")),
        "--data-root",
        s(&file),
        "--device",
        "cpu",
    ]);
    assert!(!o.status.success() && text(&o).contains("is a file, not a folder"), "{}", text(&o));
}

#[test]
fn a_half_written_or_changed_synthetic_dataset_is_regenerated_whole() {
    let t = TempDir::new("rel-synth-partial");
    let root = t.path().join("data");
    let cfg = tiny_synth();
    synthetic::generate(&root, &cfg).unwrap();
    let train = root.join("cifar-100-binary/train.bin");
    let full = std::fs::read(&train).unwrap();
    let manifest: synthetic::Manifest = serde_json::from_str(&std::fs::read_to_string(root.join(synthetic::MANIFEST)).unwrap()).unwrap();
    assert_eq!(manifest.files.len(), synthetic::planned_files(&cfg).len());
    assert_eq!(synthetic::ensure(&root, &cfg).unwrap(), synthetic::Ensured::Verified);
    // Record-aligned truncation (what a full disk can leave): detected, regenerated.
    std::fs::write(&train, &full[..full.len() / 2 / 3074 * 3074]).unwrap();
    assert_eq!(synthetic::ensure(&root, &cfg).unwrap(), synthetic::Ensured::Generated);
    assert_eq!(std::fs::read(&train).unwrap(), full);
    // A generation that stopped half-way (partial marker, no manifest).
    std::fs::remove_file(root.join(synthetic::MANIFEST)).unwrap();
    std::fs::write(root.join(synthetic::PARTIAL), serde_json::to_string(&cfg).unwrap()).unwrap();
    std::fs::remove_file(root.join("svhn/test_32x32.mat")).unwrap();
    assert_eq!(synthetic::ensure(&root, &cfg).unwrap(), synthetic::Ensured::Generated);
    assert!(!root.join(synthetic::PARTIAL).exists() && root.join("svhn/test_32x32.mat").exists());
    // A run needing other sizes is refused, not silently served other data.
    let mut other = cfg.clone();
    other.train_per_class = 5;
    let e = synthetic::ensure(&root, &other).err().unwrap();
    assert!(e.to_string().contains("generated with"), "{e}");
    // Errors on a synthetic root advise regenerating, never fetching real data into it.
    std::fs::remove_file(root.join("svhn/test_32x32.mat")).unwrap();
    let e = oodnc::data::svhn::load_svhn(&root, oodnc::data::Part::Test).err().unwrap();
    assert!(e.to_string().contains("oodnc data synth") && !e.to_string().contains("data fetch --dataset"), "{e}");
    let o = oodnc(&["data", "fetch", "--dataset", "svhn", "--root", s(&root)]);
    assert!(!o.status.success() && text(&o).contains("embedded (synthetic) dataset"), "{}", text(&o));
    // Regenerating the same sizes through the CLI when up to date writes nothing.
    synthetic::generate(&root, &cfg).unwrap();
    let o = oodnc(&["data", "synth", "--root", s(&root), "--train-per-class", "12", "--test-per-class", "4"]);
    assert!(o.status.success(), "{}", text(&o));
}

// ------------------------------------------------------------------ runs

#[test]
fn a_second_writer_of_a_run_gets_an_error_naming_the_holder() {
    let t = TempDir::new("rel-lock");
    let (runs, run, cfg) = trained(&t, 1);
    let c = RunConfig::read(&cfg).unwrap();
    let mut more = c.clone();
    more.train.epochs = 2;
    let holder = oodnc::train::Trainer::open_with(more, &run, tch::Device::Cpu, oodnc::run::Allow { more_epochs: true }).unwrap();
    let o = oodnc(&["train", "--run", "r", "--runs", s(&runs), "--resume", "--epochs", "2", "--extend"]);
    assert!(!o.status.success());
    let msg = text(&o);
    assert!(msg.contains("is busy") && msg.contains(&format!("process {}", std::process::id())), "{msg}");
    drop(holder);
    // The table writers take their own lock.
    let tables = oodnc::run::RunLock::acquire(&run, oodnc::run::LockKind::Tables).unwrap();
    let o = oodnc(&["ood", "--run", "r", "--runs", s(&runs), "--detectors", "msp", "--bootstrap", "0"]);
    assert!(!o.status.success() && text(&o).contains("writing result tables"), "{}", text(&o));
    drop(tables);
    // Released: training goes on.
    let o = oodnc(&["train", "--run", "r", "--runs", s(&runs), "--resume", "--epochs", "2", "--extend"]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn readers_see_only_complete_checkpoints_while_training() {
    let t = TempDir::new("rel-readers");
    let mut cfg = tiny_config(t.path());
    cfg.train.epochs = 6;
    let p = t.path().join("cfg.toml");
    std::fs::write(&p, cfg.to_toml().unwrap()).unwrap();
    // The data first, so the reader starts while epochs are being written.
    oodnc::train::RunData::load(&cfg).unwrap();
    let runs = t.path().join("runs");
    let mut child = spawn_train(&p, "w", &runs, false);
    let run = runs.join("w");
    let mut reads = 0;
    while child.try_wait().unwrap().is_none() {
        for e in oodnc::train::trainer::available_epochs(&run).unwrap_or_default() {
            match oodnc::tensor_io::load(oodnc::train::trainer::checkpoint_path(&run, e)) {
                Ok(_) => reads += 1,
                // The previous best checkpoint may be removed between listing and reading.
                Err(oodnc::Error::Missing { .. }) => {}
                Err(e) => panic!("a reader saw an incomplete checkpoint: {e}"),
            }
        }
    }
    assert!(child.wait().unwrap().success());
    assert!(reads > 0);
}

#[test]
fn an_edited_config_is_refused_by_resume_and_every_analysis() {
    let t = TempDir::new("rel-config");
    let (runs, run, _) = trained(&t, 2);
    let cfg_path = run.join("config.toml");
    let good = std::fs::read_to_string(&cfg_path).unwrap();
    let edit = good.replace("lr = 0.05", "lr = 0.2");
    assert_ne!(edit, good);
    std::fs::write(&cfg_path, &edit).unwrap();
    for args in [
        vec!["train", "--run", "r", "--resume"],
        vec!["ood", "--run", "r", "--detectors", "msp", "--bootstrap", "0"],
        vec!["nc", "--run", "r"],
        vec!["extract", "--run", "r"],
    ] {
        let mut a = args.clone();
        a.extend(["--runs", s(&runs)]);
        let o = oodnc(&a);
        assert!(!o.status.success(), "{args:?}");
        let m = text(&o);
        assert!(m.contains("no longer matches") && m.contains("train.lr: 0.05 in the checkpoint, 0.2 now"), "{args:?}: {m}");
    }
    // An edited split seed (it changes every OOD number) is named too.
    let seed = good.replace("seed = 1\n", "seed = 9\n");
    assert_ne!(seed, good);
    std::fs::write(&cfg_path, &seed).unwrap();
    let e = oodnc::run::read_config(&run).err().unwrap();
    assert!(e.to_string().contains("data.split.seed"), "{e}");
    std::fs::write(&cfg_path, &good).unwrap();
    oodnc::run::read_config(&run).unwrap();
    // Extending the number of epochs needs --extend; the extended run stays readable.
    let o = oodnc(&["train", "--run", "r", "--runs", s(&runs), "--resume", "--epochs", "3"]);
    assert!(!o.status.success() && text(&o).contains("train.epochs") && text(&o).contains("--extend"), "{}", text(&o));
    let o = oodnc(&["train", "--run", "r", "--runs", s(&runs), "--resume", "--epochs", "3", "--extend"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(oodnc::run::read_config(&run).unwrap().train.epochs, 3);
    assert_eq!(oodnc::train::History::read(run.join("history.csv")).unwrap().records.len(), 3);
}

#[test]
fn a_diverging_run_stops_with_an_error_and_writes_nothing_of_that_epoch() {
    let t = TempDir::new("rel-nan");
    let cfg = tiny_config(t.path());
    let run = t.path().join("runs/nan");
    let data = oodnc::train::RunData::load(&cfg).unwrap();
    let mut tr = oodnc::train::Trainer::open(cfg, &run, tch::Device::Cpu).unwrap();
    for (_, mut v) in tr.vs.variables() {
        if v.dim() == 4 {
            tch::no_grad(|| {
                let _ = v.fill_(f64::NAN);
            });
            break;
        }
    }
    match tr.fit(&data, None) {
        Err(oodnc::Error::Diverged { epoch, batch, .. }) => assert_eq!((epoch, batch), (1, 1)),
        other => panic!("{:?}", other.map(|o| o.epochs_done)),
    }
    assert!(!run.join("checkpoints/epoch_001.safetensors").exists());
    assert!(!run.join("history.csv").exists());
    let e = oodnc::Error::Diverged { run: run.clone(), epoch: 1, batch: 1, value: "NaN".into() };
    assert!(e.to_string().contains("train.lr"));
    // Absurd hyperparameters are refused before anything is written.
    let cfg_path = t.path().join("bad.toml");
    let mut bad = tiny_config(t.path());
    bad.train.weight_decay = f64::INFINITY;
    std::fs::write(&cfg_path, bad.to_toml().unwrap()).unwrap();
    let o = oodnc(&["train", "--config", s(&cfg_path), "--run", "b", "--runs", s(&t.path().join("runs"))]);
    assert!(!o.status.success() && text(&o).contains("train.weight_decay"), "{}", text(&o));
    assert!(!t.path().join("runs/b").exists());
}

#[test]
fn absurd_epoch_counts_are_refused_before_anything_is_written() {
    let t = TempDir::new("rel-epochs");
    let runs = t.path().join("runs");
    for n in ["1000000000", "9223372036854775807"] {
        let o = oodnc(&["train", "--profile", "ci", "--run", "big", "--runs", s(&runs), "--epochs", n]);
        assert!(!o.status.success());
        assert!(text(&o).contains("train.epochs"), "{}", text(&o));
    }
    assert!(!runs.join("big").exists(), "a refused run must leave nothing behind");
}

#[test]
fn results_are_merged_never_shrunk() {
    let t = TempDir::new("rel-merge");
    let (runs, run, _) = trained(&t, 2);
    let ood = |d: &str, e: &str| oodnc(&["ood", "--run", "r", "--runs", s(&runs), "--detectors", d, "--epochs", e, "--bootstrap", "0"]);
    let o = ood("msp,energy", "1,2");
    assert!(o.status.success(), "{}", text(&o));
    let csv = run.join("ood/metrics.csv");
    let before = std::fs::read_to_string(&csv).unwrap();
    let o = ood("maxlogit", "2");
    assert!(o.status.success(), "{}", text(&o));
    let after = std::fs::read_to_string(&csv).unwrap();
    for (d, e) in [("msp", 1), ("msp", 2), ("energy", 1), ("energy", 2), ("maxlogit", 2)] {
        for p in ["jigsaw", "heldout", "defaults", "oracle"] {
            assert!(after.lines().any(|l| l.starts_with(&format!("{e},{p},{d},"))), "{p} {d} at {e} lost:\n{after}");
        }
    }
    assert!(after.lines().count() > before.lines().count());
    // Recomputing replaces the same rows instead of duplicating them.
    let o = ood("maxlogit", "2");
    assert!(o.status.success());
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), after);
    let sel: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(run.join("ood/selection.json")).unwrap()).unwrap();
    let names: Vec<String> = sel.iter().map(|v| format!("{}:{}", v["epoch"], v["detector"].as_str().unwrap())).collect();
    assert!(names.contains(&"1:msp".to_string()) && names.contains(&"2:maxlogit".to_string()), "{names:?}");
    // Per-sample scores: one row per (detector, dataset, sample); an existing file is not overwritten.
    let scores = t.path().join("scores.csv");
    let with_scores = |d: &str| {
        oodnc(&["ood", "--run", "r", "--runs", s(&runs), "--detectors", d, "--epochs", "2", "--bootstrap", "0", "--scores", s(&scores)])
    };
    let o = with_scores("msp,energy");
    assert!(o.status.success(), "{}", text(&o));
    let lines: Vec<String> = std::fs::read_to_string(&scores).unwrap().lines().map(String::from).collect();
    assert_eq!(lines[0], "run,epoch,detector,protocol,dataset,index,score");
    let cfg = RunConfig::read(run.join("config.toml")).unwrap();
    let sets = oodnc::data::protocol::load_eval_sets(&cfg).unwrap();
    let per_detector = sets.id_test.len() + sets.ood.iter().map(|d| d.len()).sum::<usize>();
    // Every protocol's scores; one row per (detector, dataset, sample) under each.
    for p in ["jigsaw", "heldout", "defaults"] {
        assert_eq!(lines.iter().filter(|l| l.contains(&format!(",{p},"))).count(), 2 * per_detector, "{p}");
    }
    assert!(lines.iter().filter(|l| l.contains(",oracle,")).count() >= 2 * per_detector);
    assert!(lines[1].starts_with("r,2,msp,jigsaw,id-test,0,"), "{}", lines[1]);
    let o = with_scores("msp");
    assert!(!o.status.success() && text(&o).contains("does not overwrite"), "{}", text(&o));
    let after = std::fs::read_to_string(&csv).unwrap();
    // An empty or unknown selection is refused before the table is touched.
    for bad in ["", "nope"] {
        let o = ood(bad, "2");
        assert!(!o.status.success(), "{bad:?}");
    }
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), after);
    // NC tables merge across calls too.
    let nc = |e: &str| oodnc(&["nc", "--run", "r", "--runs", s(&runs), "--epochs", e]);
    assert!(nc("1").status.success());
    assert!(nc("2").status.success());
    let nc_csv = std::fs::read_to_string(run.join("nc/metrics.csv")).unwrap();
    assert!(nc_csv.lines().any(|l| l.starts_with("1,")) && nc_csv.lines().any(|l| l.starts_with("2,")), "{nc_csv}");
    let tp: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("nc/terminal_phase.json")).unwrap()).unwrap();
    assert_eq!(tp["train_accuracy_by_epoch"].as_array().unwrap().len(), 2);
    // A table that cannot be read is named, and left as it is.
    std::fs::write(&csv, "not,a\nresults table with \"unbalanced quotes\n").unwrap();
    let o = ood("msp", "2");
    assert!(!o.status.success() && text(&o).contains("metrics.csv"), "{}", text(&o));
    assert!(std::fs::read_to_string(&csv).unwrap().starts_with("not,a"));
}

// ------------------------------------------------------------------ inputs

#[test]
fn unknown_config_keys_are_refused_with_the_closest_name() {
    let t = TempDir::new("rel-keys");
    let good = tiny_config(t.path()).to_toml().unwrap();
    let p = t.path().join("typo.toml");
    std::fs::write(&p, good.replace("precision =", "precison =")).unwrap();
    let o = oodnc(&["train", "--config", s(&p), "--run", "x", "--runs", s(&t.path().join("runs"))]);
    assert!(!o.status.success());
    assert!(text(&o).contains("did you mean `train.precision`"), "{}", text(&o));
    assert!(text(&o).contains("typo.toml"));
}

#[test]
fn data_check_is_as_strict_as_the_loaders() {
    let t = TempDir::new("rel-check");
    let root = t.path().join("data");
    synthetic::generate(&root, &tiny_synth()).unwrap();
    let check = || {
        let o = oodnc(&["data", "check", "--root", s(&root)]);
        (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let (ok, out) = check();
    assert!(ok, "{out}");
    // A record-aligned truncated train.bin: counts and checksums disagree with the manifest.
    let train = root.join("cifar-100-binary/train.bin");
    let full = std::fs::read(&train).unwrap();
    std::fs::write(&train, &full[..60 * 3074]).unwrap();
    let (ok, out) = check();
    assert!(!ok && out.contains("INVALID cifar100 train") && out.contains("60 images but the manifest records 120"), "{out}");
    std::fs::write(&train, &full).unwrap();
    // A broken JPEG in DTD (truncated half-way) is found, and labelled INVALID, not MISSING.
    let jpg = root.join("dtd/images/banded/banded_0000.jpg");
    let bytes = std::fs::read(&jpg).unwrap();
    std::fs::write(&jpg, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, out) = check();
    assert!(!ok && out.contains("INVALID dtd images") && out.contains("truncated JPEG"), "{out}");
    std::fs::write(&jpg, &bytes).unwrap();
    // SVHN with X stored as double, and with no images.
    let svhn = oodnc::data::svhn::path(&root, oodnc::data::Part::Test);
    let orig = std::fs::read(&svhn).unwrap();
    oodnc::data::mat::write_mat(
        &svhn,
        &[
            ("X", vec![32, 32, 3, 1], oodnc::data::mat::MatData::F64(&vec![0.5; 3072])),
            ("y", vec![1, 1], oodnc::data::mat::MatData::F64(&[1.0])),
        ],
        false,
    )
    .unwrap();
    let (ok, out) = check();
    assert!(!ok && out.contains("INVALID svhn test") && out.contains("double"), "{out}");
    oodnc::data::svhn::write_svhn(&svhn, &[], &[], false).unwrap();
    let (ok, out) = check();
    assert!(!ok && out.contains("INVALID svhn test") && out.contains("no images"), "{out}");
    std::fs::write(&svhn, &orig).unwrap();
    let (ok, out) = check();
    assert!(ok, "{out}");
}

#[test]
fn truncated_jpegs_are_errors_everywhere() {
    let t = TempDir::new("rel-jpeg");
    let img = image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([(x * 6) as u8, (y * 8) as u8, 90]));
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90).encode_image(&img).unwrap();
    assert!(oodnc::data::image_folder::jpeg_is_complete(&bytes));
    let p = t.path().join("x.jpg");
    std::fs::write(&p, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let e = oodnc::data::image_folder::decode_to_chw(&p, Default::default()).err().unwrap();
    assert!(e.to_string().contains("truncated JPEG") && e.to_string().contains("x.jpg"), "{e}");
    // Trailing bytes after the end marker are fine.
    let mut padded = bytes.clone();
    padded.extend_from_slice(&[0, 0, 0]);
    std::fs::write(&p, &padded).unwrap();
    oodnc::data::image_folder::decode_to_chw(&p, Default::default()).unwrap();
}

#[test]
fn dtd_lists_cannot_escape_the_images_folder() {
    let t = TempDir::new("rel-dtd");
    let root = t.path().join("data");
    synthetic::generate(&root, &tiny_synth()).unwrap();
    std::fs::write(t.path().join("secret.jpg"), b"x").unwrap();
    let list = root.join("dtd/labels/test1.txt");
    let mut text = std::fs::read_to_string(&list).unwrap();
    text.push_str("banded/../../../../secret.jpg\n");
    std::fs::write(&list, text).unwrap();
    let e = oodnc::data::dtd::list(&root, oodnc::data::dtd::DtdSplit::TEST1).err().unwrap();
    assert!(e.to_string().contains("test1.txt") && e.to_string().contains("'..'"), "{e}");
}

#[test]
fn the_feature_cache_is_verified_and_serves_fewer_taps() {
    let t = TempDir::new("rel-cache");
    let (_, run, cfg) = trained(&t, 1);
    let cfg = RunConfig::read(&cfg).unwrap();
    let sets = oodnc::data::protocol::load_eval_sets(&cfg).unwrap();
    let d = &sets.id_test;
    let cpu = tch::Device::Cpu;
    let plain = oodnc::features::ExtractOptions::default();
    let taps = oodnc::features::ExtractOptions { taps: true, pool2x2: false };
    let fresh = oodnc::features::cached(&run, 1, d, plain, cpu).unwrap();
    let path = oodnc::features::cache_path(&run, 1, &d.name);
    // Shifted labels in the cache file: the checksum catches it, the cache is rebuilt.
    let mut l = oodnc::tensor_io::load(&path).unwrap();
    let mut tensors: Vec<(String, tch::Tensor)> = l.tensors.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
    for (k, v) in tensors.iter_mut() {
        if k == "labels" {
            *v = v.roll([1], [0]);
        }
    }
    oodnc::tensor_io::save(&path, &tensors, &l.metadata).unwrap();
    let again = oodnc::features::cached(&run, 1, d, plain, cpu).unwrap();
    assert!(again.labels.equal(&fresh.labels) && again.penultimate.equal(&fresh.penultimate));
    // NaN written into the cache with a matching key: rebuilt too.
    let pen = l.take(&path, "penultimate").unwrap().fill_(f64::NAN);
    let mut tensors: Vec<(String, tch::Tensor)> = l.tensors.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
    tensors.push(("penultimate".into(), pen));
    oodnc::tensor_io::save(&path, &tensors, &l.metadata).unwrap();
    let again = oodnc::features::cached(&run, 1, d, plain, cpu).unwrap();
    assert!(again.penultimate.equal(&fresh.penultimate));
    // Taps: a request with taps adds them; a later request without taps is served from that file.
    let with = oodnc::features::cached(&run, 1, d, taps, cpu).unwrap();
    assert_eq!(with.taps.len(), 9);
    let stamp = std::fs::read(&path).unwrap();
    let without = oodnc::features::cached(&run, 1, d, plain, cpu).unwrap();
    assert!(without.taps.is_empty() && without.penultimate.equal(&fresh.penultimate));
    assert_eq!(std::fs::read(&path).unwrap(), stamp, "a cache with more taps must serve a request for fewer");
    let with2 = oodnc::features::cached(&run, 1, d, taps, cpu).unwrap();
    assert_eq!(with2.taps.len(), 9);
    assert_eq!(std::fs::read(&path).unwrap(), stamp);
}

#[test]
fn a_nan_checkpoint_is_named_in_the_error() {
    let t = TempDir::new("rel-nan-ckpt");
    let (_, run, cfg) = trained(&t, 1);
    let cfg = RunConfig::read(&cfg).unwrap();
    let ckpt = oodnc::train::trainer::checkpoint_path(&run, 1);
    let mut l = oodnc::tensor_io::load(&ckpt).unwrap();
    let mut tensors: Vec<(String, tch::Tensor)> = l.tensors.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
    let name = tensors.iter().find(|(k, _)| k.ends_with("fc.weight")).unwrap().0.clone();
    tensors.retain(|(k, _)| *k != name);
    tensors.push((name.clone(), l.take(&ckpt, &name).unwrap().fill_(f64::NAN)));
    oodnc::tensor_io::save(&ckpt, &tensors, &l.metadata).unwrap();
    let sets = oodnc::data::protocol::load_eval_sets(&cfg).unwrap();
    let e = oodnc::features::cached(&run, 1, &sets.id_test, Default::default(), tch::Device::Cpu).err().unwrap();
    let m = e.to_string();
    assert!(m.contains("epoch 1") && m.contains("epoch_001.safetensors") && m.contains("diverge"), "{m}");
}

#[test]
fn run_names_epochs_and_flags_are_checked() {
    let t = TempDir::new("rel-paths");
    let (runs, run, _) = trained(&t, 1);
    for bad in ["", "/abs", "../..", ".", "a/b"] {
        let o = oodnc(&["train", "--profile", "ci", "--run", bad, "--runs", s(&runs), "--epochs", "1"]);
        assert!(!o.status.success() && text(&o).contains("--run"), "{bad:?}: {}", text(&o));
        let o = oodnc(&["ood", "--run", bad, "--runs", s(&runs)]);
        assert!(!o.status.success() && text(&o).contains("run name"), "{bad:?}: {}", text(&o));
    }
    assert_eq!(std::fs::read_dir(&runs).unwrap().count(), 1, "nothing written next to the run");
    let o = oodnc(&["train", "--profile", "ci", "--run", "x", "--runs", s(&runs), "--stop-after=-3"]);
    assert!(!o.status.success() && text(&o).contains("stop-after"), "{}", text(&o));
    let o = oodnc(&["train", "--run", "missing", "--runs", s(&runs), "--resume"]);
    assert!(!o.status.success() && text(&o).contains("to resume"), "{}", text(&o));
    assert!(!runs.join("missing").exists());
    let o = oodnc(&["nc", "--run", "r", "--runs", s(&runs), "--pool2x2"]);
    assert!(!o.status.success() && text(&o).contains("--layers"), "{}", text(&o));
    // A checkpoint named without the zero padding is named in the error, with the fix.
    std::fs::copy(run.join("checkpoints/epoch_001.safetensors"), run.join("checkpoints/epoch_7.safetensors")).unwrap();
    let o = oodnc(&["ood", "--run", "r", "--runs", s(&runs), "--detectors", "msp", "--bootstrap", "0"]);
    assert!(!o.status.success() && text(&o).contains("epoch_7.safetensors") && text(&o).contains("epoch_007.safetensors"), "{}", text(&o));
    std::fs::remove_file(run.join("checkpoints/epoch_7.safetensors")).unwrap();
    let o = oodnc(&["ood", "--run", "r", "--runs", s(&runs), "--epochs", "5", "--detectors", "msp"]);
    assert!(!o.status.success() && text(&o).contains("no checkpoint of epoch 5"), "{}", text(&o));
}

#[test]
fn temp_files_of_dead_writers_are_removed_when_a_run_is_opened() {
    let t = TempDir::new("rel-temps");
    let (_, run, cfg) = trained(&t, 1);
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = run.join(format!("checkpoints/.epoch_002.safetensors.tmp-{dead}"));
    let live = run.join(format!(".history.csv.tmp-{}", std::process::id()));
    let notes = run.join("notes.tmp-1");
    for p in [&stale, &live, &notes] {
        std::fs::write(p, b"x").unwrap();
    }
    let mut c = RunConfig::read(&cfg).unwrap();
    c.train.epochs = 2;
    let tr = oodnc::train::Trainer::open_with(c, &run, tch::Device::Cpu, oodnc::run::Allow { more_epochs: true }).unwrap();
    assert!(!stale.exists(), "a dead writer's temp file is removed");
    assert!(live.exists() && notes.exists(), "a live writer's temp file and other files are kept");
    drop(tr);
}

#[test]
fn ctrl_c_says_how_to_resume() {
    let t = TempDir::new("rel-sigint");
    let mut cfg = tiny_config(t.path());
    cfg.train.epochs = 200;
    let p = t.path().join("cfg.toml");
    std::fs::write(&p, cfg.to_toml().unwrap()).unwrap();
    let runs = t.path().join("runs");
    let child = spawn_train(&p, "c", &runs, true);
    let hist = runs.join("c/history.csv");
    let t0 = std::time::Instant::now();
    while !hist.exists() && t0.elapsed() < std::time::Duration::from_secs(120) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(hist.exists());
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(msg.contains("interrupted") && msg.contains("--resume") && msg.contains("--run c"), "{msg}");
}
