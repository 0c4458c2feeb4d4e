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

/// OOD metric names in the tables (see [`crate::ood::metrics`] for their definitions).
pub mod metric {
    /// Area under the ROC curve (ID = positive).
    pub const AUROC: &str = "auroc";
    /// Fraction of OOD accepted at the threshold keeping 95 % of ID (ODIN/ViM/NECO, OpenOOD v1).
    pub const FPR95_OOD_ACCEPTED: &str = "fpr95_ood_accepted_at_95_id";
    /// Fraction of ID rejected at the threshold rejecting 95 % of OOD (the original's, pytorch-ood's).
    pub const FPR95_ID_REJECTED: &str = "fpr95_id_rejected_at_95_ood";
    /// Average precision with ID as positive (scikit-learn's `average_precision_score`).
    pub const AUPR_IN_AP: &str = "aupr_in_ap";
    /// Average precision with OOD as positive.
    pub const AUPR_OUT_AP: &str = "aupr_out_ap";
    /// Trapezoidal area under the PR curve, ID positive (OpenOOD's, pytorch-ood's).
    pub const AUPR_IN_TRAPZ: &str = "aupr_in_trapz";
    /// Trapezoidal area under the PR curve, OOD positive.
    pub const AUPR_OUT_TRAPZ: &str = "aupr_out_trapz";
    /// min over thresholds of (FPR + FNR) / 2.
    pub const DETECTION_ERROR: &str = "detection_error";
    /// CCR@FPR (OpenOOD): the fraction of ID test samples that are both accepted and
    /// correctly classified, at the threshold where the fraction `fpr` of OOD is accepted.
    pub const CCR: [(&str, f64); 4] = [("ccr_fpr_1e-4", 1e-4), ("ccr_fpr_1e-3", 1e-3), ("ccr_fpr_1e-2", 1e-2), ("ccr_fpr_1e-1", 1e-1)];
    /// ID test accuracy (row of the classifier).
    pub const ID_ACCURACY: &str = "id_accuracy";
}
