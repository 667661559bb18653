//! The local transports: `pull oci:…|oci-archive:…|docker-archive:…`, `load -i FILE`
//! (format detected from content) and `import FILE` (a rootfs tarball), each under the
//! store's shared lock. Compressed archives are spooled (decompressed, bounded) into tmp/.

use super::{archive, docker, oci, platform, rootfs, source_err, ImageError, Imported, Result};

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use crate::layer::Compression;
use crate::reference::Reference;
use crate::store::images::Platform;
use crate::store::Store;

/// A name given with --tag (or to `import`) must be a tag: a digest names content, and a
/// ref holding one could never be found again.
fn check_tag(tag: Option<&Reference>) -> Result<()> {
    match tag {
        Some(t) if t.digest().is_some() => Err(ImageError::Reference(crate::reference::ReferenceError::Invalid(
            t.to_string(),
            "a tag cannot contain a digest",
        ))),
        _ => Ok(()),
    }
}

/// `coracle pull SOURCE` for the local transports.
/// `platform` picks from multi-platform OCI indexes (default: this host's).
pub fn pull(
    store: &Store,
    source: &str,
    tag: Option<&Reference>,
    platform: Option<&Platform>,
) -> Result<Vec<Imported>> {
    check_tag(tag)?;
    let (transport, rest) = source.split_once(':').ok_or_else(|| ImageError::UnknownTransport(source.to_owned()))?;
    // Like skopeo: the path ends at the first ':'; what follows selects an image.
    let (path, selector) = match rest.split_once(':') {
        Some((p, s)) if !s.is_empty() => (p, Some(s)),
        _ => (rest.trim_end_matches(':'), None),
    };
    if path.is_empty() {
        return Err(ImageError::Source { source_name: format!("source {source:?}"), why: "names no path".into() });
    }
    let want = platform.cloned().unwrap_or_else(platform::host);
    if platform.is_some() && transport == "docker-archive" {
        return Err(source_err(
            source,
            "--platform does not apply: a docker-save archive holds single-platform images",
        ));
    }
    let _hold = store.lock_shared()?;
    let imported = match transport {
        "oci" => oci::import_dir(store, Path::new(path), selector, tag, &want)?,
        "oci-archive" => {
            let name = format!("oci-archive:{path}");
            let (index, _spool) = open_archive(store, &name, Path::new(path))?;
            oci::import_archive(store, index, Path::new(path), name, selector, tag, &want)?
        }
        "docker-archive" => {
            let sel = docker::parse_selector(source, selector)?;
            let name = format!("docker-archive:{path}");
            let (index, _spool) = open_archive(store, &name, Path::new(path))?;
            docker::import_archive(store, &index, &name, &sel, tag)?
        }
        _ => return Err(ImageError::UnknownTransport(source.to_owned())),
    };
    Ok(imported)
}

/// `coracle load -i FILE`: a docker-save or OCI archive, told apart by content; `-` reads
/// standard input. Every image in the archive is imported.
pub fn load(store: &Store, file: &str, tag: Option<&Reference>) -> Result<Vec<Imported>> {
    check_tag(tag)?;
    let _hold = store.lock_shared()?;
    let name = if file == "-" { "stdin".to_owned() } else { file.to_owned() };
    let (index, _spool) = if file == "-" {
        let spool = spool(store, &name, io::stdin())?;
        let f = File::open(&spool).map_err(|e| source_err(&name, e))?;
        (
            archive::TarIndex::build(f).map_err(|e| source_err(&name, format!("not a readable tar archive: {e}")))?,
            Some(spool),
        )
    } else {
        open_archive(store, &name, Path::new(file))?
    };
    if index.contains("manifest.json") {
        docker::import_archive(store, &index, &name, &docker::Selector::All, tag)
    } else if index.contains("oci-layout") {
        oci::import_archive(store, index, Path::new(file), name, None, tag, &platform::host())
    } else {
        Err(source_err(&name, "neither a docker-save archive (no manifest.json) nor an OCI archive (no oci-layout)"))
    }
}

