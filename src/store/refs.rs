//! Names: `refs/<escaped name>` holds the manifest digest an image name points to. One
//! small file per name, replaced atomically, so a reader never sees a half-written ref.

use std::fs;
use std::io;

use super::{fsync_dir, Result, Store, StoreError};
use crate::digest::Digest;
use crate::reference::Reference;

/// `/` and `%` escaped so that a full name is one file name.
fn escape(name: &str) -> String {
    name.replace('%', "%25").replace('/', "%2F")
}

fn unescape(file: &str) -> String {
    file.replace("%2F", "/").replace("%25", "%")
}

impl Store {
    pub fn set_ref(&self, name: &Reference, digest: &Digest) -> Result<()> {
        self.write_atomic(&self.path("refs"), &escape(&name.to_string()), format!("{digest}\n").as_bytes())
    }

    pub fn get_ref(&self, name: &Reference) -> Result<Option<Digest>> {
        let p = self.path("refs").join(escape(&name.to_string()));
        match fs::read_to_string(&p) {
            Ok(s) => s.trim().parse().map(Some).map_err(|e| StoreError::Corrupt { path: p, why: format!("{e}") }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io { action: "read", path: p, source: e }),
        }
    }

    /// Removes a name; `Ok(false)` if it did not exist.
    pub fn remove_ref(&self, name: &Reference) -> Result<bool> {
        let dir = self.path("refs");
        let p = dir.join(escape(&name.to_string()));
        match fs::remove_file(&p) {
            Ok(()) => fsync_dir(&dir).map(|_| true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::Io { action: "remove", path: p, source: e }),
        }
    }

    /// Every (name, manifest digest), sorted by name. Unreadable entries are skipped
    /// (fsck reports them).
    pub fn list_refs(&self) -> Result<Vec<(Reference, Digest)>> {
        let dir = self.path("refs");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(StoreError::io("read", &dir))? {
            let e = e.map_err(StoreError::io("read", &dir))?;
            let Some(name) = e.file_name().to_str().map(unescape) else { continue };
            let Ok(r) = name.parse::<Reference>() else { continue };
            if let Ok(Some(d)) = self.get_ref(&r) {
                out.push((r, d));
            }
        }
        out.sort_by_key(|(r, _)| r.to_string());
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips() {
        for n in ["docker.io/library/busybox:latest", "localhost:5000/a%b/c:1"] {
            assert_eq!(unescape(&escape(n)), n);
            assert!(!escape(n).contains('/'));
        }
    }
}
