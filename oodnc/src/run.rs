//! A run directory: the [`Run`] type that owns it (config read and checked
//! once, epochs, checkpoints, the model or just its classifier head, the
//! feature cache, the result tables, the locks), the file [`layout`], and the
//! check that its config still matches what its checkpoints were trained with.
//!
//! Layout of `runs/<name>/`:
//! ```text
//! config.toml                  the resolved config (written by `train`)
//! history.csv                  one row per completed epoch
//! state/last.safetensors       the resume state (model, optimizer, epoch, config)
//! checkpoints/epoch_NNN.safetensors (+ .optim.safetensors)
//! features/epoch_NNN/<set>.safetensors   the feature cache
//! ood/, nc/                    result tables (merged, never shrunk)
//! .oodnc-train.lock            held by the one process that trains the run
//! .oodnc-tables.lock           held by the one process that writes ood/ or nc/
//! ```
//!
//! Guarantees (each one tested, see the README's table of faults):
//! - a run name is one plain folder name under `--runs` (no `/`, `..`, empty);
//! - one writer: training and table writing take an exclusive `flock` on their
//!   lock file; a second writer gets [`Error::Locked`] naming the holder's PID;
//! - a config that no longer matches its checkpoints is refused with the
//!   differing fields ([`Error::ConfigMismatch`]); only `train.epochs` may grow
//!   (an extension, asked for explicitly with `oodnc train --extend`);
//! - temp files left by a killed writer (`.NAME.tmp-PID`, PID dead) are removed
//!   when a run is opened for writing.

use crate::config::RunConfig;
use crate::error::{Error, IoContext, Result};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Name of the config file of a run.
pub const CONFIG_FILE: &str = "config.toml";

/// Where every file of a run lives (the one place these names are spelled).
pub mod layout {
    use std::path::{Path, PathBuf};

    /// `config.toml`: the resolved config.
    pub fn config(run: &Path) -> PathBuf {
        run.join(super::CONFIG_FILE)
    }
    /// `history.csv`: one row per completed epoch.
    pub fn history(run: &Path) -> PathBuf {
        run.join("history.csv")
    }
    /// `state/last.safetensors`: the resume state.
    pub fn state(run: &Path) -> PathBuf {
        run.join("state").join("last.safetensors")
    }
    /// The checkpoints folder.
    pub fn checkpoints(run: &Path) -> PathBuf {
        run.join("checkpoints")
    }
    /// `checkpoints/epoch_NNN.safetensors`.
    pub fn checkpoint(run: &Path, epoch: i64) -> PathBuf {
        checkpoints(run).join(format!("epoch_{epoch:03}.safetensors"))
    }
    /// `checkpoints/epoch_NNN.optim.safetensors`: the optimizer state beside a checkpoint.
    pub fn optimizer(run: &Path, epoch: i64) -> PathBuf {
        checkpoints(run).join(format!("epoch_{epoch:03}.optim.safetensors"))
    }
    /// `checkpoints/best.json`: the epoch with the best validation accuracy.
    pub fn best(run: &Path) -> PathBuf {
        checkpoints(run).join("best.json")
    }
    /// `features/epoch_NNN/<set>.safetensors`: the feature cache.
    pub fn features(run: &Path, epoch: i64, set: &str) -> PathBuf {
        run.join("features").join(format!("epoch_{epoch:03}")).join(format!("{set}.safetensors"))
    }
    /// A result table.
    pub fn table(run: &Path, t: super::Table) -> PathBuf {
        run.join(t.rel())
    }
}

/// The result tables of a run (merged, never shrunk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `ood/metrics.csv`: epoch, detector, dataset, metric, value, ci_low, ci_high.
    OodMetrics,
    /// `ood/selection.json`: the chosen hyperparameters with every candidate's validation AUROC.
    OodSelection,
    /// `ood/significance.csv`: each detector against the best by AUROC per (epoch, dataset)
    /// (DeLong, Holm-adjusted, tied flag).
    OodSignificance,
    /// `nc/metrics.csv`: epoch, layer, dataset, metric, value (penultimate layer).
    NcMetrics,
    /// `nc/layers.csv`: the same for every layer.
    NcLayers,
    /// `nc/terminal_phase.json`.
    TerminalPhase,
    /// `interp/layers.csv`: probes, selectivity, privileged basis, dimensionality per layer (`oodnc interp`).
    InterpLayers,
    /// `interp/ablation.csv`: subspace ablations; the `layer` column holds the subspace.
    InterpAblation,
}