/// `coracle import`: a rootfs tarball from a file or `-`.
pub fn import_rootfs(store: &Store, file: &str, name: Option<&Reference>) -> Result<Imported> {
    check_tag(name)?;
    let _hold = store.lock_shared()?;
    if file == "-" {
        return rootfs::import(store, io::stdin(), name);
    }
    let f = File::open(file).map_err(|e| source_err(file, e))?;
    rootfs::import(store, f, name)
}

/// Opens an archive for random access. A compressed one (`docker save | gzip`) is first
/// decompressed into the store's tmp/ (returned so that it lives as long as the index).
fn open_archive(store: &Store, name: &str, path: &Path) -> Result<(archive::TarIndex, Option<tempfile::TempPath>)> {
    let mut f = File::open(path).map_err(|e| source_err(name, e))?;
    let mut head = [0u8; 8];
    let n = f.read(&mut head).map_err(|e| source_err(name, e))?;
    let compression = Compression::sniff(&head[..n]).map_err(|e| source_err(name, e))?;
    if compression == Compression::None {
        let f = File::open(path).map_err(|e| source_err(name, e))?;
        let index =
            archive::TarIndex::build(f).map_err(|e| source_err(name, format!("not a readable tar archive: {e}")))?;
        return Ok((index, None));
    }
    let f = File::open(path).map_err(|e| source_err(name, e))?;
    let spool = spool(store, name, f)?;
    let index = archive::TarIndex::build(File::open(&spool).map_err(|e| source_err(name, e))?)
        .map_err(|e| source_err(name, format!("not a readable tar archive: {e}")))?;
    Ok((index, Some(spool)))
}

/// Copies `input` (decompressing gzip/zstd) into a temporary file in the store.
fn spool(store: &Store, name: &str, input: impl Read) -> Result<tempfile::TempPath> {
    let compressed = std::cell::Cell::new(0u64);
    let input = Counted { inner: input, n: &compressed };
    let mut buffered = io::BufReader::with_capacity(1 << 20, input);
    let head = io::BufRead::fill_buf(&mut buffered).map_err(|e| source_err(name, e))?;
    let compression = Compression::sniff(head).map_err(|e| source_err(name, e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix("spool-")
        .tempfile_in(store.root().join("tmp"))
        .map_err(|e| source_err(name, format!("create temporary file: {e}")))?;
    // The layer pipeline's decompression-bomb rule applies here too: a gzipped `docker
    // save` of zeros must not fill the store's filesystem before it is even indexed.
    let mut out = BombCheck { out: tmp.as_file_mut(), written: 0, compressed: &compressed, bomb: false };
    let copied = match compression {
        Compression::None => io::copy(&mut buffered, &mut out),
        Compression::Gzip => io::copy(&mut flate2::bufread::MultiGzDecoder::new(buffered), &mut out),
        Compression::Zstd => {
            zstd::stream::read::Decoder::with_buffer(buffered).and_then(|mut d| io::copy(&mut d, &mut out))
        }
    };
    if out.bomb {
        return Err(source_err(name, crate::layer::LayerError::Bomb));
    }
    copied.map_err(|e| source_err(name, format!("read archive: {e}")))?;
    Ok(tmp.into_temp_path())
}

/// Counts the bytes read from the (compressed) input.
struct Counted<'a, R> {
    inner: R,
    n: &'a std::cell::Cell<u64>,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n.set(self.n.get() + k as u64);
        Ok(k)
    }
}

/// Writes the decompressed archive, failing once it is a decompression bomb.
struct BombCheck<'a> {
    out: &'a mut File,
    written: u64,
    compressed: &'a std::cell::Cell<u64>,
    bomb: bool,
}

impl io::Write for BombCheck<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if crate::layer::is_bomb(self.written + buf.len() as u64, self.compressed.get()) {
            self.bomb = true;
            return Err(io::Error::other("decompression bomb"));
        }
        let n = self.out.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
