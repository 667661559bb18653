//! A streaming, bounded tar reader: headers are decoded with the `tar` crate, everything
//! else (PAX records, GNU long names, sparse maps, data framing) is ours so that no
//! archive can make us allocate more than a small fixed amount per entry.
//!
//! Formats: ustar, GNU (long names `L`/`K`, old sparse `S`), POSIX pax (`x` records incl.
//! `SCHILY.xattr.*` and GNU sparse 1.0). Global pax headers (`g`) are skipped: they carry
//! only comments in the archives the container ecosystem writes (e.g. `git archive`).

use std::io::{self, Read};

use tar::{EntryType, Header};

const BLOCK: usize = 512;
/// Longest path or link name we accept (PATH_MAX).
pub const MAX_NAME: usize = 4096;
/// Largest pax extended header (xattrs included).
const MAX_PAX: u64 = 1 << 20;
/// Most regions in a sparse map.
const MAX_SPARSE_REGIONS: usize = 1 << 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
}

/// One archive member with every extension already folded in.
#[derive(Debug)]
pub struct Entry {
    pub path: Vec<u8>,
    pub link: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: (i64, u32),
    pub dev: (u32, u32),
    /// The file's logical size (a sparse file's real size).
    pub size: u64,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// For sparse files: (offset, length) data regions, read in order from the data.
    pub sparse: Option<Vec<(u64, u64)>>,
}

/// What a tar reader reads from: any `Read`, plus a cheaper skip where the source can
/// seek (indexing an archive file must not read every layer just to find the next header).
pub trait TarSource: Read {
    /// Skips `n` bytes; returns how many were skipped (fewer only at EOF).
    fn skip_bytes(&mut self, n: u64) -> io::Result<u64> {
        io::copy(&mut self.take(n), &mut io::sink())
    }
}

impl TarSource for &[u8] {}

pub struct TarReader<R> {
    r: R,
    /// Bytes of the current entry's data not yet consumed.
    remaining: u64,
    /// Padding after the current entry's data.
    padding: u64,
    ended: bool,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Vec<(Vec<u8>, Vec<u8>)>,
    pax_bytes: u64,
}

impl<R: TarSource> TarReader<R> {
    pub fn new(r: R) -> Self {
        TarReader { r, remaining: 0, padding: 0, ended: false }
    }

    /// The underlying reader.
    pub fn inner(&self) -> &R {
        &self.r
    }

    /// Reads the next member's header, skipping what is left of the previous one.
    /// `Ok(None)` at the end-of-archive marker or a clean EOF between members.
    pub fn next_entry(&mut self) -> io::Result<Option<Entry>> {
        if self.ended {
            return Ok(None);
        }
        self.skip(self.remaining + self.padding)?;
        self.remaining = 0;
        self.padding = 0;
        let mut pending = Pending::default();
        loop {
            let mut block = [0u8; BLOCK];
            if !self.read_block(&mut block)? {
                self.ended = true;
                if pending.long_name.is_some() || pending.long_link.is_some() || !pending.pax.is_empty() {
                    return Err(invalid("archive ends after an extension header"));
                }
                return Ok(None);
            }
            if block.iter().all(|&b| b == 0) {
                // End-of-archive: two zero blocks (a single one is accepted, as GNU tar does).
                self.ended = true;
                return Ok(None);
            }
            let header = Header::from_byte_slice(&block);
            verify_checksum(&block)?;
            let size = numeric(&header.as_old().size)?;
            match header.entry_type() {
                EntryType::GNULongName => pending.long_name = Some(self.read_name(size)?),
                EntryType::GNULongLink => pending.long_link = Some(self.read_name(size)?),
                EntryType::XHeader => {
                    let data = self.read_small(size, MAX_PAX, "pax header")?;
                    // Consecutive `x` headers all apply to the next member and pile up in
                    // `pending`: bound them together, not only one by one.
                    pending.pax_bytes += size;
                    if pending.pax_bytes > MAX_PAX {
                        return Err(invalid(format!("pax headers of more than {MAX_PAX} bytes for one entry")));
                    }
                    pending.pax.extend(parse_pax(&data)?);
                }
                EntryType::XGlobalHeader => self.skip(padded(size))?,
                _ => return self.member(header, size, pending).map(Some),
            }
        }
    }

