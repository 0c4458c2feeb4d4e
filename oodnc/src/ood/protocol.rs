//! Hyperparameter selection protocols, evaluated side by side.
//!
//! A detector's hyperparameters (KNN's `k`, ViM's `dim`, ReAct's percentile, ...)
//! must be chosen on data that is not a test set. How they are chosen changes
//! the story a table tells, so `oodnc ood` reports every configured protocol
//! next to the others, with each chosen value:
//!
//! - [`Protocol::Jigsaw`]: ID-val against *jigsaw* outliers made from ID val
//!   (4x4 tiles shuffled). Needs nothing but the ID data; a weak proxy for the
//!   detectors whose scores ignore local structure (logit and shaping detectors
//!   score near chance on it).
//! - [`Protocol::Heldout`]: ID-val against a named OOD validation set that is
//!   disjoint from every test set (OpenOOD v1.5's choice for CIFAR-100 is
//!   TinyImageNet val; the embedded dataset has its own family, see
//!   [`crate::data::synthetic`]). Configured in [`OodConfig::heldout`].
//! - [`Protocol::Defaults`]: each paper's own defaults, no tuning.
//! - [`Protocol::Oracle`]: tuned on each test set separately (the candidate
//!   with the best test AUROC per OOD test set): an **optimistic bound**, always
//!   labelled as such, never a headline.
//!
//! A validation selection whose best AUROC is below
//! [`OodConfig::uninformative_below`] (default 0.6) says nothing about the
//! candidates: it is flagged `informative: false` in the tables and in
//! `selection.json`, and the defaults are used instead. A grid of one candidate
//! chooses nothing (`informative` is then absent).

use super::DetectorSpec;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// How hyperparameters are chosen (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Jigsaw,
    Heldout,
    Defaults,
    Oracle,
}

impl Protocol {
    /// Every protocol, in table order.
    pub const ALL: [Protocol; 4] = [Protocol::Jigsaw, Protocol::Heldout, Protocol::Defaults, Protocol::Oracle];

