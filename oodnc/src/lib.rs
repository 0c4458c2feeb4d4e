//! # oodnc
//!
//! Out-of-distribution (OOD) detection and Neural Collapse (NC) on a CIFAR
//! ResNet-18, in Rust on libtorch (through `tch`).
//!
//! The job is a pipeline of stages, each reading only what the one before it
//! wrote to disk (see `shared/design.md`):
//! data -> train -> features -> ood / nc -> plot / report.
//!
//! Conventions used everywhere:
//! - every OOD score is **higher = more in-distribution**;
//! - FPR@95 is reported under both conventions, with explicit names.

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
pub mod progress;
pub mod report;
pub mod results;
pub mod run;
pub mod run_figures;
pub mod seeds;
pub mod tensor_io;
pub mod train;
pub mod util;

pub use error::{Error, Result};
pub use info::{info, Info};

/// Re-exported so notebook cells can name tch types without their own `:dep`.
pub use tch;