impl Table {
    /// Path relative to the run folder.
    pub fn rel(self) -> &'static str {
        match self {
            Table::OodMetrics => "ood/metrics.csv",
            Table::OodSelection => "ood/selection.json",
            Table::OodSignificance => "ood/significance.csv",
            Table::NcMetrics => "nc/metrics.csv",
            Table::NcLayers => "nc/layers.csv",
            Table::TerminalPhase => "nc/terminal_phase.json",
            Table::InterpLayers => "interp/layers.csv",
            Table::InterpAblation => "interp/ablation.csv",
        }
    }
}

/// An existing run, opened for analysis: its config read once, validated, and
/// checked against the resume state and every checkpoint ([`read_config`]).
/// Extraction, the OOD and NC studies, figures, the CLI and the notebooks all
/// reach the run's files through it.
///
/// ```no_run
/// let run = oodnc::run::Run::open_named("runs".as_ref(), "demo")?;
/// let last = run.last_epoch()?;
/// let (w, b) = run.head(last)?; // the classifier, without building the network
/// println!("{} epochs, head {:?}", run.epochs()?.len(), w.size());
/// # Ok::<(), oodnc::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Run {
    dir: PathBuf,
    cfg: RunConfig,
}

impl Run {
    /// Opens the run in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        let cfg = read_config(&dir)?;
        Ok(Run { dir, cfg })
    }

    /// Opens `runs/<name>` ([`validate_name`] first).
    pub fn open_named(runs: &Path, name: &str) -> Result<Self> {
        Self::open(run_dir(runs, name)?)
    }

    /// The run folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The run's name (its folder name).
    pub fn name(&self) -> String {
        self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// The config (as checked against the checkpoints).
    pub fn config(&self) -> &RunConfig {
        &self.cfg
    }

    /// The training history.
    pub fn history(&self) -> Result<crate::train::History> {
        crate::train::History::read(layout::history(&self.dir))
    }

    /// Epochs with a checkpoint, ascending.
    pub fn epochs(&self) -> Result<Vec<i64>> {
        available_epochs(&self.dir)
    }

    /// The last epoch with a checkpoint.
    pub fn last_epoch(&self) -> Result<i64> {
        self.epochs()?.last().copied().ok_or_else(|| Error::Missing {
            what: "any checkpoint".into(),
            path: layout::checkpoints(&self.dir),
            hint: "; train first (`oodnc train` or notebook 01)".into(),
        })
    }

    /// `wanted` checked against the checkpoints (every epoch when empty).
    pub fn select_epochs(&self, wanted: &[i64]) -> Result<Vec<i64>> {
        let avail = self.epochs()?;
        if avail.is_empty() {
            self.last_epoch()?;
        }
        if wanted.is_empty() {
            return Ok(avail);
        }
        if let Some(e) = wanted.iter().find(|e| !avail.contains(e)) {
            return Err(Error::param("--epochs", format!("no checkpoint of epoch {e} in {}; available: {avail:?}", self.dir.display())));
        }
        Ok(wanted.to_vec())
    }

    /// Epochs from the CLI's `all | last | 5,10` syntax, checked.
    pub fn parse_epochs(&self, spec: &str) -> Result<Vec<i64>> {
        match spec.trim() {
            "all" => self.select_epochs(&[]),
            "last" => Ok(vec![self.last_epoch()?]),
            list => {
                let eps = list
                    .split(',')
                    .map(|x| {
                        x.trim().parse::<i64>().map_err(|_| {
                            Error::param("--epochs", format!("'{x}' is not an epoch number (use all, last or a list like 5,10)"))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                if eps.is_empty() {
                    return Err(Error::param("--epochs", "is empty"));
                }
                self.select_epochs(&eps)
            }
        }
    }

    /// The checkpoint file of `epoch`.
    pub fn checkpoint(&self, epoch: i64) -> PathBuf {
        layout::checkpoint(&self.dir, epoch)
    }

    /// The network at `epoch` (with the checkpoint's metadata).
    pub fn model(
        &self,
        epoch: i64,
        device: tch::Device,
    ) -> Result<(tch::nn::VarStore, crate::model::ResNet18, crate::model::CheckpointMeta)> {
        load_run_model(&self.dir, epoch, device)
    }

    /// The classifier weight `[C, D]` and bias `[C]` at `epoch` (f32, CPU), read
    /// from the checkpoint without building the network.
    pub fn head(&self, epoch: i64) -> Result<(tch::Tensor, tch::Tensor)> {
        let p = self.checkpoint(epoch);
        if !p.exists() {
            return Err(Error::Missing { what: format!("checkpoint of epoch {epoch}"), path: p, hint: "; train first".into() });
        }
        check_recorded(&self.dir, &p, &self.cfg, Allow { more_epochs: true })?;
        let mut l = crate::tensor_io::load(&p)?;
        let w = l.take(&p, "fc.weight")?.to_kind(tch::Kind::Float);
        let (c, d) = (self.cfg.model.num_classes, self.cfg.model.feature_dim());
        if w.size() != [c, d] {
            return Err(Error::shape(
                format!("checkpoint {}", p.display()),
                format!("fc.weight is {:?}, the config says [{c}, {d}]", w.size()),
            ));
        }
        let b = match l.take(&p, "fc.bias") {
            Ok(b) => b.to_kind(tch::Kind::Float),
            Err(_) => tch::Tensor::zeros([c], (tch::Kind::Float, tch::Device::Cpu)),
        };
        Ok((w, b))
    }

    /// The evaluation sets of the run's config (ID splits, OOD sets, OOD-val).
    pub fn eval_sets(&self) -> Result<crate::data::protocol::EvalSets> {
        crate::data::protocol::load_eval_sets(&self.cfg)
    }

    /// Features of `data` at `epoch`, from the run's feature cache (see [`crate::features::cached`]).
    pub fn features(
        &self,
        epoch: i64,
        data: &crate::data::Dataset,
        opts: crate::features::ExtractOptions,
        device: tch::Device,
    ) -> Result<crate::features::FeatureSet> {
        crate::features::cached(&self.dir, epoch, data, opts, device)
    }

    /// Where this run's figures go: `<figures_root>/<name>/` (figures live beside
    /// the runs, e.g. `figures/demo/`, so they can be committed without the run).
    pub fn figures_dir(&self, figures_root: &Path) -> PathBuf {
        figures_root.join(self.name())
    }

    /// The path of a result table.
    pub fn table(&self, t: Table) -> PathBuf {
        layout::table(&self.dir, t)
    }

    /// The lock for writing result tables; removes temp files of dead writers.
    pub fn lock_tables(&self) -> Result<RunLock> {
        let lock = RunLock::acquire(&self.dir, LockKind::Tables)?;
        for p in clean_stale_temps(&self.dir)? {
            eprintln!("removed a temp file left by a stopped writer: {}", p.display());
        }
        Ok(lock)
    }
}

/// Checks that `name` is one plain folder name: not empty, no path separator,
/// not `.`/`..`, no leading `.` (hidden), no control characters.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::param("--run", format!("'{name}' {why}; a run name is one folder name under --runs, e.g. `demo` or `seed-1`")))
    };
    if name.trim().is_empty() {
        return bad("is empty");
    }
    if name.contains('/') || name.contains('\\') {
        return bad("contains a path separator");
    }
    if name == "." || name == ".." || name.starts_with('.') {
        return bad("starts with '.'");
    }
    if name.chars().any(|c| c.is_control()) {
        return bad("contains a control character");
    }
    Ok(())
}

/// `runs/<name>` after [`validate_name`].
pub fn run_dir(runs: &Path, name: &str) -> Result<PathBuf> {
    validate_name(name)?;
    Ok(runs.join(name))
}

/// What a lock protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// Training (checkpoints, state, history, config).
    Train,
    /// The result tables under `ood/` and `nc/`.
    Tables,
}

impl LockKind {
    fn file_name(self) -> &'static str {
        match self {
            LockKind::Train => ".oodnc-train.lock",
            LockKind::Tables => ".oodnc-tables.lock",
        }
    }

    fn what(self) -> &'static str {
        match self {
            LockKind::Train => "training",
            LockKind::Tables => "writing result tables",
        }
    }
}

