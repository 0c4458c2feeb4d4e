//! The `oodnc` command line.

use clap::{Args, Parser, Subcommand, ValueEnum};
use oodnc::amp::Precision;
use oodnc::config::Toggle;
use oodnc::data::{self, Part};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "oodnc", version, about = "OOD detection and Neural Collapse on CIFAR ResNet-18 (Rust + libtorch)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print versions, the libtorch path, CUDA availability and thread count.
    Info {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Every OOD detector: its name (what --detectors takes), what it needs (the cached
    /// features, or the network and the images), its hyperparameters and what it computes.
    Detectors,
    /// The device-sensitive checks (training step, bf16 autocast, channels-last, fused SGD,
    /// feature extraction, the KNN bank, every detector, checkpoint round trip),
    /// each against the CPU or an independent formulation: one PASS/FAIL line each; exit
    /// status 1 on a failure.
    Selftest {
        /// cpu | cuda (default: the best available).
        #[arg(long, value_enum)]
        device: Option<DeviceArg>,
    },
    /// Download, verify, generate and inspect datasets.
    #[command(subcommand)]
    Data(DataCmd),
    /// Train a ResNet-18 (seeded; resumable; checkpoints and history under runs/NAME).
    Train(TrainArgs),
    /// Extract and cache features of every evaluation set at some checkpoints.
    Extract {
        #[arg(long)]
        run: String,
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
        /// all | last | a comma-separated list (e.g. 25,50)
        #[arg(long, default_value = "all")]
        epochs: String,
        /// Also the stem and the 8 block outputs (for layer-wise NC).
        #[arg(long)]
        taps: bool,
    },
    /// OOD detection: every detector on every OOD set, hyperparameters chosen on held-out data.
    Ood {
        #[arg(long)]
        run: String,
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
        /// all | last | a comma-separated list
        #[arg(long, default_value = "all")]
        epochs: String,
        /// Comma-separated detector names; "all" (every feature-based one) and "seed"
        /// (the original's six) expand. The model-based ones (odin, iodin, rankfeat, gram:
        /// the network runs on every image, slow on a CPU for the full model) only when
        /// named, one by one or as "model", e.g. --detectors all,model.
        #[arg(long, default_value = "all")]
        detectors: String,
        /// Bootstrap replicates for the confidence intervals (0 = none).
        #[arg(long, default_value_t = 200)]
        bootstrap: usize,
        /// Also write every per-sample score of this call (run, epoch, detector, protocol,
        /// dataset, index, score) to this file: Parquet when it ends in `.parquet`, CSV
        /// otherwise (it must not exist yet).
        #[arg(long)]
        scores: Option<PathBuf>,
    },
    /// Neural Collapse NC1-NC5 across checkpoints (and layers with --layers).
    Nc {
        #[arg(long)]
        run: String,
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
        /// all | last | a comma-separated list
        #[arg(long, default_value = "all")]
        epochs: String,
        /// Layer-wise NC (stem, 8 blocks, penultimate).
        #[arg(long)]
        layers: bool,
        /// With --layers: also 2x2 adaptive pooling of the block outputs.
        #[arg(long, requires = "layers")]
        pool2x2: bool,
    },
    /// Neural Collapse meets mechanistic interpretability: probes, class selectivity,
    /// privileged basis, feature dimensionality per layer, and causal subspace ablations
    /// (writes interp/layers.csv and interp/ablation.csv; features with taps, from the cache).
    Interp {
        #[arg(long)]
        run: String,
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
        /// all | last | a comma-separated list
        #[arg(long, default_value = "last")]
        epochs: String,
        /// Detectors re-measured under each ablation (defaults of each).
        #[arg(long, default_value = "msp,energy,knn")]
        detectors: String,
        /// Random rotations in the privileged-basis (kurtosis) test.
        #[arg(long, default_value_t = 8)]
        rotations: usize,
    },
    /// Write every figure of a run (PNG + SVG) to figures/NAME/.
    Figures {
        #[arg(long)]
        run: String,
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
        #[arg(long, default_value = "figures")]
        out: PathBuf,
    },
    /// Mean ± std across runs that differ only in their seed (e.g. --runs 'runs/seed-*'),
    /// next to each run's own bootstrap intervals; reads the runs' tables, writes a CSV
    /// (or Parquet) summary and a figure with the seed spread.
    Report {
        /// Run folders; the last component may hold `*` (quote it so the shell does not expand it, or let it).
        #[arg(long, num_args = 1.., required = true)]
        runs: Vec<String>,
        /// Selection protocol of the OOD rows (default: the runs' headline).
        #[arg(long, value_enum)]
        protocol: Option<oodnc::ood::Protocol>,
        /// Epoch (default: the last one every run has evaluated).
        #[arg(long)]
        epoch: Option<i64>,
        /// Summary table (CSV, or Parquet when it ends in .parquet); must not exist yet.
        #[arg(long, default_value = "seed-summary.csv")]
        out: PathBuf,
        /// Folder for the seed-spread figure (PNG + SVG).
        #[arg(long, default_value = "figures/seeds")]
        figures: PathBuf,
    },
    /// Benchmarks; each prints a ratio against a baseline measured in the same run.
    Bench {
        /// Which benchmark.
        #[arg(value_enum, default_value_t = BenchWhat::All)]
        what: BenchWhat,
        /// Smaller sizes (a quick check; the ratios are then less representative).
        #[arg(long)]
        quick: bool,
        /// Training-step precision: auto (bf16 autocast on CUDA, f32 on CPU).
        #[arg(long, value_enum, default_value_t = Precision::Auto)]
        precision: Precision,
        /// Channels-last layout in the training step: auto (on CUDA).
        #[arg(long, value_enum, default_value_t = Toggle::Auto)]
        channels_last: Toggle,
        /// Timed training steps (median); more on a GPU.
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// Detectors timed by `bench ood`: `all` or a comma-separated list (e.g. knn,she).
        #[arg(long, default_value = "all")]
        detectors: String,
    },
}

#[derive(Args)]
struct TrainArgs {
    /// demo | coursework | ci (default: demo for a new run; with --resume, the run's own config.toml)
    #[arg(long)]
    profile: Option<String>,
    /// A config file (TOML, as written to runs/NAME/config.toml) instead of a profile.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run name (folder under --runs).
    #[arg(long)]
    run: String,
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
    /// Override the number of epochs.
    #[arg(long)]
    epochs: Option<i64>,
    /// Override the seed.
    #[arg(long)]
    seed: Option<u64>,
    /// A linear bottleneck of this width before the classifier (model.bottleneck; notebook 06's
    /// superposition run: e.g. 4 for 10 classes).
    #[arg(long)]
    bottleneck: Option<i64>,
    /// Continue an existing run from its last completed epoch.
    #[arg(long)]
    resume: bool,
    /// With --resume and --epochs: accept a larger train.epochs than the run was
    /// trained with (the one change to a run's config that is allowed).
    #[arg(long, requires = "resume")]
    extend: bool,
    /// Stop after this many completed epochs (the run can be resumed later).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    stop_after: Option<i64>,
    /// Where to train (default: cuda when available).
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Override the data root (where cifar-100-binary/ etc. are).
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Override the precision: auto (bf16 autocast on CUDA, f32 on CPU).
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// Override the layout: auto (channels-last on CUDA).
    #[arg(long, value_enum)]
    channels_last: Option<Toggle>,
}

/// `oodnc bench` targets.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BenchWhat {
    Data,
    Train,
    Ood,
    /// The model-based detectors pytorch-ood has (ODIN, RankFeat, Gram, Mahalanobis with noise, NAC).
    OodModel,
    Nc,
    All,
}

