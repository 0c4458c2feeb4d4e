//! The training loop.

use super::history::{EpochRecord, History};
use super::sgd::Sgd;
use super::writer::{BackgroundWriter, FileOp};
use crate::config::{FastPath, LrStep, RunConfig};
use crate::data::protocol::RunData;
use crate::data::BatchLoader;
use crate::error::{Error, IoContext, Result};
use crate::model::{encode_checkpoint, CheckpointMeta, ResNet18};
use crate::progress::Progress;
use crate::tensor_io;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Set by the CLI's SIGINT handler; the loop stops at the next batch boundary.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Cosine annealing (SGDR without restarts, eta_min = 0): the learning rate at
/// position `t` of `t_max` is `0.5 * lr0 * (1 + cos(pi * t / t_max))`.
/// With per-epoch stepping, epoch k (1-based) uses `t = k - 1`, so the first
/// epoch trains at `lr0` and the logged post-step value after the last is 0,
/// exactly like PyTorch's `CosineAnnealingLR(T_max = epochs)` stepped per epoch.
pub fn cosine_lr(lr0: f64, t: f64, t_max: f64) -> f64 {
    0.5 * lr0 * (1.0 + (std::f64::consts::PI * t / t_max).cos())
}

/// One optimisation step: forward (under autocast when `fast.autocast` is set,
/// on a channels-last copy of `images` when `fast.channels_last`), cross-entropy in
/// f32, backward, SGD update with learning rate `lr`. Returns the loss and the
/// f32 logits, both still attached to the graph (detach what you keep).
pub fn train_step(model: &ResNet18, opt: &mut Sgd, images: &Tensor, labels: &Tensor, lr: f64, fast: FastPath) -> Result<(Tensor, Tensor)> {
    let x = if fast.channels_last { crate::amp::channels_last(images) } else { images.shallow_clone() };
    let logits = crate::amp::autocast(images.device(), fast.autocast, || model.forward_t(&x, true))??.to_kind(Kind::Float);
    let loss = logits.cross_entropy_for_logits(labels);
    opt.zero_grad()?;
    loss.f_backward()?;
    opt.step(lr)?;
    Ok((loss, logits))
}

/// What a call to [`Trainer::fit`] did.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub run_dir: PathBuf,
    pub epochs_done: i64,
    pub epochs_total: i64,
    pub best_epoch: i64,
    pub best_val_acc: f64,
    pub final_test_acc: f64,
    pub trained_now: i64,
}

/// A model, its optimizer and its run directory.
pub struct Trainer {
    pub cfg: RunConfig,
    pub run_dir: PathBuf,
    pub vs: VarStore,
    pub model: ResNet18,
    pub opt: Sgd,
    pub history: History,
    pub device: Device,
    /// Writes each epoch's files while the next epoch trains.
    writer: BackgroundWriter,
    /// One writer per run: held from `open` until the trainer is dropped.
    _lock: crate::run::RunLock,
}

fn state_path(run_dir: &Path) -> PathBuf {
    crate::run::layout::state(run_dir)
}

/// Path of the optimizer state saved beside the checkpoint of `epoch`.
pub fn optimizer_path(run_dir: &Path, epoch: i64) -> PathBuf {
    crate::run::layout::optimizer(run_dir, epoch)
}

/// Path of the checkpoint of `epoch` in a run.
pub fn checkpoint_path(run_dir: &Path, epoch: i64) -> PathBuf {
    crate::run::layout::checkpoint(run_dir, epoch)
}

impl Trainer {
    /// Opens `run_dir`: resumes from its last state when it has one, else starts
    /// a new run with `cfg`. The config must match what the run's state and
    /// checkpoints were trained with (see [`open_with`](Self::open_with)).
    pub fn open(cfg: RunConfig, run_dir: impl AsRef<Path>, device: Device) -> Result<Self> {
        Self::open_with(cfg, run_dir, device, crate::run::Allow::default())
    }

