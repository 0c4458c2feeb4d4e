//! # oodnc
//!
//! Out-of-distribution (OOD) detection and Neural Collapse (NC) on a CIFAR
//! ResNet-18, in Rust on libtorch (through `tch`).
//!
//! Data flows one way, each stage reading what the one before it wrote to disk
//! (`docs/architecture.md`):
//! [`data`] -> [`model`] -> [`train`] -> [`features`] -> [`ood`] / [`nc`] / [`interp`]
//! -> [`report`] / [`plot`] -> notebooks ([`prelude`], [`notebook::Session`]) and the CLI.
//!
//! Conventions used everywhere:
//! - every OOD score is **higher = more in-distribution**;
//! - FPR@95 is reported under both conventions, with explicit names;
//! - hyperparameters are chosen on held-out data, never on the test sets.
//!
//! ## A detector, fitted and scored
//!
//! Every detector follows the same path: typed hyperparameters (checked), `fit`
//! on ID training features and the classifier head, a fitted value you can
//! inspect, `score` on any [`features::FeatureSet`]. Here Mahalanobis (full tied
//! precision) on two well-separated classes in 2-D:
//!
//! ```
//! # fn main() -> oodnc::Result<()> {
//! use oodnc::features::FeatureSet;
//! use oodnc::ood::detectors::mahalanobis::Mahalanobis;
//! use oodnc::ood::{ood_metrics, FitData, Registered, Scorer};
//! use oodnc::tch::{Device, Kind, Tensor};
//!
//! // 200 training features around (4, 0) and (0, 4), and a 2-class linear head.
//! let y = Tensor::arange(200, (Kind::Int64, Device::Cpu)).remainder(2);
//! let means = Tensor::from_slice(&[4.0f32, 0.0, 0.0, 4.0]).view([2, 2]);
//! oodnc::tch::manual_seed(0);
//! let h = means.index_select(0, &y) + Tensor::randn([200, 2], (Kind::Float, Device::Cpu)) * 0.5;
//! let (w, b) = (means.shallow_clone(), Tensor::zeros([2], (Kind::Float, Device::Cpu)));
//! let train = FeatureSet::new("train", h.matmul(&w.tr()), h.shallow_clone(), y)?;
//!
//! let fitted = Mahalanobis::default().fit(&FitData::new(&train, None, &w, &b))?;
//!
//! // ID test points at the class means, OOD points far from both.
//! let id_h = Tensor::from_slice(&[4.0f32, 0.1, 0.1, 3.9]).view([2, 2]);
//! let ood_h = Tensor::from_slice(&[-6.0f32, -6.0, 9.0, 9.0]).view([2, 2]);
//! let set = |name: &str, h: &Tensor| FeatureSet::new(name, h.matmul(&w.tr()), h.shallow_clone(), Tensor::zeros([2], (Kind::Int64, Device::Cpu)));
//! let id: Vec<f64> = Vec::try_from(&fitted.score(&set("id", &id_h)?)?).unwrap();
//! let ood: Vec<f64> = Vec::try_from(&fitted.score(&set("ood", &ood_h)?)?).unwrap();
//!
//! // Higher = more in-distribution: every ID score above every OOD score.
//! let m = ood_metrics(&id, &ood)?;
//! assert_eq!(m.auroc, 1.0);
//! assert_eq!(m.fpr95_ood_accepted_at_95_id, 0.0);
//! # Ok(())
//! # }
//! ```
//!
//! By name, with the registry's parameters (what the CLI and the studies use):
//! `oodnc::ood::DetectorSpec::new("knn", &[("k", 50.0)])?.fit(&data)?.score_vec(&test)?`;
//! `docs/detectors.md` has every detector's card.
//!
//! ## Neural Collapse metrics of a feature set
//!
//! Features equal to their class means, the means a simplex ETF: within-class
//! variability NC1 is 0, the means are equinorm (NC2) and equiangular at the
//! simplex angle, cos = -1/(C-1).
//!
//! ```
//! # fn main() -> oodnc::Result<()> {
//! use oodnc::nc::metrics::nc_metrics;
//! use oodnc::tch::{Device, Kind, Tensor};
//!
//! // The 3-class simplex ETF in 3-D: e_c - 1/3, each class mean repeated 4 times.
//! let etf = Tensor::eye(3, (Kind::Double, Device::Cpu)) - 1.0 / 3.0;
//! let labels = Tensor::from_slice(&[0i64, 1, 2]).repeat([4]);
//! let h = etf.index_select(0, &labels);
//! let (m, _stats) = nc_metrics(&h, &labels, 3, None, None)?;
//! assert!(m.nc1.abs() < 1e-12);
//! assert!(m.nc2_equinorm_m.abs() < 1e-12);
//! assert!(m.nc2_maxangle_m.abs() < 1e-12); // max |cos + 1/(C-1)| over pairs
//! # Ok(())
//! # }
//! ```
//!
//! ## A run, end to end
//!
//! A run is a folder `runs/<name>/` owned by one [`run::Run`]: its config
//! (checked against every checkpoint), its checkpoints, its feature cache and its
//! result tables (merged, never shrunk). Train with `oodnc train --profile demo`
//! (or notebook 01), then:
//!
//! ```no_run
//! # fn main() -> oodnc::Result<()> {
//! use oodnc::run::Run;
//!
//! let run = Run::open("runs/demo")?;
//! let last = run.last_epoch()?;
//! let device = oodnc::device::best_device();
//! // Two detectors at the last checkpoint, 200 bootstrap resamples; writes runs/demo/ood/*.
//! let study = oodnc::ood::pipeline::study(&run, &[last], &["energy", "knn"], 200, device)?;
//! for row in study.headline_rows().iter().filter(|r| r.metric == "auroc") {
//!     println!("{} on {}: AUROC {:.3}", row.key, row.dataset, row.value);
//! }
//! // NC1-NC5 at every checkpoint; writes runs/demo/nc/metrics.csv.
//! let nc = oodnc::nc::study::study(&run, &[], Default::default(), device)?;
//! println!("terminal phase from epoch {:?}", nc.terminal_phase_start);
//! # Ok(())
//! # }
//! ```
//!
//! (Not run by `cargo test`: it needs a trained run; `oodnc/tests/pipeline.rs`
//! runs the same path on a CI-sized run.)

pub mod amp;
pub mod bench;
pub mod config;
pub mod data;
pub mod device;
pub mod error;
pub mod features;
pub mod info;
pub mod interp;
pub mod model;
pub mod names;
pub mod nc;
pub mod notebook;
pub mod numerics;
pub mod ood;
pub mod plot;
pub mod prelude;
pub mod progress;
pub mod report;
pub mod results;
pub mod run;
pub mod run_figures;
pub mod seeds;
pub mod selftest;
pub mod tensor_io;
pub mod train;
pub mod util;

pub use error::{Error, Result};
pub use info::{info, Info};

/// Re-exported so notebook cells can name tch types without their own `:dep`.
pub use tch;
