//! The detector abstraction, in the spirit of linfa's `ParamGuard`:
//! typed hyperparameters (one struct per detector, [`Registered::check`]ed
//! once) -> [`Detector::fit`] on ID training features and the classifier head
//! -> a fitted type you can inspect ([`Fitted::fitted`]) that scores any
//! [`FeatureSet`].
//!
//! Adding a detector is one file under `ood/detectors/` (the typed parameters,
//! their defaults, the search grid, the formula with its paper, and the fitted
//! state) plus one line in [`super::detectors::REGISTRY`]; see
//! `docs/adding-a-detector.md`.
//!
//! Model-based detectors (ODIN, i-ODIN, RankFeat, Gram) need the network and
//! the images rather than features: they implement the sibling trait
//! [`ModelDetector`](super::model_detectors::ModelDetector).

use crate::error::{Error, Result};
use crate::features::FeatureSet;
use std::any::Any;
use std::collections::BTreeMap;
use tch::Tensor;

/// What a detector is fitted on.
pub struct FitData<'a> {
    /// ID training features (unaugmented), with labels.
    pub train: &'a FeatureSet,
    /// ID validation features (for detectors that calibrate, e.g. TempScale).
    pub val: Option<&'a FeatureSet>,
    /// Classifier weight `[C, D]` and bias `[C]`.
    pub weight: &'a Tensor,
    pub bias: &'a Tensor,
    /// The arithmetic precision ([`Precision::Auto`]: each detector's validated
    /// choice; [`Precision::F64`]: everything in f64, the reference).
    pub precision: Precision,
}

impl<'a> FitData<'a> {
    /// Fit data in the default precision ([`Precision::Auto`]).
    pub fn new(train: &'a FeatureSet, val: Option<&'a FeatureSet>, weight: &'a Tensor, bias: &'a Tensor) -> Self {
        FitData { train, val, weight, bias, precision: Precision::Auto }
    }

    /// The same data in another precision.
    pub fn with_precision(self, precision: Precision) -> Self {
        FitData { precision, ..self }
    }
}

/// The precision a detector computes in. Features are stored in f32 (what the
/// network gives); the question is the arithmetic on them.
///
/// - `Auto` (the default): f32 for the detectors whose scores were checked to
///   stay within 1e-6 AUROC of the f64 reference (`oodnc bench ood` measures it
///   at CIFAR-100 sizes, `tests/ood_detectors.rs` on fixtures); f64 for those
///   that invert or decompose covariances (Mahalanobis, RMDS, ViM, NECO, ...) or
///   optimise (TempScale). `docs/detectors.md` says which is which and why.
/// - `F64`: every detector in f64: the reference the `Auto` choice is checked
///   against, and what the numpy / scikit-learn comparisons use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Auto,
    F64,
}

impl Precision {
    /// The tensor kind of a detector whose `Auto` arithmetic is f32.
    pub fn kind(self) -> tch::Kind {
        match self {
            Precision::Auto => tch::Kind::Float,
            Precision::F64 => tch::Kind::Double,
        }
    }

    /// `auto` or `f64` (tables, the CLI).
    pub fn name(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::F64 => "f64",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Precision::Auto),
            "f64" => Ok(Precision::F64),
            _ => Err(Error::param("precision", format!("{s:?} is not a precision (auto, f64)"))),
        }
    }
}

/// One typed hyperparameter value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamValue {
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl ParamValue {
    /// As a number for tables (`true` = 1).
    pub fn as_f64(self) -> f64 {
        match self {
            ParamValue::Int(i) => i as f64,
            ParamValue::Float(x) => x,
            ParamValue::Bool(b) => b as u8 as f64,
        }
    }
}

/// Sizes a search grid depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridContext {
    /// Feature dimension.
    pub d: i64,
    /// Classes.
    pub c: i64,
    /// ID training samples.
    pub n: i64,
}

/// `self` as `Any` (implemented for every type), to reach concrete types
/// behind `dyn Detector` / `dyn Scorer`.
pub trait AsAny {
    fn as_any(&self) -> &dyn Any;
}

impl<T: Any> AsAny for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Checked hyperparameters of one feature-based detector, object-safe: the
/// registry, the CLI and the studies hold `Box<dyn Detector>`. Implemented for
/// every [`Registered`] type.
pub trait Detector: AsAny + std::fmt::Debug + Send + Sync + 'static {
    /// The registry name.
    fn name(&self) -> &'static str;
    /// Every hyperparameter with its value, in a fixed order.
    fn params(&self) -> Vec<(&'static str, ParamValue)>;
    /// Fits on ID training features and the classifier head.
    fn fit(&self, data: &FitData) -> Result<Box<dyn Scorer>>;
}

impl<T: Registered> Detector for T {
    fn name(&self) -> &'static str {
        T::NAME
    }
    fn params(&self) -> Vec<(&'static str, ParamValue)> {
        Registered::params(self)
    }
    fn fit(&self, data: &FitData) -> Result<Box<dyn Scorer>> {
        Ok(Box::new(Registered::fit(self, data)?))
    }
}

