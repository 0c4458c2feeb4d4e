//! Several runs of one recipe that differ only in their seed: mean and
//! standard deviation of every metric across them (OpenOOD v1.5 reports the
//! mean over three training seeds), next to each run's own bootstrap interval.
//!
//! `oodnc report --runs 'runs/seed-*'` reads each run's tables (it never
//! trains or evaluates): the OOD table of one protocol (each run's headline by
//! default) and the NC table (penultimate layer), at one epoch (the last epoch
//! every run has). Runs whose configs differ in anything but `seed` (and the
//! `[ood]` evaluation settings) are refused, naming the fields: averaging
//! different recipes would mix results silently.
//!
//! Runs are independent jobs; a sweep is any scheduler running `oodnc train`,
//! `oodnc ood` and `oodnc nc` once per seed (see `scripts/sweep.slurm` and the
//! GNU parallel line in the README), then one `oodnc report`.

use crate::error::{Error, Result};
use crate::ood::Protocol;
use crate::results::Row;
use polars::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Expands each of `patterns`: a path whose last component may hold `*`
/// wildcards (`runs/seed-*`), or a plain path. Matches are sorted; a pattern
/// that matches nothing is an error naming it.
pub fn expand_runs(patterns: &[String]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for pat in patterns {
        let p = Path::new(pat);
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !name.contains('*') {
            out.push(p.to_path_buf());
            continue;
        }
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir() && wildcard(&name, &e.file_name().to_string_lossy()))
            .map(|e| e.path())
            .collect();
        if found.is_empty() {
            return Err(Error::Missing { what: format!("runs matching '{pat}'"), path: dir.to_path_buf(), hint: String::new() });
        }
        found.sort();
        out.append(&mut found);
    }
    out.dedup();
    Ok(out)
}

/// `*` matches any run of characters (none included); everything else literally.
fn wildcard(pat: &str, s: &str) -> bool {
    if !pat.contains('*') {
        return pat == s;
    }
    let parts: Vec<&str> = pat.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || s.len() < first.len() + last.len() || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Mean and spread of one metric across runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Across {
    /// `ood` or `nc`.
    pub table: &'static str,
    /// Detector (OOD) or layer (NC).
    pub key: String,
    pub dataset: String,
    pub metric: String,
    /// Runs that have the value.
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation across runs (ddof 1; NaN for one run).
    pub std: f64,
    pub min: f64,
    pub max: f64,
    /// Mean width of the runs' own 95 % bootstrap intervals (NaN when none).
    pub mean_ci_width: f64,
    /// The value of each run (run name, value).
    pub per_run: Vec<(String, f64)>,
}

/// The seed summary of a set of runs.
#[derive(Debug, Clone)]
pub struct SeedSummary {
    pub runs: Vec<PathBuf>,
    pub seeds: Vec<u64>,
    pub epoch: i64,
    pub protocol: Protocol,
    pub rows: Vec<Across>,
}

fn rows_of(run: &Path, table: crate::run::Table, key: &str) -> Result<Option<Vec<Row>>> {
    let path = crate::run::layout::table(run, table);
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(crate::report::long_rows(&crate::results::read_csv(&path)?, key)?))
}

