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
    /// Name used in tables and figures (OpenOOD's groups know `tin`, `mnist`, `places365`).
    pub name: String,
    /// Folder of images, or of MNIST's IDX files (relative paths are relative to
    /// the working directory).
    pub path: PathBuf,
    /// How `path` is read.
    #[serde(default)]
    pub format: ExtraFormat,
    /// An image list (OpenOOD's `benchmark_imglist` format, paths relative to
    /// `path`) choosing the images of an image folder; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<PathBuf>,
}

/// The on-disk format of an extra OOD set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum ExtraFormat {
    /// `<path>/<class>/<images>` or a flat folder of images (JPEG/PNG), resized
    /// like Textures; TinyImageNet's `val/` layout is recognised.
    #[default]
    Folder,
    /// MNIST's IDX files in `path` (`t10k-images-idx3-ubyte[.gz]`, and labels), test split.
    Mnist,
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
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
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
    /// The OOD study's settings: selection protocols, held-out set, groups.
    /// Evaluation only: editing them never makes the checkpoints refused.
    #[serde(default)]
    pub ood: crate::ood::protocol::OodConfig,
}

/// The largest accepted `train.epochs` (the original trains 300).
pub const MAX_EPOCHS: i64 = 100_000;
/// The largest accepted batch size.
pub const MAX_BATCH: usize = 1 << 20;
/// The largest accepted learning rate.
pub const MAX_LR: f64 = 10.0;