/// The fitted state of a detector: scores `[N]` (higher = more ID).
pub trait Scorer: AsAny + Send + 'static {
    /// Scores of every sample of `f` (checked for emptiness and finiteness by [`Fitted::score`]).
    fn score(&self, f: &FeatureSet) -> Result<Tensor>;
    /// Values estimated by `fit` (ViM's alpha, TempScale's T, ReAct's clip), for tables.
    fn fitted_values(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }
}

/// Reads typed hyperparameters from a by-name map (CLI, notebooks, tables),
/// with defaults for the missing ones; unknown names are an error listing the
/// valid ones ([`finish`](Self::finish)).
pub struct ParamReader<'a> {
    detector: &'static str,
    given: &'a BTreeMap<String, f64>,
    read: Vec<&'static str>,
}

impl<'a> ParamReader<'a> {
    /// A reader of `given` for `detector`.
    pub fn new(detector: &'static str, given: &'a BTreeMap<String, f64>) -> Self {
        ParamReader { detector, given, read: Vec::new() }
    }

    fn raw(&mut self, key: &'static str) -> Option<f64> {
        self.read.push(key);
        self.given.get(key).copied()
    }

    fn bad(&self, key: &str, v: f64, why: &str) -> Error {
        Error::param(format!("{}.{key}", self.detector), format!("{v} {why}"))
    }

    /// A real-valued parameter.
    pub fn f64(&mut self, key: &'static str, default: f64) -> Result<f64> {
        match self.raw(key) {
            None => Ok(default),
            Some(v) if v.is_finite() => Ok(v),
            Some(v) => Err(self.bad(key, v, "is not finite")),
        }
    }

    /// An integer parameter (a whole number in the map).
    pub fn int(&mut self, key: &'static str, default: i64) -> Result<i64> {
        match self.raw(key) {
            None => Ok(default),
            Some(v) if v.is_finite() && v.fract() == 0.0 && v.abs() < 9.0e15 => Ok(v as i64),
            Some(v) => Err(self.bad(key, v, "must be a whole number")),
        }
    }

    /// A switch (0 or 1 in the map).
    pub fn bool(&mut self, key: &'static str, default: bool) -> Result<bool> {
        match self.raw(key) {
            None => Ok(default),
            Some(v) if v == 0.0 || v == 1.0 => Ok(v == 1.0),
            Some(v) => Err(self.bad(key, v, "must be 0 or 1")),
        }
    }

    /// Errors on any given key that was not read.
    pub fn finish(self) -> Result<()> {
        if let Some(k) = self.given.keys().find(|k| !self.read.contains(&k.as_str())) {
            return Err(Error::param(
                format!("{}.{k}", self.detector),
                format!("unknown hyperparameter (known: {})", if self.read.is_empty() { "none".to_string() } else { self.read.join(", ") }),
            ));
        }
        Ok(())
    }
}

/// A detector type as the registry sees it: its name, summary, defaults (via
/// [`Default`]), how to read and check its parameters, and its search grid.
pub trait Registered: std::fmt::Debug + Default + Send + Sync + Sized + 'static {
    /// Registry name (what the CLI and tables use).
    const NAME: &'static str;
    /// One line: what it computes, and the paper.
    const SUMMARY: &'static str;
    /// Whether it reads the layer taps of the features (the OOD study then extracts them).
    const NEEDS_TAPS: bool = false;
    /// Whether [`Precision::Auto`] computes in f32 (else f64, like `F64`).
    const AUTO_F32: bool = false;
    /// The fitted state.
    type Fitted: Scorer;
    /// Reads the parameters (defaults for the missing ones). Checking is separate.
    fn read(p: &mut ParamReader) -> Result<Self>;
    /// Every hyperparameter with its value, in a fixed order (none by default).
    fn params(&self) -> Vec<(&'static str, ParamValue)> {
        Vec::new()
    }
    /// Fits on ID training features and the classifier head.
    fn fit(&self, data: &FitData) -> Result<Self::Fitted>;
    /// Range checks that do not depend on the data.
    fn check(&self) -> Result<()> {
        Ok(())
    }
    /// Candidates for the hyperparameter search (the default alone when nothing is tuned).
    fn grid(_ctx: &GridContext) -> Vec<Self> {
        vec![Self::default()]
    }
    /// The paper's defaults, fitted to the data's sizes (what the `defaults`
    /// selection protocol uses): [`Default`] unless a default does not fit the
    /// data (ViM's dim >= D, a k above N), then the nearest valid value.
    fn defaults(_ctx: &GridContext) -> Self {
        Self::default()
    }
    /// Work shared by the whole grid before it is scored on `sets` (KNN keeps
    /// each set's largest similarities once for every k, Relation its sums for
    /// every power), with what the grid is fitted on.
    fn prepare_grid(_grid: &[&Self], _data: &FitData, _sets: &[&FeatureSet]) -> Result<()> {
        Ok(())
    }
}

/// A boxed, checked detector (what the registry builds).
pub type BoxedDetector = Box<dyn Detector>;
/// The by-name parameter map of tables and the CLI.
pub type ParamMap = BTreeMap<String, f64>;