/// Aggregates `runs` (see the module docs): `protocol` (each run's headline
/// when `None`) at `epoch` (the last epoch all runs have evaluated when `None`).
pub fn aggregate(runs: &[PathBuf], protocol: Option<Protocol>, epoch: Option<i64>) -> Result<SeedSummary> {
    if runs.len() < 2 {
        return Err(Error::param("--runs", format!("names {} run(s); a seed summary needs at least two", runs.len())));
    }
    let opened = runs.iter().map(crate::run::Run::open).collect::<Result<Vec<_>>>()?;
    // One recipe: the configs may differ in the seed (and the evaluation settings) only.
    let base = toml::Value::try_from(opened[0].config()).map_err(|e| Error::data("config", e.to_string()))?;
    for r in &opened[1..] {
        let v = toml::Value::try_from(r.config()).map_err(|e| Error::data("config", e.to_string()))?;
        let diff: Vec<String> =
            crate::run::config_diff(&base, &v).into_iter().filter(|f| f != "seed" && f != "ood" && !f.starts_with("ood.")).collect();
        if !diff.is_empty() {
            return Err(Error::data(
                format!("seed summary of {} and {}", opened[0].dir().display(), r.dir().display()),
                format!("their configs differ in {} (not only the seed); summarise runs of one recipe", diff.join(", ")),
            ));
        }
    }
    let seeds: Vec<u64> = opened.iter().map(|r| r.config().seed).collect();
    let n_seeds = {
        let mut s = seeds.clone();
        s.sort_unstable();
        s.dedup();
        s.len()
    };
    if n_seeds < runs.len() {
        return Err(Error::data("seed summary", format!("the runs share seeds ({seeds:?}): they are copies, not independent seeds")));
    }
    let protocol = protocol.unwrap_or(opened[0].config().ood.headline);
    let mut tables: Vec<(&'static str, Vec<Vec<Row>>)> = Vec::new();
    let ood: Vec<Option<Vec<Row>>> = runs.iter().map(|r| rows_of(r, crate::run::Table::OodMetrics, "detector")).collect::<Result<_>>()?;
    if let Some(i) = ood.iter().position(Option::is_none) {
        return Err(Error::Missing {
            what: "OOD table of a run in the summary".into(),
            path: crate::run::layout::table(&runs[i], crate::run::Table::OodMetrics),
            hint: "; run `oodnc ood` on every run first".into(),
        });
    }
    tables.push(("ood", ood.into_iter().flatten().map(|rs| crate::ood::eval::protocol_rows(&rs, protocol)).collect()));
    let nc: Vec<Option<Vec<Row>>> = runs.iter().map(|r| rows_of(r, crate::run::Table::NcMetrics, "layer")).collect::<Result<_>>()?;
    if nc.iter().all(Option::is_some) {
        tables.push(("nc", nc.into_iter().flatten().collect()));
    }
    let epoch = match epoch {
        Some(e) => e,
        None => tables[0]
            .1
            .iter()
            .map(|rs| rs.iter().map(|r| r.epoch).max().unwrap_or(-1))
            .min()
            .filter(|&e| e >= 0)
            .ok_or_else(|| Error::data("seed summary", format!("a run has no OOD rows of protocol {protocol}")))?,
    };
    let names: Vec<String> = opened.iter().map(|r| r.name()).collect();
    let mut rows = Vec::new();
    for (table, per_run) in &tables {
        // (key, dataset, metric) -> (run, value, interval width) per run.
        type Values = Vec<(String, f64, f64)>;
        let mut acc: BTreeMap<(String, String, String), Values> = BTreeMap::new();
        let mut order: Vec<(String, String, String)> = Vec::new();
        for (k, rs) in per_run.iter().enumerate() {
            for r in rs.iter().filter(|r| r.epoch == epoch && r.value.is_finite()) {
                let key = (r.key.clone(), r.dataset.clone(), r.metric.clone());
                if !acc.contains_key(&key) {
                    order.push(key.clone());
                }
                acc.entry(key).or_default().push((names[k].clone(), r.value, r.ci_high - r.ci_low));
            }
        }
        for key in order {
            let v = &acc[&key];
            let n = v.len();
            let mean = v.iter().map(|x| x.1).sum::<f64>() / n as f64;
            let std = if n > 1 { (v.iter().map(|x| (x.1 - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() } else { f64::NAN };
            let widths: Vec<f64> = v.iter().map(|x| x.2).filter(|w| w.is_finite()).collect();
            rows.push(Across {
                table,
                key: key.0,
                dataset: key.1,
                metric: key.2,
                n,
                mean,
                std,
                min: v.iter().map(|x| x.1).fold(f64::INFINITY, f64::min),
                max: v.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max),
                mean_ci_width: if widths.is_empty() { f64::NAN } else { widths.iter().sum::<f64>() / widths.len() as f64 },
                per_run: v.iter().map(|x| (x.0.clone(), x.1)).collect(),
            });
        }
    }
    if rows.is_empty() {
        return Err(Error::data("seed summary", format!("no rows at epoch {epoch} for protocol {protocol}")));
    }
    Ok(SeedSummary { runs: runs.to_vec(), seeds, epoch, protocol, rows })
}

impl SeedSummary {
    /// Long form: table, key, dataset, metric, n, mean, std, min, max,
    /// mean_ci_width, then one column per run (its value).
    pub fn frame(&self) -> Result<DataFrame> {
        let r = &self.rows;
        let mut cols = vec![
            Column::new("epoch".into(), vec![self.epoch; r.len()]),
            Column::new("protocol".into(), r.iter().map(|x| if x.table == "ood" { self.protocol.name() } else { "" }).collect::<Vec<_>>()),
            Column::new("table".into(), r.iter().map(|x| x.table).collect::<Vec<_>>()),
            Column::new("key".into(), r.iter().map(|x| x.key.clone()).collect::<Vec<_>>()),
            Column::new("dataset".into(), r.iter().map(|x| x.dataset.clone()).collect::<Vec<_>>()),
            Column::new("metric".into(), r.iter().map(|x| x.metric.clone()).collect::<Vec<_>>()),
            Column::new("n".into(), r.iter().map(|x| x.n as i64).collect::<Vec<_>>()),
            Column::new("mean".into(), r.iter().map(|x| x.mean).collect::<Vec<_>>()),
            Column::new("std".into(), r.iter().map(|x| x.std).collect::<Vec<_>>()),
            Column::new("min".into(), r.iter().map(|x| x.min).collect::<Vec<_>>()),
            Column::new("max".into(), r.iter().map(|x| x.max).collect::<Vec<_>>()),
            Column::new("mean_ci_width".into(), r.iter().map(|x| x.mean_ci_width).collect::<Vec<_>>()),
        ];
        for run in self.runs.iter().map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()) {
            let vals: Vec<f64> = r.iter().map(|x| x.per_run.iter().find(|(n, _)| *n == run).map(|(_, v)| *v).unwrap_or(f64::NAN)).collect();
            cols.push(Column::new(format!("run:{run}").into(), vals));
        }
        Ok(DataFrame::new(r.len(), cols)?)
    }

    /// Markdown: per detector and OOD set, AUROC and both FPR@95 conventions as
    /// mean ± std across the runs, then the mean width of the runs' own intervals.
    pub fn markdown(&self) -> String {
        use crate::names::metric as m;
        let ood: Vec<&Across> = self.rows.iter().filter(|r| r.table == "ood" && r.key != crate::names::CLASSIFIER).collect();
        let mut datasets: Vec<&str> = Vec::new();
        let mut detectors: Vec<&str> = Vec::new();
        for r in &ood {
            if !datasets.contains(&r.dataset.as_str()) {
                datasets.push(&r.dataset);
            }
            if !detectors.contains(&r.key.as_str()) {
                detectors.push(&r.key);
            }
        }
        datasets.sort_by_key(|d| d.starts_with("mean:"));
        let get = |det: &str, d: &str, metric: &str| ood.iter().find(|r| r.key == det && r.dataset == d && r.metric == metric);
        let mut s = format!(
            "{} runs (seeds {:?}), epoch {}, protocol {}: mean ± std across seeds of AUROC · FPR@95 OOD accepted · FPR@95 ID rejected (%); [mean width of the runs' own 95 % intervals]\n\n| detector |",
            self.runs.len(),
            self.seeds,
            self.epoch,
            self.protocol
        );
        for d in &datasets {
            s.push_str(&format!(" {d} |"));
        }
        s.push_str("\n|---|");
        s.push_str(&"---|".repeat(datasets.len()));
        s.push('\n');
        for det in &detectors {
            s.push_str(&format!("| {det} |"));
            for d in &datasets {
                let a = get(det, d, m::AUROC);
                let f1 = get(det, d, m::FPR95_OOD_ACCEPTED);
                let f2 = get(det, d, m::FPR95_ID_REJECTED);
                let pm = |x: Option<&&Across>, k: f64, p: usize| {
                    x.map(|x| format!("{:.p$} ± {:.p$}", k * x.mean, k * x.std)).unwrap_or("–".into())
                };
                let w = a.map(|x| x.mean_ci_width).filter(|w| w.is_finite()).map(|w| format!(" [{w:.3}]")).unwrap_or_default();
                s.push_str(&format!(" {}{w} · {} · {} |", pm(a, 1.0, 3), pm(f1, 100.0, 1), pm(f2, 100.0, 1)));
            }
            s.push('\n');
        }
        if let Some(acc) = self.rows.iter().find(|r| r.table == "ood" && r.key == crate::names::CLASSIFIER) {
            s.push_str(&format!("\nID accuracy: {:.4} ± {:.4}\n", acc.mean, acc.std));
        }
        s
    }

    /// AUROC per detector and OOD set: the mean across runs with ± one standard
    /// deviation as error bars (the seed spread).
    pub fn figure(&self) -> Result<crate::plot::Figure> {
        let rows: Vec<Row> = self
            .rows
            .iter()
            .filter(|r| r.table == "ood" && r.key != crate::names::CLASSIFIER && !r.dataset.starts_with("mean:"))
            .map(|r| Row {
                epoch: self.epoch,
                protocol: self.protocol.name().into(),
                key: r.key.clone(),
                dataset: r.dataset.clone(),
                metric: r.metric.clone(),
                value: r.mean,
                ci_low: r.mean - r.std,
                ci_high: r.mean + r.std,
            })
            .collect();
        crate::plot::figures::seed_spread_bars(&rows, self.epoch, crate::names::metric::AUROC, self.runs.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_a_shell() {
        assert!(wildcard("seed-*", "seed-0") && wildcard("seed-*", "seed-") && wildcard("*-ci", "seed-1-ci"));
        assert!(wildcard("s*d*", "seed") && !wildcard("seed-*", "run-0") && !wildcard("a*b", "ab-c"));
        assert!(wildcard("x", "x") && !wildcard("x", "xy"));
    }
}
