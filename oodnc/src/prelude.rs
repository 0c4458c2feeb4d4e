//! Everything a notebook needs, in one `use`:
//!
//! ```text
//! :dep oodnc = { path = "../oodnc-nb", package = "oodnc_nb" }
//! use oodnc::prelude::*;
//! let s = Session::new()?;
//! ```
//!
//! Kept small on purpose: evcxr compiles every cell against what is in scope, so
//! the prelude names the notebook-facing entry points (the [`Session`], the figure
//! functions, the table functions, the options of the studies) and leaves the rest
//! of the crate one `oodnc::` path away.

pub use crate::data::protocol::EvalSets;
pub use crate::nc::study::NcOptions;
pub use crate::notebook::{FrameDisplay, Session, Shown};
pub use crate::ood::{detector_names, Protocol};
pub use crate::plot::{figures, Figure};
pub use crate::report::{
    columns, display_markdown, epochs_of, last_epoch, layer_summary, nc5_table, nc5_vs_neco_table, nc_epoch_table, ood_table,
    ood_table_with_intervals, protocol_table, runs_table, selection_lines, wide_table,
};
pub use crate::results::Row;
pub use crate::run::{Run, Table};
pub use crate::run_figures;
pub use crate::{tch, Error, Result};
