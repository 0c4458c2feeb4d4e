//! Tables from the long-form results: Markdown for the README and notebooks,
//! plain text for the terminal.

use crate::error::{Error, Result};

pub use crate::names;
use polars::prelude::*;
use std::collections::BTreeMap;

/// One row of a long-form table (the crate's one results type).
pub type LongRow = crate::results::Row;

fn str_col(df: &DataFrame, name: &str) -> Result<Vec<String>> {
    let c = df.column(name)?.str()?;
    Ok((0..c.len()).map(|i| c.get(i).unwrap_or("").to_string()).collect())
}

fn f64_col(df: &DataFrame, name: &str) -> Result<Vec<f64>> {
    let c = df.column(name)?.cast(&DataType::Float64)?;
    let c = c.f64()?;
    Ok((0..c.len()).map(|i| c.get(i).unwrap_or(f64::NAN)).collect())
}

/// Rows of a long-form frame; `key` is the column naming the method or layer
/// (`detector` for OOD tables, `layer` for NC tables).
pub fn long_rows(df: &DataFrame, key: &str) -> Result<Vec<LongRow>> {
    let epochs: Vec<i64> = f64_col(df, "epoch")?.into_iter().map(|v| v as i64).collect();
    let keys = str_col(df, key)?;
    let datasets = str_col(df, "dataset")?;
    let metrics = str_col(df, "metric")?;
    let values = f64_col(df, "value")?;
    let n = epochs.len();
    let (lo, hi) = if df.column("ci_low").is_ok() {
        (f64_col(df, "ci_low")?, f64_col(df, "ci_high")?)
    } else {
        (vec![f64::NAN; n], vec![f64::NAN; n])
    };
    Ok((0..n)
        .map(|i| LongRow {
            epoch: epochs[i],
            key: keys[i].clone(),
            dataset: datasets[i].clone(),
            metric: metrics[i].clone(),
            value: values[i],
            ci_low: lo[i],
            ci_high: hi[i],
        })
        .collect())
}

/// The last epoch present.
pub fn last_epoch(rows: &[LongRow]) -> Result<i64> {
    rows.iter().map(|r| r.epoch).max().ok_or_else(|| Error::data("report", "empty table"))
}

/// Markdown table of one epoch: a row per detector, for each OOD set
/// "AUROC / FPR@95 (OOD accepted at 95 % ID)", then the mean over sets.
pub fn ood_table(rows: &[LongRow], epoch: i64) -> Result<String> {
    let mut datasets: Vec<String> = Vec::new();
    let mut detectors: Vec<String> = Vec::new();
    let mut v: BTreeMap<(String, String, String), f64> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.epoch == epoch && r.key != names::CLASSIFIER) {
        if !datasets.contains(&r.dataset) {
            datasets.push(r.dataset.clone());
        }
        if !detectors.contains(&r.key) {
            detectors.push(r.key.clone());
        }
        v.insert((r.key.clone(), r.dataset.clone(), r.metric.clone()), r.value);
    }
    if detectors.is_empty() {
        return Err(Error::data("OOD table", format!("no rows for epoch {epoch}")));
    }
    let mut s = format!("| detector (epoch {epoch}) |");
    for d in &datasets {
        s.push_str(&format!(" {d} AUROC / FPR95 |"));
    }
    s.push_str(" mean AUROC / FPR95 |\n|---|");
    s.push_str(&"---|".repeat(datasets.len() + 1));
    s.push('\n');
    for det in &detectors {
        s.push_str(&format!("| {det} |"));
        let (mut sa, mut sf) = (0.0, 0.0);
        for d in &datasets {
            let a = v.get(&(det.clone(), d.clone(), crate::names::metric::AUROC.into())).copied().unwrap_or(f64::NAN);
            let f = v.get(&(det.clone(), d.clone(), crate::names::metric::FPR95_OOD_ACCEPTED.into())).copied().unwrap_or(f64::NAN);
            sa += a;
            sf += f;
            s.push_str(&format!(" {a:.4} / {:.1}% |", 100.0 * f));
        }
        let k = datasets.len() as f64;
        s.push_str(&format!(" {:.4} / {:.1}% |\n", sa / k, 100.0 * sf / k));
    }
    Ok(s)
}

