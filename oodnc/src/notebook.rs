//! Conveniences for the notebooks: the profile, the run folder, the studies in
//! one call each, one way to show figures and tables, and clear messages when an
//! earlier step has not been run.
//!
//! Notebooks hold narrative and calls into the crate; this module keeps those
//! calls short. Every method is safe to re-run: training resumes or returns the
//! finished run, features come from the cache, result tables are merged.
//!
//! The one set-up cell of every notebook:
//!
//! ```text
//! :dep oodnc = { path = "../oodnc-nb", package = "oodnc_nb" }
//! use oodnc::prelude::*;
//! let s = Session::new()?;
//! ```
//!
//! and then, for example, `let study = s.ood_study()?;` and
//! `s.show(figures::ood_summary_bars(&study.headline_rows(), last, "auroc")?, "ood_summary_auroc")?`.

use crate::config::RunConfig;
use crate::data::protocol::{load_eval_sets, EvalSets};
use crate::error::{Error, Result};
use crate::interp::InterpStudy;
use crate::nc::study::{NcOptions, NcStudy};
use crate::ood::pipeline::OodStudy;
use crate::plot::Figure;
use crate::results::Row;
use crate::run::Table;
use crate::train::{History, RunData, TrainOutcome, Trainer};
use polars::prelude::DataFrame;
use std::path::{Path, PathBuf};
use tch::Device;

/// Bootstrap resamples of the notebooks' OOD study (95 % intervals of every metric).
pub const NOTEBOOK_BOOTSTRAP: usize = 200;

/// Rows of a table shown inline as an HTML table (the rest summarised in a last line).
pub const FRAME_DISPLAY_ROWS: usize = 40;

/// What a notebook shows: a figure, a table (Markdown, as every `report::*_table`
/// returns) or a polars DataFrame. [`Session::show`] saves it for the report and
/// returns it; as the last expression of a cell it is displayed inline.
#[derive(Clone)]
pub enum Shown {
    /// Shown as `image/png`; saved as PNG and SVG.
    Figure(Figure),
    /// A Markdown table, shown as `text/markdown`; saved as `.md`.
    Table(String),
    /// A DataFrame, shown as an HTML table (first [`FRAME_DISPLAY_ROWS`] rows); saved as CSV.
    Frame(DataFrame),
}

impl From<Figure> for Shown {
    fn from(f: Figure) -> Self {
        Shown::Figure(f)
    }
}

/// A Markdown table (the `report::*_table` functions' output).
impl From<String> for Shown {
    fn from(md: String) -> Self {
        Shown::Table(md)
    }
}

impl From<DataFrame> for Shown {
    fn from(df: DataFrame) -> Self {
        Shown::Frame(df)
    }
}

impl Shown {
    /// evcxr's display protocol: what the notebook shows.
    pub fn evcxr_display(&self) {
        match self {
            Shown::Figure(f) => f.evcxr_display(),
            Shown::Table(md) => crate::report::display_markdown(md),
            Shown::Frame(df) => df.evcxr_display(),
        }
    }

    /// The figure, if this is one.
    pub fn figure(&self) -> Option<&Figure> {
        match self {
            Shown::Figure(f) => Some(f),
            _ => None,
        }
    }
}

impl std::fmt::Debug for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shown::Figure(_) => write!(f, "Shown::Figure"),
            Shown::Table(md) => write!(f, "Shown::Table({} lines)", md.lines().count()),
            Shown::Frame(df) => write!(f, "Shown::Frame({:?})", df.shape()),
        }
    }
}

/// A polars DataFrame as the last expression of a cell shows as a table (with
/// `use oodnc::prelude::*`, which brings this trait into scope).
pub trait FrameDisplay {
    /// evcxr's display protocol: an HTML table.
    fn evcxr_display(&self);
}

