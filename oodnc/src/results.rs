//! The one in-memory results type: long-form rows (epoch, key, dataset,
//! metric, value, interval), where the key is the detector (OOD tables) or the
//! layer (NC tables). Studies return these rows; CSV (through polars) is the
//! export, and a DataFrame is there for notebooks that want one.

use crate::error::{Error, Result};
use polars::prelude::*;
use polars_io::csv::read::CsvReadOptions;
use polars_io::csv::write::CsvWriter;
use polars_io::{SerReader, SerWriter};
use std::path::Path;

/// One result: `metric` of `key` (a detector or a layer) on `dataset` at `epoch`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Row {
    pub epoch: i64,
    /// The selection protocol (OOD tables; empty in NC tables).
    pub protocol: String,
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
        Row {
            epoch,
            protocol: String::new(),
            key: key.into(),
            dataset: dataset.into(),
            metric: metric.into(),
            value,
            ci_low: f64::NAN,
            ci_high: f64::NAN,
        }
    }
}

/// What the key column is called in a table, and whether it has intervals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// `epoch, protocol, detector, dataset, metric, value, ci_low, ci_high`.
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
    let mut cols: Vec<Column> = vec![Column::new("epoch".into(), rows.iter().map(|r| r.epoch).collect::<Vec<_>>())];
    if kind == TableKind::Ood {
        cols.push(Column::new("protocol".into(), rows.iter().map(|r| r.protocol.clone()).collect::<Vec<_>>()));
    }
    cols.extend([
        Column::new(kind.key_column().into(), rows.iter().map(|r| r.key.clone()).collect::<Vec<_>>()),
        Column::new("dataset".into(), rows.iter().map(|r| r.dataset.clone()).collect::<Vec<_>>()),
        Column::new("metric".into(), rows.iter().map(|r| r.metric.clone()).collect::<Vec<_>>()),
        Column::new("value".into(), rows.iter().map(|r| r.value).collect::<Vec<_>>()),
    ]);
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

/// Writes a DataFrame as Parquet (zstd-compressed, atomically): what pandas,
/// polars, pyarrow, DuckDB and R's arrow read directly. Needs the `parquet`
/// feature (on by default; the notebooks' kernel builds without it).
#[cfg(feature = "parquet")]
pub fn write_parquet(df: &mut DataFrame, path: &Path) -> Result<()> {
    let mut buf = Vec::new();
    polars_io::parquet::write::ParquetWriter::new(&mut buf)
        .with_compression(polars_io::parquet::write::ParquetCompression::Zstd(None))
        .finish(df)
        .map_err(|e| Error::format(path, format!("Parquet encoding failed: {e}")))?;
    crate::util::write_atomic(path, &buf)
}

/// Reads a Parquet file written by [`write_parquet`] (`parquet` feature).
#[cfg(feature = "parquet")]
pub fn read_parquet(path: &Path) -> Result<DataFrame> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    polars_io::parquet::read::ParquetReader::new(f).finish().map_err(|e| Error::format(path, format!("unreadable Parquet file ({e})")))
}

/// Writes `df` as Parquet when `path` ends in `.parquet`, as CSV otherwise.
/// Built without the `parquet` feature (the notebooks' kernel), a `.parquet`
/// path is refused with [`Error::InvalidParam`] naming it, and nothing is written.
pub fn write_table(df: &mut DataFrame, path: &Path) -> Result<()> {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet")) {
        #[cfg(feature = "parquet")]
        return write_parquet(df, path);
        #[cfg(not(feature = "parquet"))]
        return Err(Error::InvalidParam {
            name: format!("table file {}", path.display()),
            reason: "this build of oodnc has no Parquet support (the `parquet` feature, on by default, is off in the \
                     notebooks' kernel); write a .csv file here, or use the `oodnc` command line, which has it"
                .into(),
        });
    }
    write_csv(df, path)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "parquet")]
    #[test]
    fn parquet_and_csv_round_trip_the_same_frame() {
        let rows = vec![
            Row { protocol: "heldout".into(), ..Row::point(3, "knn", "svhn", "auroc", 0.912_345_678_901_234_5) },
            Row { protocol: "oracle".into(), ci_low: 0.1, ci_high: 0.3, ..Row::point(3, "msp", "mean:far", "auroc", 0.2) },
        ];
        let mut df = to_frame(&rows, TableKind::Ood).unwrap();
        let d = std::env::temp_dir().join(format!("oodnc-results-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let (pq, csv) = (d.join("t.parquet"), d.join("t.csv"));
        write_table(&mut df, &pq).unwrap();
        write_table(&mut df, &csv).unwrap();
        assert_eq!(&std::fs::read(&pq).unwrap()[..4], b"PAR1");
        let back = read_parquet(&pq).unwrap();
        assert!(back.equals_missing(&df), "{back}\n{df}");
        let back_csv = read_csv(&csv).unwrap();
        assert_eq!(back_csv.height(), 2);
        assert!(read_parquet(&csv).unwrap_err().to_string().contains("unreadable Parquet"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// The notebooks' build (no `parquet` feature): a `.parquet` path is a typed
    /// error naming the file, nothing is written, and CSV still works.
    #[cfg(not(feature = "parquet"))]
    #[test]
    fn parquet_path_without_the_feature_is_refused_and_csv_still_works() {
        let mut df = to_frame(&[Row::point(1, "msp", "svhn", "auroc", 0.5)], TableKind::Ood).unwrap();
        let d = std::env::temp_dir().join(format!("oodnc-results-nopq-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let pq = d.join("t.parquet");
        let e = write_table(&mut df, &pq).unwrap_err();
        assert!(matches!(e, Error::InvalidParam { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("t.parquet") && msg.contains("`parquet` feature") && msg.contains(".csv"), "{msg}");
        assert!(!pq.exists());
        write_table(&mut df, &d.join("t.csv")).unwrap();
        assert_eq!(read_csv(&d.join("t.csv")).unwrap().height(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