    /// [`open`](Self::open), accepting the differences `allow` names (e.g. a
    /// larger `train.epochs` to extend a run). Takes the run's training lock
    /// (a second trainer of the same run gets [`Error::Locked`]) and removes
    /// temp files left by killed writers.
    pub fn open_with(cfg: RunConfig, run_dir: impl AsRef<Path>, device: Device, allow: crate::run::Allow) -> Result<Self> {
        cfg.validate()?;
        let run_dir = run_dir.as_ref().to_path_buf();
        let lock = crate::run::RunLock::acquire(&run_dir, crate::run::LockKind::Train)?;
        for p in crate::run::clean_stale_temps(&run_dir)? {
            eprintln!("removed a temp file left by a stopped writer: {}", p.display());
        }
        let cfg_path = run_dir.join(crate::run::CONFIG_FILE);
        // What the run was trained with: the resume state, else any checkpoint.
        let recorded = std::iter::once(state_path(&run_dir))
            .chain(available_epochs(&run_dir).unwrap_or_default().into_iter().map(|e| checkpoint_path(&run_dir, e)))
            .find(|p| p.exists());
        if let Some(file) = &recorded {
            crate::run::check_recorded(&run_dir, file, &cfg, allow)?;
        }
        if cfg_path.exists() && !cfg_path.is_file() {
            return Err(Error::data("run", format!("{} is not a file", cfg_path.display())));
        }
        std::fs::create_dir_all(run_dir.join("checkpoints")).at(&run_dir)?;
        crate::util::write_atomic(&cfg_path, cfg.to_toml()?.as_bytes())?;
        tch::manual_seed(cfg.seed as i64);
        let vs = VarStore::new(device);
        let model = ResNet18::new(&vs.root(), cfg.model)?;
        if cfg.train.fast_path(device).channels_last {
            crate::amp::convert_channels_last(&vs);
        }
        let params: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        let t = &cfg.train;
        let opt = Sgd::new(
            params,
            super::sgd::SgdConfig {
                momentum: t.momentum,
                weight_decay: t.weight_decay,
                nesterov: t.nesterov,
                decay_bn_and_bias: t.decay_bn_and_bias,
            },
        );
        let mut tr =
            Trainer { cfg, run_dir, vs, model, opt, history: History::default(), device, writer: BackgroundWriter::default(), _lock: lock };
        if state_path(&tr.run_dir).exists() {
            tr.load_state()?;
        }
        if tr.epochs_done() > tr.cfg.train.epochs {
            return Err(Error::param(
                "train.epochs",
                format!("{} but the run has already trained {} epochs", tr.cfg.train.epochs, tr.epochs_done()),
            ));
        }
        Ok(tr)
    }

    /// The command that resumes this run (for messages).
    fn resume_hint(&self) -> String {
        let name = self.run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let runs = self.run_dir.parent().map(|p| p.display().to_string()).unwrap_or_default();
        let runs = if runs.is_empty() || runs == "runs" { String::new() } else { format!(" --runs {runs}") };
        format!("; resume with `oodnc train --run {name}{runs} --resume`")
    }

    /// Completed epochs.
    pub fn epochs_done(&self) -> i64 {
        self.history.records.last().map(|r| r.epoch).unwrap_or(0)
    }

    /// `history.csv`, then the resume state (model, optimizer, epoch, steps).
    /// In this order a kill between the two leaves the history ahead of the
    /// state, which resuming handles (it drops the extra rows); the reverse
    /// order would leave a run that cannot resume.
    fn state_ops(&self) -> Result<Vec<FileOp>> {
        let mut tensors: Vec<(String, Tensor)> = self.vs.variables().into_iter().map(|(n, t)| (format!("model.{n}"), t)).collect();
        tensors.extend(self.opt.state().into_iter().map(|(n, t)| (format!("optim.{n}"), t)));
        let mut md = BTreeMap::new();
        md.insert("epoch".into(), self.epochs_done().to_string());
        md.insert("steps".into(), self.opt.steps.to_string());
        md.insert("config_hash".into(), self.cfg.hash());
        md.insert("config".into(), self.cfg.to_toml()?);
        Ok(vec![
            FileOp::Bytes(crate::run::layout::history(&self.run_dir), self.history.to_csv().into_bytes()),
            FileOp::Safetensors(state_path(&self.run_dir), tensor_io::encode(&tensors, &md)?),
        ])
    }