    /// The name in tables, configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Jigsaw => "jigsaw",
            Protocol::Heldout => "heldout",
            Protocol::Defaults => "defaults",
            Protocol::Oracle => "oracle",
        }
    }

    /// Parses a name (an unknown one is an error listing the valid ones).
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| Error::Unknown {
            kind: "selection protocol".into(),
            name: s.into(),
            known: Self::ALL.map(|p| p.name()).join(", "),
        })
    }

    /// A one-line description, for tables and figures.
    pub fn describe(self) -> &'static str {
        match self {
            Protocol::Jigsaw => "tuned on ID-val vs jigsaw outliers of ID-val",
            Protocol::Heldout => "tuned on ID-val vs a held-out OOD validation set (disjoint from the test sets)",
            Protocol::Defaults => "each paper's defaults, no tuning",
            Protocol::Oracle => "tuned on each test set: an optimistic bound, not a result",
        }
    }

    /// Whether it chooses on a validation OOD set (jigsaw, heldout).
    pub fn is_validation(self) -> bool {
        matches!(self, Protocol::Jigsaw | Protocol::Heldout)
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The held-out OOD validation set of [`Protocol::Heldout`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldoutSet {
    /// Its name in tables (must differ from every test set's).
    pub name: String,
    /// Its folder, relative to `data.root` unless absolute: TinyImageNet's `val/`
    /// layout (`images/` + `val_annotations.txt`), or any image folder.
    pub path: PathBuf,
    /// An image list (OpenOOD's `benchmark_imglist` format: one `relative/path
    /// [label]` per line, relative to `path`) choosing the images; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<PathBuf>,
}

impl Default for HeldoutSet {
    /// TinyImageNet val under the data root (OpenOOD v1.5's CIFAR-100 choice;
    /// the embedded dataset writes its own family in the same layout).
    fn default() -> Self {
        HeldoutSet { name: "tin-val".into(), path: PathBuf::from("tiny-imagenet-200/val"), list: None }
    }
}

/// OOD-study settings of a run (`[ood]` in `config.toml`). They change no
/// checkpoint, so editing them never makes a run's checkpoints refused.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OodConfig {
    /// Protocols evaluated by `oodnc ood`, in table order.
    pub protocols: Vec<Protocol>,
    /// The protocol of headline tables and figures (never `oracle`).
    pub headline: Protocol,
    /// A validation selection whose best AUROC is below this is uninformative
    /// (flagged; the defaults are used instead).
    pub uninformative_below: f64,
    pub heldout: HeldoutSet,
    /// Named groups of OOD test sets; each gets a row of group means
    /// (dataset `mean:<group>`) over the members present. OpenOOD v1.5's
    /// CIFAR-100 grouping by default.
    pub groups: BTreeMap<String, Vec<String>>,
}

impl Default for OodConfig {
    fn default() -> Self {
        OodConfig {
            protocols: Protocol::ALL.to_vec(),
            headline: Protocol::Heldout,
            uninformative_below: 0.6,
            heldout: HeldoutSet::default(),
            groups: [
                ("near".to_string(), vec!["cifar10".to_string(), "tin".to_string()]),
                ("far".to_string(), ["mnist", "svhn", "textures", "places365"].map(String::from).to_vec()),
            ]
            .into_iter()
            .collect(),
        }
    }
}

/// The `dataset` of a group-mean row.
pub fn group_dataset(group: &str) -> String {
    format!("mean:{group}")
}

impl OodConfig {
    /// Checks the settings against the run's OOD test set names.
    pub fn validate(&self, test_sets: &[&str]) -> Result<()> {
        if self.protocols.is_empty() {
            return Err(Error::param("ood.protocols", "is empty; name at least one of jigsaw, heldout, defaults, oracle"));
        }
        let mut seen = Vec::new();
        for p in &self.protocols {
            if seen.contains(p) {
                return Err(Error::param("ood.protocols", format!("lists {p} twice")));
            }
            seen.push(*p);
        }
        if self.headline == Protocol::Oracle {
            return Err(Error::param("ood.headline", "cannot be oracle (it is tuned on the test sets: an optimistic bound, not a result)"));
        }
        if !self.protocols.contains(&self.headline) {
            return Err(Error::param("ood.headline", format!("{} is not in ood.protocols", self.headline)));
        }
        if !(self.uninformative_below.is_finite() && (0.0..=1.0).contains(&self.uninformative_below)) {
            return Err(Error::param("ood.uninformative_below", format!("{} is outside [0, 1]", self.uninformative_below)));
        }
        let h = &self.heldout;
        if h.name.trim().is_empty() || h.name.contains('/') || h.name.starts_with("mean:") {
            return Err(Error::param("ood.heldout.name", format!("'{}' must be a plain non-empty name", h.name)));
        }
        if test_sets.contains(&h.name.as_str())
            || [crate::names::ID_TEST, crate::names::ID_VAL, crate::names::OOD_VAL].contains(&h.name.as_str())
        {
            return Err(Error::param(
                "ood.heldout.name",
                format!(
                    "'{}' is the name of a test or ID set; the held-out OOD validation set must be disjoint from every test set",
                    h.name
                ),
            ));
        }
        if h.path.as_os_str().is_empty() {
            return Err(Error::param("ood.heldout.path", "is empty"));
        }
        for (g, members) in &self.groups {
            if g.trim().is_empty() || members.is_empty() {
                return Err(Error::param(format!("ood.groups.{g}"), "needs a name and at least one dataset"));
            }
        }
        Ok(())
    }
}

/// One candidate's scores on every set of a selection.
#[derive(Debug)]
pub struct Candidate {
    pub spec: DetectorSpec,
    /// In the search grid (`false`: the defaults, scored for [`Protocol::Defaults`] only).
    pub in_grid: bool,
    /// AUROC of ID-val against each validation protocol's OOD set.
    pub val_auroc: BTreeMap<Protocol, f64>,
    /// ID test scores (higher = more ID).
    pub id: Vec<f64>,
    /// Scores per OOD test set.
    pub ood: Vec<(String, Vec<f64>)>,
    /// AUROC per OOD test set (the oracle's criterion; the sensitivity figure's test curve).
    pub test_auroc: Vec<(String, f64)>,
}

impl Candidate {
    /// A candidate from its scores; `val` holds (protocol, ID-val scores, its OOD-val scores).
    pub fn new(
        spec: DetectorSpec,
        in_grid: bool,
        val: &[(Protocol, &[f64], &[f64])],
        id: Vec<f64>,
        ood: Vec<(String, Vec<f64>)>,
    ) -> Result<Self> {
        let mut val_auroc = BTreeMap::new();
        for &(p, v, o) in val {
            val_auroc.insert(p, super::metrics::auroc(v, o)?);
        }
        let test_auroc = ood.iter().map(|(n, o)| Ok((n.clone(), super::metrics::auroc(&id, o)?))).collect::<Result<_>>()?;
        Ok(Candidate { spec, in_grid, val_auroc, id, ood, test_auroc })
    }
}

/// What a protocol chose for one detector.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub protocol: Protocol,
    /// The candidate used per OOD test set (the same one for every set except under the oracle).
    pub per_dataset: Vec<(String, usize)>,
    /// The best validation AUROC (validation protocols).
    pub best_val_auroc: Option<f64>,
    /// `Some(false)` when the validation selection was uninformative (the defaults are used);
    /// `None` when nothing was chosen (one candidate, the defaults, the oracle).
    pub informative: Option<bool>,
}

