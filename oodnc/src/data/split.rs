//! Train/validation splits and OOD subsets.
//!
//! Default protocol: a seeded random split of the training images (45k/5k for
//! CIFAR-100) and the full OOD test sets. `SeedCompatible` reproduces the
//! original project exactly: its validation indices (numpy legacy RNG, seed 42)
//! and its 10 % OOD subsets (SVHN 2,603, CIFAR-10 1,000, DTD test1 188), shipped
//! in `assets/seed-split-indices.json`.

use crate::error::{Error, Result};
use crate::util::SplitMix64;

/// How the validation split and the OOD subsets are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum SplitProtocol {
    /// `n_val` validation images drawn with `seed`; full OOD sets.
    Seeded { n_val: usize, seed: u64 },
    /// The original project's exact indices (CIFAR-100 with 50,000 train images only).
    SeedCompatible,
}

impl Default for SplitProtocol {
    fn default() -> Self {
        SplitProtocol::Seeded { n_val: 5000, seed: 0 }
    }
}

/// Indices into the official training set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitIndices {
    pub train: Vec<i64>,
    pub val: Vec<i64>,
}

#[derive(serde::Deserialize)]
struct SeedIndices {
    cifar100_val_indices: Vec<i64>,
    cifar100_train_indices: Vec<i64>,
    svhn_test_subset: Vec<i64>,
    cifar10_test_subset: Vec<i64>,
    dtd_test1_subset: Vec<i64>,
}

const SEED_JSON: &str = include_str!("../../assets/seed-split-indices.json");

fn seed_indices() -> Result<SeedIndices> {
    serde_json::from_str(SEED_JSON).map_err(|e| Error::data("embedded seed-split-indices.json", e.to_string()))
}

/// Which OOD subset of the original project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedSubset {
    SvhnTest,
    Cifar10Test,
    DtdTest1,
}

impl SplitProtocol {
    /// Splits `n` training images into train and val index lists (both sorted
    /// ascending for the seeded protocol, so that cached features line up).
    pub fn split(&self, n: usize) -> Result<SplitIndices> {
        match *self {
            SplitProtocol::Seeded { n_val, seed } => {
                if n_val >= n {
                    return Err(Error::param("n_val", format!("{n_val} validation images from only {n}")));
                }
                let perm = SplitMix64::derive(seed, &[0x5911]).permutation(n);
                let mut val = perm[..n_val].to_vec();
                let mut train = perm[n_val..].to_vec();
                val.sort_unstable();
                train.sort_unstable();
                Ok(SplitIndices { train, val })
            }
            SplitProtocol::SeedCompatible => {
                if n != 50_000 {
                    return Err(Error::param(
                        "split protocol",
                        format!("seed_compatible needs the 50,000 CIFAR-100 train images, got {n}"),
                    ));
                }
                let s = seed_indices()?;
                Ok(SplitIndices { train: s.cifar100_train_indices, val: s.cifar100_val_indices })
            }
        }
    }

    /// The OOD subset to use for a test set of `n` images: all of them for the
    /// seeded protocol, the original's 10 % draw for `SeedCompatible`.
    pub fn ood_subset(&self, which: SeedSubset, n: usize) -> Result<Vec<i64>> {
        match self {
            SplitProtocol::Seeded { .. } => Ok((0..n as i64).collect()),
            SplitProtocol::SeedCompatible => {
                let s = seed_indices()?;
                let (v, expected) = match which {
                    SeedSubset::SvhnTest => (s.svhn_test_subset, 26_032),
                    SeedSubset::Cifar10Test => (s.cifar10_test_subset, 10_000),
                    SeedSubset::DtdTest1 => (s.dtd_test1_subset, 1_880),
                };
                if n != expected {
                    return Err(Error::param(
                        "split protocol",
                        format!("seed_compatible {which:?} needs the real set of {expected} images, got {n}"),
                    ));
                }
                Ok(v)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_split_is_disjoint_complete_and_reproducible() {
        let p = SplitProtocol::Seeded { n_val: 100, seed: 3 };
        let a = p.split(1000).unwrap();
        assert_eq!(a, p.split(1000).unwrap());
        assert_eq!(a.val.len(), 100);
        let mut all: Vec<i64> = a.train.iter().chain(a.val.iter()).copied().collect();
        all.sort();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        let b = SplitProtocol::Seeded { n_val: 100, seed: 4 }.split(1000).unwrap();
        assert_ne!(a.val, b.val);
        assert!(SplitProtocol::Seeded { n_val: 10, seed: 0 }.split(10).is_err());
    }

    #[test]
    fn seed_compatible_matches_the_original_draw() {
        let s = SplitProtocol::SeedCompatible.split(50_000).unwrap();
        assert_eq!(&s.val[..3], &[33553, 9427, 199]);
        assert_eq!(s.val.len(), 5000);
        assert_eq!(s.train.len(), 45_000);
        let svhn = SplitProtocol::SeedCompatible.ood_subset(SeedSubset::SvhnTest, 26_032).unwrap();
        assert_eq!((svhn.len(), &svhn[..3]), (2603, &[6851i64, 1733, 1327][..]));
        let c10 = SplitProtocol::SeedCompatible.ood_subset(SeedSubset::Cifar10Test, 10_000).unwrap();
        assert_eq!((c10.len(), &c10[..3]), (1000, &[3304i64, 3241, 7545][..]));
        let dtd = SplitProtocol::SeedCompatible.ood_subset(SeedSubset::DtdTest1, 1880).unwrap();
        assert_eq!((dtd.len(), &dtd[..3]), (188, &[1338i64, 207, 1009][..]));
        assert!(SplitProtocol::SeedCompatible.split(1000).is_err());
        assert!(SplitProtocol::SeedCompatible.ood_subset(SeedSubset::SvhnTest, 100).is_err());
    }
}