/// Markdown table with one row per `key` and one column per metric, for one
/// epoch and dataset (NC tables).
pub fn wide_table(rows: &[LongRow], epoch: i64, dataset: &str, metrics: &[&str]) -> Result<String> {
    let mut keys: Vec<String> = Vec::new();
    let mut v: BTreeMap<(String, String), f64> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.epoch == epoch && r.dataset == dataset) {
        if !keys.contains(&r.key) {
            keys.push(r.key.clone());
        }
        v.insert((r.key.clone(), r.metric.clone()), r.value);
    }
    if keys.is_empty() {
        return Err(Error::data("table", format!("no rows for epoch {epoch}, dataset {dataset}")));
    }
    let mut s = String::from("| |");
    for m in metrics {
        s.push_str(&format!(" {m} |"));
    }
    s.push_str("\n|---|");
    s.push_str(&"---|".repeat(metrics.len()));
    s.push('\n');
    for k in &keys {
        s.push_str(&format!("| {k} |"));
        for m in metrics {
            match v.get(&(k.clone(), m.to_string())) {
                Some(x) if x.is_finite() => s.push_str(&format!(" {x:.4} |")),
                _ => s.push_str(" – |"),
            }
        }
        s.push('\n');
    }
    Ok(s)
}

/// Shows Markdown in a notebook (evcxr `text/markdown`) as well as plain text.
pub fn display_markdown(md: &str) {
    println!("EVCXR_BEGIN_CONTENT text/markdown\n{md}\nEVCXR_END_CONTENT");
}

fn find(rows: &[LongRow], epoch: i64, key: &str, dataset: &str, metric: &str) -> Option<f64> {
    rows.iter().find(|r| r.epoch == epoch && r.key == key && r.dataset == dataset && r.metric == metric).map(|r| r.value)
}

fn cell(v: Option<f64>) -> String {
    v.filter(|x| x.is_finite()).map(|x| format!(" {x:.4} |")).unwrap_or_else(|| " – |".into())
}

fn epochs_of(rows: &[LongRow]) -> Vec<i64> {
    let mut e: Vec<i64> = rows.iter().map(|r| r.epoch).collect();
    e.sort_unstable();
    e.dedup();
    e
}

/// Markdown: one row per epoch, one column per metric (penultimate layer, ID train).
pub fn nc_epoch_table(rows: &[LongRow], metrics: &[&str]) -> String {
    let mut t = String::from("| epoch |");
    for m in metrics {
        t.push_str(&format!(" {m} |"));
    }
    t.push_str("\n|---|");
    t.push_str(&"---|".repeat(metrics.len()));
    t.push('\n');
    for e in epochs_of(rows) {
        t.push_str(&format!("| {e} |"));
        for m in metrics {
            t.push_str(&cell(find(rows, e, "penultimate", names::ID_TRAIN, m)));
        }
        t.push('\n');
    }
    t
}

/// Markdown: per epoch, ID NC1 and for each OOD set NC5 (centred, uncentred) and NC1 with the OOD class.
pub fn nc5_table(rows: &[LongRow], ood: &[String]) -> String {
    let mut t = String::from("| epoch | NC1 (ID) |");
    for o in ood {
        t.push_str(&format!(" NC5 {o} | NC5 uncentred {o} | NC1 ID+{o} |"));
    }
    t.push_str("\n|---|---|");
    t.push_str(&"---|---|---|".repeat(ood.len()));
    t.push('\n');
    for e in epochs_of(rows) {
        t.push_str(&format!("| {e} |{}", cell(find(rows, e, "penultimate", names::ID_TRAIN, "nc1"))));
        for o in ood {
            for m in ["nc5", "nc5_uncentred", "nc1_with_ood_class"] {
                t.push_str(&cell(find(rows, e, "penultimate", o, m)));
            }
        }
        t.push('\n');
    }
    t
}

/// Markdown: per epoch and OOD set, centred NC5 next to the AUROC of NECO and of the original's NECO.
pub fn nc5_vs_neco_table(nc_rows: &[LongRow], ood_rows: &[LongRow], ood: &[String]) -> String {
    let mut t = String::from("| epoch | OOD set | NC5 (centred) | NECO AUROC | neco_seed AUROC |\n|---|---|---|---|---|\n");
    for e in epochs_of(nc_rows) {
        for o in ood {
            t.push_str(&format!(
                "| {e} | {o} |{}{}{}\n",
                cell(find(nc_rows, e, "penultimate", o, "nc5")),
                cell(find(ood_rows, e, "neco", o, crate::names::metric::AUROC)),
                cell(find(ood_rows, e, "neco_seed", o, crate::names::metric::AUROC))
            ));
        }
    }
    t
}

/// Lines describing the hyperparameters chosen at `epoch` and every candidate's held-out AUROC.
pub fn selection_lines(selections: &[(i64, crate::ood::Selection)], epoch: i64) -> Vec<String> {
    selections
        .iter()
        .filter(|(e, s)| *e == epoch && !s.chosen.params().is_empty())
        .map(|(e, s)| {
            let cands: Vec<String> = s.candidates.iter().map(|(c, a)| format!("{} -> {a:.3}", c.label())).collect();
            format!("epoch {e} {:<11} chose {:<30} from [{}]", s.chosen.name(), s.chosen.label(), cands.join(", "))
        })
        .collect()
}

