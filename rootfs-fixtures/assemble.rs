//! Assembles fixture images for tests and the demo: layer tarballs built entry by entry
//! (including hostile ones), OCI layouts, OCI archives, docker-save archives (legacy and
//! Docker 25+ layouts) and multi-platform indexes. Shared by `tests/util` and
//! `examples/fixture.rs` through `#[path]`; it depends only on crates coracle already has.

#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const FIXED_MTIME: u64 = 1_700_000_000;

pub fn sha256(data: &[u8]) -> String {
    let h = Sha256::digest(data);
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

pub fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

impl Comp {
    pub fn media_type(self) -> &'static str {
        match self {
            Comp::None => "application/vnd.oci.image.layer.v1.tar",
            Comp::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Comp::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
    pub fn apply(self, data: &[u8]) -> Vec<u8> {
        match self {
            Comp::None => data.to_vec(),
            Comp::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Comp::Zstd => zstd::stream::encode_all(data, 3).unwrap(),
        }
    }
}

/// Builds one layer tarball entry by entry.
pub struct LayerBuilder {
    b: tar::Builder<Vec<u8>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerBuilder {
    pub fn new() -> Self {
        let mut b = tar::Builder::new(Vec::new());
        b.mode(tar::HeaderMode::Complete);
        LayerBuilder { b }
    }

    fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_size(size);
        h.set_mtime(FIXED_MTIME);
        h
    }

    /// Appends an entry with the name written raw into the header (no sanitising: this is
    /// how hostile archives are made). Long names go through a GNU long-name entry.
    pub fn raw(mut self, mut h: tar::Header, name: &str, link: Option<&str>, data: &[u8]) -> Self {
        if let Some(l) = link {
            self.b.append_link(&mut h, name, l).unwrap();
            return self;
        }
        if name.len() < 100 {
            let bytes = name.as_bytes();
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name = [0; 100];
            gnu.name[..bytes.len()].copy_from_slice(bytes);
            h.set_cksum();
            self.b.append(&h, data).unwrap();
        } else {
            self.b.append_data(&mut h, name, data).unwrap();
        }
        self
    }

    pub fn dir(self, path: &str, mode: u32) -> Self {
        let h = Self::header(tar::EntryType::Directory, mode, 0, 0, 0);
        self.raw(h, path, None, &[])
    }

    pub fn file(self, path: &str, mode: u32, data: &[u8]) -> Self {
        self.file_owned(path, mode, 0, 0, data)
    }

    pub fn file_owned(self, path: &str, mode: u32, uid: u64, gid: u64, data: &[u8]) -> Self {
        let h = Self::header(tar::EntryType::Regular, mode, uid, gid, data.len() as u64);
        self.raw(h, path, None, data)
    }

    pub fn symlink(self, path: &str, target: &str) -> Self {
        let h = Self::header(tar::EntryType::Symlink, 0o777, 0, 0, 0);
        self.raw(h, path, Some(target), &[])
    }

    pub fn hardlink(self, path: &str, target: &str) -> Self {
        let h = Self::header(tar::EntryType::Link, 0o644, 0, 0, 0);
        self.raw(h, path, Some(target), &[])
    }

    pub fn char_dev(self, path: &str, major: u32, minor: u32) -> Self {
        let mut h = Self::header(tar::EntryType::Char, 0o666, 0, 0, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.raw(h, path, None, &[])
    }

    pub fn fifo(self, path: &str) -> Self {
        let h = Self::header(tar::EntryType::Fifo, 0o600, 0, 0, 0);
        self.raw(h, path, None, &[])
    }

    /// An OCI whiteout for `path` (`dir/.wh.name`).
    pub fn whiteout(self, path: &str) -> Self {
        let (dir, name) = path.rsplit_once('/').map_or(("", path), |(d, n)| (d, n));
        let wh = if dir.is_empty() { format!(".wh.{name}") } else { format!("{dir}/.wh.{name}") };
        self.file(&wh, 0o644, b"")
    }

    /// An OCI opaque marker in `dir`.
    pub fn opaque(self, dir: &str) -> Self {
        self.file(&format!("{dir}/.wh..wh..opq"), 0o644, b"")
    }

    /// A file with pax extended attributes (`SCHILY.xattr.*`).
    pub fn file_with_xattrs(mut self, path: &str, mode: u32, data: &[u8], xattrs: &[(&str, &[u8])]) -> Self {
        let pax: Vec<(String, &[u8])> = xattrs.iter().map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v)).collect();
        self.b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), *v))).unwrap();
        self.file(path, mode, data)
    }

    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