    fn member(&mut self, header: &Header, data_size: u64, p: Pending) -> io::Result<Entry> {
        let et = header.entry_type();
        let kind = match et {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Kind::File,
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink,
            EntryType::Link => Kind::Hardlink,
            EntryType::Char => Kind::Char,
            EntryType::Block => Kind::Block,
            EntryType::Fifo => Kind::Fifo,
            other => return Err(invalid(format!("unsupported tar entry type {:?}", other.as_byte() as char))),
        };
        let mut e = Entry {
            path: p.long_name.unwrap_or_else(|| header.path_bytes().into_owned()),
            link: p.long_link.unwrap_or_else(|| header.link_name_bytes().map(|l| l.into_owned()).unwrap_or_default()),
            kind,
            // Numeric fields through our own parser: empty fields (some writers leave
            // uid/gid blank) read as 0 instead of failing the whole archive.
            mode: numeric(&header.as_old().mode)? as u32 & 0o7777,
            uid: numeric(&header.as_old().uid)?,
            gid: numeric(&header.as_old().gid)?,
            mtime: (numeric(&header.as_old().mtime)?.min(i64::MAX as u64) as i64, 0),
            dev: (0, 0),
            size: data_size,
            xattrs: Vec::new(),
            sparse: None,
        };
        if matches!(kind, Kind::Char | Kind::Block) {
            e.dev = (header.device_major()?.unwrap_or(0), header.device_minor()?.unwrap_or(0));
        }
        if matches!(kind, Kind::Dir | Kind::Symlink | Kind::Hardlink | Kind::Char | Kind::Block | Kind::Fifo) {
            // Only regular files carry data; anything else is skipped, never interpreted.
            e.size = 0;
        }
        let mut gnu_sparse = (None, None, None, None); // major, minor, name, realsize
        let mut size_override = None;
        for (k, v) in p.pax {
            match k.as_slice() {
                b"path" => e.path = v,
                b"linkpath" => e.link = v,
                b"uid" => e.uid = pax_num(&k, &v)?,
                b"gid" => e.gid = pax_num(&k, &v)?,
                b"size" => size_override = Some(pax_num(&k, &v)?),
                b"mtime" => e.mtime = pax_time(&v)?,
                b"GNU.sparse.major" => gnu_sparse.0 = Some(pax_num(&k, &v)?),
                b"GNU.sparse.minor" => gnu_sparse.1 = Some(pax_num(&k, &v)?),
                b"GNU.sparse.name" => gnu_sparse.2 = Some(v),
                b"GNU.sparse.realsize" | b"GNU.sparse.size" => gnu_sparse.3 = Some(pax_num(&k, &v)?),
                _ => {
                    if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                        e.xattrs.push((name.to_vec(), v));
                    }
                }
            }
        }
        let stored = size_override.unwrap_or(data_size);
        if kind == Kind::File {
            e.size = stored;
        }
        if e.path.len() > MAX_NAME || e.link.len() > MAX_NAME {
            return Err(invalid("tar entry name longer than 4096 bytes"));
        }
        // Data framing: regular files (and GNU sparse) have `stored` bytes of data.
        self.remaining = if kind == Kind::File { stored } else { 0 };
        self.padding = padded(self.remaining) - self.remaining;
        if kind == Kind::File {
            if et == EntryType::GNUSparse {
                e.sparse = Some(self.gnu_old_sparse_map(header)?);
                e.size = header.as_gnu().ok_or_else(|| invalid("sparse entry without gnu header"))?.real_size()?;
            } else if let (Some(1), Some(0)) = (gnu_sparse.0, gnu_sparse.1) {
                if let Some(name) = gnu_sparse.2 {
                    e.path = name;
                }
                e.size = gnu_sparse.3.ok_or_else(|| invalid("pax sparse 1.0 entry without realsize"))?;
                e.sparse = Some(self.pax_sparse_map()?);
            } else if gnu_sparse.0.is_some() || gnu_sparse.3.is_some() {
                return Err(invalid("unsupported GNU sparse format (only old GNU and pax 1.0)"));
            }
            if let Some(map) = &e.sparse {
                let mut end = 0u64;
                let mut total = 0u64;
                for &(off, len) in map {
                    if off < end || off.checked_add(len).is_none_or(|x| x > e.size) {
                        return Err(invalid("sparse map regions overlap or exceed the file size"));
                    }
                    end = off + len;
                    total += len;
                }
                if total != self.remaining {
                    return Err(invalid("sparse map does not match the stored data size"));
                }
            }
        }
        Ok(e)
    }

    fn gnu_old_sparse_map(&mut self, header: &Header) -> io::Result<Vec<(u64, u64)>> {
        let gnu = header.as_gnu().ok_or_else(|| invalid("sparse entry without gnu header"))?;
        let mut map = Vec::new();
        for s in &gnu.sparse {
            if !s.is_empty() {
                map.push((s.offset()?, s.length()?));
            }
        }
        let mut extended = gnu.is_extended();
        while extended {
            let mut block = [0u8; BLOCK];
            if !self.read_block(&mut block)? {
                return Err(invalid("archive truncated in a sparse header"));
            }
            extended = parse_ext_sparse(&block, &mut map)?;
            if map.len() > MAX_SPARSE_REGIONS {
                return Err(invalid("sparse map too large"));
            }
        }
        Ok(map)
    }

    /// GNU sparse 1.0: the map is a text prefix of the data, padded to a block.
    fn pax_sparse_map(&mut self) -> io::Result<Vec<(u64, u64)>> {
        let mut buf = Vec::new();
        let mut next_number = |this: &mut Self| -> io::Result<u64> {
            loop {
                if let Some(i) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    return parse_dec(&line[..line.len() - 1]).ok_or_else(|| invalid("bad sparse map number"));
                }
                if buf.len() > 64 {
                    return Err(invalid("bad sparse map"));
                }
                let mut block = [0u8; BLOCK];
                if this.remaining < BLOCK as u64 || !this.read_block(&mut block)? {
                    return Err(invalid("archive truncated in a sparse map"));
                }
                this.remaining -= BLOCK as u64;
                buf.extend_from_slice(&block);
            }
        };
        let n = next_number(self)? as usize;
        if n > MAX_SPARSE_REGIONS {
            return Err(invalid("sparse map too large"));
        }
        let mut map = Vec::with_capacity(n);
        for _ in 0..n {
            let off = next_number(self)?;
            let len = next_number(self)?;
            map.push((off, len));
        }
        Ok(map)
    }

    /// Reads data of the current member; 0 at its end.
    pub fn read_data(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.remaining.min(usize::MAX as u64) as usize);
        let n = self.r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "archive truncated inside a file's data"));
        }
        self.remaining -= n as u64;
        Ok(n)
    }

    pub fn data_remaining(&self) -> u64 {
        self.remaining
    }

    fn read_block(&mut self, block: &mut [u8; BLOCK]) -> io::Result<bool> {
        let mut got = 0;
        while got < BLOCK {
            match self.r.read(&mut block[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "archive truncated inside a header")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn skip(&mut self, n: u64) -> io::Result<()> {
        let copied = self.r.skip_bytes(n)?;
        if copied != n {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "archive truncated inside a file's data"));
        }
        Ok(())
    }

    fn read_small(&mut self, size: u64, max: u64, what: &str) -> io::Result<Vec<u8>> {
        if size > max {
            return Err(invalid(format!("{what} of {size} bytes exceeds the limit of {max}")));
        }
        let mut data = vec![0u8; size as usize];
        self.r.read_exact(&mut data).map_err(|_| invalid(format!("archive truncated inside a {what}")))?;
        self.skip(padded(size) - size)?;
        Ok(data)
    }

    fn read_name(&mut self, size: u64) -> io::Result<Vec<u8>> {
        let mut name = self.read_small(size, MAX_NAME as u64 + 1, "long name")?;
        while name.last() == Some(&0) {
            name.pop();
        }
        Ok(name)
    }
}