impl FrameDisplay for DataFrame {
    fn evcxr_display(&self) {
        println!("EVCXR_BEGIN_CONTENT text/html\n{}\nEVCXR_END_CONTENT", frame_html(self, FRAME_DISPLAY_ROWS));
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// `df` as an HTML table of at most `max_rows` rows (floats to 4 decimals), with
/// a last line giving the shape when rows were left out.
pub fn frame_html(df: &DataFrame, max_rows: usize) -> String {
    use polars::prelude::AnyValue;
    let mut h = String::from("<table>\n<thead><tr>");
    for name in df.get_column_names() {
        h += &format!("<th>{}</th>", html_escape(name.as_str()));
    }
    h += "</tr></thead>\n<tbody>\n";
    let n = df.height().min(max_rows);
    for i in 0..n {
        h += "<tr>";
        for col in df.columns() {
            let cell = match col.get(i) {
                Ok(AnyValue::Float64(x)) => format!("{x:.4}"),
                Ok(AnyValue::Float32(x)) => format!("{x:.4}"),
                Ok(AnyValue::String(s)) => s.to_string(),
                Ok(AnyValue::Null) => String::new(),
                Ok(v) => v.to_string(),
                Err(_) => "?".into(),
            };
            h += &format!("<td>{}</td>", html_escape(&cell));
        }
        h += "</tr>\n";
    }
    h += "</tbody>\n</table>";
    if df.height() > n {
        h += &format!("\n<p>{} of {} rows, {} columns</p>", n, df.height(), df.width());
    }
    h
}

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

    /// Saves what a notebook shows under `figures/<run>/<stem>` (a figure as
    /// `.png` and `.svg`, a Markdown table as `.md`, a DataFrame as `.csv`) for
    /// the report, and returns it: as the last expression of a cell it is
    /// displayed inline. The one way the notebooks show a figure or a table.
    pub fn show(&self, x: impl Into<Shown>, stem: &str) -> Result<Shown> {
        let x = x.into();
        if stem.is_empty() || stem.contains(['/', '\\']) || stem.starts_with('.') {
            return Err(Error::param("stem", format!("{stem:?}: a file name without a folder, e.g. \"ood_summary_auroc\"")));
        }
        match &x {
            Shown::Figure(f) => f.save_both(&self.figures, stem)?,
            Shown::Table(md) => {
                std::fs::create_dir_all(&self.figures).map_err(|e| Error::io(&self.figures, e))?;
                crate::util::write_atomic(self.figures.join(format!("{stem}.md")), format!("{md}\n").as_bytes())?;
            }
            Shown::Frame(df) => {
                std::fs::create_dir_all(&self.figures).map_err(|e| Error::io(&self.figures, e))?;
                crate::results::write_csv(&mut df.clone(), &self.figures.join(format!("{stem}.csv")))?;
            }
        }
        Ok(x)
    }

    /// The OOD study of every feature-based detector at every checkpoint, with
    /// [`NOTEBOOK_BOOTSTRAP`] bootstrap resamples ([`crate::ood::pipeline::run`]);
    /// writes `ood/metrics.csv`, `ood/selection.json`, `ood/significance.csv`.
    pub fn ood_study(&self) -> Result<OodStudy> {
        self.ood_study_of(&[], &crate::ood::detector_names())
    }

    /// The OOD study of `detectors` (feature-based and model-based registry names) at `epochs`
    /// (every checkpoint when empty).
    pub fn ood_study_of(&self, epochs: &[i64], detectors: &[&str]) -> Result<OodStudy> {
        crate::ood::pipeline::run(&self.run_dir, epochs, detectors, NOTEBOOK_BOOTSTRAP, self.device)
    }

    /// NC1-NC5 at every checkpoint ([`crate::nc::study::run`]); `NcOptions { layers: true, .. }`
    /// for every block too.
    pub fn nc_study(&self, opts: NcOptions) -> Result<NcStudy> {
        crate::nc::study::run(&self.run_dir, &[], opts, self.device)
    }

    /// The interpretability study at every checkpoint, default options ([`crate::interp::study`]).
    pub fn interp_study(&self) -> Result<InterpStudy> {
        crate::interp::study(&self.open_run()?, &[], &Default::default(), self.device)
    }

    /// The rows of a results table an earlier notebook wrote; when it is missing,
    /// the error names `notebook`, the one to run first.
    pub fn rows(&self, table: Table, notebook: &str) -> Result<Vec<Row>> {
        let p = self.require_table(table.rel(), notebook)?;
        let key = if table.rel().starts_with("ood/") { "detector" } else { "layer" };
        crate::report::long_rows(&crate::results::read_csv(&p)?, key)
    }

    /// The terminal phase of training (first and last epoch) written by the NC
    /// study, for shading figures; `None` when not reached or not yet computed.
    pub fn terminal_phase(&self) -> Option<(i64, i64)> {
        crate::run_figures::terminal_phase_span(&self.run_dir)
    }

    /// The ID test and OOD scores of `detector` at `epoch` under the headline
    /// protocol's choice: (label, ID scores, per OOD set), for histograms and ROC curves.
    pub fn detector_scores(
        &self,
        sets: &EvalSets,
        epoch: i64,
        detector: &str,
    ) -> Result<(String, Vec<f64>, crate::run_figures::NamedScores)> {
        crate::run_figures::detector_scores(&self.run_dir, epoch, sets, detector, self.device)
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