/// A blob with its digest.
#[derive(Clone, Debug)]
pub struct Blob {
    pub digest: String,
    pub bytes: Vec<u8>,
    pub media_type: String,
}

impl Blob {
    pub fn new(bytes: Vec<u8>, media_type: &str) -> Blob {
        Blob { digest: sha256(&bytes), bytes, media_type: media_type.into() }
    }
    pub fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len()})
    }
}

/// An image to assemble.
pub struct Image {
    /// Uncompressed layer tarballs and how to compress each.
    pub layers: Vec<(Vec<u8>, Comp)>,
    /// The `config` section of the image config (Env, Cmd, …).
    pub runtime: Value,
    pub arch: String,
    pub variant: Option<String>,
}

impl Image {
    pub fn new(layers: Vec<(Vec<u8>, Comp)>) -> Image {
        Image {
            layers,
            runtime: json!({"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}),
            arch: "amd64".into(),
            variant: None,
        }
    }
}

/// An assembled image: every blob, plus what refers to them.
pub struct Built {
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<Blob>,
    pub tars: Vec<Vec<u8>>,
    pub diff_ids: Vec<String>,
    pub arch: String,
    pub variant: Option<String>,
}

pub fn build(img: &Image) -> Built {
    let diff_ids: Vec<String> = img.layers.iter().map(|(t, _)| sha256(t)).collect();
    let layers: Vec<Blob> = img.layers.iter().map(|(t, c)| Blob::new(c.apply(t), c.media_type())).collect();
    let mut cfg = json!({
        "created": "2023-11-14T22:13:20Z",
        "architecture": img.arch,
        "os": "linux",
        "config": img.runtime,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": img.layers.iter().map(|_| json!({"created_by": "coracle fixture"})).collect::<Vec<_>>(),
    });
    if let Some(v) = &img.variant {
        cfg["variant"] = json!(v);
    }
    let config = Blob::new(serde_json::to_vec(&cfg).unwrap(), OCI_CONFIG);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    let manifest = Blob::new(serde_json::to_vec(&manifest).unwrap(), OCI_MANIFEST);
    Built {
        manifest,
        config,
        layers,
        tars: img.layers.iter().map(|(t, _)| t.clone()).collect(),
        diff_ids,
        arch: img.arch.clone(),
        variant: img.variant.clone(),
    }
}

pub fn write_blob(dir: &Path, b: &Blob) {
    let p = dir.join("blobs/sha256");
    fs::create_dir_all(&p).unwrap();
    fs::write(p.join(hex(&b.digest)), &b.bytes).unwrap();
}

fn write_layout_files(dir: &Path, manifests: Vec<Value>) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// An OCI layout holding `images`, each with an optional ref name.
pub fn write_oci_layout(dir: &Path, images: &[(&Built, Option<&str>)]) {
    let mut manifests = Vec::new();
    for (b, name) in images {
        for blob in b.layers.iter().chain([&b.config, &b.manifest]) {
            write_blob(dir, blob);
        }
        let mut d = b.manifest.descriptor();
        if let Some(n) = name {
            d["annotations"] = json!({"org.opencontainers.image.ref.name": n});
        }
        manifests.push(d);
    }
    write_layout_files(dir, manifests);
}

/// An OCI layout whose one entry is a multi-platform index over `images`.
pub fn write_multiarch_layout(dir: &Path, images: &[&Built], name: &str) -> Blob {
    let mut entries = Vec::new();
    for b in images {
        for blob in b.layers.iter().chain([&b.config, &b.manifest]) {
            write_blob(dir, blob);
        }
        let mut d = b.manifest.descriptor();
        let mut p = json!({"architecture": b.arch, "os": "linux"});
        if let Some(v) = &b.variant {
            p["variant"] = json!(v);
        }
        d["platform"] = p;
        entries.push(d);
    }
    let index = Blob::new(
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})).unwrap(),
        OCI_INDEX,
    );
    write_blob(dir, &index);
    let mut d = index.descriptor();
    d["annotations"] = json!({"org.opencontainers.image.ref.name": name});
    write_layout_files(dir, vec![d]);
    index
}

