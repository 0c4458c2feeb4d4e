//! The `oodnc` command line.

use clap::{Args, Parser, Subcommand};
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
        /// Comma-separated detector names; "all" (the 21 feature-based ones) and "seed"
        /// (the original's six) expand. "odin" (model-based: the network runs with input
        /// gradients on every image, slow on a CPU for the full model) only when named,
        /// e.g. --detectors all,odin.
        #[arg(long, default_value = "all")]
        detectors: String,
        /// Bootstrap replicates for the confidence intervals (0 = none).
        #[arg(long, default_value_t = 200)]
        bootstrap: usize,
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
        #[arg(long)]
        pool2x2: bool,
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
    /// Benchmarks; each prints a ratio against a baseline measured in the same run.
    Bench {
        /// data | train | ood | nc | all
        #[arg(default_value = "all")]
        what: String,
        /// Smaller sizes (a quick check; the ratios are then less representative).
        #[arg(long)]
        quick: bool,
        /// Training-step precision: auto (bf16 autocast on CUDA, f32 on CPU) | bf16 | fp32.
        #[arg(long, default_value = "auto", value_parser = ["auto", "bf16", "fp32"])]
        precision: String,
        /// Channels-last layout in the training step: auto (on CUDA) | on | off.
        #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
        channels_last: String,
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
    /// demo | coursework | ci
    #[arg(long, default_value = "demo")]
    profile: String,
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
    /// Continue an existing run from its last completed epoch.
    #[arg(long)]
    resume: bool,
    /// Stop after this many completed epochs (the run can be resumed later).
    #[arg(long)]
    stop_after: Option<i64>,
    /// cpu | cuda (default: cuda when available)
    #[arg(long)]
    device: Option<String>,
    /// Override the data root (where cifar-100-binary/ etc. are).
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Override the precision: auto (bf16 autocast on CUDA, f32 on CPU) | bf16 | fp32.
    #[arg(long, value_parser = ["auto", "bf16", "fp32"])]
    precision: Option<String>,
    /// Override the layout: auto (channels-last on CUDA) | on | off.
    #[arg(long, value_parser = ["auto", "on", "off"])]
    channels_last: Option<String>,
}

fn parse_precision(s: &str) -> oodnc::amp::Precision {
    match s {
        "bf16" => oodnc::amp::Precision::Bf16,
        "fp32" => oodnc::amp::Precision::Fp32,
        _ => oodnc::amp::Precision::Auto,
    }
}

