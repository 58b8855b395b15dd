//! Free space on the data disk, and the floor below which adds are refused.

use super::error::StorageError;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes available to unprivileged writers on the filesystem of `dir`; 0 if unknown.
pub fn free_bytes(dir: &Path) -> u64 {
    rustix::fs::statvfs(dir)
        .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
        .unwrap_or(0)
}

/// The last measured free space of the data disk against the configured floor.
pub(crate) struct DiskGuard {
    dir: PathBuf,
    min_free_bytes: u64,
    /// Free bytes at the last successful measurement (`u64::MAX` before one).
    free_bytes: AtomicU64,
}

impl DiskGuard {
    /// Watches the filesystem of `dir`, measuring it once now.
    pub fn new(dir: &Path, min_free_bytes: u64) -> Self {
        let guard = Self {
            dir: dir.to_path_buf(),
            min_free_bytes,
            free_bytes: AtomicU64::new(u64::MAX),
        };
        guard.refresh();
        guard
    }

    /// Measures the free space again and returns it; a failed measurement
    /// keeps the previous value.
    pub fn refresh(&self) -> u64 {
        match rustix::fs::statvfs(&self.dir) {
            Ok(s) => {
                let free = s.f_bavail.saturating_mul(s.f_frsize);
                self.free_bytes.store(free, Ordering::Relaxed);
                free
            }
            Err(error) => {
                tracing::warn!(dir = %self.dir.display(), %error, "cannot measure free space");
                self.free_bytes.load(Ordering::Relaxed)
            }
        }
    }

    /// The refusal for a new add while the disk is below its floor.
    pub fn check(&self) -> Option<StorageError> {
        let free_bytes = self.free_bytes.load(Ordering::Relaxed);
        (free_bytes < self.min_free_bytes).then_some(StorageError::DiskFull {
            free_bytes,
            min_free_bytes: self.min_free_bytes,
        })
    }
}
