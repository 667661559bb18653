//! Layer blobs in, extracted overlayfs-format directories out: compression sniffing, the
//! two-thread streaming pipeline, and the bounds that keep hostile blobs from exhausting
//! memory or disk. Store bookkeeping (tmp dirs, locks, commit) lives in `store::layers`.

pub mod apply;
pub mod path;
pub mod tar;

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};

use crate::digest::{Digest, Hasher};

pub use apply::{ApplyError, Stats};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Decided from the content, not the media type: registries and tools mislabel.
    pub fn sniff(head: &[u8]) -> Result<Self, LayerError> {
        match head {
            [0x1f, 0x8b, ..] => Ok(Compression::Gzip),
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Ok(Compression::Zstd),
            [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Err(LayerError::Unsupported("xz")),
            [b'B', b'Z', b'h', ..] => Err(LayerError::Unsupported("bzip2")),
            _ => Ok(Compression::None),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "tar",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("read: {0}")]
    Read(io::Error),
    #[error("{0} compression is not supported (gzip, zstd or plain tar)")]
    Unsupported(&'static str),
    #[error("{0} stream is corrupt or truncated: {1}")]
    Decompress(&'static str, io::Error),
    #[error("blob is larger than the {0} bytes its descriptor declares")]
    TooLarge(u64),
    #[error("decompresses to more than {MAX_RATIO}x its compressed size and over 1 GiB (decompression bomb?)")]
    Bomb,
    #[error("the store's filesystem is nearly full ({0} bytes free): refusing to fill it")]
    NoSpace(u64),
    #[error("write blob copy: {0}")]
    BlobWrite(io::Error),
    #[error("extraction stopped")]
    Stopped,
    #[error("{0}")]
    Apply(#[from] ApplyError),
}

/// What one pass over a layer blob found.
#[derive(Debug, Clone)]
pub struct Unpacked {
    pub blob_digest: Digest,
    pub blob_size: u64,
    pub compression: Compression,
    pub diff_id: Digest,
    pub diff_size: u64,
    pub stats: Stats,
}

/// Uncompressed data may exceed this many times the compressed size only below 1 GiB.
pub const MAX_RATIO: u64 = 200;
const RATIO_FLOOR: u64 = 1 << 30;
const CHUNK: usize = 1 << 20;
const SPACE_CHECK_EVERY: u64 = 64 << 20;

/// The decompression-bomb rule, shared with archive spooling: over 1 GiB out and more than
/// [`MAX_RATIO`] times what came in so far.
pub fn is_bomb(decompressed: u64, compressed: u64) -> bool {
    decompressed > RATIO_FLOOR && decompressed / MAX_RATIO > compressed
}

/// Limits for one unpack.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The size the descriptor declares; reading more is an error.
    pub declared_size: Option<u64>,
    /// Free bytes to leave on the store's filesystem.
    pub reserve: u64,
}

/// Streams `src` once: copies it to `blob_out` (if given) while hashing it, decompresses,
/// hashes the tar stream (the diff-id) and extracts it into the empty directory `root`.
/// Decompression and hashing run on a second thread, extraction on this one.
pub fn unpack<R: Read + Send>(
    src: R,
    blob_out: Option<&mut File>,
    root: OwnedFd,
    limits: Limits,
) -> Result<Unpacked, LayerError> {
    let compressed = AtomicU64::new(0);
    let space_fd = root.try_clone().map_err(LayerError::Read)?;
    let (tx, rx) = sync_channel::<Vec<u8>>(4);
    let (ret_tx, ret_rx) = channel::<Vec<u8>>();
    std::thread::scope(|s| {
        let producer = s.spawn(|| produce(src, blob_out, &compressed, limits, space_fd, tx, ret_rx));
        let mut reader = ChannelReader { rx, cur: Vec::new(), pos: 0, ret: ret_tx };
        let applied = apply::apply(&mut tar::TarReader::new(&mut reader), root);
        let drained = match &applied {
            // Whatever follows the end-of-archive blocks is part of the diff-id too.
            Ok(_) => io::copy(&mut reader, &mut io::sink()).map(|_| ()),
            Err(_) => Ok(()),
        };
        drop(reader);
        let produced =
            producer.join().unwrap_or_else(|_| Err(LayerError::Read(io::Error::other("decompressor thread panicked"))));
        // The producer's error explains a consumer-side "stream ended" error, so it wins.
        // The producer's error explains a consumer-side "stream ended" error, so it wins,
        // unless the producer only stopped because the extractor had failed.
        let (compression, blob, diff) = match (produced, &applied) {
            (Err(LayerError::Stopped), Err(_)) => return Err(applied.map(|_| ()).unwrap_err().into()),
            (p, _) => p?,
        };
        let stats = applied?;
        drained.map_err(LayerError::Read)?;
        Ok(Unpacked { blob_digest: blob.0, blob_size: blob.1, compression, diff_id: diff.0, diff_size: diff.1, stats })
    })
}

type Produced = (Compression, (Digest, u64), (Digest, u64));

fn produce<R: Read>(
    src: R,
    blob_out: Option<&mut File>,
    counter: &AtomicU64,
    limits: Limits,
    space_fd: OwnedFd,
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    ret: Receiver<Vec<u8>>,
) -> Result<Produced, LayerError> {
    let tee = Tee { src, out: blob_out, hasher: Hasher::new(), counter, limit: limits.declared_size, write_err: None };
    let mut buffered = BufReader::with_capacity(CHUNK, tee);
    let streamed = stream(&mut buffered, counter, limits, space_fd, tx, ret);
    let tee = buffered.into_inner();
    match (streamed, tee.write_err) {
        // A failed copy into the store explains whatever error reading then reported.
        (_, Some(e)) => Err(LayerError::BlobWrite(e)),
        (Err(e), None) => Err(e),
        (Ok((compression, diff)), None) => Ok((compression, tee.hasher.finish(), diff)),
    }
}

/// Sniffs, decompresses, hashes and sends the tar stream; then reads the blob to its end.
fn stream<R: Read>(
    buffered: &mut BufReader<Tee<'_, R>>,
    counter: &AtomicU64,
    limits: Limits,
    space_fd: OwnedFd,
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    ret: Receiver<Vec<u8>>,
) -> Result<(Compression, (Digest, u64)), LayerError> {
    // classify: the first read may already pass the declared size (a blob with bytes
    // appended), which must read as "larger than declared", not as a bare read error.
    let compression = Compression::sniff(buffered.fill_buf().map_err(|e| classify(e, Compression::None))?)?;
    let mut dec: Box<dyn Read + '_> = match compression {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(&mut *buffered)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(&mut *buffered).map_err(LayerError::Read)?)
        }
        Compression::None => Box::new(&mut *buffered),
    };
    let mut diff = Hasher::new();
    let mut next_space_check = 0u64;
    loop {
        let mut buf = ret.try_recv().unwrap_or_default();
        buf.resize(CHUNK, 0);
        let n = read_full(&mut dec, &mut buf).map_err(|e| classify(e, compression))?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        diff.update(&buf);
        let total = diff.len();
        if is_bomb(total, counter.load(Ordering::Relaxed)) {
            return Err(LayerError::Bomb);
        }
        if total >= next_space_check {
            next_space_check = total + SPACE_CHECK_EVERY;
            if let Ok(st) = nix::sys::statvfs::fstatvfs(space_fd.as_fd()) {
                let free = st.blocks_available() * st.fragment_size();
                if free < limits.reserve {
                    return Err(LayerError::NoSpace(free));
                }
            }
        }
        if tx.send(buf).is_err() {
            // The extractor failed (its error is reported): read no further.
            return Err(LayerError::Stopped);
        }
    }
    drop(tx);
    drop(dec);
    // Bytes after the compressed stream's end still belong to the blob's digest.
    io::copy(buffered, &mut io::sink()).map_err(|e| classify(e, Compression::None))?;
    Ok((compression, diff.finish()))
}

fn classify(e: io::Error, c: Compression) -> LayerError {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<TooLarge>()) {
        Some(TooLarge(n)) => LayerError::TooLarge(*n),
        None if c == Compression::None => LayerError::Read(e),
        None => LayerError::Decompress(c.name(), e),
    }
}

