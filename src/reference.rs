//! Image reference parsing and normalisation, as docker does it; pure, no I/O.
//!
//! Grammar from the distribution project's reference package (`[domain/]path[:tag][@digest]`):
//! a first component is a domain when it has a `.` or `:` or is `localhost`; without a
//! domain the name is on `docker.io`, and single-component Docker Hub names live under
//! `library/`. A name with neither tag nor digest gets `:latest`.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;

pub const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A normalised reference: `domain/path` plus a tag and/or a digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("invalid image reference {0:?}: {1}")]
    Invalid(String, &'static str),
}

impl Reference {
    pub fn domain(&self) -> &str {
        &self.domain
    }
    /// The repository path without the domain, e.g. `library/busybox`.
    pub fn path(&self) -> &str {
        &self.path
    }
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }
    /// `domain/path`, e.g. `docker.io/library/busybox`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The same repository with another tag and no digest.
    pub fn with_tag(&self, tag: &str) -> Result<Reference, ReferenceError> {
        if !valid_tag(tag) {
            return Err(ReferenceError::Invalid(tag.to_owned(), "invalid tag"));
        }
        Ok(Reference { tag: Some(tag.to_owned()), digest: None, ..self.clone() })
    }

    /// Docker's familiar short form: `busybox:latest` for `docker.io/library/busybox:latest`.
    /// A `docker.io` path whose first component reads as a registry host (`docker.io/a.b/c`)
    /// keeps its domain: the short form must parse back to the same image.
    pub fn familiar(&self) -> String {
        let short = self.path.strip_prefix("library/").filter(|p| !p.contains('/')).unwrap_or(&self.path);
        let looks_like_host = |p: &str| p.split_once('/').is_some_and(|(c, _)| c.contains('.') || c == "localhost");
        let repo =
            if self.domain == DEFAULT_DOMAIN && !looks_like_host(short) { short.to_owned() } else { self.repository() };
        self.suffixed(repo)
    }

    fn suffixed(&self, mut s: String) -> String {
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
        s
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.suffixed(self.repository()))
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, ReferenceError> {
        let bad = |why| Err(ReferenceError::Invalid(s.to_owned(), why));
        if s.is_empty() {
            return bad("empty");
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => match d.parse::<Digest>() {
                Ok(d) => (r, Some(d)),
                Err(_) => return bad("invalid digest"),
            },
            None => (s, None),
        };
        // A ':' after the last '/' starts the tag; one before it is a registry port.
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return bad("invalid tag");
            }
        }
        if name.is_empty() {
            return bad("repository name must be 1 to 255 characters");
        }
        let (mut domain, mut path) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                if !valid_domain(first) {
                    return bad("invalid registry host");
                }
                (first.to_owned(), rest.to_owned())
            }
            _ => (DEFAULT_DOMAIN.to_owned(), name.to_owned()),
        };
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return bad("repository name must be lowercase");
        }
        if !path.split('/').all(valid_component) {
            return bad("invalid repository path");
        }
        if domain == LEGACY_DEFAULT_DOMAIN {
            domain = DEFAULT_DOMAIN.to_owned();
        }
        if domain == DEFAULT_DOMAIN && !path.contains('/') {
            path = format!("library/{path}");
        }
        // Counted on the normalised name, as docker does: the form we print (and keep in
        // refs/) must parse again.
        if domain.len() + 1 + path.len() > MAX_NAME_LEN {
            return bad("repository name must be 1 to 255 characters");
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_owned()),
        };
        Ok(Reference { domain, path, tag, digest })
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        s.parse::<Reference>().unwrap().to_string()
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("library/busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("test/busybox:1"), "docker.io/test/busybox:1");
        assert_eq!(norm("index.docker.io/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("localhost/test/busybox:1"), "localhost/test/busybox:1");
        assert_eq!(norm("localhost:5000/a/b"), "localhost:5000/a/b:latest");
        assert_eq!(norm("quay.io/x/y:v1.2"), "quay.io/x/y:v1.2");
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(norm(&format!("alpine@{d}")), format!("docker.io/library/alpine@{d}"));
        assert_eq!(norm(&format!("alpine:3@{d}")), format!("docker.io/library/alpine:3@{d}"));
    }

    #[test]
    fn familiar_form() {
        let r: Reference = "busybox".parse().unwrap();
        assert_eq!(r.familiar(), "busybox:latest");
        let r: Reference = "localhost/a:1".parse().unwrap();
        assert_eq!(r.familiar(), "localhost/a:1");
        // Not "a.b/c:1", which names another registry (fuzz target reference_parse).
        let r: Reference = "docker.io/a.b/c:1".parse().unwrap();
        assert_eq!(r.familiar(), "docker.io/a.b/c:1");
        let r: Reference = "docker.io/localhost/c:1".parse().unwrap();
        assert_eq!(r.familiar(), "docker.io/localhost/c:1");
        assert_eq!("docker.io/localhost".parse::<Reference>().unwrap().familiar(), "localhost:latest");
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "Busybox",
            "a//b",
            "a/",
            "/a",
            "a:",
            "a:-x",
            "a@sha256:xyz",
            "-a",
            "a..b",
            "localhost:port/a",
            "a:b:c",
            "../x",
        ] {
            assert!(bad.parse::<Reference>().is_err(), "{bad:?} accepted");
        }
        assert!(format!("a:{}", "t".repeat(129)).parse::<Reference>().is_err());
        assert!("a".repeat(256).parse::<Reference>().is_err());
        // Counted after normalisation: docker.io/library/ + 238 is 256 (fuzz target reference_parse).
        assert!("a".repeat(238).parse::<Reference>().is_err());
        assert_eq!(norm(&"a".repeat(237)).len(), 255 + ":latest".len());
        assert_eq!(norm(&format!("index.docker.io/a/{}", "b".repeat(243))).len(), 255 + ":latest".len());
    }
}