/// Layer-wise summary at `epoch`: whether NC1 falls monotonically with depth, the
/// shallowest/deepest NC1 ratio, and the fitted separation-fuzziness ratio per layer.
pub fn layer_summary(rows: &[LongRow], epoch: i64) -> String {
    let order = crate::model::TAP_NAMES;
    let nc1: Vec<f64> = order.iter().filter_map(|l| find(rows, epoch, l, names::ID_TRAIN, "nc1")).collect();
    let mut s = String::new();
    if nc1.len() >= 2 {
        let mono = nc1.windows(2).all(|w| w[1] <= w[0]);
        s.push_str(&format!(
            "NC1 decreases monotonically with depth: {mono}; shallowest / deepest NC1 = {:.1}x\n",
            nc1[0] / nc1[nc1.len() - 1]
        ));
    }
    if let Some(r) = find(rows, epoch, "all", names::ID_TRAIN, "fuzziness_ratio_per_layer") {
        s.push_str(&format!("separation fuzziness is multiplied by {r:.3} per layer on average (log-linear fit)\n"));
    }
    s
}

/// The key of each row: the values of `keys` as text.
fn row_keys(df: &DataFrame, keys: &[&str]) -> Result<Vec<Vec<String>>> {
    let cols = keys
        .iter()
        .map(|k| {
            let c = df.column(k)?.cast(&DataType::String)?;
            let c = c.str()?.clone();
            Ok(c)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((0..df.height()).map(|i| cols.iter().map(|c| c.get(i).unwrap_or("").to_string()).collect()).collect())
}

/// Merges `new` into the long-form table at `path` and writes the result
/// atomically: rows of the file whose `keys` (e.g. epoch, detector, dataset)
/// appear in `new` are replaced, every other row is kept, so a call that
/// computes part of a study never shrinks the table. Rows are ordered by epoch
/// (stable: within an epoch, kept rows first, then the new ones in their order).
/// A file that cannot be read, or has other columns, is an error naming it and
/// is left untouched. Returns the merged table.
pub fn merge_csv(path: &std::path::Path, new: &DataFrame, keys: &[&str]) -> Result<DataFrame> {
    let mut merged = if path.exists() {
        let old = crate::results::read_csv(path)?;
        let (a, b): (Vec<String>, Vec<String>) = (
            old.get_column_names().iter().map(|s| s.to_string()).collect(),
            new.get_column_names().iter().map(|s| s.to_string()).collect(),
        );
        if a != b {
            return Err(Error::format(path, format!("has columns {a:?}, expected {b:?}; move it away (it is not replaced) and run again")));
        }
        let fresh: std::collections::HashSet<Vec<String>> = row_keys(new, keys)?.into_iter().collect();
        let mask: BooleanChunked = row_keys(&old, keys)?.iter().map(|k| !fresh.contains(k)).collect();
        let kept = old.filter(&mask)?;
        let cols = new.columns().iter().map(|c| Ok(kept.column(c.name())?.cast(c.dtype())?)).collect::<Result<Vec<Column>>>()?;
        DataFrame::new(kept.height(), cols)?.vstack(new)?
    } else {
        new.clone()
    };
    let epochs: Vec<i64> = f64_col(&merged, "epoch")?.into_iter().map(|v| v as i64).collect();
    let mut idx: Vec<IdxSize> = (0..merged.height() as IdxSize).collect();
    idx.sort_by_key(|&i| epochs[i as usize]);
    merged = merged.take(&IdxCa::from_vec("idx".into(), idx))?;
    crate::results::write_csv(&mut merged, path)?;
    Ok(merged)
}

/// Merges the JSON array `new` into the array in `path` (atomically): entries
/// whose `keys` fields equal those of an entry of `new` are replaced, the rest
/// kept; ordered by `epoch` (stable). An unreadable file is an error naming it.
pub fn merge_json_array(path: &std::path::Path, new: Vec<serde_json::Value>, keys: &[&str]) -> Result<Vec<serde_json::Value>> {
    let key = |v: &serde_json::Value| keys.iter().map(|k| v.get(*k).cloned().unwrap_or_default().to_string()).collect::<Vec<_>>();
    let mut out: Vec<serde_json::Value> = if path.exists() {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let old: Vec<serde_json::Value> = serde_json::from_str(&text).map_err(|e| {
            Error::format(path, format!("not a JSON array of results ({e}); move it away (it is not replaced) and run again"))
        })?;
        let fresh: std::collections::HashSet<Vec<String>> = new.iter().map(key).collect();
        old.into_iter().filter(|v| !fresh.contains(&key(v))).collect()
    } else {
        Vec::new()
    };
    out.extend(new);
    out.sort_by_key(|v| v.get("epoch").and_then(|e| e.as_i64()).unwrap_or(i64::MIN));
    crate::util::write_atomic(path, serde_json::to_string_pretty(&out).unwrap_or_default().as_bytes())?;
    Ok(out)
}