impl Choice {
    /// The candidate used on every dataset, when it is one (all protocols but the oracle).
    pub fn single(&self) -> Option<usize> {
        let first = self.per_dataset.first()?.1;
        self.per_dataset.iter().all(|(_, i)| *i == first).then_some(first)
    }
}

/// First index of the maximum of `key` over `idx` (the first on ties).
fn argmax(idx: impl Iterator<Item = usize>, key: impl Fn(usize) -> f64) -> Option<usize> {
    idx.fold(None, |best: Option<(usize, f64)>, i| {
        let v = key(i);
        match best {
            Some((_, b)) if b >= v || v.is_nan() => best,
            _ => Some((i, v)),
        }
    })
    .map(|(i, _)| i)
}

/// Applies `protocol` to `cands` (one detector's grid, and its defaults as a
/// candidate, in or out of the grid). `defaults` is the index of the default
/// candidate. Validation protocols pick the best validation AUROC (the first
/// on ties) and fall back to the defaults when it is below `uninformative_below`.
pub fn choose(protocol: Protocol, cands: &[Candidate], defaults: usize, uninformative_below: f64) -> Result<Choice> {
    if defaults >= cands.len() {
        return Err(Error::data("selection", "the default candidate is missing"));
    }
    let datasets: Vec<String> = cands[defaults].ood.iter().map(|(n, _)| n.clone()).collect();
    let grid: Vec<usize> = (0..cands.len()).filter(|&i| cands[i].in_grid).collect();
    let all = |i: usize| datasets.iter().map(|d| (d.clone(), i)).collect::<Vec<_>>();
    match protocol {
        Protocol::Defaults => Ok(Choice { protocol, per_dataset: all(defaults), best_val_auroc: None, informative: None }),
        Protocol::Jigsaw | Protocol::Heldout => {
            let val = |i: usize| cands[i].val_auroc.get(&protocol).copied().unwrap_or(f64::NAN);
            let best = argmax(grid.iter().copied(), val).ok_or_else(|| {
                Error::data(format!("{} selection of {}", protocol, cands[defaults].spec.name()), "no candidate has a validation AUROC")
            })?;
            let best_auc = val(best);
            if grid.len() < 2 {
                return Ok(Choice { protocol, per_dataset: all(best), best_val_auroc: Some(best_auc), informative: None });
            }
            let informative = best_auc >= uninformative_below;
            let used = if informative { best } else { defaults };
            Ok(Choice { protocol, per_dataset: all(used), best_val_auroc: Some(best_auc), informative: Some(informative) })
        }
        Protocol::Oracle => {
            // Every candidate scored, the defaults included: a bound over all that was tried.
            let per_dataset = datasets
                .iter()
                .enumerate()
                .map(|(k, d)| {
                    let i = argmax(0..cands.len(), |i| cands[i].test_auroc[k].1)
                        .ok_or_else(|| Error::data("oracle selection", "empty grid"))?;
                    Ok((d.clone(), i))
                })
                .collect::<Result<_>>()?;
            Ok(Choice { protocol, per_dataset, best_val_auroc: None, informative: None })
        }
    }
}

/// One grid candidate's evidence: its spec, its validation AUROC under the
/// protocol (validation protocols) and its test AUROC per OOD set.
pub type Evidence = (DetectorSpec, Option<f64>, Vec<(String, f64)>);

