//! Registry authentication: `WWW-Authenticate` challenges (RFC 7235; the distribution
//! spec's token auth), and credentials from the files docker and podman already write
//! (`$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `~/.docker/config.json`: `auths.<host>.auth` = base64 of `user:password`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine;

/// A parsed challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

/// Parses `Bearer realm="…",service="…",scope="…"` (or `Basic realm="…"`).
pub fn parse_challenge(h: &str) -> Option<Challenge> {
    let h = h.trim();
    let (scheme, rest) = h.split_once(char::is_whitespace).unwrap_or((h, ""));
    let mut params = BTreeMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_ascii_lowercase();
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(r) = rest.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = r.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            v.push(n);
                        }
                    }
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    c => v.push(c),
                }
            }
            let end = end?;
            value = v;
            rest = r[end + 1..].trim_start();
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_owned();
            rest = &rest[end..];
        }
        params.insert(key, value);
        rest = rest.trim_start_matches(',').trim_start();
    }
    Some(Challenge { scheme: scheme.to_ascii_lowercase(), params })
}

/// The auth files to read, in order of precedence.
fn auth_files() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE") {
        v.push(PathBuf::from(f));
    }
    v.push(write_file());
    if let Some(h) = std::env::var_os("HOME") {
        v.push(PathBuf::from(h).join(".docker/config.json"));
    }
    v
}

/// The keys an `auths` map may use for `host` (docker writes Docker Hub as a v1 URL).
fn keys_for(host: &str) -> Vec<String> {
    let mut k = vec![host.to_owned(), format!("https://{host}"), format!("http://{host}")];
    if host == "docker.io" || host == "registry-1.docker.io" || host == "index.docker.io" {
        k.extend(
            ["https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io"].map(String::from),
        );
    }
    k
}

/// Where `coracle login` writes, as podman does: `$REGISTRY_AUTH_FILE`, else
/// `$XDG_RUNTIME_DIR/containers/auth.json`, else `/run/containers/<uid>/auth.json`.
pub fn write_file() -> PathBuf {
    if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE") {
        return PathBuf::from(f);
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("containers/auth.json"),
        None => PathBuf::from(format!("/run/containers/{}/auth.json", nix::unistd::geteuid())),
    }
}

/// `(user, password)` for `host` from the first auth file that has it, or from the
/// credential helper a docker config names (`credHelpers.<host>`, else `credsStore`).
pub fn credentials(host: &str) -> Option<(String, String)> {
    for f in auth_files() {
        let Ok(data) = std::fs::read(&f) else { continue };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&data) else { continue };
        for k in keys_for(host) {
            if let Some(auth) = v["auths"][&k]["auth"].as_str() {
                if let Some(c) = decode_auth(auth) {
                    return Some(c);
                }
            }
            if let Some(helper) = v["credHelpers"][&k].as_str() {
                return helper_get(helper, &k);
            }
        }
        if let Some(helper) = v["credsStore"].as_str() {
            if let Some(c) = keys_for(host).iter().find_map(|k| helper_get(helper, k)) {
                return Some(c);
            }
        }
    }
    None
}

/// `docker-credential-NAME get` with the server URL on stdin (docker's credential
/// helper protocol): `{"Username": …, "Secret": …}` on stdout.
fn helper_get(name: &str, server: &str) -> Option<(String, String)> {
    use std::io::Write;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') {
        return None;
    }
    let mut child = std::process::Command::new(format!("docker-credential-{name}"))
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(server.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some((v["Username"].as_str()?.to_owned(), v["Secret"].as_str()?.to_owned()))
}

/// Stores (or with `None`, removes) the credentials of `host` in the login file,
/// atomically and readable by the owner only. Returns whether an entry was removed.
pub fn store(host: &str, creds: Option<(&str, &str)>) -> std::io::Result<bool> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let file = write_file();
    let dir = file.parent().unwrap_or(std::path::Path::new("/"));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let mut v: serde_json::Value = match std::fs::read(&file) {
        Ok(data) => {
            serde_json::from_slice(&data).map_err(|e| std::io::Error::other(format!("{}: {e}", file.display())))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({}),
        Err(e) => return Err(e),
    };
    if !v["auths"].is_object() {
        v["auths"] = serde_json::json!({});
    }
    let auths = v["auths"].as_object_mut().expect("object");
    let removed = auths.remove(host).is_some();
    if creds.is_none() && !removed {
        // Nothing to remove: leave the file (or its absence) alone.
        return Ok(false);
    }
    if let Some((u, p)) = creds {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        auths.insert(host.to_owned(), serde_json::json!({ "auth": encoded }));
    }
    let tmp = file.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(&v).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &file)?;
    Ok(removed)
}

fn decode_auth(b64: &str) -> Option<(String, String)> {
    let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

/// `Basic base64(user:password)`.
pub fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let c = parse_challenge(r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#).unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["scope"], "repository:library/busybox:pull");
        let c = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "Registry Realm");
        let c = parse_challenge(r#"Bearer realm="x",scope="a,b",error="insufficient_scope""#).unwrap();
        assert_eq!(c.params["scope"], "a,b");
        assert_eq!(c.params["error"], "insufficient_scope");
    }

    #[test]
    fn auth_entries() {
        assert_eq!(
            decode_auth(&base64::engine::general_purpose::STANDARD.encode("u:p:w")),
            Some(("u".into(), "p:w".into()))
        );
        assert!(keys_for("docker.io").contains(&"https://index.docker.io/v1/".to_owned()));
        assert_eq!(basic("a", "b"), "Basic YTpi");
    }
}
