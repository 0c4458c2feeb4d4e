//! Device-resident batching with batch-wise augmentation.
//!
//! A [`BatchLoader`] keeps a whole dataset as one `u8` tensor on the device
//! (150 MB for 50k CIFAR images), shuffles per epoch from a seed, and applies
//! the CIFAR training augmentation to a whole batch at once:
//! random crop 32 with zero padding 4 and horizontal flip with p = 0.5, done as a
//! single gather on the padded batch (no per-sample loop). Then
//! `x = (pixel / 255 - mean) / std` with the CIFAR-100 statistics.
//!
//! All randomness comes from [`SplitMix64`] streams derived from
//! `(seed, epoch, batch)`, so the same seed gives the same batches on any device,
//! and a resumed run sees exactly the batches it would have seen.

use super::{Dataset, CIFAR100_MEAN, CIFAR100_STD, SIDE};
use crate::error::{Error, Result};
use crate::util::SplitMix64;
use tch::{Device, Kind, Tensor};

/// Zero padding of the random crop (pixels per side).
pub const PAD: i64 = 4;

/// Per-channel normalisation `(x - mean) / std`, x in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalize {
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

impl Default for Normalize {
    /// The CIFAR-100 statistics, used for every dataset (ID and OOD).
    fn default() -> Self {
        Normalize { mean: CIFAR100_MEAN, std: CIFAR100_STD }
    }
}

impl Normalize {
    /// `mean` and `std` as `f32 [1,3,1,1]` tensors on `dev`.
    pub fn tensors(&self, dev: Device) -> (Tensor, Tensor) {
        let mean = Tensor::from_slice(&self.mean.map(|v| v as f32)).to_device(dev).view([1, 3, 1, 1]);
        let std = Tensor::from_slice(&self.std.map(|v| v as f32)).to_device(dev).view([1, 3, 1, 1]);
        (mean, std)
    }

    /// `u8 [B,3,H,W]` -> normalised `f32 [B,3,H,W]` on the same device.
    pub fn apply(&self, images_u8: &Tensor) -> Tensor {
        let (mean, std) = self.tensors(images_u8.device());
        normalize_with(images_u8, &mean, &std)
    }

    /// Inverse of [`apply`](Self::apply), clamped to [0, 1] (for showing images).
    pub fn invert(&self, x: &Tensor) -> Tensor {
        let (mean, std) = self.tensors(x.device());
        (x * std + mean).clamp(0.0, 1.0)
    }
}

fn normalize_with(images_u8: &Tensor, mean: &Tensor, std: &Tensor) -> Tensor {
    (images_u8.to_kind(Kind::Float) / 255.0 - mean) / std
}

/// Random crop offsets and flips for one batch: `(dy, dx, flip)` per sample.
pub fn draw_augmentation(rng: &mut SplitMix64, n: usize) -> (Vec<i64>, Vec<i64>, Vec<bool>) {
    let span = (2 * PAD + 1) as u64;
    let mut dy = Vec::with_capacity(n);
    let mut dx = Vec::with_capacity(n);
    let mut flip = Vec::with_capacity(n);
    for _ in 0..n {
        dy.push(rng.below(span) as i64);
        dx.push(rng.below(span) as i64);
        flip.push(rng.below(2) == 1);
    }
    (dy, dx, flip)
}

/// Batch-wise random crop (zero padding [`PAD`]) and horizontal flip of `u8 [B,3,32,32]`.
///
/// Output pixel `(b, c, i, j)` = padded input at row `dy_b + i` and column
/// `dx_b + j` (or `dx_b + 31 - j` when flipped): one strided view of all crops,
/// one advanced index and a masked flip; no per-sample loop.
pub fn augment_batch(images: &Tensor, dy: &[i64], dx: &[i64], flip: &[bool]) -> Result<Tensor> {
    let size = images.size();
    let b = size[0];
    if size.len() != 4 || size[1] != 3 || size[2] != SIDE || size[3] != SIDE {
        return Err(Error::shape("augment_batch", format!("images {size:?}, expected [B,3,32,32]")));
    }
    if dy.len() as i64 != b || dx.len() as i64 != b || flip.len() as i64 != b {
        return Err(Error::shape("augment_batch", format!("{b} images but {} offsets", dy.len())));
    }
    let dev = images.device();
    let dy = Tensor::from_slice(dy).to_device(dev);
    let dx = Tensor::from_slice(dx).to_device(dev);
    let flip = Tensor::from_slice(flip).to_device(dev);
    Ok(augment_with(images, &dy, &dx, &flip))
}

