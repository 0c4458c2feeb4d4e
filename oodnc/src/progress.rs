//! Progress for long loops: an indicatif bar on a terminal, plain periodic lines
//! elsewhere (notebooks, CI logs), so Jupyter shows readable text with an ETA
//! instead of terminal control codes. Without the `bars` feature (the notebooks'
//! build), plain lines everywhere.

use std::time::{Duration, Instant};

#[cfg(feature = "bars")]
use indicatif::ProgressBar as Bar;

/// No terminal bar without the `bars` feature: the type has no values.
#[cfg(not(feature = "bars"))]
enum Bar {}

#[cfg(not(feature = "bars"))]
impl Bar {
    fn set_message(&self, _: String) {
        match *self {}
    }
    fn inc(&self, _: u64) {
        match *self {}
    }
    fn finish_and_clear(&self) {
        match *self {}
    }
}

/// A bar when stderr is a terminal (and the `bars` feature is on).
#[cfg(feature = "bars")]
fn terminal_bar(label: &str, total: u64) -> Option<Bar> {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template("{prefix} [{bar:28}] {pos}/{len} {msg} {per_sec} ETA {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b.set_prefix(label.to_string());
        b
    })
}

#[cfg(not(feature = "bars"))]
fn terminal_bar(_: &str, _: u64) -> Option<Bar> {
    None
}

/// Reports progress of `total` steps.
pub struct Progress {
    bar: Option<Bar>,
    label: String,
    total: u64,
    done: u64,
    start: Instant,
    last_line: Instant,
    every: Duration,
}

impl Progress {
    /// A progress reporter; plain lines at most every `every` when not on a terminal.
    pub fn new(label: impl Into<String>, total: u64) -> Self {
        let label = label.into();
        let quiet = std::env::var("OODNC_QUIET").is_ok();
        let bar = if quiet { None } else { terminal_bar(&label, total) };
        let every = if quiet { Duration::from_secs(u64::MAX / 4) } else { Duration::from_secs(10) };
        Progress { bar, label, total, done: 0, start: Instant::now(), last_line: Instant::now(), every }
    }

    /// Advances by `n` steps with a status message (e.g. "loss 1.23 acc 45%").
    pub fn inc(&mut self, n: u64, msg: impl FnOnce() -> String) {
        self.done += n;
        if let Some(b) = &self.bar {
            b.set_message(msg());
            b.inc(n);
        } else if self.last_line.elapsed() >= self.every && self.done < self.total {
            self.last_line = Instant::now();
            let el = self.start.elapsed().as_secs_f64();
            let eta = el / self.done.max(1) as f64 * (self.total - self.done) as f64;
            println!(
                "  {} {}/{} ({:.0}%) {}, ETA {:.0}s",
                self.label,
                self.done,
                self.total,
                100.0 * self.done as f64 / self.total.max(1) as f64,
                msg(),
                eta
            );
        }
    }

    /// Like [`inc`](Self::inc), but the message is only computed when `refresh`
    /// is true (computing it may be expensive, e.g. a device sync).
    pub fn inc_throttled(&mut self, n: u64, refresh: bool, msg: impl FnOnce() -> String) {
        self.done += n;
        if let Some(b) = &self.bar {
            if refresh {
                b.set_message(msg());
            }
            b.inc(n);
        } else if refresh && self.last_line.elapsed() >= self.every && self.done < self.total {
            self.last_line = Instant::now();
            let el = self.start.elapsed().as_secs_f64();
            let eta = el / self.done.max(1) as f64 * (self.total - self.done) as f64;
            println!(
                "  {} {}/{} ({:.0}%) {}, ETA {:.0}s",
                self.label,
                self.done,
                self.total,
                100.0 * self.done as f64 / self.total.max(1) as f64,
                msg(),
                eta
            );
        }
    }

    /// Finishes (clears the bar).
    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }

    /// Seconds since creation.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}
