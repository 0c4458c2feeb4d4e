//! Model checkpoints: safetensors with PyTorch-style names and metadata.
//!
//! A checkpoint holds every variable of the VarStore (parameters and BN running
//! statistics) under its PyTorch name, plus metadata: the epoch, the seed, a hash
//! of the run config, the model shape, and the epoch's metrics. Optimizer state
//! lives in a sibling file (see `train`). Writes are atomic.
//!
//! Loading accepts state dicts written by PyTorch (`safetensors.torch.save_file(
//! model.state_dict(), ...)`): `num_batches_tracked` buffers are ignored and
//! torchvision's `downsample.*` names are mapped to our `shortcut.*`.

use super::resnet::ResNetConfig;
use crate::error::{Error, Result};
use crate::tensor_io;
use std::collections::BTreeMap;
use std::path::Path;
use tch::nn::VarStore;

/// What a checkpoint says about itself.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, Default)]
pub struct CheckpointMeta {
    /// Completed epochs (0 = the initialisation, before any step).
    pub epoch: i64,
    pub seed: u64,
    pub config_hash: String,
    pub model: Option<ResNetConfig>,
    /// Metrics of that epoch (train/val loss and accuracy, ...). Non-finite
    /// values are written as the strings `"NaN"`, `"inf"`, `"-inf"` (JSON has no
    /// such numbers) and read back as such; `null` (older files) reads as NaN.
    #[serde(with = "finite_or_named")]
    pub metrics: BTreeMap<String, f64>,
}

/// Serde for `f64` maps that keeps NaN and infinities through JSON.
pub mod finite_or_named {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum V {
        Num(f64),
        Name(String),
        Null(()),
    }

    pub fn serialize<S: Serializer>(m: &BTreeMap<String, f64>, s: S) -> Result<S::Ok, S::Error> {
        let out: BTreeMap<&String, V> = m
            .iter()
            .map(|(k, &v)| {
                let v = if v.is_nan() {
                    V::Name("NaN".into())
                } else if v == f64::INFINITY {
                    V::Name("inf".into())
                } else if v == f64::NEG_INFINITY {
                    V::Name("-inf".into())
                } else {
                    V::Num(v)
                };
                (k, v)
            })
            .collect();
        out.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
        let m = BTreeMap::<String, Option<V>>::deserialize(d)?;
        m.into_iter()
            .map(|(k, v)| {
                let x = match v {
                    None | Some(V::Null(())) => f64::NAN,
                    Some(V::Num(x)) => x,
                    Some(V::Name(n)) => match n.as_str() {
                        "NaN" | "nan" => f64::NAN,
                        "inf" | "Infinity" => f64::INFINITY,
                        "-inf" | "-Infinity" => f64::NEG_INFINITY,
                        other => return Err(serde::de::Error::custom(format!("metric {k}: '{other}' is not a number"))),
                    },
                };
                Ok((k, x))
            })
            .collect()
    }
}

/// Maps a foreign (torchvision) name to ours.
pub fn canonical_name(name: &str) -> String {
    name.replace(".downsample.", ".shortcut.")
}

/// Writes all variables of `vs` and `meta` to `path`.
pub fn save_checkpoint(path: impl AsRef<Path>, vs: &VarStore, meta: &CheckpointMeta) -> Result<()> {
    encode_checkpoint(vs, meta)?.write(path)
}

/// What [`save_checkpoint`] writes, copied to host memory (to be written later,
/// e.g. by a background thread).
pub fn encode_checkpoint(vs: &VarStore, meta: &CheckpointMeta) -> Result<tensor_io::Encoded> {
    let mut tensors: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut md = BTreeMap::new();
    md.insert("format".to_string(), "oodnc-checkpoint-v1".to_string());
    md.insert("oodnc".to_string(), serde_json::to_string(meta).map_err(|e| Error::data("checkpoint metadata", e.to_string()))?);
    tensor_io::encode(&tensors, &md)
}

/// Loads `path` into `vs` (every variable must be present with the same shape).
/// Returns the metadata (default values for a plain PyTorch state dict).
pub fn load_checkpoint(path: impl AsRef<Path>, vs: &mut VarStore) -> Result<CheckpointMeta> {
    let path = path.as_ref();
    if !path.exists() {
        return Err(Error::Missing {
            what: "checkpoint".into(),
            path: path.to_path_buf(),
            hint: "; train first (`oodnc train`) or check the run name and epoch".into(),
        });
    }
    let loaded = tensor_io::load(path)?;
    let mut foreign: BTreeMap<String, tch::Tensor> = BTreeMap::new();
    for (name, t) in loaded.tensors {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        foreign.insert(canonical_name(&name), t);
    }
    let mut ours = vs.variables();
    let mut missing = Vec::new();
    for (name, var) in ours.iter_mut() {
        match foreign.remove(name) {
            None => missing.push(name.clone()),
            Some(src) => {
                if src.size() != var.size() {
                    return Err(Error::shape(
                        format!("checkpoint {}", path.display()),
                        format!("'{name}' is {:?} in the file but {:?} in the model", src.size(), var.size()),
                    ));
                }
                tch::no_grad(|| var.f_copy_(&src.to_kind(var.kind())))?;
            }
        }
    }
    if !missing.is_empty() {
        missing.sort();
        return Err(Error::format(
            path,
            format!("{} model variables missing, e.g. {}", missing.len(), missing.iter().take(3).cloned().collect::<Vec<_>>().join(", ")),
        ));
    }
    if !foreign.is_empty() {
        return Err(Error::format(
            path,
            format!("unexpected tensors, e.g. {}", foreign.keys().take(3).cloned().collect::<Vec<_>>().join(", ")),
        ));
    }
    match loaded.metadata.get("oodnc") {
        Some(json) => serde_json::from_str(json).map_err(|e| Error::format(path, format!("bad oodnc metadata: {e}"))),
        None => Ok(CheckpointMeta::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::CheckpointMeta;

    #[test]
    fn non_finite_metrics_round_trip_through_the_metadata() {
        let meta = CheckpointMeta {
            epoch: 3,
            metrics: [("a", f64::NAN), ("b", f64::INFINITY), ("c", f64::NEG_INFINITY), ("d", 0.25)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            ..Default::default()
        };
        let json = serde_json::to_string(&meta).unwrap();
        let back: CheckpointMeta = serde_json::from_str(&json).unwrap();
        assert!(back.metrics["a"].is_nan());
        assert_eq!(back.metrics["b"], f64::INFINITY);
        assert_eq!(back.metrics["c"], f64::NEG_INFINITY);
        assert_eq!(back.metrics["d"], 0.25);
        // What older versions wrote for NaN: JSON null.
        let old: CheckpointMeta = serde_json::from_str(&json.replace("\"NaN\"", "null")).unwrap();
        assert!(old.metrics["a"].is_nan());
    }
}