/// "unknown key `data.extra_oods`; did you mean `data.extra_ood`?" for a key path
/// reported by `serde_ignored` (array indices are skipped when looking up the level).
fn unknown_key_message(path: &str) -> String {
    let parts: Vec<&str> = path.split('.').filter(|p| p.parse::<usize>().is_err()).collect();
    let (key, parent) = parts.split_last().map(|(k, p)| (*k, p.to_vec())).unwrap_or((path, vec![]));
    let mut schema = RunConfig::profile("demo").ok().and_then(|c| toml::Value::try_from(c).ok());
    let valid: Vec<String> = match parent.as_slice() {
        ["data", "extra_ood"] => vec!["name".into(), "path".into(), "format".into(), "list".into()],
        ["ood", "heldout"] => vec!["name".into(), "path".into(), "list".into()],
        ["model"] => vec!["num_classes".into(), "width".into(), "bottleneck".into()],
        _ => {
            let mut v = schema.take();
            for p in &parent {
                v = v.and_then(|v| v.get(p).cloned());
            }
            v.and_then(|v| v.as_table().map(|t| t.keys().cloned().collect())).unwrap_or_default()
        }
    };
    let best = valid
        .iter()
        .map(|k| (strsim::damerau_levenshtein(k, key), k))
        .min()
        .filter(|(d, k)| *d <= 3.max(k.len() / 3))
        .map(|(_, k)| k.clone());
    let prefix = if parent.is_empty() { String::new() } else { format!("{}.", parent.join(".")) };
    match best {
        Some(b) => format!("unknown key `{path}`; did you mean `{prefix}{b}`? (valid here: {})", valid.join(", ")),
        None => format!("unknown key `{path}` (valid here: {})", valid.join(", ")),
    }
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
                model: ResNetConfig { num_classes: 100, width: 1.0, bottleneck: None },
                train: coursework_train,
                ood: Default::default(),
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
                model: ResNetConfig { num_classes: 10, width: 0.25, bottleneck: None },
                train: TrainConfig {
                    epochs: 12,
                    batch_size: 128,
                    lr: 0.05,
                    checkpoint_every: 3,
                    dense_checkpoints: vec![1, 2],
                    ..coursework_train
                },
                ood: Default::default(),
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
                        heldout_per_class: 10,
                        seed: 0,
                    },
                    extra_ood: vec![],
                },
                model: ResNetConfig { num_classes: 10, width: 0.125, bottleneck: None },
                train: TrainConfig {
                    epochs: 3,
                    batch_size: 64,
                    lr: 0.05,
                    checkpoint_every: 1,
                    dense_checkpoints: vec![],
                    ..coursework_train
                },
                ood: Default::default(),
            }),
            other => Err(Error::Unknown { kind: "profile".into(), name: other.into(), known: PROFILES.join(", ") }),
        }
    }

    /// The profile named by `OODNC_PROFILE` (default `demo`).
    pub fn from_env() -> Result<Self> {
        Self::profile(&std::env::var("OODNC_PROFILE").unwrap_or_else(|_| "demo".into()))
    }

    /// Checks every value once: ranges, finiteness, and sizes that keep memory
    /// bounded (so an absurd value is a typed error before anything is written).
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        if self.model.num_classes > 100_000 {
            return Err(Error::param("model.num_classes", format!("{} is above 100000", self.model.num_classes)));
        }
        self.data.synth.validate()?;
        let t = &self.train;
        if !(1..=MAX_EPOCHS).contains(&t.epochs) {
            return Err(Error::param("train.epochs", format!("{} is outside 1..={MAX_EPOCHS}", t.epochs)));
        }
        if !(1..=MAX_BATCH).contains(&t.batch_size) {
            return Err(Error::param("train.batch_size", format!("{} is outside 1..={MAX_BATCH}", t.batch_size)));
        }
        if !(t.lr.is_finite() && t.lr > 0.0 && t.lr <= MAX_LR) {
            return Err(Error::param("train.lr", format!("{} is outside (0, {MAX_LR}] (SGD diverges far below that)", t.lr)));
        }
        if !(t.momentum.is_finite() && (0.0..1.0).contains(&t.momentum)) {
            return Err(Error::param("train.momentum", format!("{} is outside [0, 1)", t.momentum)));
        }
        if t.nesterov && t.momentum == 0.0 {
            return Err(Error::param("train.nesterov", "needs momentum > 0"));
        }
        if !(t.weight_decay.is_finite() && (0.0..1.0).contains(&t.weight_decay)) {
            return Err(Error::param("train.weight_decay", format!("{} is outside [0, 1)", t.weight_decay)));
        }
        if t.checkpoint_every < 1 {
            return Err(Error::param("train.checkpoint_every", format!("{} must be at least 1", t.checkpoint_every)));
        }
        if let Some(&d) = t.dense_checkpoints.iter().find(|&&d| d < 1) {
            return Err(Error::param("train.dense_checkpoints", format!("{d}: epochs start at 1")));
        }
        if t.dense_checkpoints.len() > 10_000 {
            return Err(Error::param("train.dense_checkpoints", "more than 10000 entries"));
        }
        if !["synthetic", "real"].contains(&self.data.source.as_str()) {
            return Err(Error::param("data.source", format!("'{}' (expected synthetic or real)", self.data.source)));
        }
        if self.data.root.as_os_str().is_empty() {
            return Err(Error::param("data.root", "is empty; name the folder that holds the datasets (e.g. data or data/synthetic)"));
        }
        for (i, e) in self.data.extra_ood.iter().enumerate() {
            if e.name.trim().is_empty() || e.name.contains('/') {
                return Err(Error::param(format!("data.extra_ood[{i}].name"), format!("'{}' must be a plain non-empty name", e.name)));
            }
            if e.path.as_os_str().is_empty() {
                return Err(Error::param(format!("data.extra_ood[{i}].path"), "is empty"));
            }
            if e.list.is_some() && e.format != ExtraFormat::Folder {
                return Err(Error::param(format!("data.extra_ood[{i}].list"), "applies to image folders only"));
            }
        }
        let mut names: Vec<&str> = vec!["svhn", "cifar10", "textures"];
        for (i, e) in self.data.extra_ood.iter().enumerate() {
            if names.contains(&e.name.as_str()) {
                return Err(Error::param(format!("data.extra_ood[{i}].name"), format!("'{}' is already the name of a test set", e.name)));
            }
            names.push(&e.name);
        }
        self.ood.validate(&names)?;
        Ok(())
    }

    /// TOML text of the resolved config.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| Error::data("config", e.to_string()))
    }

    /// Reads a config file. Unknown keys are an error naming the key and the
    /// closest valid one (a misspelt key would otherwise be silently ignored).
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg = Self::parse(&text).map_err(|reason| Error::Config { path: path.to_path_buf(), reason })?;
        cfg.validate().map_err(|e| Error::Config { path: path.to_path_buf(), reason: e.to_string() })?;
        Ok(cfg)
    }

    /// Parses config TOML, rejecting unknown keys (the error text names each
    /// one with the closest valid key at its level).
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let de = toml::de::Deserializer::parse(text).map_err(|e| e.to_string())?;
        let mut unknown = Vec::new();
        let parsed: std::result::Result<RunConfig, _> = serde_ignored::deserialize(de, |path| unknown.push(path.to_string()));
        let unknown_msg = || unknown.iter().map(|u| unknown_key_message(u)).collect::<Vec<_>>().join("; ");
        match parsed {
            // A misspelt key often causes the error (a required field "missing"): name it first.
            Err(e) if !unknown.is_empty() => Err(format!("{}; then: {e}", unknown_msg())),
            Err(e) => Err(e.to_string()),
            Ok(_) if !unknown.is_empty() => Err(unknown_msg()),
            Ok(cfg) => Ok(cfg),
        }
    }

    /// A short stable hash of the resolved config (FNV-1a of its TOML, without
    /// the `[ood]` evaluation settings, which change no checkpoint), stored in checkpoints.
    pub fn hash(&self) -> String {
        // The fields before `ood`, in order: the TOML (and so the hash) of configs written before it existed.
        #[derive(serde::Serialize)]
        struct Trained<'a> {
            profile: &'a str,
            seed: u64,
            data: &'a DataConfig,
            model: &'a ResNetConfig,
            train: &'a TrainConfig,
        }
        let t = Trained { profile: &self.profile, seed: self.seed, data: &self.data, model: &self.model, train: &self.train };
        let text = toml::to_string_pretty(&t).unwrap_or_default();
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
        let every = t.checkpoint_every.max(1);
        let mut v: Vec<i64> = std::iter::once(0)
            .chain(t.dense_checkpoints.iter().copied())
            .chain((1..=t.epochs / every).map(|k| k * every))
            .chain(std::iter::once(t.epochs))
            .filter(|&e| e <= t.epochs)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Whether [`checkpoint_epochs`](Self::checkpoint_epochs) contains `epoch` (O(dense)).
    pub fn is_checkpoint_epoch(&self, epoch: i64) -> bool {
        let t = &self.train;
        (0..=t.epochs).contains(&epoch)
            && (epoch == 0 || epoch == t.epochs || epoch % t.checkpoint_every.max(1) == 0 || t.dense_checkpoints.contains(&epoch))
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

    #[test]
    fn non_finite_and_absurd_hyperparameters_are_rejected() {
        let base = RunConfig::profile("ci").unwrap();
        type Edit = Box<dyn Fn(&mut RunConfig)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("train.lr", Box::new(|c| c.train.lr = 1e30)),
            ("train.lr", Box::new(|c| c.train.lr = f64::NAN)),
            ("train.weight_decay", Box::new(|c| c.train.weight_decay = f64::INFINITY)),
            ("train.weight_decay", Box::new(|c| c.train.weight_decay = f64::NAN)),
            ("train.momentum", Box::new(|c| c.train.momentum = f64::NAN)),
            ("train.epochs", Box::new(|c| c.train.epochs = 1_000_000_000)),
            ("train.epochs", Box::new(|c| c.train.epochs = i64::MAX)),
            ("data.root", Box::new(|c| c.data.root = PathBuf::new())),
        ];
        for (field, f) in cases {
            let mut c = base.clone();
            f(&mut c);
            match c.validate() {
                Err(Error::InvalidParam { name, .. }) => assert_eq!(name, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_checkpoint_schedule_is_not_materialised_per_epoch() {
        let mut c = RunConfig::profile("coursework").unwrap();
        c.train.epochs = MAX_EPOCHS;
        c.train.checkpoint_every = 1;
        assert_eq!(c.checkpoint_epochs().len() as i64, MAX_EPOCHS + 1);
        let c = RunConfig::profile("coursework").unwrap();
        let all = c.checkpoint_epochs();
        for e in -1..=301 {
            assert_eq!(c.is_checkpoint_epoch(e), all.contains(&e), "epoch {e}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected_with_the_closest_name() {
        let good = RunConfig::profile("ci").unwrap().to_toml().unwrap();
        RunConfig::parse(&good).unwrap();
        let typo = good.replace("precision =", "precison =");
        let e = RunConfig::parse(&typo).unwrap_err();
        assert!(e.contains("unknown key `train.precison`; did you mean `train.precision`?"), "{e}");
        let extra = format!("{good}\n[[data.extra_oods]]\nname = \"x\"\npath = \"y\"\n");
        let e = RunConfig::parse(&extra).unwrap_err();
        assert!(e.contains("`data.extra_oods`; did you mean `data.extra_ood`?"), "{e}");
        let inner = format!("{}\n[[data.extra_ood]]\nname = \"x\"\npth = \"y\"\n", good.replace("extra_ood = []\n", ""));
        let e = RunConfig::parse(&inner).unwrap_err();
        assert!(e.contains("did you mean `data.extra_ood.path`?"), "{e}");
        let split = good.replace("n_val = 100", "n_vall = 100");
        assert!(RunConfig::parse(&split).is_err());
    }
}
