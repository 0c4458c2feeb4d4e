//! oodnc, re-exported as a Rust `dylib` for the notebooks.
//!
//! evcxr compiles every notebook cell as a new shared object linked against the
//! crates the notebook depends on. Against `oodnc` itself that link reads the
//! ~250 static libraries of its dependency graph (libtorch bindings, polars,
//! plotters, ...) for every cell; against this crate it reads one shared
//! library, built once when the notebook's `:dep` line first runs. Measured with
//! `make bench-cells` (the real kernel, same run): the median trivial cell takes
//! about two thirds of the time (see the README, "Notebook cell latency").
//!
//! The kernel builds it, oodnc and their dependencies at opt-level 2 (each cell
//! at 0; `scripts/rust-kernel`): a `dylib` built at opt-level 0 exports every
//! generic instance it holds (~270k symbols) that each cell's compile walks and
//! links against. `build.rs` exports libtorch's C wrapper from the library, so a
//! cell may instantiate generic tch functions of its own.
//!
//! Nothing is added or changed: every item is `oodnc`'s, under the same paths,
//! because the notebooks import it under the name `oodnc`:
//!
//! ```text
//! :dep oodnc = { path = "../oodnc-nb", package = "oodnc_nb" }
//! use oodnc::prelude::*;
//! ```
pub use oodnc::*;
