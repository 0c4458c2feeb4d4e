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
    /// Benchmarks; each prints a ratio against a baseline measured in the same run.
    Bench {
        /// data | all
        #[arg(default_value = "all")]
        what: String,
    },
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
        Command::Bench { what } => {
            let device = oodnc::device::best_device();
            println!("oodnc bench on {device:?}, {} threads", tch::get_num_threads());
            let mut lines = Vec::new();
            if what == "data" || what == "all" {
                lines.extend(oodnc::bench::data(device, 20)?);
            }
            if lines.is_empty() {
                return Err(oodnc::Error::Unknown {
                    kind: "benchmark".into(),
                    name: what,
                    known: "data, all".into(),
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
