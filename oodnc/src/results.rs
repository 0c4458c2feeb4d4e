//! The one in-memory results type: long-form rows (epoch, key, dataset,
//! metric, value, interval), where the key is the detector (OOD tables) or the
//! layer (NC tables). Studies return these rows; CSV (through polars) is the
//! export, and a DataFrame is there for notebooks that want one.

use crate::error::{Error, Result};
use polars::prelude::*;
use std::path::Path;

/// One result: `metric` of `key` (a detector or a layer) on `dataset` at `epoch`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Row {
    pub epoch: i64,
    /// The detector (OOD tables) or the layer (NC tables).
    pub key: String,
    pub dataset: String,
    pub metric: String,
    pub value: f64,
    /// Bootstrap interval (NaN when none).
    pub ci_low: f64,
    pub ci_high: f64,
}

impl Row {
    /// A row without an interval.
    pub fn point(epoch: i64, key: impl Into<String>, dataset: impl Into<String>, metric: impl Into<String>, value: f64) -> Self {
        Row { epoch, key: key.into(), dataset: dataset.into(), metric: metric.into(), value, ci_low: f64::NAN, ci_high: f64::NAN }
    }
}

/// What the key column is called in a table, and whether it has intervals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// `epoch, detector, dataset, metric, value, ci_low, ci_high`.
    Ood,
    /// `epoch, layer, dataset, metric, value`.
    Nc,
}

impl TableKind {
    /// The key column's name.
    pub fn key_column(self) -> &'static str {
        match self {
            TableKind::Ood => "detector",
            TableKind::Nc => "layer",
        }
    }
}

/// Rows as a DataFrame with `kind`'s columns.
pub fn to_frame(rows: &[Row], kind: TableKind) -> Result<DataFrame> {
    let mut cols: Vec<Column> = vec![
        Column::new("epoch".into(), rows.iter().map(|r| r.epoch).collect::<Vec<_>>()),
        Column::new(kind.key_column().into(), rows.iter().map(|r| r.key.clone()).collect::<Vec<_>>()),
        Column::new("dataset".into(), rows.iter().map(|r| r.dataset.clone()).collect::<Vec<_>>()),
        Column::new("metric".into(), rows.iter().map(|r| r.metric.clone()).collect::<Vec<_>>()),
        Column::new("value".into(), rows.iter().map(|r| r.value).collect::<Vec<_>>()),
    ];
    if kind == TableKind::Ood {
        cols.push(Column::new("ci_low".into(), rows.iter().map(|r| r.ci_low).collect::<Vec<_>>()));
        cols.push(Column::new("ci_high".into(), rows.iter().map(|r| r.ci_high).collect::<Vec<_>>()));
    }
    Ok(DataFrame::new(rows.len(), cols)?)
}

/// Writes a DataFrame as CSV (atomically).
pub fn write_csv(df: &mut DataFrame, path: &Path) -> Result<()> {
    let mut buf = Vec::new();
    CsvWriter::new(&mut buf).include_header(true).finish(df)?;
    crate::util::write_atomic(path, &buf)
}

/// Reads a long-form CSV written by [`write_csv`].
pub fn read_csv(path: &Path) -> Result<DataFrame> {
    if !path.exists() {
        return Err(Error::Missing {
            what: "results table".into(),
            path: path.to_path_buf(),
            hint: "; run the analysis first (`oodnc ood` / `oodnc nc`, or the notebook)".into(),
        });
    }
    let bad = |e: PolarsError| Error::format(path, format!("unreadable results table ({e}); rerun the analysis that writes it"));
    CsvReadOptions::default()
        .with_has_header(true)
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .map_err(bad)?
        .finish()
        .map_err(bad)
}