/// An exclusive `flock` on a run's lock file, released when dropped (and by the
/// kernel when the process dies, so a killed writer never leaves a stale lock).
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
    pub path: PathBuf,
}

impl RunLock {
    /// Takes the `kind` lock of `run_dir` (created if needed) without waiting.
    pub fn acquire(run_dir: &Path, kind: LockKind) -> Result<Self> {
        ensure_dir(run_dir, "run folder")?;
        let path = run_dir.join(kind.file_name());
        let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).at(&path)?;
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut s = String::new();
                let _ = file.read_to_string(&mut s);
                return Err(Error::Locked { run: run_dir.to_path_buf(), what: kind.what().into(), pid: s.trim().parse().ok(), lock: path });
            }
            return Err(Error::io(&path, err));
        }
        file.set_len(0).at(&path)?;
        file.rewind().at(&path)?;
        writeln!(file, "{}", std::process::id()).at(&path)?;
        file.flush().at(&path)?;
        Ok(RunLock { _file: file, path })
    }
}

/// Creates `dir` (and parents), with a clear error when a path component is a file.
pub fn ensure_dir(dir: &Path, what: &str) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(Error::data(what, format!("{} is a file, not a folder; move it away or choose another path", dir.display())));
    }
    match std::fs::create_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) => {
            // A parent that is a file gives EEXIST/ENOTDIR: name it.
            let mut p = dir.to_path_buf();
            while p.pop() {
                if p.is_file() {
                    return Err(Error::data(
                        what,
                        format!("{} is a file, so {} cannot be created; move it away or choose another path", p.display(), dir.display()),
                    ));
                }
            }
            Err(Error::io(dir, e))
        }
    }
}

