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
    // OOD tables written before protocols existed hold jigsaw selections only.
    let protocols = if df.column("protocol").is_ok() {
        str_col(df, "protocol")?
    } else if key == "detector" {
        vec![crate::ood::Protocol::Jigsaw.name().to_string(); n]
    } else {
        vec![String::new(); n]
    };
    let (lo, hi) = if df.column("ci_low").is_ok() {
        (f64_col(df, "ci_low")?, f64_col(df, "ci_high")?)
    } else {
        (vec![f64::NAN; n], vec![f64::NAN; n])
    };
    Ok((0..n)
        .map(|i| LongRow {
            epoch: epochs[i],
            protocol: protocols[i].clone(),
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
/// "AUROC / FPR@95 (OOD accepted at 95 % ID)", then the mean over sets. `rows`
/// are one protocol's (several protocols are an error: filter them with
/// [`crate::ood::eval::protocol_rows`]); group means are left out.
pub fn ood_table(rows: &[LongRow], epoch: i64) -> Result<String> {
    let mut protocols: Vec<&str> = rows.iter().map(|r| r.protocol.as_str()).collect();
    protocols.sort_unstable();
    protocols.dedup();
    if protocols.len() > 1 {
        return Err(Error::data(
            "OOD table",
            format!("rows of several protocols ({}); keep one with ood::eval::protocol_rows", protocols.join(", ")),
        ));
    }
    let mut datasets: Vec<String> = Vec::new();
    let mut detectors: Vec<String> = Vec::new();
    let mut v: BTreeMap<(String, String, String), f64> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.epoch == epoch && r.key != names::CLASSIFIER && !r.dataset.starts_with("mean:")) {
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

/// Best and tied marks per (dataset, detector), from a significance table
/// (`ood/significance.csv`, or [`crate::ood::significance::table`]) at one
/// epoch and protocol: `best` is the detector with the highest AUROC, `tied`
/// those not significantly worse (DeLong, Holm-adjusted, alpha 0.05).
#[derive(Debug, Clone, Default)]
pub struct Marks {
    best: BTreeMap<String, String>,
    tied: std::collections::BTreeSet<(String, String)>,
}

impl Marks {
    /// Reads the marks of `epoch` and `protocol` from a significance frame.
    pub fn from_frame(sig: &DataFrame, epoch: i64, protocol: crate::ood::Protocol) -> Result<Self> {
        let ep: Vec<i64> = f64_col(sig, "epoch")?.into_iter().map(|v| v as i64).collect();
        let pr = if sig.column("protocol").is_ok() { str_col(sig, "protocol")? } else { vec!["jigsaw".into(); ep.len()] };
        let (det, ds, best, tied) = (str_col(sig, "detector")?, str_col(sig, "dataset")?, str_col(sig, "best")?, f64_col(sig, "tied")?);
        let mut m = Marks::default();
        for i in 0..ep.len() {
            if ep[i] == epoch && pr[i] == protocol.name() {
                m.best.insert(ds[i].clone(), best[i].clone());
                if tied[i] == 1.0 {
                    m.tied.insert((ds[i].clone(), det[i].clone()));
                }
            }
        }
        Ok(m)
    }

    /// ` ★` for the best, ` ≈` for a detector tied with it, nothing otherwise.
    pub fn mark(&self, dataset: &str, detector: &str) -> &'static str {
        if self.best.get(dataset).is_some_and(|b| b == detector) {
            " ★"
        } else if self.tied.contains(&(dataset.to_string(), detector.to_string())) {
            " ≈"
        } else {
            ""
        }
    }
}

/// Markdown table of one epoch and protocol, for each OOD set (and group mean):
/// AUROC with its 95 % bootstrap interval, then both FPR@95 conventions (OOD
/// accepted at 95 % ID; ID rejected at 95 % OOD), with their intervals; `★`
/// marks the best AUROC per set, `≈` the detectors statistically tied with it
/// (from `marks`; DeLong, Holm, alpha 0.05).
pub fn ood_table_with_intervals(rows: &[LongRow], epoch: i64, protocol: crate::ood::Protocol, marks: &Marks) -> Result<String> {
    use crate::names::metric as m;
    let rs: Vec<&LongRow> =
        rows.iter().filter(|r| r.epoch == epoch && r.protocol == protocol.name() && r.key != names::CLASSIFIER).collect();
    let mut datasets: Vec<String> = Vec::new();
    let mut detectors: Vec<String> = Vec::new();
    let mut v: BTreeMap<(String, String, String), (f64, f64, f64)> = BTreeMap::new();
    for r in &rs {
        if !datasets.contains(&r.dataset) {
            datasets.push(r.dataset.clone());
        }
        if !detectors.contains(&r.key) {
            detectors.push(r.key.clone());
        }
        v.insert((r.key.clone(), r.dataset.clone(), r.metric.clone()), (r.value, r.ci_low, r.ci_high));
    }
    if detectors.is_empty() {
        return Err(Error::data("OOD table", format!("no rows for epoch {epoch} and protocol {protocol}")));
    }
    // Test sets first, then the group means.
    datasets.sort_by_key(|d| d.starts_with("mean:"));
    let fmt = |x: Option<&(f64, f64, f64)>, pct: bool| -> String {
        match x {
            Some(&(val, lo, hi)) if val.is_finite() => {
                let k = if pct { 100.0 } else { 1.0 };
                let p = if pct { 1 } else { 3 };
                if lo.is_finite() {
                    format!("{:.p$} [{:.p$}, {:.p$}]", k * val, k * lo, k * hi)
                } else {
                    format!("{:.p$}", k * val)
                }
            }
            _ => "–".into(),
        }
    };
    let mut s = format!("Protocol **{protocol}** ({}), epoch {epoch}. ", protocol.describe());
    s.push_str("Per set: AUROC · FPR@95 % OOD accepted at 95 % ID · FPR@95 % ID rejected at 95 % OOD (95 % bootstrap intervals); ★ best AUROC, ≈ tied with it (DeLong, Holm, α = 0.05).\n\n| detector |");
    for d in &datasets {
        s.push_str(&format!(" {d} |"));
    }
    s.push_str("\n|---|");
    s.push_str(&"---|".repeat(datasets.len()));
    s.push('\n');
    for det in &detectors {
        s.push_str(&format!("| {det} |"));
        for d in &datasets {
            let g = |metric: &str| v.get(&(det.clone(), d.clone(), metric.to_string()));
            s.push_str(&format!(
                " {}{} · {} · {} |",
                fmt(g(m::AUROC), false),
                marks.mark(d, det),
                fmt(g(m::FPR95_OOD_ACCEPTED), true),
                fmt(g(m::FPR95_ID_REJECTED), true)
            ));
        }
        s.push('\n');
    }
    Ok(s)
}

/// Markdown: the protocols side by side at `epoch`: per detector and protocol,
/// the mean AUROC over the OOD test sets and the chosen hyperparameters
/// (`uninformative -> defaults` when the validation said nothing; the oracle's
/// per-set choices are listed per set).
pub fn protocol_table(rows: &[LongRow], selections: &[crate::ood::protocol::ProtocolSelection], epoch: i64) -> Result<String> {
    let mut protocols: Vec<String> = Vec::new();
    let mut detectors: Vec<String> = Vec::new();
    let mut acc: BTreeMap<(String, String), (f64, usize)> = BTreeMap::new();
    for r in rows.iter().filter(|r| {
        r.epoch == epoch && r.key != names::CLASSIFIER && r.metric == crate::names::metric::AUROC && !r.dataset.starts_with("mean:")
    }) {
        if !protocols.contains(&r.protocol) {
            protocols.push(r.protocol.clone());
        }
        if !detectors.contains(&r.key) {
            detectors.push(r.key.clone());
        }
        let e = acc.entry((r.key.clone(), r.protocol.clone())).or_insert((0.0, 0));
        e.0 += r.value;
        e.1 += 1;
    }
    if detectors.is_empty() {
        return Err(Error::data("protocol table", format!("no rows for epoch {epoch}")));
    }
    let mut s = String::from("| detector |");
    for p in &protocols {
        let label = if p == "oracle" { "oracle (optimistic bound)".to_string() } else { p.clone() };
        s.push_str(&format!(" {label}: mean AUROC (chosen) |"));
    }
    s.push_str("\n|---|");
    s.push_str(&"---|".repeat(protocols.len()));
    s.push('\n');
    for det in &detectors {
        s.push_str(&format!("| {det} |"));
        for p in &protocols {
            let mean = acc.get(&(det.clone(), p.clone())).map(|(a, n)| a / *n as f64).unwrap_or(f64::NAN);
            let sel = selections.iter().find(|x| x.epoch == epoch && x.detector == *det && x.protocol.name() == p);
            let chosen = match sel {
                Some(x) if x.candidates.len() > 1 => {
                    let params = |spec: &crate::ood::DetectorSpec| {
                        spec.params().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
                    };
                    let c = match x.single() {
                        Some(spec) => params(spec),
                        None => x.chosen.iter().map(|(d, spec)| format!("{d}: {}", params(spec))).collect::<Vec<_>>().join("; "),
                    };
                    if x.informative == Some(false) {
                        format!(" (uninformative → defaults: {c})")
                    } else {
                        format!(" ({c})")
                    }
                }
                _ => String::new(),
            };
            s.push_str(&format!(" {mean:.3}{chosen} |"));
        }
        s.push('\n');
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

/// Markdown table comparing runs: one row per metric, one column per run, each run
/// given as (label, rows, epoch); values of `key` on `dataset`. A metric a run lacks is "–".
pub fn runs_table(runs: &[(&str, &[LongRow], i64)], key: &str, dataset: &str, metrics: &[&str]) -> Result<String> {
    if runs.is_empty() {
        return Err(Error::data("runs table", "no runs given"));
    }
    let mut s = format!("| {key}, {dataset} |");
    for (label, _, epoch) in runs {
        s += &format!(" {label} (epoch {epoch}) |");
    }
    s += &format!("\n|---|{}\n", "---:|".repeat(runs.len()));
    for m in metrics {
        s += &format!("| {m} |");
        for &(_, rows, epoch) in runs {
            s += &cell(find(rows, epoch, key, dataset, m));
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

/// The epochs present in `rows`, sorted, each once.
pub fn epochs_of(rows: &[LongRow]) -> Vec<i64> {
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
pub fn selection_lines(selections: &[crate::ood::protocol::ProtocolSelection], epoch: i64) -> Vec<String> {
    selections.iter().filter(|s| s.epoch == epoch && s.candidates.len() > 1).map(|s| s.line()).collect()
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
    merge_csv_upgrading(path, new, keys, &[])
}

/// [`merge_csv`], where an old table that lacks a column of `fill` (one added
/// since it was written) gets it with that value (e.g. `protocol` = `jigsaw`
/// for OOD tables written before protocols existed), in the new column order.
pub fn merge_csv_upgrading(path: &std::path::Path, new: &DataFrame, keys: &[&str], fill: &[(&str, &str)]) -> Result<DataFrame> {
    let mut merged = if path.exists() {
        let mut old = crate::results::read_csv(path)?;
        for (col, value) in fill {
            if old.column(col).is_err() && new.column(col).is_ok() {
                let c = Column::new((*col).into(), vec![value.to_string(); old.height()]);
                old.with_column(c)?;
            }
        }
        if fill.iter().any(|(c, _)| new.column(c).is_ok()) {
            let names: Vec<String> = new.get_column_names().iter().map(|s| s.to_string()).collect();
            if names.iter().all(|n| old.column(n).is_ok()) && old.width() == names.len() {
                old = old.select(names)?;
            }
        }
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
    merge_json_array_upgrading(path, new, keys, &[])
}

/// [`merge_json_array`], where an old entry that lacks a field of `fill` (one
/// added since it was written) gets it with that value before keys are compared.
pub fn merge_json_array_upgrading(
    path: &std::path::Path,
    new: Vec<serde_json::Value>,
    keys: &[&str],
    fill: &[(&str, &str)],
) -> Result<Vec<serde_json::Value>> {
    let key = |v: &serde_json::Value| keys.iter().map(|k| v.get(*k).cloned().unwrap_or_default().to_string()).collect::<Vec<_>>();
    let mut out: Vec<serde_json::Value> = if path.exists() {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut old: Vec<serde_json::Value> = serde_json::from_str(&text).map_err(|e| {
            Error::format(path, format!("not a JSON array of results ({e}); move it away (it is not replaced) and run again"))
        })?;
        for v in old.iter_mut() {
            for (k, x) in fill {
                if let Some(o) = v.as_object_mut() {
                    o.entry(k.to_string()).or_insert_with(|| serde_json::json!(x));
                }
            }
        }
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

/// The metric columns of the standard tables (notebooks and CLI), named once here
/// instead of typed at each use (every name is a metric of the NC or interp tables).
pub mod columns {
    /// Notebook 03: NC1-NC4 and accuracy per epoch (penultimate layer, ID train).
    pub const NC_BY_EPOCH: &[&str] = &[
        "accuracy",
        "nc1",
        "nc1_raw",
        "cdnv",
        "nc2_equinorm_m",
        "nc2_equinorm_w",
        "nc2_maxangle_m",
        "nc2_maxangle_w",
        "nc3",
        "nc4_ncc_mismatch",
        "ncc_accuracy",
    ];
    /// Notebook 05: NC per layer at one epoch.
    pub const NC_BY_LAYER: &[&str] =
        &["dim", "dim_below_classes", "nc1", "cdnv", "nc2_equinorm_m", "nc2_maxangle_m", "nc3", "nc4_ncc_mismatch", "ncc_accuracy"];
    /// Notebook 06: the interpretability measures per layer (ID train).
    pub const INTERP_BY_LAYER: &[&str] = &[
        "dim",
        "ncc_probe_accuracy",
        "linear_probe_accuracy",
        "effective_rank_means",
        "selectivity_mean",
        "units_per_class",
        "classes_per_unit",
        "kurtosis_units",
        "kurtosis_rotated",
        "dimensionality_means",
    ];
    /// Notebook 06: probe accuracy on ID test.
    pub const PROBES: &[&str] = &["ncc_probe_accuracy", "linear_probe_accuracy"];
    /// Notebook 06: the subspace ablations.
    pub const ABLATION: &[&str] = &["kept_dim", "accuracy", "energy_in_etf_span"];
    /// Notebook 06: the bottleneck run against the main run, interpretability measures.
    pub const RUNS_INTERP: &[&str] = &[
        "dim",
        "linear_probe_accuracy",
        "effective_rank_means",
        "dimensionality_means",
        "dimensionality_w",
        "dimensionality_etf",
        "units_per_class_centred",
        "kurtosis_units",
        "kurtosis_rotated",
    ];
    /// Notebook 06: the bottleneck run against the main run, NC.
    pub const RUNS_NC: &[&str] = &["accuracy", "nc1", "nc2_equinorm_m", "nc2_maxangle_m", "nc3", "nc4_ncc_mismatch"];
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("oodnc-report-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_table_written_before_protocols_is_upgraded_not_refused_or_shrunk() {
        let d = tmp("upgrade");
        let path = d.join("metrics.csv");
        // The columns of an OOD table written before protocols existed.
        std::fs::write(&path, "epoch,detector,dataset,metric,value,ci_low,ci_high\n3,msp,svhn,auroc,0.9,,\n3,knn,svhn,auroc,0.8,,\n")
            .unwrap();
        let new = crate::results::to_frame(
            &[LongRow { protocol: "jigsaw".into(), ..LongRow::point(3, "msp", "svhn", "auroc", 0.95) }],
            crate::results::TableKind::Ood,
        )
        .unwrap();
        let merged = merge_csv_upgrading(&path, &new, &["epoch", "protocol", "detector", "dataset"], &[("protocol", "jigsaw")]).unwrap();
        let rows = long_rows(&merged, "detector").unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|r| r.protocol == "jigsaw"));
        assert_eq!(rows.iter().find(|r| r.key == "msp").unwrap().value, 0.95);
        assert_eq!(rows.iter().find(|r| r.key == "knn").unwrap().value, 0.8);
        // Without the upgrade, the mismatch is refused (never silently mixed).
        std::fs::write(&path, "epoch,detector,dataset,metric,value,ci_low,ci_high\n3,msp,svhn,auroc,0.9,,\n").unwrap();
        assert!(merge_csv(&path, &new, &["epoch", "protocol", "detector", "dataset"]).unwrap_err().to_string().contains("move it away"));
        // Selections: old entries get the protocol before keys are compared.
        let sel = d.join("selection.json");
        std::fs::write(&sel, r#"[{"epoch": 3, "detector": "knn", "chosen": {"k": 1}}, {"epoch": 3, "detector": "msp", "chosen": {}}]"#)
            .unwrap();
        let out = merge_json_array_upgrading(
            &sel,
            vec![serde_json::json!({"epoch": 3, "protocol": "jigsaw", "detector": "knn", "chosen": {"k": 50}})],
            &["epoch", "protocol", "detector"],
            &[("protocol", "jigsaw")],
        )
        .unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out.iter().find(|v| v["detector"] == "knn").unwrap()["chosen"]["k"], 50);
    }
}
