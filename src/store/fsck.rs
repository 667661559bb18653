//! Consistency check: every blob re-hashed, every layer's marker checked, every image
//! record's blobs and layers present, every name pointing at an image. `--repair` drops
//! what is broken (with the store lock held exclusively); images that lost a part are
//! removed so that the next pull brings them back whole.

use std::fs::{self, File};
use std::io;

use super::lock::Lock;
use super::{Result, Store, StoreError};
use crate::digest::HashingReader;

#[derive(Debug)]
pub struct Problem {
    pub what: String,
    pub repaired: bool,
}

#[derive(Debug, Default)]
pub struct FsckReport {
    pub blobs: usize,
    pub layers: usize,
    pub images: usize,
    pub refs: usize,
    pub problems: Vec<Problem>,
}

impl FsckReport {
    pub fn clean(&self) -> bool {
        self.problems.iter().all(|p| p.repaired)
    }
}

impl Store {
    pub fn fsck(&self, repair: bool) -> Result<FsckReport> {
        let _hold = if repair { self.lock_exclusive()? } else { self.lock_shared()? };
        let mut r = FsckReport::default();
        let problem = |r: &mut FsckReport, what: String, fix: &mut dyn FnMut() -> Result<()>| -> Result<()> {
            let repaired = if repair {
                fix()?;
                true
            } else {
                false
            };
            r.problems.push(Problem { what, repaired });
            Ok(())
        };

        let mut bad_blobs = std::collections::HashSet::new();
        // Blobs: the name must be the content's digest.
        let blob_dir = self.path("blobs/sha256");
        for e in fs::read_dir(&blob_dir).map_err(StoreError::io("read", &blob_dir))?.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            r.blobs += 1;
            let Ok(d) = crate::digest::Digest::from_hex(&name) else {
                problem(&mut r, format!("blobs/sha256/{name}: not a digest name"), &mut || remove(&path))?;
                continue;
            };
            let actual = File::open(&path).and_then(|f| {
                let mut h = HashingReader::new(f);
                io::copy(&mut h, &mut io::sink())?;
                Ok(h.finish().0)
            });
            match actual {
                Ok(a) if a == d => {}
                Ok(a) => {
                    bad_blobs.insert(d.clone());
                    problem(&mut r, format!("blob {d}: content hashes to {a}"), &mut || remove(&path))?
                }
                Err(e) => {
                    bad_blobs.insert(d.clone());
                    problem(&mut r, format!("blob {d}: unreadable: {e}"), &mut || remove(&path))?
                }
            }
        }

        // Layers: a committed layer has a marker naming it and a root directory.
        let layer_dir = self.path("layers/sha256");
        for e in fs::read_dir(&layer_dir).map_err(StoreError::io("read", &layer_dir))?.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            r.layers += 1;
            let why = match crate::digest::Digest::from_hex(&name) {
                Err(_) => Some("not a digest name".to_owned()),
                Ok(d) => match self.layer_marker(&d) {
                    None => Some("missing or invalid marker (incomplete extraction)".to_owned()),
                    Some(_) if !self.layer_root(&d).is_dir() => Some("marker present but root/ missing".to_owned()),
                    Some(_) => None,
                },
            };
            if let Some(why) = why {
                let lock = crate::digest::Digest::from_hex(&name).ok().map(|d| self.layer_lock_path(&d));
                // Never pull a layer from under a running container (it holds the lock
                // shared). Such a layer stays, so the problem stays unrepaired: reporting it
                // "(removed)" made --repair exit 0 over a store the next fsck fails.
                let guard = match (&lock, repair) {
                    (Some(p), true) => Lock::try_exclusive(p)?,
                    _ => None,
                };
                if repair && lock.is_some() && guard.is_none() {
                    r.problems.push(Problem {
                        what: format!("layer {name}: {why} (kept: in use by a running container)"),
                        repaired: false,
                    });
                } else {
                    problem(&mut r, format!("layer {name}: {why}"), &mut || self.remove_tree(&path).map(|_| ()))?;
                }
            }
        }

        // Image records: everything they name must be there.
        for d in self.image_digests()? {
            r.images += 1;
            let rec = match self.get_image(&d) {
                Ok(Some(rec)) => rec,
                Ok(None) => continue,
                Err(e) => {
                    problem(&mut r, format!("image {d}: {e}"), &mut || self.drop_image(&d))?;
                    continue;
                }
            };
            let mut missing = Vec::new();
            for b in [&rec.digest, &rec.config].into_iter().chain(rec.layers.iter().map(|l| &l.blob)) {
                if bad_blobs.contains(b) {
                    missing.push(format!("corrupt blob {b}"));
                } else if !self.has_blob(b) {
                    missing.push(format!("missing blob {b}"));
                }
            }
            for l in &rec.layers {
                if self.layer_marker(&l.diff_id).is_none() {
                    missing.push(format!("missing layer {}", l.diff_id));
                }
            }
            if !missing.is_empty() {
                // Repair removes the image with its names: say which names go.
                let names: Vec<String> =
                    self.list_refs()?.into_iter().filter(|(_, t)| *t == d).map(|(n, _)| n.to_string()).collect();
                let named = if names.is_empty() { String::new() } else { format!(" (named {})", names.join(", ")) };
                let what = format!("image {d}: {}{named}", missing.join(", "));
                problem(&mut r, what, &mut || self.drop_image(&d))?;
            }
        }

        // Names: each must point at an image record.
        let refs_dir = self.path("refs");
        for e in fs::read_dir(&refs_dir).map_err(StoreError::io("read", &refs_dir))?.flatten() {
            let path = e.path();
            // A plain fsck shares the store lock with `rmi`, which may remove a name (then
            // its record) while we look: a name gone since the listing is no problem.
            let content = match fs::read_to_string(&path) {
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                read => read.ok(),
            };
            r.refs += 1;
            let target = content.as_deref().and_then(|s| s.trim().parse::<crate::digest::Digest>().ok());
            let ok = target.as_ref().is_some_and(|d| self.get_image(d).ok().flatten().is_some());
            // `rmi` removes the name before the record: only a name still there, unchanged,
            // after its record is found missing is dangling.
            if !ok && fs::read_to_string(&path).ok() != content {
                continue;
            }
            if !ok {
                let name = e.file_name().to_string_lossy().replace("%2F", "/").replace("%25", "%");
                problem(&mut r, format!("name {name}: points at no image"), &mut || remove(&path))?;
            }
        }
        Ok(r)
    }

    /// Removes an image record and every name pointing at it.
    fn drop_image(&self, d: &crate::digest::Digest) -> Result<()> {
        for (name, target) in self.list_refs()? {
            if &target == d {
                self.remove_ref(&name)?;
            }
        }
        let p = self.path("images").join(format!("{}.json", d.hex()));
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::Io { action: "remove", path: p, source: e }),
        }
    }
}

fn remove(path: &std::path::Path) -> Result<()> {
    fs::remove_file(path).map_err(StoreError::io("remove", path))
}
