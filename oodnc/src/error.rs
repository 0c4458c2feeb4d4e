//! One error type for the whole crate.
//!
//! Every fallible public function returns [`Result<T>`]. Errors on user input
//! (files, shapes, hyperparameters) are typed variants with a message that
//! names the offending file or value; they never panic.

use std::path::PathBuf;

/// The crate-wide result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in oodnc.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error, with the path it happened on.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file exists but its content is not what its format requires.
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },

    /// A dataset or checkpoint that should be on disk is not.
    #[error("{what} not found at {path}{hint}")]
    Missing {
        what: String,
        path: PathBuf,
        /// Extra advice, starting with a separator (e.g. "; run `oodnc data synth`").
        hint: String,
    },

    /// A download failed or produced the wrong bytes.
    #[error("download of {url} failed: {reason}\n  expected file: {file}\n  without internet, place it by hand at: {dest}")]
    Download { url: String, file: String, dest: PathBuf, reason: String },

    /// A checksum did not match.
    #[error("{path}: checksum mismatch (expected {expected}, got {actual})")]
    Checksum { path: PathBuf, expected: String, actual: String },

    /// Tensors or arrays whose shapes do not fit together.
    #[error("shape mismatch in {context}: {detail}")]
    Shape { context: String, detail: String },

    /// A hyperparameter or option outside its valid range.
    #[error("invalid value for {name}: {reason}")]
    InvalidParam { name: String, reason: String },

    /// Input data that cannot be used as it is (NaN, empty set, missing class, ...).
    #[error("invalid data for {context}: {reason}")]
    InvalidData { context: String, reason: String },

    /// A numerical failure (singular matrix, failed decomposition, ...).
    #[error("numerical problem in {context}: {reason}")]
    Numerical { context: String, reason: String },

    /// A configuration file that cannot be parsed or resolved.
    #[error("config {path}: {reason}")]
    Config { path: PathBuf, reason: String },

    /// A name looked up in a registry (detector, dataset, profile) that does not exist.
    #[error("unknown {kind} '{name}'; known: {known}")]
    Unknown { kind: String, name: String, known: String },

    /// An error raised inside libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),

    /// A DataFrame operation failed.
    #[error("polars: {0}")]
    Polars(#[from] polars::error::PolarsError),

    /// A figure could not be drawn.
    #[error("plot: {0}")]
    Plot(String),

    /// The user interrupted a long job; the state on disk is consistent.
    #[error("interrupted; every completed epoch is saved{resume}")]
    Interrupted {
        /// How to continue, starting with a separator (e.g. "; resume with `oodnc train ...`").
        resume: String,
    },

    /// Another process holds the run's lock (one writer per run).
    #[error("run {run} is busy: {what} by process {} (lock {lock}); wait for it to finish or stop it", pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()))]
    Locked { run: PathBuf, what: String, pid: Option<u32>, lock: PathBuf },

    /// A run's config no longer matches what its checkpoints were trained with.
    #[error("run {run}: config.toml no longer matches {file}: {fields}.\n  {fix}")]
    ConfigMismatch { run: PathBuf, file: PathBuf, fields: String, fix: String },

    /// Training produced a non-finite loss; nothing of that epoch was written.
    #[error("training diverged in run {run}: loss is {value} at epoch {epoch}, batch {batch}; nothing of epoch {epoch} was saved. Lower train.lr or check train.weight_decay, then train under a new run name (or resume this one from epoch {})", epoch - 1)]
    Diverged { run: PathBuf, epoch: i64, batch: i64, value: String },
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// A format error for `path`.
    pub fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Format { path: path.into(), reason: reason.into() }
    }

    /// A shape error.
    pub fn shape(context: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Shape { context: context.into(), detail: detail.into() }
    }

    /// An invalid hyperparameter.
    pub fn param(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidParam { name: name.into(), reason: reason.into() }
    }

    /// Invalid input data.
    pub fn data(context: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidData { context: context.into(), reason: reason.into() }
    }

    /// A numerical failure.
    pub fn numerical(context: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Numerical { context: context.into(), reason: reason.into() }
    }
}

/// Adds the path to `std::io::Result`s.
pub trait IoContext<T> {
    /// Attaches `path` to an I/O error.
    fn at(self, path: impl AsRef<std::path::Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl AsRef<std::path::Path>) -> Result<T> {
        self.map_err(|e| Error::io(path.as_ref(), e))
    }
}
