//! Random access into an uncompressed tar archive (`docker save`, OCI archives): one pass
//! over the headers records where each member's data is, then blobs are read in place
//! with pread, never extracted to a temporary directory first.
//!
//! Member names are looked up, never opened on the host: a `manifest.json` naming
//! `../../etc/shadow` finds nothing. Symlinks and hardlinks between members (docker
//! dedups identical layers that way) are followed inside the archive only.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::layer::tar::{Kind, TarReader, TarSource};

const MAX_MEMBERS: usize = 1 << 20;
const MAX_LINK_HOPS: usize = 16;

#[derive(Debug, Clone)]
enum Member {
    File {
        offset: u64,
        size: u64,
    },
    /// Target, already made archive-root relative.
    Link(String),
}

#[derive(Debug)]
pub struct TarIndex {
    file: Arc<File>,
    members: HashMap<String, Member>,
}

/// Reads a byte range of a file with pread: many readers can share one file.
pub struct SectionReader {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl SectionReader {
    pub fn new(file: Arc<File>, offset: u64, len: u64) -> Self {
        SectionReader { file, pos: offset, end: offset + len }
    }
}

impl Read for SectionReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.pos).min(usize::MAX as u64) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl TarSource for SectionReader {
    fn skip_bytes(&mut self, n: u64) -> io::Result<u64> {
        let k = n.min(self.end - self.pos);
        self.pos += k;
        Ok(k)
    }
}

/// Normalises a member name lexically inside the archive root; `None` if it escapes.
pub fn normalize(base_dir: &str, name: &str) -> Option<String> {
    let mut parts: Vec<&str> =
        if name.starts_with('/') { Vec::new() } else { base_dir.split('/').filter(|c| !c.is_empty()).collect() };
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

impl TarIndex {
    /// Indexes the archive `file` (which must be an uncompressed tar).
    pub fn build(file: File) -> io::Result<TarIndex> {
        let file = Arc::new(file);
        let len = file.metadata()?.len();
        let mut tar = TarReader::new(SectionReader::new(file.clone(), 0, len));
        let mut members = HashMap::new();
        while let Some(e) = tar.next_entry()? {
            if members.len() >= MAX_MEMBERS {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "archive has too many members"));
            }
            let Ok(path) = String::from_utf8(e.path.clone()) else { continue };
            let Some(key) = normalize("", &path) else { continue };
            let member = match e.kind {
                Kind::File if e.sparse.is_none() => Member::File { offset: tar.inner().pos, size: e.size },
                Kind::Symlink => {
                    let dir = key.rsplit_once('/').map_or("", |(d, _)| d);
                    match String::from_utf8(e.link.clone()).ok().and_then(|l| normalize(dir, &l)) {
                        Some(t) => Member::Link(t),
                        None => continue,
                    }
                }
                Kind::Hardlink => match String::from_utf8(e.link.clone()).ok().and_then(|l| normalize("", &l)) {
                    Some(t) => Member::Link(t),
                    None => continue,
                },
                _ => continue,
            };
            members.insert(key, member);
        }
        Ok(TarIndex { file, members })
    }

    /// The (offset, size) of a regular member, following links inside the archive.
    fn locate(&self, name: &str) -> Option<(u64, u64)> {
        let mut key = normalize("", name)?;
        for _ in 0..MAX_LINK_HOPS {
            match self.members.get(&key)? {
                Member::File { offset, size } => return Some((*offset, *size)),
                Member::Link(t) => key = t.clone(),
            }
        }
        None
    }

    pub fn contains(&self, name: &str) -> bool {
        self.locate(name).is_some()
    }

    pub fn size(&self, name: &str) -> Option<u64> {
        self.locate(name).map(|(_, s)| s)
    }

    /// A reader over the member's data.
    pub fn open(&self, name: &str) -> io::Result<SectionReader> {
        let (offset, size) = self
            .locate(name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{name:?} is not in the archive")))?;
        Ok(SectionReader::new(self.file.clone(), offset, size))
    }

    /// Reads a small member whole (at most `max` bytes).
    pub fn read_small(&self, name: &str, max: u64) -> io::Result<Vec<u8>> {
        let mut data = Vec::new();
        self.open(name)?.take(max + 1).read_to_end(&mut data)?;
        if data.len() as u64 > max {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{name:?} is larger than {max} bytes")));
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_stays_inside() {
        assert_eq!(normalize("", "./a/b/../c").as_deref(), Some("a/c"));
        assert_eq!(normalize("x/y", "../z").as_deref(), Some("x/z"));
        assert_eq!(normalize("", "../../etc/shadow"), None);
        assert_eq!(normalize("x", "/abs").as_deref(), Some("abs"));
    }
}
