//! Benchmarks behind `oodnc bench`. Each prints its own timing and, measured in
//! the same run, a baseline, and the ratio between them. Timings live here and
//! never in tests.

use crate::data::loader::{augment_batch, augment_per_sample, draw_augmentation, Normalize};
use crate::error::Result;
use crate::util::SplitMix64;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Median of `reps` timings of `f` (seconds), after one warm-up call.
pub fn time_median(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut ts = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        ts.push(t.elapsed().as_secs_f64());
    }
    ts.sort_by(|a, b| a.total_cmp(b));
    Ok(ts[ts.len() / 2])
}

/// One benchmark result line.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchLine {
    pub name: String,
    pub ours: f64,
    pub baseline: f64,
    pub unit: String,
    pub baseline_name: String,
}

impl BenchLine {
    /// ours / baseline for throughputs (higher is better).
    pub fn ratio(&self) -> f64 {
        self.ours / self.baseline
    }
}

impl std::fmt::Display for BenchLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<34} {:>12.0} {}  vs {} {:>12.0} {}  ratio {:>6.2}x",
            self.name,
            self.ours,
            self.unit,
            self.baseline_name,
            self.baseline,
            self.unit,
            self.ratio()
        )
    }
}

/// `oodnc bench data`: images/s of the batch-wise crop+flip+normalise against a
/// per-sample loop, on `device`, batch 128.
pub fn data(device: Device, batches: usize) -> Result<Vec<BenchLine>> {
    let b = 128usize;
    let x = Tensor::randint(256, [b as i64, 3, 32, 32], (Kind::Uint8, device));
    let norm = Normalize::default();
    let mut rng = SplitMix64::new(0);
    let (dy, dx, flip) = draw_augmentation(&mut rng, b);
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let batched = time_median(5, || {
        for _ in 0..batches {
            let y = norm.apply(&augment_batch(&x, &dy, &dx, &flip)?);
            let _ = y.size();
        }
        sync();
        Ok(())
    })?;
    let looped = time_median(5, || {
        for _ in 0..batches {
            let y = norm.apply(&augment_per_sample(&x, &dy, &dx, &flip));
            let _ = y.size();
        }
        sync();
        Ok(())
    })?;
    let imgs = (b * batches) as f64;
    Ok(vec![BenchLine {
        name: format!("augment+normalise ({device:?}, batch {b})"),
        ours: imgs / batched,
        baseline: imgs / looped,
        unit: "img/s".into(),
        baseline_name: "per-sample loop".into(),
    }])
}
