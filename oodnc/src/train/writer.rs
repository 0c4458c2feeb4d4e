//! The files of an epoch, written on a background thread.
//!
//! After each epoch the trainer copies what it must save to host memory (a few
//! milliseconds) and hands the writing (serialisation, write, fsync, rename:
//! ~0.1-0.3 s for the ~90 MB state of the full ResNet-18) to one thread, which
//! overlaps it with the next epoch. Operations run in the order given, and
//! the next batch of operations waits for the previous one, so the on-disk
//! order stays the one that keeps a run resumable (history before state).

use crate::error::{Error, Result};
use crate::tensor_io::Encoded;
use std::path::PathBuf;
use std::thread::JoinHandle;

/// One file operation.
pub enum FileOp {
    /// An encoded safetensors file, written atomically.
    Safetensors(PathBuf, Encoded),
    /// Raw bytes, written atomically.
    Bytes(PathBuf, Vec<u8>),
    /// A file to delete (absent already is fine).
    Remove(PathBuf),
}

impl FileOp {
    fn run(&self) -> Result<()> {
        match self {
            FileOp::Safetensors(p, e) => e.write(p),
            FileOp::Bytes(p, b) => crate::util::write_atomic(p, b),
            FileOp::Remove(p) => match std::fs::remove_file(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(p, e)),
                _ => Ok(()),
            },
        }
    }
}

/// At most one batch of [`FileOp`]s in flight.
#[derive(Default)]
pub struct BackgroundWriter {
    pending: Option<JoinHandle<Result<()>>>,
}

impl BackgroundWriter {
    /// Waits for the previous batch (returning its error, if any), then starts
    /// `ops` on a new thread.
    pub fn submit(&mut self, ops: Vec<FileOp>) -> Result<()> {
        self.flush()?;
        let handle = std::thread::Builder::new()
            .name("oodnc-writer".into())
            .spawn(move || ops.iter().try_for_each(FileOp::run))
            .map_err(|e| Error::io("background writer thread", e))?;
        self.pending = Some(handle);
        Ok(())
    }

    /// Waits until everything submitted is on disk; the first error of the
    /// last batch, if any.
    pub fn flush(&mut self) -> Result<()> {
        match self.pending.take() {
            None => Ok(()),
            Some(h) => h.join().unwrap_or_else(|_| Err(Error::data("background writer", "the writer thread panicked"))),
        }
    }
}

impl Drop for BackgroundWriter {
    fn drop(&mut self) {
        // Never leave a half-written epoch behind a returning trainer.
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_run_in_order_and_errors_come_back() {
        let dir = std::env::temp_dir().join(format!("oodnc-writer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut w = BackgroundWriter::default();
        let f = dir.join("a.txt");
        w.submit(vec![
            FileOp::Bytes(f.clone(), b"one".to_vec()),
            FileOp::Bytes(f.clone(), b"two".to_vec()),
            FileOp::Remove(dir.join("never-there")),
        ])
        .unwrap();
        w.flush().unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        w.submit(vec![FileOp::Remove(f.clone())]).unwrap();
        w.flush().unwrap();
        assert!(!f.exists());
        // A directory where a file should go: the error surfaces at the next flush.
        std::fs::create_dir_all(dir.join("d/x.txt")).unwrap();
        w.submit(vec![FileOp::Bytes(dir.join("d/x.txt"), b"z".to_vec())]).unwrap();
        assert!(w.flush().is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