/// One registry line: built by [`entry`] from a [`Registered`] type.
pub struct Entry {
    pub name: &'static str,
    pub summary: &'static str,
    /// The parameter names (from the default value).
    pub param_names: fn() -> Vec<&'static str>,
    /// Reads (defaults for the missing ones) and checks parameters.
    pub build: fn(&ParamMap) -> Result<BoxedDetector>,
    /// The checked search grid.
    pub grid: fn(&GridContext) -> Result<Vec<BoxedDetector>>,
    /// See [`Registered::prepare_grid`].
    pub prepare_grid: fn(&[BoxedDetector], &FitData, &[&FeatureSet]) -> Result<()>,
    /// See [`Registered::NEEDS_TAPS`].
    pub needs_taps: bool,
    /// See [`Registered::AUTO_F32`].
    pub auto_f32: bool,
    /// See [`Registered::defaults`].
    pub defaults: fn(&GridContext) -> Result<BoxedDetector>,
}

fn build<T: Registered>(given: &BTreeMap<String, f64>) -> Result<Box<dyn Detector>> {
    let mut r = ParamReader::new(T::NAME, given);
    let d = T::read(&mut r)?;
    r.finish()?;
    d.check()?;
    Ok(Box::new(d))
}

fn grid<T: Registered>(ctx: &GridContext) -> Result<Vec<Box<dyn Detector>>> {
    T::grid(ctx)
        .into_iter()
        .map(|d| {
            d.check()?;
            Ok(Box::new(d) as Box<dyn Detector>)
        })
        .collect()
}

fn prepare<T: Registered>(g: &[Box<dyn Detector>], data: &FitData, sets: &[&FeatureSet]) -> Result<()> {
    let typed: Vec<&T> = g.iter().filter_map(|d| (**d).as_any().downcast_ref::<T>()).collect();
    T::prepare_grid(&typed, data, sets)
}

fn defaults<T: Registered>(ctx: &GridContext) -> Result<Box<dyn Detector>> {
    let d = T::defaults(ctx);
    d.check()?;
    Ok(Box::new(d))
}

fn names<T: Registered>() -> Vec<&'static str> {
    Registered::params(&T::default()).into_iter().map(|(k, _)| k).collect()
}

/// The registry line of `T`.
pub const fn entry<T: Registered>() -> Entry {
    Entry {
        name: T::NAME,
        summary: T::SUMMARY,
        param_names: names::<T>,
        build: build::<T>,
        grid: grid::<T>,
        prepare_grid: prepare::<T>,
        needs_taps: T::NEEDS_TAPS,
        auto_f32: T::AUTO_F32,
        defaults: defaults::<T>,
    }
}

/// A fitted detector: what it was fitted with and its fitted state.
pub struct Fitted {
    pub name: String,
    /// The hyperparameters it was fitted with.
    pub params: BTreeMap<String, f64>,
    /// The values estimated by `fit` (e.g. ViM's `alpha`, TempScale's `t_fitted`,
    /// ReAct's `clip`), by name; the typed fitted state is [`fitted`](Self::fitted).
    pub estimated: BTreeMap<String, f64>,
    detector: Box<dyn Detector>,
    scorer: Box<dyn Scorer>,
}

impl std::fmt::Debug for Fitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fitted({} {:?}, estimated {:?})", self.name, self.params, self.estimated)
    }
}

impl Fitted {
    /// Fits `detector` on `data`.
    pub fn fit(detector: Box<dyn Detector>, data: &FitData) -> Result<Self> {
        let scorer = detector.fit(data)?;
        let params = detector.params().into_iter().map(|(k, v)| (k.to_string(), v.as_f64())).collect();
        let estimated = scorer.fitted_values().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        Ok(Fitted { name: detector.name().to_string(), params, estimated, detector, scorer })
    }

    /// The checked hyperparameters it was fitted with.
    pub fn detector(&self) -> &dyn Detector {
        self.detector.as_ref()
    }

    /// The concrete fitted state, e.g. `fitted.fitted::<FittedVim>()?.alpha`.
    pub fn fitted<T: 'static>(&self) -> Option<&T> {
        (*self.scorer).as_any().downcast_ref::<T>()
    }

    /// Scores of every sample of `f` (f64 `[N]`, higher = more ID).
    pub fn score(&self, f: &FeatureSet) -> Result<Tensor> {
        if f.is_empty() {
            return Err(Error::data(format!("{} scores for {}", self.name, f.name), "the feature set is empty"));
        }
        let s = self.scorer.score(f)?.to_kind(tch::Kind::Double);
        if !bool::try_from(s.isfinite().all()).unwrap_or(false) {
            return Err(Error::numerical(format!("{} scores for {}", self.name, f.name), "non-finite scores (NaN/inf in the features?)"));
        }
        Ok(s)
    }

    /// Scores as a `Vec<f64>`.
    pub fn score_vec(&self, f: &FeatureSet) -> Result<Vec<f64>> {
        Ok(Vec::<f64>::try_from(self.score(f)?.to_kind(tch::Kind::Double))?)
    }
}
