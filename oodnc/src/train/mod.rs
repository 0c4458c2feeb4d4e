//! Training: the recipe, checkpoints, history, exact resume.
//!
//! Layout of a run directory `runs/<name>/`:
//! ```text
//! config.toml                      resolved config (profile, seeds, recipe)
//! history.csv                      one row per epoch, rewritten after every epoch
//! checkpoints/epoch_XXX.safetensors     model at scheduled epochs (0 = initialisation)
//! checkpoints/best.json            epoch and val accuracy of the best checkpoint
//! state/last.safetensors           model + optimizer after the last completed epoch (resume)
//! ```

pub mod history;
pub mod sgd;
pub mod trainer;
pub mod writer;

pub use crate::data::protocol::RunData;
pub use history::{EpochRecord, History};
pub use sgd::{Sgd, SgdConfig};
pub use trainer::{cosine_lr, train_step, TrainOutcome, Trainer};