/// True while process `pid` exists (on Linux, `kill(pid, 0)`).
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The PID of a temp file written by [`crate::util::write_atomic`]
/// (`.NAME.tmp-PID`), if `name` is one.
pub fn temp_file_pid(name: &str) -> Option<u32> {
    if !name.starts_with('.') {
        return None;
    }
    let (_, pid) = name.rsplit_once(".tmp-")?;
    pid.parse().ok()
}

/// Removes, under `dir` (recursively), the temp files of [`crate::util::write_atomic`]
/// whose writer process is gone (killed, or stopped by a full disk). Returns
/// the removed paths. Files of live processes and every other file are kept.
pub fn clean_stale_temps(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = temp_file_pid(&name) {
                    if !pid_alive(pid) {
                        std::fs::remove_file(&p).at(&p)?;
                        removed.push(p);
                    }
                }
            }
        }
    }
    Ok(removed)
}

/// Dotted paths of the fields whose values differ between two configs, e.g.
/// `["train.lr", "data.split.seed"]` (`a` and `b` as TOML tables).
pub fn config_diff(a: &toml::Value, b: &toml::Value) -> Vec<String> {
    fn walk(prefix: &str, a: Option<&toml::Value>, b: Option<&toml::Value>, out: &mut Vec<String>) {
        match (a, b) {
            (Some(toml::Value::Table(ta)), Some(toml::Value::Table(tb))) => {
                let mut keys: Vec<&String> = ta.keys().chain(tb.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&p, ta.get(k), tb.get(k), out);
                }
            }
            (x, y) if x == y => {}
            _ => out.push(prefix.to_string()),
        }
    }
    let mut out = Vec::new();
    walk("", Some(a), Some(b), &mut out);
    out
}

