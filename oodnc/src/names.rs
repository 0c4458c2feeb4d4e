//! Names of the sets and rows in the result tables (spelled only here).

/// The ID training split (unaugmented), what NC is measured on.
pub const ID_TRAIN: &str = "id-train";
/// The ID validation split (hyperparameter selection).
pub const ID_VAL: &str = "id-val";
/// The ID test set.
pub const ID_TEST: &str = "id-test";
/// The OOD validation set (jigsaw outliers of ID val).
pub const OOD_VAL: &str = "ood-val";
/// The `detector` of the ID-accuracy row of OOD tables.
pub const CLASSIFIER: &str = "classifier";
/// The `layer` of NC rows of the penultimate features.
pub const PENULTIMATE: &str = "penultimate";
