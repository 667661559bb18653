//! Finding images by what users type: a name (`busybox`, `localhost/x:1`), a name with a
//! digest, a full digest, or a unique prefix of an image ID (the manifest digest).

use super::{ImageError, Result};
use crate::digest::Digest;
use crate::reference::Reference;
use crate::store::images::ImageRecord;
use crate::store::Store;

/// Shortest ID prefix accepted, so that short words are not mistaken for IDs.
const MIN_PREFIX: usize = 4;

pub fn find(store: &Store, arg: &str) -> Result<ImageRecord> {
    find_with_ref(store, arg).map(|(r, _)| r)
}

/// Also says which name matched, when a name did.
pub fn find_with_ref(store: &Store, arg: &str) -> Result<(ImageRecord, Option<Reference>)> {
    if let Ok(r) = arg.parse::<Reference>() {
        if let Some(d) = r.digest() {
            return by_digest(store, d, arg).map(|rec| (rec, None));
        }
        if let Some(d) = store.get_ref(&r)? {
            return by_digest(store, &d, arg).map(|rec| (rec, Some(r)));
        }
    }
    let hex = arg.strip_prefix("sha256:").unwrap_or(arg);
    if hex.len() >= MIN_PREFIX
        && hex.len() <= 64
        && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        let matches: Vec<Digest> = store.image_digests()?.into_iter().filter(|d| d.hex().starts_with(hex)).collect();
        match matches.len() {
            0 => {}
            1 => return by_digest(store, &matches[0], arg).map(|rec| (rec, None)),
            _ => {
                let list: Vec<String> = matches.iter().map(|d| d.short().to_owned()).collect();
                return Err(ImageError::AmbiguousId(arg.to_owned(), list.join(", ")));
            }
        }
    }
    Err(ImageError::NotFound(arg.to_owned()))
}

fn by_digest(store: &Store, d: &Digest, arg: &str) -> Result<ImageRecord> {
    store.get_image(d)?.ok_or_else(|| ImageError::NotFound(arg.to_owned()))
}

/// Every name that points at `d`.
pub fn names_of(store: &Store, d: &Digest) -> Result<Vec<Reference>> {
    Ok(store.list_refs()?.into_iter().filter(|(_, x)| x == d).map(|(r, _)| r).collect())
}

/// `coracle tag`: one more name for an existing image.
pub fn tag(store: &Store, image: &str, name: &str) -> Result<(ImageRecord, Reference)> {
    let _hold = store.lock_shared()?;
    let _names = store.lock_names()?;
    let rec = find(store, image)?;
    let r: Reference = name.parse()?;
    if r.digest().is_some() {
        return Err(ImageError::Reference(crate::reference::ReferenceError::Invalid(
            name.into(),
            "a tag cannot contain a digest",
        )));
    }
    store.set_ref(&r, &rec.digest)?;
    Ok((rec, r))
}

/// What `rmi` did to one argument.
#[derive(Debug)]
pub enum Removed {
    Untagged(Reference),
    Deleted(Digest),
}

/// `coracle rmi`: by name, removes that name, and the image once no name is left; by
/// ID or digest, removes the image with all its names. Space is reclaimed by `gc`.
/// `in_use` maps the digests of images running containers use to a container's name:
/// such an image is never deleted (removing one of several names is fine).
pub fn remove(store: &Store, arg: &str, in_use: &[(Digest, String)]) -> Result<Vec<Removed>> {
    let _hold = store.lock_shared()?;
    // From reading the names to deleting the record, no import may add a name.
    let _names = store.lock_names()?;
    let (rec, via) = find_with_ref(store, arg)?;
    let names = names_of(store, &rec.digest)?;
    let to_untag: Vec<Reference> = match &via {
        Some(r) => vec![r.clone()],
        None => names.clone(),
    };
    let deletes = names.len() <= to_untag.len();
    if let Some((_, c)) = in_use.iter().find(|(d, _)| deletes && *d == rec.digest) {
        return Err(ImageError::InUse(arg.to_owned(), c.clone()));
    }
    let mut out = Vec::new();
    for r in &to_untag {
        store.remove_ref(r)?;
        out.push(Removed::Untagged(r.clone()));
    }
    if deletes {
        store.remove_image(&rec.digest)?;
        out.push(Removed::Deleted(rec.digest.clone()));
    }
    Ok(out)
}