fn value_at<'a>(v: &'a toml::Value, dotted: &str) -> Option<&'a toml::Value> {
    dotted.split('.').try_fold(v, |v, k| v.get(k))
}

/// The config a checkpoint or state file records: the TOML text (written since
/// the config check exists) or, for older files, only its hash.
#[derive(Debug, Clone)]
pub enum Recorded {
    Config(Box<RunConfig>),
    Hash(String),
    /// A file with neither (e.g. a plain PyTorch state dict).
    Nothing,
}

/// Reads what the file at `path` (a checkpoint or the resume state) records
/// about its config, from the safetensors header only (no tensor is read).
pub fn recorded_config(path: &Path) -> Result<Recorded> {
    let md = crate::tensor_io::read_metadata(path)?;
    if let Some(text) = md.get("config") {
        let cfg: RunConfig = toml::from_str(text).map_err(|e| Error::format(path, format!("recorded config: {e}")))?;
        return Ok(Recorded::Config(Box::new(cfg)));
    }
    if let Some(h) = md.get("config_hash") {
        return Ok(Recorded::Hash(h.clone()));
    }
    if let Some(json) = md.get("oodnc") {
        if let Ok(meta) = serde_json::from_str::<crate::model::CheckpointMeta>(json) {
            if !meta.config_hash.is_empty() {
                return Ok(Recorded::Hash(meta.config_hash));
            }
        }
    }
    Ok(Recorded::Nothing)
}

/// Which differences between a recorded config and the current one are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Allow {
    /// `train.epochs` may be larger now than when the file was written.
    pub more_epochs: bool,
}

/// Checks `current` against what `file` records; `Ok(())` when they match
/// (up to what `allow` accepts), else [`Error::ConfigMismatch`] naming every
/// differing field with both values and what to do.
pub fn check_recorded(run_dir: &Path, file: &Path, current: &RunConfig, allow: Allow) -> Result<()> {
    let fix = format!(
        "restore {} to the values the checkpoints were trained with, or train under a new run name (`oodnc train --run NEW ...`); \
         to train a finished run for more epochs, `oodnc train --run NAME --resume --epochs N --extend`",
        run_dir.join(CONFIG_FILE).display()
    );
    match recorded_config(file)? {
        Recorded::Nothing => Ok(()),
        Recorded::Hash(h) => {
            if h == current.hash() {
                Ok(())
            } else {
                Err(Error::ConfigMismatch {
                    run: run_dir.to_path_buf(),
                    file: file.to_path_buf(),
                    fields: "(not recorded in this older checkpoint: only its config hash differs)".into(),
                    fix,
                })
            }
        }
        Recorded::Config(rec) => {
            let (a, b) = (to_value(&rec)?, to_value(current)?);
            let diff: Vec<String> = config_diff(&a, &b)
                .into_iter()
                // The OOD study's settings change no checkpoint.
                .filter(|f| f != "ood" && !f.starts_with("ood."))
                .filter(|f| !(allow.more_epochs && f == "train.epochs" && current.train.epochs >= rec.train.epochs))
                .collect();
            if diff.is_empty() {
                return Ok(());
            }
            let fields = diff
                .iter()
                .map(|f| {
                    let show = |v: Option<&toml::Value>| v.map(|v| v.to_string()).unwrap_or_else(|| "(absent)".into());
                    format!("{f}: {} in the checkpoint, {} now", show(value_at(&a, f)), show(value_at(&b, f)))
                })
                .collect::<Vec<_>>()
                .join("; ");
            Err(Error::ConfigMismatch { run: run_dir.to_path_buf(), file: file.to_path_buf(), fields, fix })
        }
    }
}

fn to_value(cfg: &RunConfig) -> Result<toml::Value> {
    toml::Value::try_from(cfg).map_err(|e| Error::data("config", e.to_string()))
}

