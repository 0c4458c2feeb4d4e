//! Small helpers shared by the modules.

use crate::error::{IoContext, Result};
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically: a temp file in the same folder, fsync,
/// then rename. Parent folders are created.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).at(&dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp).at(&tmp)?;
        f.write_all(bytes).at(&tmp)?;
        f.sync_all().at(&tmp)?;
    }
    std::fs::rename(&tmp, path).at(path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn atomic_write_creates_parents_and_replaces() {
        let dir = std::env::temp_dir().join(format!("oodnc-util-{}", std::process::id()));
        let p = dir.join("a/b/c.txt");
        super::write_atomic(&p, b"one").unwrap();
        super::write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let leftovers: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// SplitMix64: a tiny, fast, well-mixed PRNG. All shuffles, splits and
/// augmentation draws in oodnc come from it, so they are identical on every
/// machine and device (libtorch's generators differ between CPU and CUDA).
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// A generator for a sub-stream, e.g. `derive(seed, &[epoch, batch])`.
    pub fn derive(seed: u64, path: &[u64]) -> Self {
        let mut g = SplitMix64::new(seed ^ 0x6f6f_646e_6300_0000);
        for &p in path {
            let x = g.next_u64() ^ p.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            g = SplitMix64::new(x);
        }
        g
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// A uniformly random permutation of `0..n` (Fisher-Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<i64> {
        let mut p: Vec<i64> = (0..n as i64).collect();
        for i in (1..n).rev() {
            let j = self.below(i as u64 + 1) as usize;
            p.swap(i, j);
        }
        p
    }
}

#[cfg(test)]
mod rng_tests {
    use super::SplitMix64;

    #[test]
    fn permutation_is_a_permutation_and_seeded() {
        let a = SplitMix64::new(7).permutation(1000);
        let b = SplitMix64::new(7).permutation(1000);
        let c = SplitMix64::new(8).permutation(1000);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..1000).collect::<Vec<i64>>());
    }

    #[test]
    fn below_is_roughly_uniform() {
        let mut g = SplitMix64::new(1);
        let mut counts = [0usize; 10];
        for _ in 0..100_000 {
            counts[g.below(10) as usize] += 1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn derived_streams_differ() {
        let a = SplitMix64::derive(1, &[0]).next_u64();
        let b = SplitMix64::derive(1, &[1]).next_u64();
        let c = SplitMix64::derive(1, &[0]).next_u64();
        assert_ne!(a, b);
        assert_eq!(a, c);
    }
}

/// MD5 (hex) of a file, read in 1 MiB chunks.
pub fn md5_file(path: &Path) -> Result<String> {
    use md5::{Digest, Md5};
    use std::io::Read;
    let mut f = std::fs::File::open(path).at(path)?;
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// HSL (h in degrees, s and l in 0..1) to 8-bit RGB.
pub fn hsl_to_rgb(h: f64, s: f64, l: f64) -> (u8, u8, u8) {
    let c = (1.0 - (2.0 * l - 1.0).abs()) * s;
    let hp = (h.rem_euclid(360.0)) / 60.0;
    let x = c * (1.0 - (hp % 2.0 - 1.0).abs());
    let (r, g, b) = match hp as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = l - c / 2.0;
    let to = |v: f64| ((v + m) * 255.0).round().clamp(0.0, 255.0) as u8;
    (to(r), to(g), to(b))
}

/// Reads a whole file, mapping a missing file to [`Error::Missing`](crate::Error::Missing) with a hint.
pub fn read_file(path: &std::path::Path, what: &str, hint: &str) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) => {
            // A folder on the way that is a file: say so (not "Not a directory (os error 20)").
            if let Some(file) = path.ancestors().skip(1).find(|a| a.is_file()) {
                return Err(crate::error::Error::data(
                    what,
                    format!("{} is a file, not a folder, so {} cannot exist; check the data root", file.display(), path.display()),
                ));
            }
            if e.kind() == std::io::ErrorKind::NotFound {
                return Err(crate::error::Error::Missing { what: what.to_string(), path: path.to_path_buf(), hint: hint.to_string() });
            }
            Err(crate::error::Error::io(path, e))
        }
    }
}

/// `f()`, with a panic turned into an error whose message holds "panicked: "
/// and the panic's text (tch panics on a libtorch error outside its `f_`
/// methods, a device mismatch say).
pub fn catch_panic<T>(f: impl FnOnce() -> crate::error::Result<T>) -> crate::error::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
        Err(crate::error::Error::Torch(tch::TchError::Torch(format!("panicked: {}", msg.unwrap_or_else(|| "(no message)".into())))))
    })
}
