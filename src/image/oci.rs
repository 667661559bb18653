//! OCI image layouts (image-spec image-layout.md), as a directory (`oci:DIR[:REF]`) or a
//! tar archive of one (`oci-archive:FILE[:REF]`).

use std::path::Path;

use serde::Deserialize;

use super::archive::TarIndex;
use super::import::{self, Imported};
use super::manifest::{self, Descriptor, Document, Index};
use super::source::{self, ArchiveSource, BlobSource, DirSource};
use super::{source_err, ImageError, Result};
use crate::reference::Reference;
use crate::store::blobs::MAX_DOCUMENT;
use crate::store::images::Platform;
use crate::store::Store;

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutFile {
    image_layout_version: String,
}

/// Parses `oci-layout` and `index.json` from their bytes.
fn parse_layout(name: &str, layout: &[u8], index: &[u8]) -> Result<Index> {
    let l: LayoutFile = serde_json::from_slice(layout).map_err(|e| source_err(name, format!("oci-layout: {e}")))?;
    if l.image_layout_version != "1.0.0" {
        return Err(source_err(name, format!("unsupported imageLayoutVersion {:?}", l.image_layout_version)));
    }
    // Parsed as any other document, so that an index.json that is also a manifest is
    // refused as ambiguous (CVE-2021-41190) instead of having its layers ignored.
    let idx = match manifest::parse(index, None) {
        Ok(Document::Index(idx)) => idx,
        Ok(Document::Manifest(..)) => return Err(source_err(name, "index.json is a manifest, not an image index")),
        Err(e) => return Err(source_err(name, format!("index.json: {e}"))),
    };
    if idx.manifests.is_empty() {
        return Err(source_err(name, "index.json lists no images"));
    }
    Ok(idx)
}

/// The name an index entry gives its image, if any (`fallback_repo` for bare tags).
/// A name that cannot be parsed is an error (the user can pass --tag), never silently
/// dropped.
fn entry_name(src: &str, d: &Descriptor, fallback_repo: &str) -> Result<Option<Reference>> {
    let bad = |n: &str| {
        source_err(src, format!("ref name {n:?} is not a valid image name or tag (name the image with --tag)"))
    };
    if let Some(n) = d.annotation(CONTAINERD_NAME) {
        return n.parse().map(Some).map_err(|_| bad(n));
    }
    let Some(r) = d.annotation(REF_NAME) else { return Ok(None) };
    if r.contains(['/', ':']) {
        return r.parse().map(Some).map_err(|_| bad(r));
    }
    // A bare tag (what skopeo and umoci write): a local name after the layout's file name.
    format!("localhost/{fallback_repo}:{r}").parse().map(Some).map_err(|_| bad(r))
}

/// Entries of one name that differ by platform (a "flat" multi-platform layout, as
/// some tools write instead of a nested index) become the one entry for `want`.
fn pick_platforms<'a>(src: &str, entries: Vec<&'a Descriptor>, want: &Platform) -> Result<Vec<&'a Descriptor>> {
    let mut groups: Vec<(Option<&str>, Vec<&'a Descriptor>)> = Vec::new();
    for d in entries {
        let key = d.annotation(REF_NAME);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(d),
            None => groups.push((key, vec![d])),
        }
    }
    let mut out = Vec::new();
    for (_, group) in groups {
        if group.len() > 1 && group.iter().all(|d| d.platform.is_some()) {
            let owned: Vec<Descriptor> = group.iter().map(|d| (*d).clone()).collect();
            let best = import::select_platform(src, &owned, want)?;
            out.extend(group.into_iter().find(|d| d.digest == best.digest));
        } else {
            out.extend(group);
        }
    }
    Ok(out)
}

/// A repository name made from a path's file name: lowercase, invalid characters dropped.
fn repo_from_path(p: &Path) -> String {
    let stem = p.file_name().and_then(|s| s.to_str()).unwrap_or("image");
    let stem = [".tar.gz", ".tgz", ".tar.zst", ".tar"].iter().find_map(|x| stem.strip_suffix(x)).unwrap_or(stem);
    let s: String =
        stem.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let s = s.trim_matches('-').to_owned();
    if s.is_empty() {
        "image".into()
    } else {
        s
    }
}

/// Picks the index entries to import: the one named `selector`, or all of them.
fn select<'a>(name: &str, idx: &'a Index, selector: Option<&str>) -> Result<Vec<&'a Descriptor>> {
    match selector {
        None => Ok(idx.manifests.iter().collect()),
        Some(sel) => {
            let found: Vec<_> = idx.manifests.iter().filter(|d| d.annotation(REF_NAME) == Some(sel)).collect();
            if found.is_empty() {
                let refs: Vec<_> = idx.manifests.iter().filter_map(|d| d.annotation(REF_NAME)).collect();
                return Err(source_err(
                    name,
                    format!(
                        "no image with ref name {sel:?}; it has: {}",
                        if refs.is_empty() { "none".into() } else { refs.join(", ") }
                    ),
                ));
            }
            Ok(found)
        }
    }
}

fn import_all(
    store: &Store,
    src: &dyn BlobSource,
    idx: &Index,
    selector: Option<&str>,
    tag: Option<&Reference>,
    repo: &str,
    want: &Platform,
) -> Result<Vec<Imported>> {
    let entries = pick_platforms(src.name(), select(src.name(), idx, selector)?, want)?;
    if tag.is_some() && entries.len() > 1 {
        return Err(ImageError::TagNeedsOneImage(src.name().to_owned(), entries.len()));
    }
    // Resolve everything before committing anything: a bad entry fails the whole import.
    let mut resolved = Vec::new();
    for d in &entries {
        let names: Vec<Reference> = match tag {
            Some(t) => vec![t.clone()],
            None => entry_name(src.name(), d, repo)?.into_iter().collect(),
        };
        resolved.push((import::resolve(src, d, want)?, names));
    }
    let mut out = Vec::new();
    for (r, names) in resolved {
        out.push(import::import_manifest(store, src, &r, &names, Vec::new())?);
    }
    Ok(out)
}

/// `oci:DIR[:REF]`
pub fn import_dir(
    store: &Store,
    dir: &Path,
    selector: Option<&str>,
    tag: Option<&Reference>,
    want: &Platform,
) -> Result<Vec<Imported>> {
    let name = format!("oci:{}", dir.display());
    // Bounded, and regular files only: a layout's index.json symlinked to /dev/zero or
    // made a FIFO must neither exhaust memory nor hang the pull.
    let read =
        |f: &str| source::read_regular(&dir.join(f), MAX_DOCUMENT).map_err(|e| source_err(&name, format!("{f}: {e}")));
    let idx = parse_layout(&name, &read("oci-layout")?, &read("index.json")?)?;
    let src = DirSource { dir: dir.to_path_buf(), name };
    import_all(store, &src, &idx, selector, tag, &repo_from_path(dir), want)
}

/// An OCI archive already indexed.
pub fn import_archive(
    store: &Store,
    index: TarIndex,
    file: &Path,
    name: String,
    selector: Option<&str>,
    tag: Option<&Reference>,
    want: &Platform,
) -> Result<Vec<Imported>> {
    let read = |f: &str| index.read_small(f, 4 << 20).map_err(|e| source_err(&name, format!("{f}: {e}")));
    let idx = parse_layout(&name, &read("oci-layout")?, &read("index.json")?)?;
    let src = ArchiveSource { index, name };
    import_all(store, &src, &idx, selector, tag, &repo_from_path(file), want)
}
