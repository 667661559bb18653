//! flock(2)-based locks: the kernel drops them when the holder dies, so a crashed or
//! SIGKILLed coracle never leaves a stale lock behind (no daemon, no pid files).

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use super::{Result, StoreError};

/// A held lock; released on drop (or when the process dies).
#[derive(Debug)]
pub struct Lock {
    _file: File,
    path: PathBuf,
}

fn open(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(StoreError::io("open lock", path))
}

impl Lock {
    pub fn shared(path: &Path) -> Result<Lock> {
        let f = open(path)?;
        f.lock_shared().map_err(StoreError::io("lock (shared)", path))?;
        Ok(Lock { _file: f, path: path.to_path_buf() })
    }

    pub fn exclusive(path: &Path) -> Result<Lock> {
        let f = open(path)?;
        f.lock().map_err(StoreError::io("lock", path))?;
        Ok(Lock { _file: f, path: path.to_path_buf() })
    }

    /// `Ok(None)` when someone else holds it.
    pub fn try_exclusive(path: &Path) -> Result<Option<Lock>> {
        let f = open(path)?;
        match f.try_lock() {
            Ok(()) => Ok(Some(Lock { _file: f, path: path.to_path_buf() })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(StoreError::Io { action: "lock", path: path.to_path_buf(), source: e }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