/// `--device` choices.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
}

#[derive(Subcommand)]
enum DataCmd {
    /// Download the real datasets (official URLs, published MD5s, resumable).
    Fetch {
        /// cifar100 | cifar10 | svhn | dtd | all
        #[arg(long, default_value = "all")]
        dataset: String,
        #[arg(long, default_value = "data")]
        root: PathBuf,
    },
    /// Verify what is present under a data root and print counts per split.
    Check {
        #[arg(long, default_value = "data")]
        root: PathBuf,
    },
    /// Generate the embedded procedural dataset in the real formats.
    Synth(SynthArgs),
}

#[derive(Args)]
struct SynthArgs {
    #[arg(long, default_value = "data/synthetic")]
    root: PathBuf,
    /// Number of in-distribution classes (10..=100).
    #[arg(long, default_value_t = 10)]
    classes: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Training images per ID class.
    #[arg(long)]
    train_per_class: Option<usize>,
    /// Test images per ID class (and per near-OOD class).
    #[arg(long)]
    test_per_class: Option<usize>,
}

/// `oodnc data check`: every dataset read by the same loaders the studies use
/// (every image decoded, every label checked), counts compared with the
/// embedded dataset's manifest or with the official counts, and for the
/// embedded dataset every file against its recorded checksum.
fn check(root: &std::path::Path) -> oodnc::Result<bool> {
    use data::dtd::{DtdKind, DtdSplit};
    use data::image_folder::Resize;
    use data::synthetic::{inspect, verify, RootState};
    println!("data root: {}", root.display());
    if root.exists() && !root.is_dir() {
        return Err(oodnc::Error::data("data check", format!("{} is a file, not a data folder", root.display())));
    }
    let mut all_ok = true;
    let mut report = |name: &str, r: oodnc::Result<String>| match r {
        Ok(s) => println!("  ok      {name:<22} {s}"),
        Err(e) => {
            all_ok = false;
            let label = if matches!(e, oodnc::Error::Missing { .. }) { "MISSING" } else { "INVALID" };
            println!("  {label:<7} {name:<22} {e}");
        }
    };
    // Expected counts: the manifest's for the embedded dataset, else the official ones.
    let synth = match inspect(root) {
        Ok(RootState::Complete(m)) => {
            report("embedded manifest", verify(root, &m).map(|_| format!("{} files match their checksums", m.files.len())));
            Some(m.config.clone())
        }
        Ok(RootState::Partial(c)) => {
            report(
                "embedded manifest",
                Err(oodnc::Error::data(
                    "embedded dataset",
                    "incomplete: a generation stopped before it finished; rerun `oodnc data synth` (or any command of its profile)",
                )),
            );
            Some(*c)
        }
        _ => None,
    };
    let expected = |set: &str| -> Option<usize> {
        match &synth {
            Some(c) => Some(match set {
                "cifar100 train" => c.classes * c.train_per_class,
                "cifar100 test" => c.classes * c.test_per_class,
                "cifar10 train" => 10 * c.near_per_class.div_ceil(5).max(1),
                "cifar10 test" => 10 * c.near_per_class,
                "svhn train" => (c.digits_test / 4).max(10),
                "svhn test" => c.digits_test,
                "dtd" => data::synthetic::TEXTURES.len() * c.textures_per_class,
                "dtd list" => data::synthetic::TEXTURES.len() * (c.textures_per_class / 3),
                _ => return None,
            }),
            None => match set {
                "cifar100 train" | "cifar10 train" => Some(50_000),
                "cifar100 test" | "cifar10 test" => Some(10_000),
                "svhn train" => Some(73_257),
                "svhn test" => Some(26_032),
                "dtd" => Some(5_640),
                "dtd list" => Some(1_880),
                _ => None,
            },
        }
    };
    let source = if synth.is_some() { "the manifest records" } else { "the official dataset has" };
    let counted = |set: &str, n: usize, extra: String| -> oodnc::Result<String> {
        match expected(set) {
            Some(e) if e != n => Err(oodnc::Error::data(set, format!("{n} images but {source} {e} (truncated or incomplete?)"))),
            _ => Ok(format!("{n} images{extra}")),
        }
    };
    for (name, v) in [("cifar100", data::cifar::Variant::Cifar100), ("cifar10", data::cifar::Variant::Cifar10)] {
        for part in [Part::Train, Part::Test] {
            let set = format!("{name} {part}");
            report(&set, data::cifar::load(root, v, part).and_then(|d| counted(&set, d.len(), format!(", {} classes", d.num_classes()))));
        }
    }
    for part in [Part::Train, Part::Test] {
        let set = format!("svhn {part}");
        report(&set, data::svhn::load_svhn(root, part).and_then(|d| counted(&set, d.len(), String::new())));
    }
    report(
        "dtd images",
        data::dtd::load_dtd_all(root, Resize::default())
            .and_then(|d| counted("dtd", d.len(), format!(" decoded, {} classes", d.num_classes()))),
    );
    let lists = (|| -> oodnc::Result<String> {
        let mut n = 0;
        for partition in 1..=10u8 {
            for kind in [DtdKind::Train, DtdKind::Val, DtdKind::Test] {
                let split = DtdSplit { kind, partition };
                let (paths, _, _) = data::dtd::list(root, split)?;
                if let Some(e) = expected("dtd list") {
                    if paths.len() != e {
                        return Err(oodnc::Error::data(
                            format!("dtd {}", split.file_name()),
                            format!("lists {} images but {source} {e}", paths.len()),
                        ));
                    }
                }
                n += 1;
            }
        }
        Ok(format!("{n} partition files, every listed image present"))
    })();
    report("dtd partitions", lists);
    Ok(all_ok)
}