    fn load_state(&mut self) -> Result<()> {
        let p = state_path(&self.run_dir);
        let mut loaded = tensor_io::load(&p)?;
        let epoch: i64 = loaded.meta(&p, "epoch")?.parse().map_err(|_| Error::format(&p, "bad epoch"))?;
        let steps: i64 = loaded.meta(&p, "steps")?.parse().map_err(|_| Error::format(&p, "bad steps"))?;
        let mut vars = self.vs.variables();
        for (name, var) in vars.iter_mut() {
            let src = loaded.take(&p, &format!("model.{name}"))?;
            if src.size() != var.size() {
                return Err(Error::shape(format!("state {}", p.display()), format!("{name}: {:?} vs {:?}", src.size(), var.size())));
            }
            tch::no_grad(|| var.f_copy_(&src))?;
        }
        let optim: BTreeMap<String, Tensor> =
            loaded.tensors.into_iter().filter_map(|(n, t)| n.strip_prefix("optim.").map(|s| (s.to_string(), t))).collect();
        self.opt.load_state(optim, steps)?;
        let hist = History::read(crate::run::layout::history(&self.run_dir))?;
        if hist.records.last().map(|r| r.epoch).unwrap_or(0) < epoch {
            return Err(Error::format(&p, format!("state is at epoch {epoch} but history.csv is behind")));
        }
        self.history = History { records: hist.records.into_iter().filter(|r| r.epoch <= epoch).collect() };
        Ok(())
    }

    /// The checkpoint of `epoch` and, beside it, the optimizer state (momentum
    /// buffers and step count), so that training can branch from any checkpoint.
    fn checkpoint_ops(&self, epoch: i64, metrics: BTreeMap<String, f64>) -> Result<Vec<FileOp>> {
        let meta = CheckpointMeta { epoch, seed: self.cfg.seed, config_hash: self.cfg.hash(), model: Some(self.cfg.model), metrics };
        let mut md = BTreeMap::new();
        md.insert("epoch".into(), epoch.to_string());
        md.insert("steps".into(), self.opt.steps.to_string());
        md.insert("config_hash".into(), self.cfg.hash());
        let config = self.cfg.to_toml()?;
        md.insert("config".into(), config.clone());
        Ok(vec![
            FileOp::Safetensors(checkpoint_path(&self.run_dir, epoch), encode_checkpoint(&self.vs, &meta)?.with_metadata("config", config)),
            FileOp::Safetensors(optimizer_path(&self.run_dir, epoch), tensor_io::encode(&self.opt.state(), &md)?),
        ])
    }

    /// Mean loss and accuracy of the model in eval mode over `loader`, in f32.
    pub fn evaluate(&self, loader: &BatchLoader) -> Result<(f64, f64)> {
        let plain = FastPath { autocast: None, channels_last: false, cudnn_benchmark: false };
        self.evaluate_with(loader, plain)
    }

    /// [`evaluate`](Self::evaluate) with the training pass's precision and layout
    /// (what the per-epoch val/test numbers of `history.csv` use).
    pub fn evaluate_with(&self, loader: &BatchLoader, fast: FastPath) -> Result<(f64, f64)> {
        let dev = self.device;
        let mut loss_sum = Tensor::zeros([], (Kind::Double, dev));
        let mut correct = Tensor::zeros([], (Kind::Int64, dev));
        tch::no_grad(|| -> Result<()> {
            for b in loader.epoch(0) {
                let b = b?;
                let x = if fast.channels_last { crate::amp::channels_last(&b.images) } else { b.images };
                let logits = crate::amp::autocast(dev, fast.autocast, || self.model.forward_t(&x, false))??.to_kind(Kind::Float);
                let n = b.labels.size()[0] as f64;
                loss_sum += logits.cross_entropy_for_logits(&b.labels).to_kind(Kind::Double) * n;
                correct += logits.argmax(-1, false).eq_tensor(&b.labels).sum(Kind::Int64);
            }
            Ok(())
        })?;
        let n = loader.len() as f64;
        Ok((loss_sum.double_value(&[]) / n, correct.int64_value(&[]) as f64 / n))
    }