/// Reads `runs/<name>/config.toml` for analysis (extract, ood, nc, figures) and
/// checks it against the resume state and every checkpoint of the run: a
/// config edited after training is refused. A grown `train.epochs` (an
/// extended run) is accepted.
pub fn read_config(run_dir: &Path) -> Result<RunConfig> {
    let path = layout::config(run_dir);
    if !path.exists() {
        return Err(Error::Missing {
            what: format!("run '{}'", run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()),
            path,
            hint: "; train first (`oodnc train --run NAME` or notebook 01), or check --run / --runs".into(),
        });
    }
    let cfg = RunConfig::read(&path)?;
    let allow = Allow { more_epochs: true };
    let state = layout::state(run_dir);
    if state.exists() {
        check_recorded(run_dir, &state, &cfg, allow)?;
    }
    for e in available_epochs(run_dir).unwrap_or_default() {
        check_recorded(run_dir, &layout::checkpoint(run_dir, e), &cfg, allow)?;
    }
    Ok(cfg)
}

/// Loads the model of a run at `epoch` (for extraction and analysis).
pub fn load_run_model(
    run_dir: &Path,
    epoch: i64,
    device: tch::Device,
) -> Result<(tch::nn::VarStore, crate::model::ResNet18, crate::model::CheckpointMeta)> {
    let cfg = RunConfig::read(layout::config(run_dir))?;
    let mut vs = tch::nn::VarStore::new(device);
    let model = crate::model::ResNet18::new(&vs.root(), cfg.model)?;
    let meta = crate::model::load_checkpoint(layout::checkpoint(run_dir, epoch), &mut vs)?;
    check_recorded(run_dir, &layout::checkpoint(run_dir, epoch), &cfg, Allow { more_epochs: true })?;
    Ok((vs, model, meta))
}

/// Epochs that have a checkpoint in a run, ascending (real epoch numbers only).
pub fn available_epochs(run_dir: &Path) -> Result<Vec<i64>> {
    let dir = layout::checkpoints(run_dir);
    let rd = std::fs::read_dir(&dir).map_err(|_| Error::Missing {
        what: "checkpoints folder".into(),
        path: dir.clone(),
        hint: "; train first (`oodnc train` or notebook 01)".into(),
    })?;
    let mut v = Vec::new();
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = n.strip_prefix("epoch_").and_then(|s| s.strip_suffix(".safetensors")) else { continue };
        if stem.ends_with(".optim") {
            continue;
        }
        let Ok(epoch) = stem.parse::<i64>() else {
            return Err(Error::format(
                dir.join(&n),
                "not a checkpoint name (epoch_NNN.safetensors); move it out of the checkpoints folder",
            ));
        };
        let canonical = layout::checkpoint(run_dir, epoch);
        if epoch < 0 || canonical.file_name() != Some(e.file_name().as_os_str()) {
            return Err(Error::format(
                dir.join(&n),
                format!("checkpoint names have three digits or more; rename it to {}", canonical.display()),
            ));
        }
        v.push(epoch);
    }
    v.sort_unstable();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_plain_components() {
        for ok in ["demo", "seed-1", "a.b", "run_2"] {
            validate_name(ok).unwrap();
        }
        for bad in ["", " ", ".", "..", "../x", "/abs", "a/b", ".hidden", "a\nb"] {
            assert!(matches!(validate_name(bad), Err(Error::InvalidParam { .. })), "{bad:?}");
        }
    }

    #[test]
    fn temp_names_carry_the_pid() {
        assert_eq!(temp_file_pid(".history.csv.tmp-123"), Some(123));
        assert_eq!(temp_file_pid("history.csv.tmp-123"), None);
        assert_eq!(temp_file_pid(".notes.txt"), None);
    }

    #[test]
    fn config_diff_names_nested_fields() {
        let a = RunConfig::profile("ci").unwrap();
        let mut b = a.clone();
        b.train.lr = 0.2;
        b.data.split = crate::data::SplitProtocol::Seeded { n_val: 100, seed: 5 };
        let d = config_diff(&to_value(&a).unwrap(), &to_value(&b).unwrap());
        assert_eq!(d, vec!["data.split.seed".to_string(), "train.lr".to_string()]);
    }
}