extern "C" fn on_sigint(_: libc::c_int) {
    oodnc::train::trainer::INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

fn parse_device(d: Option<DeviceArg>) -> oodnc::Result<tch::Device> {
    match d {
        None => Ok(oodnc::device::best_device()),
        Some(DeviceArg::Cpu) => Ok(tch::Device::Cpu),
        Some(DeviceArg::Cuda) => {
            if oodnc::device::cuda_available() {
                Ok(tch::Device::Cuda(0))
            } else {
                Err(oodnc::Error::param("--device", "cuda requested but CUDA is not available (see `oodnc info`)"))
            }
        }
    }
}

fn train(a: TrainArgs) -> oodnc::Result<()> {
    let run_dir = oodnc::run::run_dir(&a.runs, &a.run)?;
    let cfg_path = run_dir.join(oodnc::run::CONFIG_FILE);
    if a.resume && !cfg_path.exists() {
        return Err(oodnc::Error::Missing {
            what: format!("run '{}' to resume", a.run),
            path: run_dir.clone(),
            hint: "; drop --resume to start it, or check --run / --runs".into(),
        });
    }
    let mut cfg = match (&a.config, &a.profile) {
        (Some(_), Some(_)) => return Err(oodnc::Error::param("--config", "give either --config or --profile, not both")),
        (Some(p), None) => oodnc::config::RunConfig::read(p)?,
        (None, Some(p)) => oodnc::config::RunConfig::profile(p)?,
        (None, None) if a.resume => oodnc::config::RunConfig::read(&cfg_path)?,
        (None, None) => oodnc::config::RunConfig::profile("demo")?,
    };
    if let Some(e) = a.epochs {
        cfg.train.epochs = e;
    }
    if let Some(s) = a.seed {
        cfg.seed = s;
    }
    if let Some(d) = a.bottleneck {
        cfg.model.bottleneck = Some(d);
    }
    if let Some(r) = &a.data_root {
        cfg.data.root = r.clone();
    }
    if let Some(p) = a.precision {
        cfg.train.precision = p;
    }
    if let Some(c) = a.channels_last {
        cfg.train.channels_last = c;
    }
    cfg.validate()?;
    if a.extend && a.epochs.is_none() {
        return Err(oodnc::Error::param("--extend", "needs --epochs N (the new total number of epochs)"));
    }
    let has_state = run_dir.join("state/last.safetensors").exists();
    if has_state && !a.resume {
        return Err(oodnc::Error::param(
            "--run",
            format!("{} already has training state; pass --resume to continue it, or pick another name", run_dir.display()),
        ));
    }
    let device = parse_device(a.device)?;
    // SAFETY: installing a signal handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
    let fast = cfg.train.fast_path(device);
    println!(
        "run {} (profile {}, seed {}, device {device:?}, {}{}{})",
        run_dir.display(),
        cfg.profile,
        cfg.seed,
        if fast.autocast.is_some() { "bf16 autocast" } else { "fp32" },
        if fast.channels_last { ", channels-last" } else { "" },
        if fast.cudnn_benchmark { ", cuDNN autotuning" } else { "" }
    );
    let data = oodnc::train::RunData::load(&cfg)?;
    println!(
        "data: {} train / {} val / {} test images, {} classes",
        data.train.len(),
        data.val.len(),
        data.test.len(),
        data.train.num_classes()
    );
    let allow = oodnc::run::Allow { more_epochs: a.extend };
    let mut tr = oodnc::train::Trainer::open_with(cfg, &run_dir, device, allow)?;
    if tr.epochs_done() > 0 {
        println!("resuming after epoch {}", tr.epochs_done());
    }
    let out = tr.fit(&data, a.stop_after)?;
    println!(
        "done: {}/{} epochs; best val acc {:.2}% at epoch {}; final test acc {:.2}%; outputs in {}",
        out.epochs_done,
        out.epochs_total,
        100.0 * out.best_val_acc,
        out.best_epoch,
        100.0 * out.final_test_acc,
        out.run_dir.display()
    );
    Ok(())
}

fn run(cli: Cli) -> oodnc::Result<()> {
    match cli.command {
        Command::Detectors => {
            let model = oodnc::ood::model_detectors::names();
            println!("{:<20} {:<9} {:<28} what it computes", "name", "needs", "hyperparameters");
            for (name, params, summary) in oodnc::ood::detector_summaries() {
                let needs = if model.contains(&name) { "network" } else { "features" };
                // Long lists (NAC's twelve) wrap inside their column.
                let mut lines: Vec<String> = vec![String::new()];
                for p in &params {
                    let last = lines.last_mut().expect("one line");
                    if !last.is_empty() && last.len() + 2 + p.len() > 28 {
                        last.push(',');
                        lines.push(p.to_string());
                    } else {
                        if !last.is_empty() {
                            last.push_str(", ");
                        }
                        last.push_str(p);
                    }
                }
                if params.is_empty() {
                    lines[0] = "-".into();
                }
                println!("{name:<20} {needs:<9} {:<28} {summary}", lines[0]);
                for l in &lines[1..] {
                    println!("{:<20} {:<9} {l}", "", "");
                }
            }
            println!(
                "--detectors takes these names, or the groups all (every feature-based one), seed (the original's six) and \
                 model (every one that runs the network); formulas, defaults and grids: docs/detectors.md"
            );
        }
        Command::Info { json } => {
            let info = oodnc::info();
            if json {
                println!("{}", serde_json::to_string_pretty(&info).unwrap_or_default());
            } else {
                println!("{info}");
            }
        }
        Command::Selftest { device } => {
            let device = parse_device(device)?;
            println!("oodnc selftest on {device:?} (each check against the CPU or an independent formulation)");
            let checks = oodnc::selftest::run(device);
            for c in &checks {
                println!("{c}");
            }
            let failed = checks.iter().filter(|c| !c.passed).count();
            println!("selftest: {} of {} checks passed on {device:?}", checks.len() - failed, checks.len());
            if failed > 0 {
                return Err(oodnc::Error::data("selftest", format!("{failed} check(s) failed (the FAIL lines above)")));
            }
        }
        Command::Data(DataCmd::Fetch { dataset, root }) => {
            for p in data::download::fetch(&dataset, &root, true)? {
                println!("ready: {}", p.display());
            }
        }
        Command::Data(DataCmd::Check { root }) => {
            if !check(&root)? {
                return Err(oodnc::Error::data("data check", "some datasets are missing or invalid (see above)"));
            }
        }
        Command::Data(DataCmd::Synth(a)) => {
            let mut cfg = data::synthetic::SynthConfig { classes: a.classes, seed: a.seed, ..Default::default() };
            if let Some(n) = a.train_per_class {
                cfg.train_per_class = n;
            }
            if let Some(n) = a.test_per_class {
                cfg.test_per_class = n;
                cfg.near_per_class = n;
            }
            let t = std::time::Instant::now();
            if let data::synthetic::RootState::Complete(m) = data::synthetic::inspect(&a.root)? {
                if m.config == cfg && data::synthetic::verify(&a.root, &m).is_ok() {
                    println!("synthetic dataset in {} is up to date (every file matches its manifest); nothing written", a.root.display());
                    return Ok(());
                }
            }
            let s = data::synthetic::generate(&a.root, &cfg)?;
            println!(
                "synthetic dataset in {} ({:.1}s): ID {} train / {} test, near-OOD {}, digits {}, textures {}",
                s.root.display(),
                t.elapsed().as_secs_f64(),
                s.id_train,
                s.id_test,
                s.near_ood,
                s.digits_ood,
                s.textures
            );
        }
        Command::Train(a) => train(a)?,
        Command::Figures { run, runs, out } => {
            let r = oodnc::run::Run::open_named(&runs, &run)?;
            let files = oodnc::run_figures::write_run_figures(r.dir(), &r.figures_dir(&out), oodnc::device::best_device())?;
            println!("{} figures written to {} (PNG + SVG)", files.len(), r.figures_dir(&out).display());
        }
        Command::Interp { run, runs, epochs, detectors, rotations } => {
            let r = oodnc::run::Run::open_named(&runs, &run)?;
            let eps = r.parse_epochs(&epochs)?;
            let dets: Vec<String> = detectors.split(',').map(|d| d.trim().to_string()).filter(|d| !d.is_empty()).collect();
            for d in &dets {
                oodnc::ood::DetectorSpec::new(d, &[])?;
            }
            let opts = oodnc::interp::InterpOptions { detectors: dets, rotations, ..Default::default() };
            let st = oodnc::interp::study(&r, &eps, &opts, oodnc::device::best_device())?;
            let last = oodnc::report::last_epoch(&st.layers)?;
            println!(
                "epoch {last}, ID train:\n{}",
                oodnc::report::wide_table(&st.layers, last, oodnc::names::ID_TRAIN, oodnc::report::columns::INTERP_BY_LAYER)?
            );
            println!(
                "ID test:\n{}",
                oodnc::report::wide_table(&st.layers, last, oodnc::names::ID_TEST, &["ncc_probe_accuracy", "linear_probe_accuracy"])?
            );
            for row in st.ablation.iter().filter(|x| x.epoch == last) {
                println!("ablation {:<22} {:<14} {:<22} {:.4}", row.key, row.dataset, row.metric, row.value);
            }
            println!("tables: {}, {}", st.layers_csv.display(), st.ablation_csv.display());
        }
        Command::Nc { run, runs, epochs, layers, pool2x2 } => {
            let r = oodnc::run::Run::open_named(&runs, &run)?;
            let eps = r.parse_epochs(&epochs)?;
            let opts = oodnc::nc::study::NcOptions { layers, pool2x2, ..Default::default() };
            let st = oodnc::nc::study::study(&r, &eps, opts, oodnc::device::best_device())?;
            let rows = &st.rows;
            let last = oodnc::report::last_epoch(rows)?;
            let metrics = [
                "accuracy",
                "nc1",
                "nc1_raw",
                "cdnv",
                "nc2_equinorm_m",
                "nc2_maxangle_m",
                "nc2_equinorm_w",
                "nc2_maxangle_w",
                "nc3",
                "nc4_ncc_mismatch",
                "ncc_accuracy",
            ];
            println!("epoch {last}, ID train (unaugmented):\n{}", oodnc::report::wide_table(rows, last, oodnc::names::ID_TRAIN, &metrics)?);
            match st.terminal_phase_start {
                Some(e) => println!("terminal phase of training starts at epoch {e} (first epoch with train accuracy >= 99.9%)"),
                None => println!("terminal phase not reached (no checkpoint with train accuracy >= 99.9%)"),
            }
            println!("table: {}", st.csv.display());
        }
        Command::Extract { run, runs, epochs, taps } => {
            let r = oodnc::run::Run::open_named(&runs, &run)?;
            let eps = r.parse_epochs(&epochs)?;
            let sets = r.eval_sets()?;
            let opts = oodnc::features::ExtractOptions { taps, pool2x2: false };
            let device = oodnc::device::best_device();
            for e in eps {
                let t = std::time::Instant::now();
                oodnc::ood::pipeline::epoch_features(r.dir(), e, &sets, opts, device)?;
                println!("epoch {e}: features cached in {:.1}s", t.elapsed().as_secs_f64());
            }
        }
        Command::Ood { run, runs, epochs, detectors, bootstrap, scores } => {
            if let Some(p) = &scores {
                if p.exists() {
                    return Err(oodnc::Error::param(
                        "--scores",
                        format!("{} exists; oodnc does not overwrite it, name a new file", p.display()),
                    ));
                }
            }
            let r = oodnc::run::Run::open_named(&runs, &run)?;
            let eps = r.parse_epochs(&epochs)?;
            let expanded = oodnc::ood::expand_detector_list(&detectors)?;
            let names: Vec<&str> = expanded.iter().map(String::as_str).collect();
            let study = oodnc::ood::pipeline::study(&r, &eps, &names, bootstrap, oodnc::device::best_device())?;
            let last = oodnc::report::last_epoch(&study.rows)?;
            let head = study.headline;
            println!("headline protocol: {head} ({})", head.describe());
            println!("{}", oodnc::report::ood_table(&study.headline_rows(), last)?);
            println!("scores: higher = more in-distribution; FPR95 = fraction of OOD accepted at 95% ID recall");
            let at_last: Vec<&oodnc::ood::eval::DetectorScores> = study.scores_of(head).into_iter().filter(|s| s.epoch == last).collect();
            if at_last.len() > 1 {
                let sets: Vec<&String> = at_last[0].ood.iter().map(|(n, _)| n).collect();
                for set in sets {
                    let dets: Vec<(String, Vec<f64>, Vec<f64>)> = at_last
                        .iter()
                        .filter_map(|s| {
                            s.ood.iter().find(|(n, _)| n == set).map(|(_, o)| (s.spec.name().to_string(), s.id.clone(), o.clone()))
                        })
                        .collect();
                    let v = oodnc::ood::significance::versus_best(&dets, oodnc::ood::significance::ALPHA)?;
                    let tied: Vec<&str> = v.iter().filter(|x| x.tied).map(|x| x.detector.as_str()).collect();
                    if let Some(b) = v.first() {
                        println!("{set}: best AUROC {}; tied with it (DeLong, Holm, alpha 0.05): {}", b.best, tied.join(", "));
                    }
                }
            }
            println!(
                "\nselection protocols side by side (epoch {last}):\n{}",
                oodnc::report::protocol_table(&study.rows, &study.selections, last)?
            );
            let flagged: Vec<String> = study
                .selections
                .iter()
                .filter(|s| s.epoch == last && s.informative == Some(false))
                .map(|s| format!("{}/{} ({:.3})", s.protocol, s.detector, s.best_val_auroc.unwrap_or(f64::NAN)))
                .collect();
            if !flagged.is_empty() {
                println!(
                    "uninformative selections (best validation AUROC below {}; defaults used): {}",
                    r.config().ood.uninformative_below,
                    flagged.join(", ")
                );
            }
            println!("table: {}", study.csv.display());
            if let Some(p) = &scores {
                let mut df = oodnc::ood::eval::scores_frame(&r.name(), &study.scores)?;
                oodnc::results::write_table(&mut df, p)?;
                println!("per-sample scores ({} rows): {}", df.height(), p.display());
            }
        }
        Command::Report { runs, protocol, epoch, out, figures } => {
            if out.exists() {
                return Err(oodnc::Error::param(
                    "--out",
                    format!("{} exists; oodnc does not overwrite it, name a new file", out.display()),
                ));
            }
            let dirs = oodnc::seeds::expand_runs(&runs)?;
            let summary = oodnc::seeds::aggregate(&dirs, protocol, epoch)?;
            println!("{}", summary.markdown());
            let mut df = summary.frame()?;
            oodnc::results::write_table(&mut df, &out)?;
            std::fs::create_dir_all(&figures).map_err(|e| oodnc::Error::io(&figures, e))?;
            summary.figure()?.save_both(&figures, "seed_spread_auroc")?;
            println!("summary ({} rows): {}; figure: {}", df.height(), out.display(), figures.join("seed_spread_auroc.png").display());
        }
        Command::Bench { what, quick, precision, channels_last, steps, detectors } => {
            let device = oodnc::device::best_device();
            println!("oodnc bench on {device:?}, {} threads", tch::get_num_threads());
            let mut lines = Vec::new();
            let all = what == BenchWhat::All;
            if what == BenchWhat::Data || all {
                lines.extend(oodnc::bench::data(device, 20)?);
            }
            if what == BenchWhat::Train || all {
                let mut t = oodnc::config::RunConfig::profile("coursework")?.train;
                t.precision = precision;
                t.channels_last = channels_last;
                lines.extend(oodnc::bench::train(device, steps, if quick { 0.25 } else { 1.0 }, t.fast_path(device))?);
            }
            if what == BenchWhat::Ood || all {
                let all = oodnc::ood::detector_names();
                let names: Vec<&str> =
                    if detectors == "all" { all } else { detectors.split(',').map(str::trim).filter(|s| !s.is_empty()).collect() };
                let (n, t, o) = if quick { (5000, 2000, 3000) } else { (45_000, 10_000, 26_032) };
                lines.extend(oodnc::bench::ood(device, n, 512, 100, t, o, &names)?);
            }
            if what == BenchWhat::OodModel || all {
                let (width, n_fit, n_score) = if quick { (0.25, 1000, 500) } else { (1.0, 1000, 500) };
                lines.extend(oodnc::bench::ood_model(device, width, 100, n_fit, n_score, 3)?);
            }
            if what == BenchWhat::Nc || all {
                lines.extend(oodnc::bench::nc(if quick { 5000 } else { 45_000 }, 100, if quick { 2 } else { 13 })?);
            }
            for l in lines {
                println!("{l}");
            }
        }
    }
    Ok(())
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