#[derive(Debug)]
struct TooLarge(u64);
impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "blob larger than its declared {} bytes", self.0)
    }
}
impl std::error::Error for TooLarge {}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads the source, hashing every byte and copying it to the blob file.
struct Tee<'a, R> {
    src: R,
    out: Option<&'a mut File>,
    hasher: Hasher,
    counter: &'a AtomicU64,
    limit: Option<u64>,
    write_err: Option<io::Error>,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.src.read(buf)?;
        self.hasher.update(&buf[..n]);
        let total = self.counter.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if let Some(limit) = self.limit {
            if total > limit {
                return Err(io::Error::other(TooLarge(limit)));
            }
        }
        if let Some(out) = self.out.as_mut() {
            if let Err(e) = out.write_all(&buf[..n]) {
                let marker = io::Error::new(e.kind(), "write blob copy failed");
                self.write_err = Some(e);
                return Err(marker);
            }
        }
        Ok(n)
    }
}

impl tar::TarSource for &mut ChannelReader {}

/// The extractor's side of the pipeline: a `Read` over the producer's chunks, giving the
/// emptied buffers back for reuse.
struct ChannelReader {
    rx: Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    ret: Sender<Vec<u8>>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(next) => {
                    let old = std::mem::replace(&mut self.cur, next);
                    let _ = self.ret.send(old);
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
