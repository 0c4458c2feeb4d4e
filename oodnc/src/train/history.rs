//! Per-epoch training history, written as CSV after every epoch.

use crate::error::{Error, Result};
use std::path::Path;

/// One epoch's record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochRecord {
    pub epoch: i64,
    /// Learning rate used during the epoch (first iteration for per-iteration schedules).
    pub lr: f64,
    /// Mean cross-entropy over the epoch's training samples (augmented, train mode).
    pub train_loss: f64,
    /// Running accuracy on the augmented training batches (train mode), as in the original.
    pub train_acc: f64,
    /// Validation loss, weighted by samples (the original averaged batch means).
    pub val_loss: f64,
    pub val_acc: f64,
    /// Test accuracy, monitored only (never used to choose anything).
    pub test_acc: f64,
    pub seconds: f64,
    pub images_per_s: f64,
}

/// All epochs so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    pub records: Vec<EpochRecord>,
}

const HEADER: &str = "epoch,lr,train_loss,train_acc,val_loss,val_acc,test_acc,seconds,images_per_s";

impl History {
    /// CSV text.
    pub fn to_csv(&self) -> String {
        let mut s = String::from(HEADER);
        s.push('\n');
        for r in &self.records {
            s.push_str(&format!(
                "{},{:.8},{:.6},{:.6},{:.6},{:.6},{:.6},{:.3},{:.1}\n",
                r.epoch, r.lr, r.train_loss, r.train_acc, r.val_loss, r.val_acc, r.test_acc, r.seconds, r.images_per_s
            ));
        }
        s
    }

    /// Writes `history.csv` atomically.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::util::write_atomic(path, self.to_csv().as_bytes())
    }

    /// Reads a `history.csv`.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(Error::format(path, format!("header is not '{HEADER}'")));
        }
        let mut records = Vec::new();
        for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let f: Vec<&str> = line.split(',').collect();
            if f.len() != 9 {
                return Err(Error::format(path, format!("line {}: {} fields", i + 2, f.len())));
            }
            let num = |k: usize| -> Result<f64> {
                f[k].parse::<f64>().map_err(|_| Error::format(path, format!("line {}: '{}' is not a number", i + 2, f[k])))
            };
            records.push(EpochRecord {
                epoch: num(0)? as i64,
                lr: num(1)?,
                train_loss: num(2)?,
                train_acc: num(3)?,
                val_loss: num(4)?,
                val_acc: num(5)?,
                test_acc: num(6)?,
                seconds: num(7)?,
                images_per_s: num(8)?,
            });
        }
        Ok(History { records })
    }

    /// The record with the best validation accuracy (earliest on ties).
    pub fn best_by_val(&self) -> Option<&EpochRecord> {
        self.records.iter().fold(None, |best: Option<&EpochRecord>, r| match best {
            Some(b) if b.val_acc >= r.val_acc => Some(b),
            _ => Some(r),
        })
    }
}
