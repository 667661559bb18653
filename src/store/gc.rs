//! Garbage collection: with the store lock held exclusively (so no import is half done),
//! deletes blobs and layers no image record needs, everything in tmp/, stale lock files and
//! the scratch dirs of containers whose `coracle run` is gone. A layer a running container
//! holds (shared flock on its lock file) is skipped, whatever the records say.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::lock::Lock;
use super::{disk_usage, Result, Store, StoreError};
use crate::digest::Digest;

#[derive(Debug, Default)]
pub struct GcReport {
    pub blobs: Vec<(Digest, u64)>,
    pub layers: Vec<(Digest, u64)>,
    /// Names of tmp/ entries removed.
    pub tmp: Vec<(String, u64)>,
    pub containers: Vec<(String, u64)>,
    /// Unreferenced layers kept because a running container uses them.
    pub in_use: Vec<Digest>,
}

impl GcReport {
    pub fn bytes(&self) -> u64 {
        fn sum<T>(v: &[(T, u64)]) -> u64 {
            v.iter().map(|(_, n)| n).sum()
        }
        sum(&self.blobs) + sum(&self.layers) + sum(&self.tmp) + sum(&self.containers)
    }
}

/// What the image records keep alive.
pub(crate) struct Live {
    pub blobs: HashSet<Digest>,
    pub layers: HashSet<Digest>,
}

impl Store {
    pub(crate) fn live_set(&self) -> Result<Live> {
        let mut live = Live { blobs: HashSet::new(), layers: HashSet::new() };
        for d in self.image_digests()? {
            // A record we cannot read could name anything: refuse to guess.
            let rec = self.get_image(&d)?.ok_or_else(|| StoreError::Corrupt {
                path: self.path("images").join(format!("{}.json", d.hex())),
                why: "vanished while collecting".into(),
            })?;
            live.blobs.insert(rec.digest.clone());
            live.blobs.insert(rec.config.clone());
            for l in rec.layers {
                live.blobs.insert(l.blob);
                live.layers.insert(l.diff_id);
            }
        }
        Ok(live)
    }

    pub fn gc(&self) -> Result<GcReport> {
        let _excl = self.lock_exclusive()?;
        let live = self.live_set()?;
        let mut report = GcReport::default();

        for (d, path) in digest_entries(&self.path("blobs/sha256"))? {
            if !live.blobs.contains(&d) {
                let n = disk_usage(&path);
                fs::remove_file(&path).map_err(StoreError::io("remove", &path))?;
                report.blobs.push((d, n));
            }
        }
        for (d, path) in digest_entries(&self.path("layers/sha256"))? {
            if live.layers.contains(&d) && self.layer_marker(&d).is_some() {
                continue;
            }
            let lock_path = self.layer_lock_path(&d);
            let Some(lock) = Lock::try_exclusive(&lock_path)? else {
                report.in_use.push(d);
                continue;
            };
            let n = self.remove_tree(&path)?;
            // Deleting a lock file while holding it is safe: nobody can be waiting on it,
            // since layer locks are only taken under the store lock we hold exclusively.
            let _ = fs::remove_file(lock.path());
            report.layers.push((d, n));
        }
        let tmp = self.tmp();
        for e in fs::read_dir(&tmp).map_err(StoreError::io("read", &tmp))?.flatten() {
            let path = e.path();
            let n = disk_usage(&path);
            remove_any(&path)?;
            report.tmp.push((e.file_name().to_string_lossy().into_owned(), n));
        }
        let containers = self.path("containers");
        for e in fs::read_dir(&containers).map_err(StoreError::io("read", &containers))?.flatten() {
            let path = e.path();
            // A live `coracle run` holds its container's lock; the kernel dropped a dead one's.
            let Some(_lock) = Lock::try_exclusive(&path.join("lock")).ok().flatten() else { continue };
            let n = self.remove_tree(&path)?;
            report.containers.push((e.file_name().to_string_lossy().into_owned(), n));
        }
        self.remove_stale_locks(&live)?;
        Ok(report)
    }

    /// Removes a directory tree by first renaming it into tmp/, so that a crash midway
    /// leaves debris only where gc looks next time, never a half-deleted layer in place.
    pub(crate) fn remove_tree(&self, path: &Path) -> Result<u64> {
        let n = disk_usage(path);
        let doomed = self.tmp().join(format!(
            "gc-{}-{}",
            std::process::id(),
            path.file_name().map_or_else(String::new, |s| s.to_string_lossy().into_owned())
        ));
        fs::rename(path, &doomed).map_err(StoreError::io("move to tmp", path))?;
        remove_any(&doomed)?;
        Ok(n)
    }

    fn remove_stale_locks(&self, live: &Live) -> Result<()> {
        for (d, path) in digest_entries(&self.path("locks/layers"))? {
            if !live.layers.contains(&d) && !self.layer_dir(&d).exists() {
                if let Some(_l) = Lock::try_exclusive(&path)? {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        for (d, path) in digest_entries(&self.path("locks/blobs"))? {
            if !self.has_blob(&d) {
                if let Some(_l) = Lock::try_exclusive(&path)? {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        Ok(())
    }
}

fn remove_any(path: &Path) -> Result<()> {
    let md = fs::symlink_metadata(path).map_err(StoreError::io("stat", path))?;
    let r = if md.is_dir() { fs::remove_dir_all(path) } else { fs::remove_file(path) };
    r.map_err(StoreError::io("remove", path))
}

/// Entries of a `<hex>`-named directory; other names are returned with `None` digests
/// skipped (fsck reports them).
pub(crate) fn digest_entries(dir: &Path) -> Result<Vec<(Digest, PathBuf)>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(StoreError::io("read", dir))? {
        let e = e.map_err(StoreError::io("read", dir))?;
        if let Some(d) = e.file_name().to_str().and_then(|n| Digest::from_hex(n).ok()) {
            out.push((d, e.path()));
        }
    }
    out.sort();
    Ok(out)
}
