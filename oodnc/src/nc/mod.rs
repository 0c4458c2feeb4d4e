//! Neural Collapse (Papyan, Han & Donoho 2020) and its OOD extension (NC5, NECO).
//!
//! Everything is computed from cached, unaugmented features in one
//! deterministic pass, in f64, with pseudo-inverses by eigendecomposition and a
//! relative eigenvalue threshold (no random start, unlike ARPACK `svds`).
//!
//! Notation: h_i features `[D]`, labels y_i in 0..C, N samples, mu_c class means,
//! mu_G the global mean. **mu_G is the mean of the class means** (unweighted, as
//! in the original and Papyan et al.'s code) for NC1-NC3; the sample mean of all
//! training features is used for NC5 centring. M~ = [mu_c - mu_G] (D x C).
//! Sigma_W = 1/N sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T, Sigma_B = 1/C M~ M~^T.

pub mod layers;
pub mod metrics;
pub mod stats;
pub mod study;

pub use layers::{layer_metrics, separation_fuzziness_slope};
pub use metrics::{nc5, ClassGeometry, NcMetrics};
pub use stats::ClassStats;
