//! Run configuration and the two profiles.
//!
//! - `demo`: the embedded procedural dataset (written in the real formats under
//!   `data/synthetic`), a narrow ResNet-18 (width 0.25), a few epochs on the CPU.
//! - `coursework`: CIFAR-100 (+ SVHN / CIFAR-10 / DTD as OOD), the full ResNet-18,
//!   the original recipe: 300 epochs, SGD 0.1, momentum 0.9, wd 5e-4, batch 128,
//!   cosine annealing stepped per epoch; on a GPU.
//! - `ci`: the demo at the smallest size that still exercises everything (tests).
//!
//! Every run writes its resolved config (and so its seeds) to `runs/<name>/config.toml`.

use crate::data::image_folder::Resize;
use crate::data::SplitProtocol;
use crate::error::{Error, Result};
use crate::model::ResNetConfig;
use std::path::{Path, PathBuf};

/// Where the data comes from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataConfig {
    /// `synthetic` (the embedded dataset) or `real` (CIFAR-100 + SVHN/CIFAR-10/DTD).
    pub source: String,
    /// Data root holding the datasets in their real layouts.
    pub root: PathBuf,
    pub split: SplitProtocol,
    /// How Textures images become 32x32.
    pub dtd_resize: Resize,
    /// Sizes of the synthetic dataset (ignored for `real`).
    pub synth: crate::data::synthetic::SynthConfig,
    /// Extra OOD test sets: image folders (`<path>/<class>/<images>` or a flat folder),
    /// resized like Textures. Evaluated by every detector next to the built-in sets.
    #[serde(default)]
    pub extra_ood: Vec<ExtraOod>,
}

/// A user-supplied OOD test set.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExtraOod {
    /// Name used in tables and figures.
    pub name: String,
    /// Folder of images (relative paths are relative to the repository root).
    pub path: PathBuf,
}

/// When the learning rate changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrStep {
    /// Once per epoch, like the original (`CosineAnnealingLR` stepped after each epoch).
    Epoch,
    /// Every iteration, like OpenOOD.
    Iteration,
}

/// The optimisation recipe.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    pub epochs: i64,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    /// Apply weight decay to BN parameters and biases too (the original does).
    pub decay_bn_and_bias: bool,
    pub lr_step: LrStep,
    /// Save a checkpoint every this many epochs (and at 0, the dense early epochs and the last).
    pub checkpoint_every: i64,
    pub dense_checkpoints: Vec<i64>,
    /// On CUDA: cuDNN autotuning, and what `precision` / `channels_last` do on `auto`
    /// (bf16 autocast, channels-last layout).
    pub gpu_fast_path: bool,
    /// Precision of the training pass: `auto` (bf16 autocast on CUDA with the fast
    /// path, f32 elsewhere), `bf16` (everywhere), `fp32`.
    #[serde(default)]
    pub precision: crate::amp::Precision,
    /// Memory layout of images and conv weights: `auto` (channels-last on CUDA with
    /// the fast path), `on`, `off`.
    #[serde(default)]
    pub channels_last: Toggle,
}

/// A switch whose `auto` position depends on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Toggle {
    #[default]
    Auto,
    On,
    Off,
}

/// What the training pass does on a given device, resolved from [`TrainConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastPath {
    /// Autocast dtype (bf16), or `None` for f32.
    pub autocast: Option<tch::Kind>,
    pub channels_last: bool,
    pub cudnn_benchmark: bool,
}

impl TrainConfig {
    /// Resolves the `auto` settings for `device`.
    pub fn fast_path(&self, device: tch::Device) -> FastPath {
        let gpu = device.is_cuda() && self.gpu_fast_path;
        FastPath {
            autocast: self.precision.autocast_kind(device, self.gpu_fast_path),
            channels_last: match self.channels_last {
                Toggle::Auto => gpu,
                Toggle::On => true,
                Toggle::Off => false,
            },
            cudnn_benchmark: gpu,
        }
    }
}

/// A complete run description.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunConfig {
    pub profile: String,
    /// Seed of everything: initialisation, split, shuffling, augmentation.
    pub seed: u64,
    pub data: DataConfig,
    pub model: ResNetConfig,
    pub train: TrainConfig,
}

/// Names of the built-in profiles.
pub const PROFILES: [&str; 3] = ["demo", "coursework", "ci"];