/// What one protocol chose for one detector at one checkpoint, with the
/// evidence: what `selection.json` records and the tables and figures read.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProtocolSelection {
    pub epoch: i64,
    pub protocol: Protocol,
    pub detector: String,
    /// The hyperparameters used on each OOD test set (the same for every set except under the oracle).
    pub chosen: Vec<(String, DetectorSpec)>,
    /// The best validation AUROC (validation protocols).
    pub best_val_auroc: Option<f64>,
    /// `Some(false)`: uninformative validation, the defaults were used instead.
    pub informative: Option<bool>,
    /// Every grid candidate: its spec, its validation AUROC under this protocol
    /// (validation protocols) and its test AUROC per OOD set (the sensitivity figure).
    pub candidates: Vec<Evidence>,
}

impl ProtocolSelection {
    /// From a [`Choice`] over `cands`.
    pub fn new(epoch: i64, choice: &Choice, cands: &[Candidate]) -> Self {
        ProtocolSelection {
            epoch,
            protocol: choice.protocol,
            detector: cands.first().map(|c| c.spec.name().to_string()).unwrap_or_default(),
            chosen: choice.per_dataset.iter().map(|(d, i)| (d.clone(), cands[*i].spec.clone())).collect(),
            best_val_auroc: choice.best_val_auroc,
            informative: choice.informative,
            candidates: cands
                .iter()
                .filter(|c| c.in_grid)
                .map(|c| (c.spec.clone(), c.val_auroc.get(&choice.protocol).copied(), c.test_auroc.clone()))
                .collect(),
        }
    }

    /// The spec used on every OOD set, when it is one (all protocols but the oracle).
    pub fn single(&self) -> Option<&DetectorSpec> {
        let first = &self.chosen.first()?.1;
        self.chosen.iter().all(|(_, s)| s == first).then_some(first)
    }

    /// The `selection.json` entry (keys epoch, protocol, detector; `chosen` or
    /// `chosen_per_dataset`; `informative` and `used_instead` when flagged).
    pub fn to_json(&self) -> serde_json::Value {
        let candidates: Vec<serde_json::Value> = self
            .candidates
            .iter()
            .map(|(spec, val, test)| {
                let mut v = serde_json::json!({
                    "params": spec.params(),
                    "test_auroc": test.iter().map(|(d, a)| (d.clone(), serde_json::json!(a))).collect::<serde_json::Map<_, _>>(),
                });
                if let Some(a) = val {
                    v["val_auroc"] = serde_json::json!(a);
                }
                v
            })
            .collect();
        let mut e = serde_json::json!({
            "epoch": self.epoch,
            "protocol": self.protocol.name(),
            "detector": self.detector,
            "candidates": candidates,
        });
        match self.single() {
            Some(s) => e["chosen"] = serde_json::json!(s.params()),
            None => {
                e["chosen_per_dataset"] =
                    self.chosen.iter().map(|(d, s)| (d.clone(), serde_json::json!(s.params()))).collect::<serde_json::Map<_, _>>().into()
            }
        }
        if let Some(a) = self.best_val_auroc {
            e["best_val_auroc"] = serde_json::json!(a);
        }
        if let Some(inf) = self.informative {
            e["informative"] = serde_json::json!(inf);
            if !inf {
                e["used_instead"] = serde_json::json!("defaults");
            }
        }
        e
    }