fn parse_toggle(s: &str) -> oodnc::config::Toggle {
    match s {
        "on" => oodnc::config::Toggle::On,
        "off" => oodnc::config::Toggle::Off,
        _ => oodnc::config::Toggle::Auto,
    }
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

fn check(root: &std::path::Path) -> oodnc::Result<bool> {
    use data::dtd::{DtdSplit};
    use data::image_folder::Resize;
    println!("data root: {}", root.display());
    let mut all_ok = true;
    let mut report = |name: &str, r: oodnc::Result<String>| match r {
        Ok(s) => println!("  ok      {name:<22} {s}"),
        Err(e) => {
            all_ok = false;
            println!("  MISSING {name:<22} {e}");
        }
    };
    for (name, v) in [("cifar100", data::cifar::Variant::Cifar100), ("cifar10", data::cifar::Variant::Cifar10)] {
        for part in [Part::Train, Part::Test] {
            report(
                &format!("{name} {part}"),
                data::cifar::load(root, v, part).map(|d| format!("{} images, {} classes", d.len(), d.num_classes())),
            );
        }
    }
    for part in [Part::Train, Part::Test] {
        report(&format!("svhn {part}"), data::svhn::count(root, part).map(|n| format!("{n} images")));
    }
    report(
        "dtd test1",
        data::dtd::list(root, DtdSplit::TEST1).map(|(p, _, c)| format!("{} images listed, {} classes", p.len(), c.len())),
    );
    let _ = Resize::default();
    Ok(all_ok)
}

extern "C" fn on_sigint(_: libc::c_int) {
    oodnc::train::trainer::INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

fn parse_device(d: Option<&str>) -> oodnc::Result<tch::Device> {
    match d {
        None => Ok(oodnc::device::best_device()),
        Some("cpu") => Ok(tch::Device::Cpu),
        Some("cuda") => {
            if oodnc::device::cuda_available() {
                Ok(tch::Device::Cuda(0))
            } else {
                Err(oodnc::Error::param("--device", "cuda requested but CUDA is not available (see `oodnc info`)"))
            }
        }
        Some(o) => Err(oodnc::Error::param("--device", format!("'{o}' (expected cpu or cuda)"))),
    }
}

fn parse_epochs(run_dir: &std::path::Path, spec: &str) -> oodnc::Result<Vec<i64>> {
    let avail = oodnc::train::trainer::available_epochs(run_dir)?;
    match spec {
        "all" => Ok(avail),
        "last" => Ok(avail.last().copied().into_iter().collect()),
        list => list
            .split(',')
            .map(|x| x.trim().parse::<i64>().map_err(|_| oodnc::Error::param("--epochs", format!("'{x}' is not an epoch number"))))
            .collect(),
    }
}

fn train(a: TrainArgs) -> oodnc::Result<()> {
    let mut cfg = match &a.config {
        Some(p) => oodnc::config::RunConfig::read(p)?,
        None => oodnc::config::RunConfig::profile(&a.profile)?,
    };
    if let Some(e) = a.epochs {
        cfg.train.epochs = e;
    }
    if let Some(s) = a.seed {
        cfg.seed = s;
    }
    if let Some(r) = &a.data_root {
        cfg.data.root = r.clone();
    }
    if let Some(p) = &a.precision {
        cfg.train.precision = parse_precision(p);
    }
    if let Some(c) = &a.channels_last {
        cfg.train.channels_last = parse_toggle(c);
    }
    let run_dir = a.runs.join(&a.run);
    let has_state = run_dir.join("state/last.safetensors").exists();
    if has_state && !a.resume {
        return Err(oodnc::Error::param(
            "--run",
            format!("{} already has training state; pass --resume to continue it, or pick another name", run_dir.display()),
        ));
    }
    let device = parse_device(a.device.as_deref())?;
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
    println!("data: {} train / {} val / {} test images, {} classes", data.train.len(), data.val.len(), data.test.len(), data.train.num_classes());
    let mut tr = oodnc::train::Trainer::open(cfg, &run_dir, device)?;
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
        Command::Info { json } => {
            let info = oodnc::info();
            if json {
                println!("{}", serde_json::to_string_pretty(&info).unwrap_or_default());
            } else {
                println!("{info}");
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
            let mut cfg = data::synthetic::SynthConfig {
                classes: a.classes,
                seed: a.seed,
                ..Default::default()
            };
            if let Some(n) = a.train_per_class {
                cfg.train_per_class = n;
            }
            if let Some(n) = a.test_per_class {
                cfg.test_per_class = n;
                cfg.near_per_class = n;
            }
            let t = std::time::Instant::now();
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
            let files = oodnc::plot::run_figures::write_run_figures(&runs.join(&run), &out.join(&run), oodnc::device::best_device())?;
            println!("{} figures written to {} (PNG + SVG)", files.len(), out.join(&run).display());
        }
        Command::Nc { run, runs, epochs, layers, pool2x2 } => {
            let run_dir = runs.join(&run);
            let eps = parse_epochs(&run_dir, &epochs)?;
            let opts = oodnc::nc::study::NcOptions { layers, pool2x2, ..Default::default() };
            let st = oodnc::nc::study::run(&run_dir, &eps, opts, oodnc::device::best_device())?;
            let df = &st.frame;
            let rows = oodnc::report::long_rows(df, "layer")?;
            let last = oodnc::report::last_epoch(&rows)?;
            let metrics = ["accuracy", "nc1", "nc1_raw", "cdnv", "nc2_equinorm_m", "nc2_maxangle_m", "nc2_equinorm_w", "nc2_maxangle_w", "nc3", "nc4_ncc_mismatch", "ncc_accuracy"];
            println!("epoch {last}, ID train (unaugmented):\n{}", oodnc::report::wide_table(&rows, last, "id-train", &metrics)?);
            match st.terminal_phase_start {
                Some(e) => println!("terminal phase of training starts at epoch {e} (first epoch with train accuracy >= 99.9%)"),
                None => println!("terminal phase not reached (no checkpoint with train accuracy >= 99.9%)"),
            }
            println!("table: {}", st.csv.display());
        }
        Command::Extract { run, runs, epochs, taps } => {
            let run_dir = runs.join(&run);
            let cfg = oodnc::config::RunConfig::read(run_dir.join("config.toml"))?;
            let eps = parse_epochs(&run_dir, &epochs)?;
            let sets = oodnc::data::protocol::load_eval_sets(&cfg)?;
            let opts = oodnc::features::ExtractOptions { taps, pool2x2: false };
            let device = oodnc::device::best_device();
            for e in eps {
                let t = std::time::Instant::now();
                oodnc::ood::pipeline::epoch_features(&run_dir, e, &sets, opts, device)?;
                println!("epoch {e}: features cached in {:.1}s", t.elapsed().as_secs_f64());
            }
        }
        Command::Ood { run, runs, epochs, detectors, bootstrap } => {
            let run_dir = runs.join(&run);
            let eps = parse_epochs(&run_dir, &epochs)?;
            let mut names: Vec<&str> = Vec::new();
            for d in detectors.split(',').map(str::trim).filter(|d| !d.is_empty()) {
                match d {
                    "all" => names.extend(oodnc::ood::detector_names()),
                    "seed" => names.extend(oodnc::ood::SEED_SIX),
                    other => names.push(other),
                }
            }
            let mut seen = std::collections::BTreeSet::new();
            names.retain(|d| seen.insert(*d));
            let study = oodnc::ood::pipeline::run(&run_dir, &eps, &names, bootstrap, oodnc::device::best_device())?;
            let rows = oodnc::report::long_rows(&study.frame, "detector")?;
            let last = oodnc::report::last_epoch(&rows)?;
            println!("{}", oodnc::report::ood_table(&rows, last)?);
            println!("scores: higher = more in-distribution; FPR95 = fraction of OOD accepted at 95% ID recall");
            println!("table: {}", study.csv.display());
        }
        Command::Bench { what, quick, precision, channels_last, steps, detectors } => {
            let device = oodnc::device::best_device();
            println!("oodnc bench on {device:?}, {} threads", tch::get_num_threads());
            let mut lines = Vec::new();
            if what == "data" || what == "all" {
                lines.extend(oodnc::bench::data(device, 20)?);
            }
            if what == "train" || what == "all" {
                let mut t = oodnc::config::RunConfig::profile("coursework")?.train;
                t.precision = parse_precision(&precision);
                t.channels_last = parse_toggle(&channels_last);
                lines.extend(oodnc::bench::train(device, steps, if quick { 0.25 } else { 1.0 }, t.fast_path(device))?);
            }
            if what == "ood" || what == "all" {
                let all = oodnc::ood::detector_names();
                let names: Vec<&str> = if detectors == "all" { all } else { detectors.split(',').map(str::trim).filter(|s| !s.is_empty()).collect() };
                let (n, t, o) = if quick { (5000, 2000, 3000) } else { (45_000, 10_000, 26_032) };
                lines.extend(oodnc::bench::ood(n, 512, 100, t, o, &names)?);
            }
            if what == "nc" || what == "all" {
                lines.extend(oodnc::bench::nc(if quick { 5000 } else { 45_000 }, 100, if quick { 2 } else { 13 })?);
            }
            if lines.is_empty() {
                return Err(oodnc::Error::Unknown {
                    kind: "benchmark".into(),
                    name: what,
                    known: "data, train, ood, nc, all".into(),
                });
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