/// A GNU sparse extension block: 21 (offset, length) pairs of 12-byte numeric fields,
/// then the `isextended` flag at byte 504.
fn parse_ext_sparse(block: &[u8; BLOCK], map: &mut Vec<(u64, u64)>) -> io::Result<bool> {
    for i in 0..21 {
        let at = i * 24;
        let (off, len) = (numeric(&block[at..at + 12])?, numeric(&block[at + 12..at + 24])?);
        if off != 0 || len != 0 {
            map.push((off, len));
        }
    }
    Ok(block[504] != 0)
}

/// A tar numeric field: octal digits padded with spaces/NULs, or base-256 (high bit set).
fn numeric(f: &[u8]) -> io::Result<u64> {
    if f.first().is_some_and(|&b| b & 0x80 != 0) {
        let mut v = u64::from(f[0] & 0x7f);
        for &b in &f[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or_else(|| invalid("numeric field overflow"))?;
        }
        return Ok(v);
    }
    let digits: Vec<u8> =
        f.iter().copied().skip_while(|&b| b == b' ').take_while(|&b| (b'0'..=b'7').contains(&b)).collect();
    digits
        .iter()
        .try_fold(0u64, |acc, &b| acc.checked_mul(8).map(|a| a + u64::from(b - b'0')))
        .ok_or_else(|| invalid("numeric field overflow"))
}