/// [`augment_batch`] with the draws already on the images' device
/// (`i64 [B]`, `i64 [B]`, `bool [B]`; shapes checked by the caller).
fn augment_with(images: &Tensor, dy: &Tensor, dx: &Tensor, flip: &Tensor) -> Tensor {
    let b = images.size()[0];
    // All 9x9 crops as a strided view [B, 3, dy, dx, 32, 32] (no copy), then one
    // advanced index picks each sample's crop, and a masked flip.
    let windows = images.constant_pad_nd([PAD, PAD, PAD, PAD]).unfold(2, SIDE, 1).unfold(3, SIDE, 1);
    let bi = Tensor::arange(b, (Kind::Int64, images.device()));
    let crops = windows.index(&[Some(bi), None, Some(dy.shallow_clone()), Some(dx.shallow_clone())]);
    crops.flip([3]).where_self(&flip.view([b, 1, 1, 1]), &crops)
}

/// The same augmentation with a per-sample loop: the baseline of `oodnc bench data`
/// and an independent formulation for the tests.
pub fn augment_per_sample(images: &Tensor, dy: &[i64], dx: &[i64], flip: &[bool]) -> Tensor {
    let padded = images.constant_pad_nd([PAD, PAD, PAD, PAD]);
    let outs: Vec<Tensor> = (0..dy.len())
        .map(|i| {
            let img = padded.get(i as i64).narrow(1, dy[i], SIDE).narrow(2, dx[i], SIDE);
            if flip[i] {
                img.flip([2])
            } else {
                img
            }
        })
        .collect();
    Tensor::stack(&outs, 0)
}

/// One batch: normalised images `f32 [B,3,32,32]`, labels `i64 [B]`, and the
/// dataset indices of its samples.
pub struct Batch {
    pub images: Tensor,
    pub labels: Tensor,
    pub indices: Tensor,
}

/// Batches of a device-resident dataset.
pub struct BatchLoader {
    images: Tensor,
    labels: Tensor,
    pub batch_size: usize,
    pub shuffle: bool,
    pub augment: bool,
    pub drop_last: bool,
    pub seed: u64,
    pub normalize: Normalize,
    device: Device,
}