impl RunConfig {
    /// A built-in profile.
    pub fn profile(name: &str) -> Result<Self> {
        let coursework_train = TrainConfig {
            epochs: 300,
            batch_size: 128,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            nesterov: false,
            decay_bn_and_bias: true,
            lr_step: LrStep::Epoch,
            checkpoint_every: 25,
            dense_checkpoints: vec![1, 2, 5, 10],
            gpu_fast_path: true,
            precision: crate::amp::Precision::Auto,
            channels_last: Toggle::Auto,
        };
        let synth = crate::data::synthetic::SynthConfig::default();
        match name {
            "coursework" => Ok(RunConfig {
                profile: name.into(),
                seed: 0,
                data: DataConfig {
                    source: "real".into(),
                    root: PathBuf::from("data"),
                    split: SplitProtocol::Seeded { n_val: 5000, seed: 0 },
                    dtd_resize: Resize::ShortSideCenterCrop,
                    synth,
                    extra_ood: vec![],
                },
                model: ResNetConfig { num_classes: 100, width: 1.0 },
                train: coursework_train,
            }),
            "demo" => Ok(RunConfig {
                profile: name.into(),
                seed: 0,
                data: DataConfig {
                    source: "synthetic".into(),
                    root: PathBuf::from("data/synthetic"),
                    split: SplitProtocol::Seeded { n_val: 500, seed: 0 },
                    dtd_resize: Resize::ShortSideCenterCrop,
                    synth,
                    extra_ood: vec![],
                },
                model: ResNetConfig { num_classes: 10, width: 0.25 },
                train: TrainConfig {
                    epochs: 12,
                    batch_size: 128,
                    lr: 0.05,
                    checkpoint_every: 3,
                    dense_checkpoints: vec![1, 2],
                    ..coursework_train
                },
            }),
            "ci" => Ok(RunConfig {
                profile: name.into(),
                seed: 0,
                data: DataConfig {
                    source: "synthetic".into(),
                    root: PathBuf::from("data/synthetic-ci"),
                    split: SplitProtocol::Seeded { n_val: 100, seed: 0 },
                    dtd_resize: Resize::ShortSideCenterCrop,
                    synth: crate::data::synthetic::SynthConfig {
                        classes: 10,
                        train_per_class: 60,
                        test_per_class: 20,
                        near_per_class: 20,
                        digits_test: 200,
                        textures_per_class: 15,
                        seed: 0,
                    },
                    extra_ood: vec![],
                },
                model: ResNetConfig { num_classes: 10, width: 0.125 },
                train: TrainConfig {
                    epochs: 3,
                    batch_size: 64,
                    lr: 0.05,
                    checkpoint_every: 1,
                    dense_checkpoints: vec![],
                    ..coursework_train
                },
            }),
            other => Err(Error::Unknown {
                kind: "profile".into(),
                name: other.into(),
                known: PROFILES.join(", "),
            }),
        }
    }

    /// The profile named by `OODNC_PROFILE` (default `demo`).
    pub fn from_env() -> Result<Self> {
        Self::profile(&std::env::var("OODNC_PROFILE").unwrap_or_else(|_| "demo".into()))
    }

    /// Checks every value once.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        let t = &self.train;
        if t.epochs < 1 {
            return Err(Error::param("train.epochs", "must be at least 1"));
        }
        if t.batch_size == 0 {
            return Err(Error::param("train.batch_size", "must be at least 1"));
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return Err(Error::param("train.lr", format!("{} must be positive", t.lr)));
        }
        if !(0.0..1.0).contains(&t.momentum) {
            return Err(Error::param("train.momentum", format!("{} is outside [0, 1)", t.momentum)));
        }
        if t.nesterov && t.momentum == 0.0 {
            return Err(Error::param("train.nesterov", "needs momentum > 0"));
        }
        if t.weight_decay < 0.0 {
            return Err(Error::param("train.weight_decay", "must be >= 0"));
        }
        if t.checkpoint_every < 1 {
            return Err(Error::param("train.checkpoint_every", "must be at least 1"));
        }
        if !["synthetic", "real"].contains(&self.data.source.as_str()) {
            return Err(Error::param("data.source", format!("'{}' (expected synthetic or real)", self.data.source)));
        }
        Ok(())
    }

    /// TOML text of the resolved config.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| Error::data("config", e.to_string()))
    }

    /// Reads a config file.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: RunConfig = toml::from_str(&text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// A short stable hash of the resolved config (FNV-1a of its TOML), stored in checkpoints.
    pub fn hash(&self) -> String {
        let text = self.to_toml().unwrap_or_default();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }

    /// The epochs at which checkpoints are kept: 0, the dense early ones, every
    /// `checkpoint_every`, and the last.
    pub fn checkpoint_epochs(&self) -> Vec<i64> {
        let t = &self.train;
        let mut v: Vec<i64> = std::iter::once(0)
            .chain(t.dense_checkpoints.iter().copied())
            .chain((1..=t.epochs).filter(|e| e % t.checkpoint_every == 0))
            .chain(std::iter::once(t.epochs))
            .filter(|&e| e <= t.epochs)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_validate_and_round_trip_through_toml() {
        for p in PROFILES {
            let c = RunConfig::profile(p).unwrap();
            c.validate().unwrap();
            let back: RunConfig = toml::from_str(&c.to_toml().unwrap()).unwrap();
            assert_eq!(back, c);
            assert_eq!(back.hash(), c.hash());
        }
        assert!(RunConfig::profile("nope").is_err());
    }

    #[test]
    fn coursework_checkpoints_are_dense_early_then_every_25() {
        let c = RunConfig::profile("coursework").unwrap();
        let e = c.checkpoint_epochs();
        assert_eq!(&e[..6], &[0, 1, 2, 5, 10, 25]);
        assert_eq!(e.len(), 5 + 12);
        assert_eq!(*e.last().unwrap(), 300);
    }

    #[test]
    fn invalid_values_are_rejected() {
        let mut c = RunConfig::profile("demo").unwrap();
        c.train.momentum = 1.5;
        assert!(matches!(c.validate(), Err(Error::InvalidParam { .. })));
        let mut c = RunConfig::profile("demo").unwrap();
        c.train.epochs = 0;
        assert!(c.validate().is_err());
    }
}