/// `n` rounded up to whole blocks; saturated, so that a size no stream can hold (a header
/// may claim up to 2^64 - 1 bytes) fails as a truncated archive instead of wrapping to 0.
fn padded(n: u64) -> u64 {
    n.div_ceil(BLOCK as u64).saturating_mul(BLOCK as u64)
}

fn verify_checksum(block: &[u8; BLOCK]) -> io::Result<()> {
    let header = Header::from_byte_slice(block);
    let want = header.cksum().map_err(|_| invalid("tar header checksum field is malformed (not a tar archive?)"))?;
    let sum: u32 =
        block.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u32::from(b) }).sum();
    if sum != want {
        return Err(invalid("tar header checksum mismatch (not a tar archive, or corrupt)"));
    }
    Ok(())
}

fn parse_dec(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

fn pax_num(k: &[u8], v: &[u8]) -> io::Result<u64> {
    parse_dec(v).ok_or_else(|| invalid(format!("bad pax number for {}", String::from_utf8_lossy(k))))
}

/// `secs[.frac]`, possibly negative.
fn pax_time(v: &[u8]) -> io::Result<(i64, u32)> {
    let bad = || invalid("bad pax mtime");
    let (neg, v) = match v.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let (secs, frac) = match v.iter().position(|&b| b == b'.') {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, &b""[..]),
    };
    let secs = parse_dec(secs).filter(|&s| s <= i64::MAX as u64).ok_or_else(bad)? as i64;
    let mut nanos = 0u32;
    for i in 0..9 {
        let d = frac.get(i).copied().unwrap_or(b'0');
        if !d.is_ascii_digit() {
            return Err(bad());
        }
        nanos = nanos * 10 + u32::from(d - b'0');
    }
    if neg {
        // -1.5 means 1.5 s before the epoch: secs -2, nanos 0.5e9.
        if nanos > 0 {
            return Ok((-secs - 1, 1_000_000_000 - nanos));
        }
        return Ok((-secs, 0));
    }
    Ok((secs, nanos))
}

/// Parses `LEN key=value\n` records (POSIX pax).
fn parse_pax(data: &[u8]) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let sp = rest.iter().position(|&b| b == b' ').ok_or_else(|| invalid("malformed pax record"))?;
        let len = parse_dec(&rest[..sp]).ok_or_else(|| invalid("malformed pax record length"))? as usize;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(invalid("malformed pax record"));
        }
        let rec = &rest[sp + 1..len - 1];
        let eq = rec.iter().position(|&b| b == b'=').ok_or_else(|| invalid("malformed pax record"))?;
        out.push((rec[..eq].to_vec(), rec[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records() {
        let recs = parse_pax(b"20 path=a/very/long\n25 SCHILY.xattr.user.x=1\n").unwrap();
        assert_eq!(recs[0], (b"path".to_vec(), b"a/very/long".to_vec()));
        assert_eq!(recs[1], (b"SCHILY.xattr.user.x".to_vec(), b"1".to_vec()));
        assert!(parse_pax(b"99 path=x\n").is_err());
        assert!(parse_pax(b"3 x\n").is_err());
    }

    #[test]
    fn pax_times() {
        assert_eq!(pax_time(b"1700000000.5").unwrap(), (1_700_000_000, 500_000_000));
        assert_eq!(pax_time(b"-1.5").unwrap(), (-2, 500_000_000));
        assert_eq!(pax_time(b"12").unwrap(), (12, 0));
        assert!(pax_time(b"1x").is_err());
    }
}