impl BatchLoader {
    /// Moves `data` to `device` once; batches are then cut there.
    pub fn new(data: &Dataset, batch_size: usize, device: Device) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::param("batch_size", "must be at least 1"));
        }
        if data.is_empty() {
            return Err(Error::data(format!("loader for {}", data.name), "dataset is empty"));
        }
        Ok(BatchLoader {
            images: data.images.to_device(device),
            labels: data.labels.to_device(device),
            batch_size,
            shuffle: false,
            augment: false,
            drop_last: false,
            seed: 0,
            normalize: Normalize::default(),
            device,
        })
    }

    /// Training mode: shuffled every epoch from `seed`, augmented.
    pub fn train(mut self, seed: u64) -> Self {
        self.shuffle = true;
        self.augment = true;
        self.seed = seed;
        self
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.size()[0] as usize
    }

    /// True when empty (never, by construction).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        if self.drop_last {
            self.len() / self.batch_size
        } else {
            self.len().div_ceil(self.batch_size)
        }
    }

    /// The device the data lives on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The sample order of `epoch` (identity when not shuffling).
    pub fn order(&self, epoch: u64) -> Vec<i64> {
        if self.shuffle {
            SplitMix64::derive(self.seed, &[epoch, 0x5f0f]).permutation(self.len())
        } else {
            (0..self.len() as i64).collect()
        }
    }

    /// Everything `epoch` reads, moved to the device in one go: the sample order
    /// and, when augmenting, every batch's crop offsets and flips. A batch is then
    /// slicing and indexing on the device only: no host-to-device copy per batch
    /// (on CUDA a copy from pageable host memory waits for the GPU, so one per
    /// batch would stall the training pipeline at every step).
    pub fn plan(&self, epoch: u64) -> EpochPlan {
        let order = self.order(epoch);
        let draws = self.augment.then(|| {
            let (mut dy, mut dx, mut flip) = (Vec::new(), Vec::new(), Vec::new());
            for (k, chunk) in order.chunks(self.batch_size).enumerate() {
                // One stream per (epoch, batch): the draws do not depend on how
                // the epoch is iterated.
                let mut rng = SplitMix64::derive(self.seed, &[epoch, k as u64, 0xa06]);
                let (y, x, f) = draw_augmentation(&mut rng, chunk.len());
                dy.extend(y);
                dx.extend(x);
                flip.extend(f);
            }
            let up = |t: Tensor| t.to_device(self.device);
            (up(Tensor::from_slice(&dy)), up(Tensor::from_slice(&dx)), up(Tensor::from_slice(&flip)))
        });
        let (mean, std) = self.normalize.tensors(self.device);
        EpochPlan { order: Tensor::from_slice(&order).to_device(self.device), draws, mean, std }
    }

    /// Batch `k` of the epoch planned in `plan`.
    pub fn batch(&self, plan: &EpochPlan, k: usize) -> Result<Batch> {
        let start = k * self.batch_size;
        let end = (start + self.batch_size).min(self.len());
        if start >= end {
            return Err(Error::param("batch index", format!("{k} is past the end of the epoch")));
        }
        let (start, n) = (start as i64, (end - start) as i64);
        let idx = plan.order.narrow(0, start, n);
        let mut imgs = self.images.index_select(0, &idx);
        if let Some((dy, dx, flip)) = &plan.draws {
            imgs = augment_with(&imgs, &dy.narrow(0, start, n), &dx.narrow(0, start, n), &flip.narrow(0, start, n));
        }
        Ok(Batch { images: normalize_with(&imgs, &plan.mean, &plan.std), labels: self.labels.index_select(0, &idx), indices: idx })
    }

    /// All batches of `epoch`, in order.
    pub fn epoch(&self, epoch: u64) -> impl Iterator<Item = Result<Batch>> + '_ {
        let plan = self.plan(epoch);
        (0..self.num_batches()).map(move |k| self.batch(&plan, k))
    }
}

/// One epoch's order, augmentation draws and normalisation constants, on the
/// loader's device (see [`BatchLoader::plan`]).
pub struct EpochPlan {
    order: Tensor,
    draws: Option<(Tensor, Tensor, Tensor)>,
    mean: Tensor,
    std: Tensor,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(n: i64) -> Tensor {
        Tensor::arange(n * 3 * 32 * 32, (Kind::Int64, Device::Cpu)).remainder(251).to_kind(Kind::Uint8).view([n, 3, 32, 32])
    }

    #[test]
    fn batched_augmentation_equals_per_sample_loop() {
        let x = images(16);
        let mut rng = SplitMix64::new(5);
        let (dy, dx, flip) = draw_augmentation(&mut rng, 16);
        assert!(flip.iter().any(|&f| f) && flip.iter().any(|&f| !f));
        let a = augment_batch(&x, &dy, &dx, &flip).unwrap();
        let b = augment_per_sample(&x, &dy, &dx, &flip);
        assert_eq!(a.size(), vec![16, 3, 32, 32]);
        assert!(a.equal(&b));
    }

