//! The evaluation protocol: which datasets a run is evaluated on.
//!
//! - ID: the unaugmented training split (detectors and NC are fitted on it), the
//!   validation split (hyperparameter selection, calibration), the test set.
//! - OOD test sets: `svhn` (far), `cifar10` (near), `textures` (far; DTD test
//!   partition 1, resized by `data.dtd_resize`). The seeded protocol uses the full
//!   sets; `seed_compatible` the original's 10 % subsets.
//! - OOD validation, **never** a test set (see [`crate::ood::protocol`] for the
//!   selection protocols that use them):
//!   - `ood-val`: ID validation images cut into a 4x4 grid of 8x8 tiles and
//!     shuffled ("jigsaw" outliers, seeded). Local statistics stay ID-like while
//!     the global structure is gone (protocol `jigsaw`).
//!   - the held-out set of `ood.heldout` (default `tin-val`: TinyImageNet val
//!     under the data root; the embedded dataset has its own family there),
//!     loaded when the `heldout` protocol is configured.
//! - Extra OOD test sets from `data.extra_ood` (image folders, image lists, or
//!   MNIST's IDX files), when configured.

use super::dtd::{load_dtd, DtdSplit};
use super::split::SeedSubset;
use super::{cifar, svhn, Dataset, Part, SIDE};
use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::util::SplitMix64;
use tch::Tensor;

/// All datasets of an evaluation.
pub struct EvalSets {
    pub id_train: Dataset,
    pub id_val: Dataset,
    pub id_test: Dataset,
    /// OOD test sets, named `svhn`, `cifar10`, `textures`.
    pub ood: Vec<Dataset>,
    /// Jigsaw outliers of ID val (protocol `jigsaw`).
    pub ood_val: Dataset,
    /// The held-out OOD validation set (protocol `heldout`), when configured.
    pub heldout: Option<Dataset>,
}

/// Jigsaw outliers: each image's 4x4 grid of tiles randomly permuted (seeded).
pub fn jigsaw(data: &Dataset, seed: u64, name: &str) -> Result<Dataset> {
    let n = data.len() as i64;
    let g = 4i64;
    let t = SIDE / g;
    // [N,3,4,8,4,8] -> [N,16,3,8,8]
    let tiles = data.images.view([n, 3, g, t, g, t]).permute([0, 2, 4, 1, 3, 5]).reshape([n, g * g, 3, t, t]);
    let mut rng = SplitMix64::derive(seed, &[0x615]);
    let mut perm = Vec::with_capacity((n * g * g) as usize);
    for _ in 0..n {
        perm.extend(rng.permutation((g * g) as usize));
    }
    let idx = Tensor::from_slice(&perm).view([n, g * g, 1, 1, 1]).expand([n, g * g, 3, t, t], false);
    let shuffled = tiles.gather(1, &idx, false);
    let images = shuffled.view([n, g, g, 3, t, t]).permute([0, 3, 1, 4, 2, 5]).reshape([n, 3, SIDE, SIDE]);
    Ok(Dataset { name: name.into(), images, labels: data.labels.shallow_clone(), class_names: data.class_names.clone() })
}

/// The in-distribution data of a run: train / val (split of the official train
/// set) and test.
pub struct RunData {
    pub train: Dataset,
    pub val: Dataset,
    pub test: Dataset,
}

impl RunData {
    /// Loads the ID data of `cfg`. For the synthetic source, the embedded dataset
    /// is verified against its manifest and (re)generated when absent or
    /// incomplete (see [`crate::data::synthetic::ensure`]).
    pub fn load(cfg: &RunConfig) -> Result<Self> {
        let root = &cfg.data.root;
        if cfg.data.source == "synthetic" {
            crate::data::synthetic::ensure(root, &cfg.data.synth)?;
        }
        let full = cifar::load_cifar100(root, Part::Train)?;
        if full.num_classes() as i64 != cfg.model.num_classes {
            return Err(Error::param(
                "model.num_classes",
                format!("{} but the data has {} classes", cfg.model.num_classes, full.num_classes()),
            ));
        }
        let split = cfg.data.split.split(full.len())?;
        Ok(RunData {
            train: full.subset(&split.train, crate::names::ID_TRAIN)?,
            val: full.subset(&split.val, crate::names::ID_VAL)?,
            test: cifar::load_cifar100(root, Part::Test)?,
        })
    }
}

