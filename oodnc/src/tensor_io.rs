//! safetensors files of named tch tensors with string metadata.
//!
//! Used by checkpoints (model and optimizer state) and the feature cache. Files
//! are written atomically. Reading validates the header and every tensor;
//! a truncated or corrupt file is an [`Error::Format`] naming the file.

use crate::error::{Error, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        k => return Err(Error::param("tensor kind", format!("{k:?} cannot be stored in safetensors here"))),
    })
}

fn kind_of(d: Dtype) -> Option<Kind> {
    Some(match d {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

/// Raw little-endian bytes of a tensor (moved to the CPU, made contiguous).
pub fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let t = t.to_device(Device::Cpu).contiguous();
    let numel = t.numel();
    let mut buf = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut buf, numel)?;
    Ok(buf)
}

/// Tensors copied to host memory with their metadata, ready to be written as
/// one safetensors file, on this thread or another (it is `Send` and holds no
/// libtorch tensor, so training can go on changing the originals).
pub struct Encoded {
    tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
    metadata: BTreeMap<String, String>,
}

/// Copies `tensors` to host memory (the only part that must happen while they
/// hold the values to save).
pub fn encode(tensors: &[(String, Tensor)], metadata: &BTreeMap<String, String>) -> Result<Encoded> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let shape = t.size().iter().map(|&s| s as usize).collect();
        owned.push((name.clone(), dtype_of(t.kind())?, shape, tensor_bytes(t)?));
    }
    Ok(Encoded { tensors: owned, metadata: metadata.clone() })
}

impl Encoded {
    /// Adds (or replaces) one metadata entry.
    pub fn with_metadata(mut self, key: &str, value: impl Into<String>) -> Self {
        self.metadata.insert(key.to_string(), value.into());
        self
    }

    /// Writes the file (tensors sorted by name) atomically.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut views = Vec::with_capacity(self.tensors.len());
        for (name, dt, shape, bytes) in &self.tensors {
            let v = TensorView::new(*dt, shape.clone(), bytes).map_err(|e| Error::format(path, e.to_string()))?;
            views.push((name.clone(), v));
        }
        // The map type is safetensors' own (hashbrown's without its `std` feature).
        let meta = self.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let bytes = safetensors::tensor::serialize(views, Some(meta)).map_err(|e| Error::format(path, e.to_string()))?;
        crate::util::write_atomic(path, &bytes)
    }
}

/// Writes `tensors` (sorted by name in the file) with `metadata`.
pub fn save(path: impl AsRef<Path>, tensors: &[(String, Tensor)], metadata: &BTreeMap<String, String>) -> Result<()> {
    encode(tensors, metadata)?.write(path)
}

/// A loaded file: tensors by name (on the CPU) and metadata.
pub struct Loaded {
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: BTreeMap<String, String>,
}

impl Loaded {
    /// Takes tensor `name`, or a format error naming the file.
    pub fn take(&mut self, path: &Path, name: &str) -> Result<Tensor> {
        self.tensors.remove(name).ok_or_else(|| Error::format(path, format!("no tensor '{name}'")))
    }

    /// Metadata entry `key`, or a format error.
    pub fn meta(&self, path: &Path, key: &str) -> Result<&str> {
        self.metadata.get(key).map(String::as_str).ok_or_else(|| Error::format(path, format!("no metadata '{key}'")))
    }
}

/// Reads a safetensors file.
pub fn load(path: impl AsRef<Path>) -> Result<Loaded> {
    let path = path.as_ref();
    let bytes = crate::util::read_file(path, "safetensors file", "")?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::format(path, format!("not a valid safetensors file (truncated or corrupt?): {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| Error::format(path, format!("bad safetensors header: {e}")))?;
    let metadata: BTreeMap<String, String> =
        header.metadata().as_ref().map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default();
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        let kind = kind_of(view.dtype())
            .ok_or_else(|| Error::format(path, format!("tensor '{name}' has unsupported dtype {:?}", view.dtype())))?;
        let shape: Vec<i64> = view.shape().iter().map(|&s| s as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)?;
        tensors.insert(name, t);
    }
    Ok(Loaded { tensors, metadata })
}

/// The string metadata of a safetensors file, read from its header alone
/// (the first `8 + n` bytes), without reading any tensor.
pub fn read_metadata(path: impl AsRef<Path>) -> Result<BTreeMap<String, String>> {
    use std::io::Read;
    let path = path.as_ref();
    let mut f = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Missing { what: "safetensors file".into(), path: path.to_path_buf(), hint: String::new() },
        _ => Error::io(path, e),
    })?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|_| Error::format(path, "not a valid safetensors file (shorter than its 8-byte header length)"))?;
    let n = u64::from_le_bytes(n);
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if n > 100_000_000 || 8 + n > len {
        return Err(Error::format(
            path,
            format!("not a valid safetensors file (header of {n} bytes in a {len}-byte file: truncated or corrupt?)"),
        ));
    }
    let mut h = vec![0u8; n as usize];
    f.read_exact(&mut h).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value = serde_json::from_slice(&h).map_err(|e| Error::format(path, format!("bad safetensors header: {e}")))?;
    Ok(v.get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect())
        .unwrap_or_default())
}
