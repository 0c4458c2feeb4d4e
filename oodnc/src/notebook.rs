//! Conveniences for the notebooks: the profile, the run folder, figure saving,
//! and clear messages when an earlier step has not been run.
//!
//! Notebooks hold narrative and calls into the crate; this module keeps those
//! calls short. Every method is safe to re-run: training resumes or returns the
//! finished run, features come from the cache.

use crate::config::RunConfig;
use crate::data::protocol::{load_eval_sets, EvalSets};
use crate::error::{Error, Result};
use crate::plot::Figure;
use crate::train::{History, RunData, TrainOutcome, Trainer};
use std::path::{Path, PathBuf};
use tch::Device;

/// A notebook's context.
pub struct Session {
    /// The repository root (the folder holding `oodnc/` and `notebooks/`).
    pub root: PathBuf,
    pub cfg: RunConfig,
    /// Run name (`OODNC_RUN`, default: the profile name).
    pub run: String,
    pub run_dir: PathBuf,
    /// Where this run's figures go: `figures/<run>/`.
    pub figures: PathBuf,
    pub device: Device,
}

/// Finds the repository root from the current folder upwards.
pub fn repo_root() -> Result<PathBuf> {
    let mut dir = std::env::current_dir().map_err(|e| Error::io(".", e))?;
    loop {
        if dir.join("oodnc/Cargo.toml").exists() && dir.join("notebooks").is_dir() {
            return Ok(dir);
        }
        if !dir.pop() {
            return Err(Error::Missing {
                what: "the oodnc repository root".into(),
                path: std::env::current_dir().unwrap_or_default(),
                hint: "; start JupyterLab with `make lab` from the repository".into(),
            });
        }
    }
}

impl Session {
    /// Reads `OODNC_PROFILE` (default `demo`), moves to the repository root and prints the setting.
    pub fn new() -> Result<Self> {
        let root = repo_root()?;
        std::env::set_current_dir(&root).map_err(|e| Error::io(&root, e))?;
        let cfg = RunConfig::from_env()?;
        let run = std::env::var("OODNC_RUN").unwrap_or_else(|_| cfg.profile.clone());
        let device = crate::device::best_device();
        let s = Session {
            run_dir: crate::run::run_dir(&root.join("runs"), &run)?,
            figures: root.join("figures").join(&run),
            root,
            run,
            device,
            cfg,
        };
        println!(
            "profile: {} (set OODNC_PROFILE=demo|ci|coursework before starting Jupyter to change it)\nrun:     {}\ndevice:  {:?}, {} threads\ndata:    {} ({})",
            s.cfg.profile,
            s.run_dir.display(),
            s.device,
            tch::get_num_threads(),
            s.cfg.data.root.display(),
            s.cfg.data.source
        );
        Ok(s)
    }

    /// Trains (or resumes, or returns the finished run). Generates the embedded
    /// dataset first for the synthetic profiles.
    pub fn train(&self) -> Result<TrainOutcome> {
        let data = RunData::load(&self.cfg)?;
        println!(
            "data: {} train / {} val / {} test images, {} classes",
            data.train.len(),
            data.val.len(),
            data.test.len(),
            data.train.num_classes()
        );
        let mut tr = Trainer::open(self.cfg.clone(), &self.run_dir, self.device)?;
        if tr.epochs_done() > 0 {
            println!("resuming after epoch {} of {}", tr.epochs_done(), self.cfg.train.epochs);
        }
        tr.fit(&data, None)
    }

    /// Errors with the command to run when the run has not finished training.
    pub fn require_training(&self) -> Result<()> {
        let done = History::read(self.run_dir.join("history.csv")).map(|h| h.records.last().map(|r| r.epoch).unwrap_or(0)).unwrap_or(0);
        if done < self.cfg.train.epochs {
            return Err(Error::Missing {
                what: format!("a finished training run ({done}/{} epochs)", self.cfg.train.epochs),
                path: self.run_dir.clone(),
                hint: format!(
                    "; run notebook 01_training first, or `cargo run --release --bin oodnc -- train --profile {} --run {} --resume`",
                    self.cfg.profile, self.run
                ),
            });
        }
        Ok(())
    }

    /// Errors with the notebook to run when a results table is missing.
    pub fn require_table(&self, rel: &str, notebook: &str) -> Result<PathBuf> {
        let p = self.run_dir.join(rel);
        if !p.exists() {
            return Err(Error::Missing { what: format!("results table {rel}"), path: p, hint: format!("; run notebook {notebook} first") });
        }
        Ok(p)
    }

    /// The run, opened for analysis (config checked against its checkpoints).
    pub fn open_run(&self) -> Result<crate::run::Run> {
        crate::run::Run::open(&self.run_dir)
    }

    /// The training history.
    pub fn history(&self) -> Result<History> {
        History::read(self.run_dir.join("history.csv"))
    }

    /// The evaluation datasets (ID splits, OOD sets, OOD-val).
    pub fn eval_sets(&self) -> Result<EvalSets> {
        load_eval_sets(&self.cfg)
    }

    /// Saves `fig` as `figures/<run>/<stem>.png` and `.svg`, and returns it for display.
    pub fn show(&self, fig: Figure, stem: &str) -> Result<Figure> {
        fig.save_both(&self.figures, stem)?;
        Ok(fig)
    }

    /// A sibling run with an edited recipe, named `<run>-<suffix>` (its own run folder
    /// and figures folder), e.g. notebook 06's bottleneck run:
    /// `s.variant("bottleneck4", |c| c.model.bottleneck = Some(4))?`. Its config is
    /// checked against its own checkpoints like any run's.
    pub fn variant(&self, suffix: &str, edit: impl FnOnce(&mut RunConfig)) -> Result<Session> {
        let mut cfg = self.cfg.clone();
        edit(&mut cfg);
        cfg.validate()?;
        let run = format!("{}-{suffix}", self.run);
        Ok(Session {
            run_dir: crate::run::run_dir(&self.root.join("runs"), &run)?,
            figures: self.root.join("figures").join(&run),
            root: self.root.clone(),
            run,
            device: self.device,
            cfg,
        })
    }

    /// Path of a file in the run folder.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.run_dir.join(rel)
    }
}
