//! Mirrors from `registries.conf` (containers-registries.conf(5), version 2): for an
//! image under a `[[registry]]` prefix, its `[[registry.mirror]]` locations are tried in
//! order, then the registry's own `location`. Content is verified the same way whichever
//! answers; the image keeps the name the user asked for.

use std::path::PathBuf;

use serde::Deserialize;

use crate::reference::Reference;

#[derive(Deserialize, Default)]
struct Conf {
    #[serde(default)]
    registry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror: Vec<Mirror>,
}

#[derive(Deserialize)]
struct Mirror {
    location: String,
    #[serde(default)]
    insecure: bool,
}

/// One place to pull from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub reference: Reference,
    /// TLS not verified (and plain HTTP allowed) for this location.
    pub insecure: bool,
}

fn conf_path() -> PathBuf {
    std::env::var_os("CONTAINERS_REGISTRIES_CONF")
        .map_or_else(|| PathBuf::from("/etc/containers/registries.conf"), PathBuf::from)
}

/// Where to pull `r` from, in order. Without a matching entry: just `r`.
pub fn candidates(r: &Reference) -> Result<Vec<Candidate>, String> {
    let path = conf_path();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    candidates_from(&text, r).map_err(|e| format!("{}: {e}", path.display()))
}

fn candidates_from(text: &str, r: &Reference) -> Result<Vec<Candidate>, String> {
    let conf: Conf =
        toml::from_str(text).map_err(|e| e.to_string().lines().next().unwrap_or("invalid TOML").to_owned())?;
    let repo = r.repository();
    let best = conf
        .registry
        .iter()
        .filter_map(|e| {
            let prefix = e.prefix.as_deref().or(e.location.as_deref())?;
            (repo == prefix || repo.starts_with(&format!("{prefix}/"))).then_some((prefix.len(), prefix, e))
        })
        .max_by_key(|(len, _, _)| *len);
    let Some((_, prefix, entry)) = best else {
        return Ok(vec![Candidate { reference: r.clone(), insecure: false }]);
    };
    if entry.blocked {
        return Err(format!("pulls from {prefix} are blocked"));
    }
    let rest = &repo[prefix.len()..];
    let suffix = r.to_string()[repo.len()..].to_owned();
    let at = |location: &str, insecure: bool| -> Result<Candidate, String> {
        let s = format!("{location}{rest}{suffix}");
        let reference = s.parse::<Reference>().map_err(|e| e.to_string())?;
        Ok(Candidate { reference, insecure })
    };
    let mut out = Vec::new();
    for m in &entry.mirror {
        out.push(at(&m.location, m.insecure)?);
    }
    out.push(at(entry.location.as_deref().unwrap_or(prefix), entry.insecure)?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_first_then_the_location() {
        let conf = r#"
unqualified-search-registries = ["docker.io"]

[[registry]]
location = "docker.io"

[[registry.mirror]]
location = "mirror.local:5000/hub"
insecure = true

[[registry]]
prefix = "quay.io/team"
location = "internal.example/quay-team"
"#;
        let r: Reference = "busybox:1".parse().unwrap();
        let c = candidates_from(conf, &r).unwrap();
        assert_eq!(c[0].reference.to_string(), "mirror.local:5000/hub/library/busybox:1");
        assert!(c[0].insecure);
        assert_eq!(c[1].reference.to_string(), "docker.io/library/busybox:1");
        let r: Reference =
            "quay.io/team/app@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".parse().unwrap();
        let c = candidates_from(conf, &r).unwrap();
        assert_eq!(c.len(), 1);
        assert!(c[0].reference.to_string().starts_with("internal.example/quay-team/app@sha256:"));
        let r: Reference = "example.com/x:1".parse().unwrap();
        assert_eq!(candidates_from(conf, &r).unwrap(), vec![Candidate { reference: r, insecure: false }]);
        assert!(candidates_from(
            "[[registry]]\nlocation = \"docker.io\"\nblocked = true\n",
            &"busybox".parse().unwrap()
        )
        .is_err());
        assert!(candidates_from("[[registry]\n", &"busybox".parse().unwrap()).is_err());
    }
}