/// Loads the evaluation sets of a run config.
pub fn load_eval_sets(cfg: &RunConfig) -> Result<EvalSets> {
    let run = RunData::load(cfg)?;
    let root = &cfg.data.root;
    let proto = cfg.data.split;
    let mut ood = Vec::new();
    let sv = svhn::load_svhn(root, Part::Test)?;
    let idx = proto.ood_subset(SeedSubset::SvhnTest, sv.len())?;
    ood.push(sv.subset(&idx, "svhn")?);
    let c10 = cifar::load_cifar10(root, Part::Test)?;
    let idx = proto.ood_subset(SeedSubset::Cifar10Test, c10.len())?;
    ood.push(c10.subset(&idx, "cifar10")?);
    let tex = load_dtd(root, DtdSplit::TEST1, cfg.data.dtd_resize)?;
    let idx = proto.ood_subset(SeedSubset::DtdTest1, tex.len())?;
    ood.push(tex.subset(&idx, "textures")?);
    for extra in &cfg.data.extra_ood {
        ood.push(load_extra(extra, cfg.data.dtd_resize)?);
    }
    let ood_val = jigsaw(&run.val, cfg.seed, crate::names::OOD_VAL)?;
    let heldout = if cfg.ood.protocols.contains(&crate::ood::Protocol::Heldout) { Some(load_heldout(cfg)?) } else { None };
    let mut id_train = run.train;
    id_train.name = crate::names::ID_TRAIN.into();
    let mut id_test = run.test;
    id_test.name = crate::names::ID_TEST.into();
    Ok(EvalSets { id_train, id_val: run.val, id_test, ood, ood_val, heldout })
}

/// Loads an extra OOD test set in its configured format.
pub fn load_extra(extra: &crate::config::ExtraOod, resize: super::image_folder::Resize) -> Result<Dataset> {
    use crate::config::ExtraFormat;
    match (extra.format, &extra.list) {
        (ExtraFormat::Mnist, _) => super::mnist::load_mnist(&extra.path, Part::Test, &extra.name),
        (ExtraFormat::Folder, Some(list)) => super::image_folder::load_image_list(&extra.path, list, &extra.name, resize),
        (ExtraFormat::Folder, None) => super::image_folder::load_image_folder(&extra.path, &extra.name, resize),
    }
}

/// Loads the held-out OOD validation set of `cfg.ood.heldout` (its path is
/// relative to the data root unless absolute). Missing data is an error saying
/// where to put it and how to do without.
pub fn load_heldout(cfg: &RunConfig) -> Result<Dataset> {
    let h = &cfg.ood.heldout;
    let dir = if h.path.is_absolute() { h.path.clone() } else { cfg.data.root.join(&h.path) };
    if !dir.is_dir() {
        return Err(Error::Missing {
            what: format!("held-out OOD validation set '{}' (selection protocol `heldout`)", h.name),
            path: dir,
            hint:
                "; for TinyImageNet val: `oodnc data fetch --dataset tin --root <data root>`, or point ood.heldout.path at any image \
                   folder disjoint from the test sets; or drop `heldout` from ood.protocols (and set ood.headline) in the run's config.toml"
                    .into(),
        });
    }
    match &h.list {
        Some(list) => {
            let list = if list.is_absolute() { list.clone() } else { cfg.data.root.join(list) };
            super::image_folder::load_image_list(&dir, &list, &h.name, cfg.data.dtd_resize)
        }
        None => super::image_folder::load_image_folder(&dir, &h.name, cfg.data.dtd_resize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jigsaw_permutes_tiles_and_keeps_pixels() {
        let n = 3;
        let px: Vec<u8> = (0..n * 3072).map(|i| (i % 253) as u8).collect();
        let ds = Dataset::from_raw("x", px, vec![0, 1, 0], vec!["a".into(), "b".into()]).unwrap();
        let j = jigsaw(&ds, 1, "j").unwrap();
        assert_eq!(j.images.size(), vec![3, 3, 32, 32]);
        // Same multiset of pixels per image, different arrangement.
        for i in 0..n as i64 {
            let a = ds.images.get(i).flatten(0, -1).sort(0, false).0;
            let b = j.images.get(i).flatten(0, -1).sort(0, false).0;
            assert!(a.equal(&b));
        }
        assert!(!j.images.equal(&ds.images));
        // Each 8x8 tile of the output is some tile of the input.
        let out_tile = j.images.get(0).narrow(1, 0, 8).narrow(2, 0, 8);
        let mut found = false;
        for r in 0..4 {
            for c in 0..4 {
                found |= ds.images.get(0).narrow(1, r * 8, 8).narrow(2, c * 8, 8).equal(&out_tile);
            }
        }
        assert!(found);
    }
}