/// Tars up a directory (an OCI archive from an OCI layout).
pub fn tar_dir(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(fs::File::create(out).unwrap());
    b.mode(tar::HeaderMode::Deterministic);
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

/// Appends in-memory files to a tar builder.
fn add(b: &mut tar::Builder<fs::File>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(FIXED_MTIME);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, path, data).unwrap();
}

/// A legacy `docker save` archive: `<id>/layer.tar` (uncompressed), `<hex>.json`
/// configs, `manifest.json` and `repositories`.
pub fn write_docker_archive(out: &Path, images: &[(&Built, &[&str])]) {
    let mut b = tar::Builder::new(fs::File::create(out).unwrap());
    let mut entries = Vec::new();
    let mut written = std::collections::HashSet::new();
    for (img, tags) in images {
        let cfg_name = format!("{}.json", hex(&img.config.digest));
        add(&mut b, &cfg_name, &img.config.bytes);
        let mut layers = Vec::new();
        for tar in &img.tars {
            let id = hex(&sha256(tar)).to_owned();
            let path = format!("{id}/layer.tar");
            if written.insert(id.clone()) {
                add(&mut b, &format!("{id}/VERSION"), b"1.0");
                add(&mut b, &path, tar);
            }
            layers.push(path);
        }
        entries.push(json!({"Config": cfg_name, "RepoTags": tags, "Layers": layers}));
    }
    add(&mut b, "manifest.json", &serde_json::to_vec(&entries).unwrap());
    b.finish().unwrap();
}

/// A Docker 25+ `docker save` archive: an OCI layout plus `manifest.json` pointing into
/// `blobs/sha256/` (uncompressed layers).
pub fn write_docker_oci_archive(out: &Path, img: &Built, tags: &[&str]) {
    let mut b = tar::Builder::new(fs::File::create(out).unwrap());
    let layers: Vec<Blob> =
        img.tars.iter().map(|t| Blob::new(t.clone(), "application/vnd.oci.image.layer.v1.tar")).collect();
    let manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": img.config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    let manifest = Blob::new(serde_json::to_vec(&manifest).unwrap(), OCI_MANIFEST);
    for blob in layers.iter().chain([&img.config, &manifest]) {
        add(&mut b, &format!("blobs/sha256/{}", hex(&blob.digest)), &blob.bytes);
    }
    add(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let mut d = manifest.descriptor();
    d["annotations"] = json!({"io.containerd.image.name": tags.first().copied().unwrap_or_default()});
    add(
        &mut b,
        "index.json",
        &serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [d]})).unwrap(),
    );
    let entry = json!([{
        "Config": format!("blobs/sha256/{}", hex(&img.config.digest)),
        "RepoTags": tags,
        "Layers": layers.iter().map(|l| format!("blobs/sha256/{}", hex(&l.digest))).collect::<Vec<_>>(),
    }]);
    add(&mut b, "manifest.json", &serde_json::to_vec(&entry).unwrap());
    b.finish().unwrap();
}

/// The default fixture rootfs as one layer: the base tree from `rootfs-fixtures/base`,
/// the probe at /bin/probe, and busybox (with /bin/sh) when given.
pub fn default_rootfs(fixtures: &Path, probe: &Path, busybox: Option<&Path>) -> Vec<u8> {
    let mut l = LayerBuilder::new()
        .dir("bin", 0o755)
        .dir("etc", 0o755)
        .dir("tmp", 0o1777)
        .dir("root", 0o700)
        .dir("home", 0o755)
        .dir("home/app", 0o755);
    for entry in fs::read_dir(fixtures.join("base/etc")).unwrap() {
        let e = entry.unwrap();
        let name = format!("etc/{}", e.file_name().to_string_lossy());
        l = l.file(&name, 0o644, &fs::read(e.path()).unwrap());
    }
    l = l.file("bin/probe", 0o755, &fs::read(probe).unwrap());
    if let Some(bb) = busybox {
        l = l.file("bin/busybox", 0o755, &fs::read(bb).unwrap()).symlink("bin/sh", "busybox");
    }
    l.finish()
}
