//! The registry harness itself (tests/util/registry.rs), proven with skopeo as the client:
//! plain HTTP, TLS with a throwaway CA, htpasswd, bearer tokens from the harness's token
//! server, multi-arch indexes, Docker manifest lists, zstd layers, the access-log counters,
//! and cleanup on drop and on panic. No root needed.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use util::registry::*;
use util::*;

fn image(tag: &str, arch: &str, variant: Option<&str>) -> Built {
    let base = LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/os-release", 0o644, b"ID=test\n")
        .file("etc/arch", 0o644, arch.as_bytes())
        .finish();
    let top = LayerBuilder::new().dir("app", 0o755).file("app/tag", 0o644, tag.as_bytes()).finish();
    let mut img = Image::new(vec![(base, Comp::Gzip), (top, Comp::Gzip)]);
    img.arch = arch.into();
    img.variant = variant.map(Into::into);
    build(&img)
}

/// `skopeo inspect --raw` with explicit flags; the output whatever happened.
fn inspect_raw(reg: &Registry, name: &str, flags: &[String]) -> std::process::Output {
    reg.skopeo().args(["inspect", "--raw"]).args(flags).arg(reg.reference(name)).output().unwrap()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A plain-HTTP GET by hand: (status line, headers, body).
fn raw_get(reg: &Registry, path: &str) -> (String, String, Vec<u8>) {
    let mut s = TcpStream::connect(reg.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", reg.addr()).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(buf[..end].to_vec()).unwrap();
    let (line, headers) = head.split_once("\r\n").unwrap();
    (line.to_owned(), headers.to_owned(), buf[end + 4..].to_vec())
}

#[test]
fn http_push_and_inspect() {
    let reg = Registry::start(RegistryOptions::default());
    assert!(reg.url().starts_with("http://127.0.0.1:"), "{}", reg.url());
    assert_eq!(reg.addr(), format!("127.0.0.1:{}", reg.port()));
    let img = image("http", "amd64", None);
    reg.push_image(&img, "test/app:v1");
    assert_eq!(reg.manifest_digest("test/app:v1"), img.manifest.digest, "the pushed manifest is kept byte for byte");

    // `push` from an OCI layout written by hand, and skopeo's parsed view.
    let dir = tempfile::tempdir().unwrap();
    write_oci_layout(dir.path(), &[(&img, Some("x"))]);
    reg.push(&format!("oci:{}:x", dir.path().display()), "other/name:tag");
    let o = reg.skopeo().arg("inspect").args(reg.client_flags("")).arg(reg.reference("other/name:tag")).output();
    let o = o.unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["Architecture"], "amd64");
    let layers: Vec<String> = img.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(v["Layers"], serde_json::json!(layers));

    // The registry itself answers the distribution API on the port.
    let (status, rest, _) = raw_get(&reg, "/v2/");
    assert!(status.contains(" 200"), "{status}");
    assert!(rest.contains("Docker-Distribution-Api-Version: registry/2.0"), "{rest}");
    // skopeo inspect (not --raw) read the config blob; then one more GET by hand.
    assert_eq!(reg.blob_gets(), vec![img.config.digest.clone()]);
    let mark = reg.mark();
    let (status, _, _) = raw_get(&reg, &format!("/v2/test/app/blobs/{}", img.config.digest));
    assert!(status.contains(" 200"), "{status}");
    assert_eq!(reg.blob_gets_since(mark), vec![img.config.digest.clone()]);
    let last = reg.requests().pop().unwrap();
    assert_eq!((last.method.as_str(), last.status, last.bytes), ("GET", 200, img.config.bytes.len() as u64));
}

#[test]
fn tls_with_the_ca_and_not_without() {
    let reg = Registry::start(RegistryOptions::default().with_tls());
    assert!(reg.url().starts_with("https://127.0.0.1:"), "{}", reg.url());
    let img = image("tls", "amd64", None);
    reg.push_image(&img, "test/tls:1");
    assert_eq!(reg.manifest_digest("test/tls:1"), img.manifest.digest);

    // Without the CA: verification fails.
    let o = inspect_raw(&reg, "test/tls:1", &[]);
    assert!(!o.status.success(), "an unknown CA must be refused");
    assert!(stderr(&o).contains("x509") || stderr(&o).contains("certificate"), "{}", stderr(&o));

    // A certs.d layout (127.0.0.1:PORT/ca.crt) is enough, for the IP and for DNS localhost.
    let certs_d = tempfile::tempdir().unwrap();
    let host_dir = reg.write_certs_d(certs_d.path());
    assert_eq!(host_dir, certs_d.path().join(reg.addr()));
    assert_eq!(std::fs::read(host_dir.join("ca.crt")).unwrap(), std::fs::read(reg.ca_pem()).unwrap());
    let flag = format!("--cert-dir={}", host_dir.display());
    let o = inspect_raw(&reg, "test/tls:1", std::slice::from_ref(&flag));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = reg
        .skopeo()
        .args(["inspect", "--raw", &flag])
        .arg(format!("docker://localhost:{}/test/tls:1", reg.port()))
        .output()
        .unwrap();
    assert!(o.status.success(), "the certificate names DNS localhost too: {}", stderr(&o));
}

#[test]
fn htpasswd_needs_the_credentials() {
    let reg = Registry::start(RegistryOptions::default().with_htpasswd("alice", "s3cret"));
    assert_eq!(reg.credentials(), Some(("alice", "s3cret")));
    let img = image("basic", "amd64", None);
    reg.push_image(&img, "private/app:1");
    assert_eq!(reg.manifest_digest("private/app:1"), img.manifest.digest);

    let o = inspect_raw(&reg, "private/app:1", &reg.tls_flags(""));
    assert!(!o.status.success(), "no credentials must be refused");
    assert!(stderr(&o).contains("unauthorized") || stderr(&o).contains("authentication required"), "{}", stderr(&o));
    let mut wrong = reg.tls_flags("");
    wrong.push("--creds=alice:wrong".into());
    assert!(!inspect_raw(&reg, "private/app:1", &wrong).status.success(), "a wrong password must be refused");

    // An auth.json written by the harness works (what coracle will read).
    let auth = tempfile::tempdir().unwrap();
    reg.write_auth_json(&auth.path().join("auth.json"));
    let mut flags = reg.tls_flags("");
    flags.push(format!("--authfile={}", auth.path().join("auth.json").display()));
    let o = inspect_raw(&reg, "private/app:1", &flags);
    assert!(o.status.success(), "{}", stderr(&o));
    let (status, rest, _) = raw_get(&reg, "/v2/");
    assert!(status.contains(" 401"), "{status}");
    assert!(rest.contains("Www-Authenticate: Basic realm=\"coracle-test-basic\""), "{rest}");
}

#[test]
fn token_auth_anonymous() {
    let reg = Registry::start(RegistryOptions::default().with_token());
    let (status, rest, _) = raw_get(&reg, "/v2/");
    assert!(status.contains(" 401"), "{status}");
    let challenge =
        format!("Www-Authenticate: Bearer realm=\"{}\",service=\"{TOKEN_SERVICE}\"", reg.token_server().realm());
    assert!(rest.contains(&challenge), "{rest}");

    let img = image("token", "amd64", None);
    reg.push_image(&img, "team/app:1");
    assert_eq!(reg.manifest_digest("team/app:1"), img.manifest.digest);
    let reqs = reg.token_requests();
    assert!(!reqs.is_empty(), "skopeo asked the token server");
    assert!(reqs.iter().all(|r| r.status == 200 && !r.credentials && r.authorization.is_none()), "{reqs:#?}");
    assert!(reqs.iter().all(|r| r.path == "/token" && r.service.as_deref() == Some(TOKEN_SERVICE)), "{reqs:#?}");
    assert!(reqs.iter().any(|r| r.scopes.iter().any(|s| s == "repository:team/app:pull,push")), "{reqs:#?}");
    assert!(reqs.iter().any(|r| r.scopes == ["repository:team/app:pull"]), "{reqs:#?}");
}

#[test]
fn token_auth_with_kid_header() {
    let reg = Registry::start(RegistryOptions::default().with_token().with_token_key_ref(TokenKeyRef::Kid));
    let img = image("kid", "amd64", None);
    reg.push_image(&img, "team/kid:1");
    assert_eq!(reg.manifest_digest("team/kid:1"), img.manifest.digest);
}

#[test]
fn token_auth_requiring_credentials() {
    let reg = Registry::start(RegistryOptions::default().with_token_credentials("bob", "pw"));
    let img = image("tokencreds", "amd64", None);
    reg.push_image(&img, "team/app:1");
    let reqs = reg.token_requests();
    assert!(reqs.iter().all(|r| r.status == 200 && r.credentials && r.user.as_deref() == Some("bob")), "{reqs:#?}");
    let basic = format!("Basic {}", base64(b"bob:pw", false));
    assert!(reqs.iter().all(|r| r.authorization.as_deref() == Some(basic.as_str())), "{reqs:#?}");

    let o = inspect_raw(&reg, "team/app:1", &reg.tls_flags(""));
    assert!(!o.status.success(), "no credentials: the token server must refuse");
    let last = reg.token_requests().pop().unwrap();
    assert_eq!((last.status, last.credentials, last.authorization), (401, false, None));
    assert_eq!(last.scopes, ["repository:team/app:pull"]);

    let mut wrong = reg.tls_flags("");
    wrong.push("--creds=bob:nope".into());
    assert!(!inspect_raw(&reg, "team/app:1", &wrong).status.success());
    assert_eq!(reg.token_requests().pop().unwrap().status, 401);
    assert_eq!(reg.manifest_digest("team/app:1"), img.manifest.digest);
}

#[test]
fn expired_tokens_are_refused_by_the_registry() {
    let reg = Registry::start(RegistryOptions::default().with_token());
    let img = image("expiry", "amd64", None);
    reg.push_image(&img, "team/exp:1");
    reg.token_server().expire_next(1);
    let o = inspect_raw(&reg, "team/exp:1", &reg.client_flags(""));
    let reqs = reg.token_requests();
    let expired: Vec<_> = reqs.iter().filter(|r| r.expired).collect();
    assert_eq!(expired.len(), 1, "{reqs:#?}");
    // skopeo does not fetch a new token on 401: the expired token fails the request.
    assert!(!o.status.success(), "the registry must refuse an expired token");
    assert!(stderr(&o).contains("unauthorized") || stderr(&o).contains("authentication required"), "{}", stderr(&o));
    assert_eq!(reg.manifest_digest("team/exp:1"), img.manifest.digest, "the next token is valid again");
}

#[test]
fn tls_and_token_together() {
    let reg = Registry::start(RegistryOptions::default().with_tls().with_token_credentials("carol", "pw"));
    let img = image("both", "amd64", None);
    reg.push_image(&img, "secure/app:1");
    assert_eq!(reg.manifest_digest("secure/app:1"), img.manifest.digest);
    assert!(reg.token_requests().iter().all(|r| r.status == 200 && r.credentials));
}

#[test]
fn multiarch_index_docker_list_and_zstd() {
    let reg = Registry::start(RegistryOptions::default());
    let amd = image("multi", "amd64", None);
    let arm = image("multi", "arm64", Some("v8"));
    let armv7 = image("multi", "arm", Some("v7"));
    let index = reg.push_multiarch(&[&amd, &arm, &armv7], "multi/app:1");
    assert_eq!(reg.manifest_digest("multi/app:1"), index.digest, "the index is kept byte for byte");
    let m = reg.manifest("multi/app:1");
    assert_eq!(m["mediaType"], OCI_INDEX);
    assert_eq!(m["manifests"].as_array().unwrap().len(), 3);
    for (arch, variant, img) in [("arm64", "v8", &arm), ("arm", "v7", &armv7)] {
        let o = reg
            .skopeo()
            .args(["--override-arch", arch, "--override-variant", variant, "inspect"])
            .args(reg.client_flags(""))
            .arg(reg.reference("multi/app:1"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["Architecture"], arch);
        let layers: Vec<&str> = img.layers.iter().map(|l| l.digest.as_str()).collect();
        assert_eq!(v["Layers"], serde_json::json!(layers), "{arch}/{variant} selects its own manifest");
    }

    let digest = reg.push_docker_list(&[&amd, &arm], "multi/docker:1");
    let m = reg.manifest("multi/docker:1");
    assert_eq!(m["mediaType"], "application/vnd.docker.distribution.manifest.list.v2+json", "{m:#}");
    assert_eq!(sha256(&reg.manifest_raw(&format!("multi/docker@{digest}"))), digest);
    for entry in m["manifests"].as_array().unwrap() {
        assert_eq!(entry["mediaType"], "application/vnd.docker.distribution.manifest.v2+json");
        let one = reg.manifest(&format!("multi/docker@{}", entry["digest"].as_str().unwrap()));
        assert_eq!(one["mediaType"], "application/vnd.docker.distribution.manifest.v2+json");
        assert!(one["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["mediaType"] == "application/vnd.docker.image.rootfs.diff.tar.gzip"));
    }

    // zstd: recompressed by skopeo, and a fixture built with zstd layers, kept as is.
    let zlayers = reg.push_image_zstd(&amd, "zstd/recompressed:1");
    assert_eq!(zlayers.len(), 2);
    let m = reg.manifest("zstd/recompressed:1");
    assert_eq!(m["config"]["digest"], amd.config.digest.as_str(), "same config, same diff-ids");
    for (digest, tar) in zlayers.iter().zip(&amd.tars) {
        let (status, _, body) = raw_get(&reg, &format!("/v2/zstd/recompressed/blobs/{digest}"));
        assert!(status.contains(" 200"), "{status}");
        assert_eq!(sha256(&body), *digest);
        assert_eq!(zstd::stream::decode_all(&body[..]).unwrap(), *tar, "the zstd layer holds the same tar");
    }
    let base = LayerBuilder::new().file("z", 0o644, &[b'z'; 5000]).finish();
    let z = build(&Image::new(vec![(base, Comp::Zstd)]));
    reg.push_image(&z, "zstd/fixture:1");
    assert_eq!(reg.manifest_digest("zstd/fixture:1"), z.manifest.digest);
}

#[test]
fn zstd_recompression_of_gzip_layers() {
    let reg = Registry::start(RegistryOptions::default());
    let img = image("zstd", "amd64", None);
    let dir = tempfile::tempdir().unwrap();
    write_oci_layout(dir.path(), &[(&img, Some("x"))]);
    reg.push_zstd(&format!("oci:{}:x", dir.path().display()), "zstd/gz:1");
    let m = reg.manifest("zstd/gz:1");
    let layers = m["layers"].as_array().unwrap();
    assert!(layers.iter().all(|l| l["mediaType"] == Comp::Zstd.media_type()), "{m:#}");
    for (l, tar) in layers.iter().zip(&img.tars) {
        let (status, _, body) = raw_get(&reg, &format!("/v2/zstd/gz/blobs/{}", l["digest"].as_str().unwrap()));
        assert!(status.contains(" 200"), "{status}");
        assert_eq!(zstd::stream::decode_all(&body[..]).unwrap(), *tar);
    }
}

#[test]
fn blob_gets_count_a_pull() {
    let reg = Registry::start(RegistryOptions::default());
    let img = image("count", "amd64", None);
    reg.push_image(&img, "count/app:1");
    assert!(reg.blob_gets().is_empty(), "a push GETs no blob: {:?}", reg.requests());
    let mark = reg.mark();
    let out = tempfile::tempdir().unwrap();
    reg.pull_oci("count/app:1", &out.path().join("layout"), "x");
    let mut got = reg.blob_gets_since(mark);
    got.sort();
    let mut want: Vec<String> = img.layers.iter().map(|l| l.digest.clone()).collect();
    want.push(img.config.digest.clone());
    want.sort();
    assert_eq!(got, want, "each layer and the config fetched once");
    assert!(reg.requests()[mark..].iter().all(|e| e.user_agent.starts_with("skopeo/")), "{:#?}", reg.requests());
    // Pulling again into the same layout reuses what is there.
    let mark = reg.mark();
    reg.pull_oci("count/app:1", &out.path().join("layout"), "y");
    let again = reg.blob_gets_since(mark);
    assert!(img.layers.iter().all(|l| !again.contains(&l.digest)), "{again:?}");
}

fn gone(pid: u32, dir: &Path, addrs: &[String]) {
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "registry {pid} still exists");
    assert!(!dir.exists(), "{} still exists", dir.display());
    for a in addrs {
        assert!(TcpStream::connect(a).is_err(), "{a} still accepts connections");
    }
}

#[test]
fn drop_stops_everything() {
    let reg = Registry::start(RegistryOptions::default().with_tls().with_token());
    let (pid, dir) = (reg.pid(), reg.dir().to_owned());
    let addrs = [reg.addr(), reg.token_server().addr().to_string()];
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(reg);
    gone(pid, &dir, &addrs);
}

#[test]
fn a_panicking_test_cleans_up() {
    let seen = std::sync::Mutex::new(None);
    let r = std::panic::catch_unwind(|| {
        let reg = Registry::start(RegistryOptions::default().with_token());
        *seen.lock().unwrap() =
            Some((reg.pid(), reg.dir().to_owned(), [reg.addr(), reg.token_server().addr().to_string()]));
        panic!("a test fails");
    });
    assert!(r.is_err());
    let (pid, dir, addrs) = seen.into_inner().unwrap().unwrap();
    gone(pid, &dir, &addrs);
}