    #[test]
    fn centre_crop_without_flip_is_identity_and_padding_is_zero() {
        let x = images(2);
        let a = augment_batch(&x, &[4, 0], &[4, 0], &[false, false]).unwrap();
        assert!(a.get(0).equal(&x.get(0)));
        // Offset 0: the first 4 rows and columns come from the zero padding.
        assert_eq!(a.get(1).narrow(1, 0, 4).sum(Kind::Int64).int64_value(&[]), 0);
        assert!(a.get(1).narrow(1, 4, 28).narrow(2, 4, 28).equal(&x.get(1).narrow(1, 0, 28).narrow(2, 0, 28)));
        let f = augment_batch(&x, &[4, 4], &[4, 4], &[true, true]).unwrap();
        assert!(f.equal(&x.flip([3])));
    }

    #[test]
    fn same_seed_same_batches_and_epochs_differ() {
        let ds = Dataset::from_raw(
            "t",
            (0..10 * 3072).map(|i| (i % 256) as u8).collect(),
            (0..10).map(|i| i % 2).collect(),
            vec!["a".into(), "b".into()],
        )
        .unwrap();
        let l1 = BatchLoader::new(&ds, 4, Device::Cpu).unwrap().train(9);
        let l2 = BatchLoader::new(&ds, 4, Device::Cpu).unwrap().train(9);
        assert_eq!(l1.num_batches(), 3);
        let e1: Vec<Batch> = l1.epoch(0).collect::<Result<_>>().unwrap();
        let e2: Vec<Batch> = l2.epoch(0).collect::<Result<_>>().unwrap();
        for (a, b) in e1.iter().zip(&e2) {
            assert!(a.images.equal(&b.images));
            assert!(a.labels.equal(&b.labels));
        }
        assert_ne!(l1.order(0), l1.order(1));
        let sizes: Vec<i64> = e1.iter().map(|b| b.labels.size()[0]).collect();
        assert_eq!(sizes, vec![4, 4, 2]);
    }

    #[test]
    fn planned_batches_equal_batches_built_one_by_one() {
        // The reference: order, per-batch draws and normalisation done batch by
        // batch on the host, the way the loader worked before the epoch plan.
        let ds = Dataset::from_raw(
            "t",
            (0..11 * 3072).map(|i| ((i * 7) % 256) as u8).collect(),
            (0..11).map(|i| i % 3).collect(),
            vec!["a".into(), "b".into(), "c".into()],
        )
        .unwrap();
        for augment in [true, false] {
            let mut l = BatchLoader::new(&ds, 4, Device::Cpu).unwrap().train(21);
            l.augment = augment;
            let order = l.order(3);
            let got: Vec<Batch> = l.epoch(3).collect::<Result<_>>().unwrap();
            assert_eq!(got.len(), 3);
            for (k, b) in got.iter().enumerate() {
                let idx_v = &order[k * 4..(k * 4 + 4).min(11)];
                let idx = Tensor::from_slice(idx_v);
                let mut imgs = ds.images.index_select(0, &idx);
                if augment {
                    let mut rng = SplitMix64::derive(21, &[3, k as u64, 0xa06]);
                    let (dy, dx, flip) = draw_augmentation(&mut rng, idx_v.len());
                    imgs = augment_per_sample(&imgs, &dy, &dx, &flip);
                }
                assert!(b.images.equal(&Normalize::default().apply(&imgs)), "batch {k}, augment {augment}");
                assert!(b.labels.equal(&ds.labels.index_select(0, &idx)));
                assert!(b.indices.equal(&idx));
            }
        }
        let l = BatchLoader::new(&ds, 4, Device::Cpu).unwrap();
        assert!(l.batch(&l.plan(0), 3).is_err());
    }

    #[test]
    fn normalize_round_trips() {
        let x = images(2);
        let n = Normalize::default();
        let y = n.apply(&x);
        let back = n.invert(&y);
        let diff = (back - x.to_kind(Kind::Float) / 255.0).abs().max().double_value(&[]);
        assert!(diff < 1e-5);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let x = Tensor::zeros([2, 1, 32, 32], (Kind::Uint8, Device::Cpu));
        assert!(augment_batch(&x, &[0, 0], &[0, 0], &[false, false]).is_err());
        let x = images(2);
        assert!(augment_batch(&x, &[0], &[0], &[false]).is_err());
    }
}