    /// Trains until `until` epochs are done (default: the configured number),
    /// writing history, state and checkpoints after every epoch. A finished run
    /// returns at once. Whatever the outcome (an error, Ctrl-C), every file of
    /// the epochs done is on disk when this returns.
    pub fn fit(&mut self, data: &RunData, until: Option<i64>) -> Result<TrainOutcome> {
        let trained = self.fit_epochs(data, until);
        let written = self.writer.flush();
        let outcome = trained?;
        written.map(|_| outcome)
    }

    fn fit_epochs(&mut self, data: &RunData, until: Option<i64>) -> Result<TrainOutcome> {
        let t = self.cfg.train.clone();
        let target = until.unwrap_or(t.epochs).min(t.epochs);
        if self.epochs_done() == 0 && !checkpoint_path(&self.run_dir, 0).exists() {
            self.writer.submit(self.checkpoint_ops(0, BTreeMap::new())?)?;
        }
        let fast = t.fast_path(self.device);
        if fast.cudnn_benchmark {
            tch::Cuda::cudnn_set_benchmark(true);
        }
        let train_loader = BatchLoader::new(&data.train, t.batch_size, self.device)?.train(self.cfg.seed);
        let val_loader = BatchLoader::new(&data.val, 512, self.device)?;
        let test_loader = BatchLoader::new(&data.test, 512, self.device)?;
        let iters = train_loader.num_batches() as i64;
        let start = self.epochs_done();
        for epoch in (start + 1)..=target {
            let lr_epoch = cosine_lr(t.lr, (epoch - 1) as f64, t.epochs as f64);
            let mut prog = Progress::new(format!("epoch {epoch}/{}", t.epochs), iters as u64);
            let dev = self.device;
            let mut loss_sum = Tensor::zeros([], (Kind::Double, dev));
            let mut correct = Tensor::zeros([], (Kind::Int64, dev));
            let mut seen = 0i64;
            // The first batch whose loss is not finite (-1: none) and that loss,
            // kept on the device and read only where the progress line syncs anyway.
            let mut bad_batch = Tensor::full([], -1i64, (Kind::Int64, dev));
            let mut bad_loss = Tensor::zeros([], (Kind::Double, dev));
            let diverged = |bad_batch: &Tensor, bad_loss: &Tensor| -> Result<()> {
                let b = bad_batch.int64_value(&[]);
                if b < 0 {
                    return Ok(());
                }
                Err(Error::Diverged { run: self.run_dir.clone(), epoch, batch: b + 1, value: format!("{}", bad_loss.double_value(&[])) })
            };
            for (k, batch) in train_loader.epoch(epoch as u64).enumerate() {
                if INTERRUPTED.load(Ordering::SeqCst) {
                    return Err(Error::Interrupted { resume: self.resume_hint() });
                }
                let b = batch?;
                let lr = match t.lr_step {
                    LrStep::Epoch => lr_epoch,
                    LrStep::Iteration => cosine_lr(t.lr, ((epoch - 1) * iters + k as i64) as f64, (t.epochs * iters) as f64),
                };
                let (loss, logits) = train_step(&self.model, &mut self.opt, &b.images, &b.labels, lr, fast)?;
                let n = b.labels.size()[0];
                seen += n;
                tch::no_grad(|| {
                    let l = loss.detach().to_kind(Kind::Double);
                    let new_bad = l.isfinite().logical_not().logical_and(&bad_batch.lt(0));
                    bad_batch = bad_batch.full_like(k as i64).where_self(&new_bad, &bad_batch);
                    bad_loss = l.where_self(&new_bad, &bad_loss);
                    loss_sum += l * n as f64;
                    correct += logits.detach().argmax(-1, false).eq_tensor(&b.labels).sum(Kind::Int64);
                });
                if k % 25 == 0 {
                    diverged(&bad_batch, &bad_loss)?;
                }
                let (ls, c) = (&loss_sum, &correct);
                // Reading the running loss syncs with the device: only every 25 batches.
                prog.inc_throttled(1, k % 25 == 0, || {
                    format!("loss {:.3} acc {:.1}%", ls.double_value(&[]) / seen as f64, 100.0 * c.int64_value(&[]) as f64 / seen as f64)
                });
            }
            let train_secs = prog.elapsed();
            prog.finish();
            diverged(&bad_batch, &bad_loss)?;
            let (val_loss, val_acc) = self.evaluate_with(&val_loader, fast)?;
            let (_, test_acc) = self.evaluate_with(&test_loader, fast)?;
            let rec = EpochRecord {
                epoch,
                lr: lr_epoch,
                train_loss: loss_sum.double_value(&[]) / seen as f64,
                train_acc: correct.int64_value(&[]) as f64 / seen as f64,
                val_loss,
                val_acc,
                test_acc,
                seconds: train_secs,
                images_per_s: seen as f64 / train_secs.max(1e-9),
            };
            println!(
                "epoch {epoch:>3}/{}  lr {:.5}  train loss {:.4} acc {:.2}%  val loss {:.4} acc {:.2}%  test acc {:.2}%  ({:.1}s, {:.0} img/s)",
                t.epochs,
                rec.lr,
                rec.train_loss,
                100.0 * rec.train_acc,
                rec.val_loss,
                100.0 * rec.val_acc,
                100.0 * rec.test_acc,
                rec.seconds,
                rec.images_per_s
            );
            let prev_best = self.history.best_by_val().map(|r| (r.epoch, r.val_acc));
            self.history.records.push(rec.clone());
            let metrics: BTreeMap<String, f64> = [
                ("train_loss", rec.train_loss),
                ("train_acc", rec.train_acc),
                ("val_loss", rec.val_loss),
                ("val_acc", rec.val_acc),
                ("test_acc", rec.test_acc),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            // This epoch's files, written while the next epoch trains.
            let mut ops = Vec::new();
            if self.cfg.is_checkpoint_epoch(epoch) {
                ops.extend(self.checkpoint_ops(epoch, metrics.clone())?);
            }
            // Best by validation accuracy, kept under its real epoch number.
            if prev_best.map(|(_, a)| rec.val_acc > a).unwrap_or(true) {
                if !self.cfg.is_checkpoint_epoch(epoch) {
                    ops.extend(self.checkpoint_ops(epoch, metrics)?);
                }
                if let Some((e, _)) = prev_best {
                    if !self.cfg.is_checkpoint_epoch(e) {
                        ops.push(FileOp::Remove(checkpoint_path(&self.run_dir, e)));
                        ops.push(FileOp::Remove(optimizer_path(&self.run_dir, e)));
                    }
                }
                let best = serde_json::json!({ "epoch": epoch, "val_acc": rec.val_acc });
                ops.push(FileOp::Bytes(crate::run::layout::best(&self.run_dir), best.to_string().into_bytes()));
            }
            ops.extend(self.state_ops()?);
            self.writer.submit(ops)?;
        }
        let best = self.history.best_by_val();
        Ok(TrainOutcome {
            run_dir: self.run_dir.clone(),
            epochs_done: self.epochs_done(),
            epochs_total: t.epochs,
            best_epoch: best.map(|r| r.epoch).unwrap_or(0),
            best_val_acc: best.map(|r| r.val_acc).unwrap_or(0.0),
            final_test_acc: self.history.records.last().map(|r| r.test_acc).unwrap_or(0.0),
            trained_now: self.epochs_done() - start,
        })
    }
}

pub use crate::run::{available_epochs, load_run_model};

#[cfg(test)]
mod tests {
    use super::cosine_lr;

    #[test]
    fn cosine_matches_the_original_log() {
        // After-step values logged by the original (T_max = 300): epoch 1 -> 0.099997, 100 -> 0.075.
        assert!((cosine_lr(0.1, 1.0, 300.0) - 0.099997).abs() < 1e-6);
        assert!((cosine_lr(0.1, 100.0, 300.0) - 0.075).abs() < 1e-9);
        assert!(cosine_lr(0.1, 300.0, 300.0).abs() < 1e-12);
        assert_eq!(cosine_lr(0.1, 0.0, 300.0), 0.1);
    }
}
