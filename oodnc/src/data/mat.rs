//! MATLAB level-5 MAT-files: writing numeric arrays (for fixtures and the
//! embedded dataset) and reading them (through the `matfile` crate).
//!
//! Layout written (MATLAB 5.0 MAT-file, little endian, see MathWorks' "MAT-File
//! Format" document): a 128-byte header (116 bytes of text, 8 bytes subsystem
//! offset, version 0x0100, endian indicator "IM"), then one `miMATRIX` element per
//! array: array flags, dimensions, name, real data; each sub-element padded to 8
//! bytes. With `compress`, each `miMATRIX` is wrapped in an `miCOMPRESSED`
//! (zlib) element, as MATLAB's default `save` does (and as SVHN ships).

use crate::error::{Error, IoContext, Result};
use std::io::Write;
use std::path::Path;

const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_DOUBLE: u32 = 9;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
const MX_DOUBLE_CLASS: u8 = 6;
const MX_UINT8_CLASS: u8 = 9;

/// Data of one array to write, column-major like MATLAB.
pub enum MatData<'a> {
    U8(&'a [u8]),
    F64(&'a [f64]),
}

fn element(out: &mut Vec<u8>, ty: u32, data: &[u8]) {
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(8) {
        out.push(0);
    }
}

fn matrix_element(name: &str, dims: &[usize], data: &MatData) -> Result<Vec<u8>> {
    let count: usize = dims.iter().product();
    let (class, ty, bytes): (u8, u32, Vec<u8>) = match data {
        MatData::U8(d) => (MX_UINT8_CLASS, MI_UINT8, d.to_vec()),
        MatData::F64(d) => (MX_DOUBLE_CLASS, MI_DOUBLE, d.iter().flat_map(|v| v.to_le_bytes()).collect()),
    };
    let n = match data {
        MatData::U8(d) => d.len(),
        MatData::F64(d) => d.len(),
    };
    if n != count {
        return Err(Error::shape(format!("MAT array {name}"), format!("dims {dims:?} need {count} values, got {n}")));
    }
    let mut body = Vec::new();
    let mut flags = [0u8; 8];
    flags[0] = class;
    element(&mut body, MI_UINT32, &flags);
    let d: Vec<u8> = dims.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect();
    element(&mut body, MI_INT32, &d);
    element(&mut body, MI_INT8, name.as_bytes());
    element(&mut body, ty, &bytes);
    let mut out = Vec::with_capacity(body.len() + 8);
    element(&mut out, MI_MATRIX, &body);
    Ok(out)
}

/// Writes `arrays` (name, dims, data) as a level-5 MAT-file.
pub fn write_mat(path: impl AsRef<Path>, arrays: &[(&str, Vec<usize>, MatData)], compress: bool) -> Result<()> {
    let path = path.as_ref();
    let mut out = Vec::new();
    let mut text = format!("MATLAB 5.0 MAT-file, Platform: GLNXA64, Created by: oodnc {}", env!("CARGO_PKG_VERSION")).into_bytes();
    text.resize(116, b' ');
    out.extend_from_slice(&text);
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(&0x0100u16.to_le_bytes());
    out.extend_from_slice(b"IM");
    for (name, dims, data) in arrays {
        let m = matrix_element(name, dims, data)?;
        if compress {
            let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&m).at(path)?;
            let z = enc.finish().at(path)?;
            out.extend_from_slice(&MI_COMPRESSED.to_le_bytes());
            out.extend_from_slice(&(z.len() as u32).to_le_bytes());
            out.extend_from_slice(&z);
        } else {
            out.extend_from_slice(&m);
        }
    }
    crate::util::write_atomic(path, &out)
}

/// A parsed MAT-file.
pub struct MatFile {
    path: std::path::PathBuf,
    inner: matfile::MatFile,
}

impl MatFile {
    /// Reads and parses `path`; any parse failure is a [`Error::Format`] naming the file.
    pub fn read(path: impl AsRef<Path>, bytes: &[u8]) -> Result<Self> {
        let path = path.as_ref();
        if bytes.len() < 128 {
            return Err(Error::format(path, format!("{} bytes: too short for a MAT-file header", bytes.len())));
        }
        if &bytes[126..128] != b"IM" || bytes[124..126] != 0x0100u16.to_le_bytes() {
            return Err(Error::format(path, "not a little-endian level-5 MAT-file (v7.3/HDF5 files are not supported)"));
        }
        let inner = std::panic::catch_unwind(|| matfile::MatFile::parse(bytes))
            .map_err(|_| Error::format(path, "MAT parser failed (corrupt file)"))?
            .map_err(|e| Error::format(path, format!("corrupt or truncated MAT-file: {e}")))?;
        Ok(MatFile { path: path.to_path_buf(), inner })
    }

    /// Names of the numeric arrays in the file.
    pub fn names(&self) -> Vec<String> {
        self.inner.arrays().iter().map(|a| a.name().to_string()).collect()
    }

    fn array(&self, name: &str) -> Result<&matfile::Array> {
        self.inner
            .find_by_name(name)
            .ok_or_else(|| Error::format(&self.path, format!("no variable '{name}' (variables: {})", self.names().join(", "))))
    }

    /// Dimensions of variable `name`.
    pub fn dims(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.array(name)?.size().clone())
    }

    /// Variable `name` as bytes; it must be stored as uint8.
    pub fn u8_data(&self, name: &str) -> Result<&[u8]> {
        match self.array(name)?.data() {
            matfile::NumericData::UInt8 { real, .. } => Ok(real),
            other => Err(Error::format(&self.path, format!("variable '{name}' is {} (expected uint8)", kind_name(other)))),
        }
    }

    /// Variable `name` converted to i64 (any integer or floating class holding integers).
    pub fn i64_data(&self, name: &str) -> Result<Vec<i64>> {
        use matfile::NumericData as N;
        let v: Vec<f64> = match self.array(name)?.data() {
            N::UInt8 { real, .. } => real.iter().map(|&x| x as f64).collect(),
            N::Int8 { real, .. } => real.iter().map(|&x| x as f64).collect(),
            N::UInt16 { real, .. } => real.iter().map(|&x| x as f64).collect(),
            N::Int16 { real, .. } => real.iter().map(|&x| x as f64).collect(),
            N::UInt32 { real, .. } => real.iter().map(|&x| x as f64).collect(),
            N::Int32 { real, .. } => real.iter().map(|&x| x as f64).collect(),
            N::UInt64 { real, .. } => real.iter().map(|&x| x as f64).collect(),
            N::Int64 { real, .. } => real.iter().map(|&x| x as f64).collect(),
            N::Single { real, .. } => real.iter().map(|&x| x as f64).collect(),
            N::Double { real, .. } => real.clone(),
        };
        v.iter()
            .map(|&x| {
                if x.is_finite() && x.fract() == 0.0 {
                    Ok(x as i64)
                } else {
                    Err(Error::format(&self.path, format!("variable '{name}' holds a non-integer value {x}")))
                }
            })
            .collect()
    }
}

fn kind_name(d: &matfile::NumericData) -> &'static str {
    use matfile::NumericData as N;
    match d {
        N::Int8 { .. } => "int8",
        N::UInt8 { .. } => "uint8",
        N::Int16 { .. } => "int16",
        N::UInt16 { .. } => "uint16",
        N::Int32 { .. } => "int32",
        N::UInt32 { .. } => "uint32",
        N::Int64 { .. } => "int64",
        N::UInt64 { .. } => "uint64",
        N::Single { .. } => "single",
        N::Double { .. } => "double",
    }
}