    /// One line for the terminal and notebooks: what was chosen, from what.
    pub fn line(&self) -> String {
        let chosen = match self.single() {
            Some(s) => s.label(),
            None => self.chosen.iter().map(|(d, s)| format!("{d}: {}", s.label())).collect::<Vec<_>>().join("; "),
        };
        let flag = match self.informative {
            Some(false) => format!(" [uninformative: best validation AUROC {:.3}; defaults used]", self.best_val_auroc.unwrap_or(f64::NAN)),
            _ => String::new(),
        };
        let cands: Vec<String> = self
            .candidates
            .iter()
            .map(|(c, v, _)| match v {
                Some(a) => format!("{} -> {a:.3}", c.label()),
                None => c.label(),
            })
            .collect();
        format!("epoch {} {:<8} {:<11} chose {chosen}{flag} from [{}]", self.epoch, self.protocol.name(), self.detector, cands.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(k: f64, in_grid: bool, jig: f64, test: &[f64]) -> Candidate {
        Candidate {
            spec: DetectorSpec::new("knn", &[("k", k)]).unwrap(),
            in_grid,
            val_auroc: [(Protocol::Jigsaw, jig), (Protocol::Heldout, 1.0 - jig)].into_iter().collect(),
            id: vec![],
            ood: test.iter().enumerate().map(|(i, _)| (format!("d{i}"), vec![])).collect(),
            test_auroc: test.iter().enumerate().map(|(i, a)| (format!("d{i}"), *a)).collect(),
        }
    }

    #[test]
    fn each_protocol_chooses_by_its_own_criterion() {
        let c = vec![cand(1.0, true, 0.9, &[0.5, 0.9]), cand(10.0, true, 0.7, &[0.8, 0.6]), cand(50.0, false, 0.0, &[0.6, 0.6])];
        let j = choose(Protocol::Jigsaw, &c, 2, 0.6).unwrap();
        assert_eq!((j.single(), j.informative, j.best_val_auroc), (Some(0), Some(true), Some(0.9)));
        // Heldout AUROC = 1 - jigsaw here: 0.1, 0.3 -> best 0.3 < 0.6: uninformative, defaults used.
        let h = choose(Protocol::Heldout, &c, 2, 0.6).unwrap();
        assert_eq!((h.single(), h.informative), (Some(2), Some(false)));
        assert!((h.best_val_auroc.unwrap() - 0.3).abs() < 1e-15);
        let d = choose(Protocol::Defaults, &c, 2, 0.6).unwrap();
        assert_eq!((d.single(), d.informative), (Some(2), None));
        // The oracle picks the best test AUROC per dataset among every candidate.
        let o = choose(Protocol::Oracle, &c, 2, 0.6).unwrap();
        assert_eq!(o.per_dataset, vec![("d0".to_string(), 1), ("d1".to_string(), 0)]);
        assert_eq!(o.single(), None);
        let json = ProtocolSelection::new(3, &o, &c).to_json();
        assert_eq!(json["chosen_per_dataset"]["d0"]["k"], 10.0);
        let sel = ProtocolSelection::new(3, &h, &c);
        let json = sel.to_json();
        assert_eq!((json["informative"].as_bool(), json["used_instead"].as_str()), (Some(false), Some("defaults")));
        assert_eq!(json["chosen"]["k"], 50.0);
        // The out-of-grid defaults are not listed among the candidates.
        assert_eq!(json["candidates"].as_array().unwrap().len(), 2);
        assert!(sel.line().contains("uninformative"), "{}", sel.line());
    }

    #[test]
    fn ties_go_to_the_first_and_a_single_candidate_is_no_choice() {
        let c = vec![cand(1.0, true, 0.8, &[0.5]), cand(10.0, true, 0.8, &[0.5])];
        assert_eq!(choose(Protocol::Jigsaw, &c, 1, 0.6).unwrap().single(), Some(0));
        assert_eq!(choose(Protocol::Oracle, &c, 1, 0.6).unwrap().single(), Some(0));
        let one = vec![cand(1.0, true, 0.3, &[0.5])];
        let ch = choose(Protocol::Jigsaw, &one, 0, 0.6).unwrap();
        assert_eq!((ch.single(), ch.informative), (Some(0), None));
    }

    #[test]
    fn config_checks_name_the_field() {
        let mut c = OodConfig::default();
        c.validate(&["svhn", "cifar10"]).unwrap();
        c.headline = Protocol::Oracle;
        assert!(c.validate(&[]).unwrap_err().to_string().contains("ood.headline"));
        let mut c = OodConfig::default();
        c.heldout.name = "svhn".into();
        assert!(c.validate(&["svhn"]).unwrap_err().to_string().contains("disjoint"));
        let c = OodConfig { protocols: vec![Protocol::Jigsaw], ..OodConfig::default() };
        assert!(c.validate(&[]).unwrap_err().to_string().contains("not in ood.protocols"));
        assert_eq!(Protocol::parse("heldout").unwrap(), Protocol::Heldout);
        assert!(Protocol::parse("test").is_err());
    }
}
