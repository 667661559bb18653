//! Registry pulls against Debian's CNCF distribution registry on loopback (tests/util/
//! registry.rs starts it, with TLS, htpasswd or token auth), images pushed with skopeo.

mod util;

use std::process::Command;

use util::registry::*;
use util::*;

fn image(tag: &str, arch: &str) -> Built {
    let base = LayerBuilder::new().dir("etc", 0o755).file("etc/os-release", 0o644, b"ID=test\n").finish();
    let top = LayerBuilder::new().file("tag", 0o644, format!("{tag} {arch}").as_bytes()).finish();
    let mut i = Image::new(vec![(base, Comp::Gzip), (top, Comp::Gzip)]);
    i.arch = arch.into();
    if arch == "arm64" {
        i.variant = Some("v8".into());
    }
    build(&i)
}

/// `coracle pull` with the auth file and cert dir of this test only.
fn pull(env: &Env, args: &[&str]) -> Out {
    let mut c = env.cmd();
    c.arg("pull").args(args).env("REGISTRY_AUTH_FILE", env.path("auth.json")).env_remove("XDG_RUNTIME_DIR");
    Out(c.output().unwrap())
}

fn layer_file(env: &Env, image: &str, file: &str) -> String {
    let info = env.inspect(image);
    let top = info["layers"].as_array().unwrap().last().unwrap().as_str().unwrap().to_owned();
    std::fs::read_to_string(env.layer_root(&top).join(file)).unwrap()
}

#[test]
fn plain_http_pull_on_loopback_names_and_verifies() {
    let reg = Registry::start(RegistryOptions::default());
    let img = image("v1", "amd64");
    reg.push_image(&img, "team/app:v1");
    let env = Env::new();
    let o = pull(&env, &[&format!("{}/team/app:v1", reg.addr())]);
    assert!(o.status(), "{}", o.stderr());
    assert_eq!(o.stdout().trim(), img.manifest.digest, "the digest last on stdout");
    assert!(o.stderr().contains("2 layers to download"), "{}", o.stderr());
    let name = format!("{}/team/app:v1", reg.addr());
    assert_eq!(env.inspect(&name)["names"], serde_json::json!([name]));
    assert_eq!(layer_file(&env, &name, "tag"), "v1 amd64");
    // Pinned by digest: verified; nothing to download again.
    let mark = reg.mark();
    let pinned = format!("docker://{}/team/app@{}", reg.addr(), img.manifest.digest);
    assert!(pull(&env, &[&pinned]).status());
    assert!(reg.blob_gets_since(mark).is_empty(), "layers already in the store were downloaded again");
    let wrong = format!("{}/team/app@sha256:{}", reg.addr(), "0".repeat(64));
    pull(&env, &[&wrong]).assert_error("manifest unknown");
    pull(&env, &[&format!("{}/team/nope:1", reg.addr())]).assert_error("HTTP 404");
    assert!(env.run(&["fsck"]).status());
}

#[test]
fn run_pulls_missing_images_and_respects_pull_never() {
    require_root();
    let reg = Registry::start(RegistryOptions::default());
    reg.push_image(&default_image(), "fixture:1");
    let env = Env::new();
    let name = format!("{}/fixture:1", reg.addr());
    let o = env.run(&["run", "--pull", "never", &name, "/bin/probe", "pid"]);
    o.assert_error("--pull never");
    let o = env.run(&["run", &name, "/bin/probe", "pid"]);
    assert!(o.status(), "{}", o.stderr());
    assert!(o.stdout().contains(r#""pid":2"#), "{}", o.stdout());
    let mark = reg.mark();
    assert!(env.run(&["run", "--pull", "never", &name, "/bin/probe", "exit", "0"]).status());
    assert!(env.run(&["run", &name, "/bin/probe", "exit", "0"]).status());
    assert!(reg.blob_gets_since(mark).is_empty(), "--pull missing downloaded an image it had");
}

#[test]
fn tls_with_a_ca_in_cert_dir_and_refused_without_it() {
    let reg = Registry::start(RegistryOptions::default().with_tls());
    reg.push_image(&image("tls", "amd64"), "secure/app:1");
    let env = Env::new();
    let name = format!("{}/secure/app:1", reg.addr());
    // Loopback may fall back to plain HTTP, but a TLS server refuses that: still an error.
    pull(&env, &[&name]).assert_error("certificate");
    let certs = reg.write_certs_d(&env.path("certs.d"));
    let o = pull(&env, &["--cert-dir", certs.to_str().unwrap(), &name]);
    assert!(o.status(), "{}", o.stderr());
    assert_eq!(layer_file(&env, &name, "tag"), "tls amd64");
}

#[test]
fn basic_auth_from_the_auth_file_and_login() {
    let reg = Registry::start(RegistryOptions::default().with_htpasswd("alice", "s3cret"));
    reg.push_image(&image("basic", "amd64"), "private/app:1");
    let env = Env::new();
    let name = format!("{}/private/app:1", reg.addr());
    pull(&env, &[&name]).assert_error("credentials");
    // coracle login writes the auth file (the containers format) after checking the password.
    let login = |pw: &str| {
        let mut c = env.cmd();
        c.args(["login", "-u", "alice", "--password-stdin", &reg.addr()])
            .env("REGISTRY_AUTH_FILE", env.path("auth.json"));
        c.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), format!("{pw}\n").as_bytes()).unwrap();
        Out(child.wait_with_output().unwrap())
    };
    login("wrong").assert_error("refused");
    assert!(!env.path("auth.json").exists(), "a refused login wrote credentials");
    let o = login("s3cret");
    assert!(o.status(), "{}", o.stderr());
    let o = pull(&env, &[&name]);
    assert!(o.status(), "{}", o.stderr());
    let mut c = env.cmd();
    c.args(["logout", &reg.addr()]).env("REGISTRY_AUTH_FILE", env.path("auth.json"));
    assert!(c.status().unwrap().success());
    let other = Env::new();
    reg.write_auth_json(&other.path("auth.json"));
    assert!(pull(&other, &[&name]).status(), "credentials written by other tools are read");
}

#[test]
fn bearer_token_auth_scopes_and_refresh() {
    let reg = Registry::start(RegistryOptions::default().with_token());
    reg.push_image(&image("tok", "amd64"), "tokened/app:1");
    let env = Env::new();
    let name = format!("{}/tokened/app:1", reg.addr());
    let before = reg.token_requests().len();
    // The first token the server issues is already expired: the registry refuses it and
    // coracle must fetch a fresh one.
    reg.token_server().expire_next(1);
    let o = pull(&env, &[&name]);
    assert!(o.status(), "{}", o.stderr());
    let reqs = &reg.token_requests()[before..];
    assert!(reqs.len() >= 2, "no refresh after a refused token: {reqs:?}");
    assert!(reqs.iter().all(|r| r.scopes == ["repository:tokened/app:pull"]), "{reqs:?}");
    assert!(reqs.iter().all(|r| !r.credentials), "credentials sent although none are configured");

    let reg = Registry::start(RegistryOptions::default().with_token().with_token_credentials("bob", "pw"));
    reg.push_image(&image("tok2", "amd64"), "locked/app:1");
    let env = Env::new();
    let name = format!("{}/locked/app:1", reg.addr());
    pull(&env, &[&name]).assert_error("token server");
    reg.write_auth_json(&env.path("auth.json"));
    let o = pull(&env, &[&name]);
    assert!(o.status(), "{}", o.stderr());
    assert!(reg.token_requests().iter().any(|r| r.user.as_deref() == Some("bob")));
}

#[test]
fn multi_platform_index_and_docker_manifest_list() {
    let reg = Registry::start(RegistryOptions::default());
    let (amd, arm) = (image("multi", "amd64"), image("multi", "arm64"));
    reg.push_multiarch(&[&arm, &amd], "multi/oci:1");
    reg.push_docker_list(&[&arm, &amd], "multi/docker:1");
    for repo in ["multi/oci:1", "multi/docker:1"] {
        let env = Env::new();
        let name = format!("{}/{repo}", reg.addr());
        assert!(pull(&env, &[&name]).status());
        assert_eq!(layer_file(&env, &name, "tag"), "multi amd64", "{repo}: the host's platform");
        let env = Env::new();
        let o = pull(&env, &["--platform", "linux/arm64", &name]);
        assert!(o.status(), "{}", o.stderr());
        assert_eq!(env.inspect(&name)["platform"]["architecture"], "arm64");
        let env = Env::new();
        pull(&env, &["--platform", "linux/s390x", &name]).assert_error("it has:");
    }
}

#[test]
fn zstd_layers_and_one_download_per_layer_for_concurrent_pulls() {
    let reg = Registry::start(RegistryOptions::default());
    let big = build(&Image::new(vec![
        (LayerBuilder::new().file("a", 0o644, &vec![1u8; 3 << 20]).finish(), Comp::Gzip),
        (LayerBuilder::new().file("b", 0o644, &vec![2u8; 3 << 20]).finish(), Comp::Gzip),
    ]));
    let zstd_digests = reg.push_image_zstd(&big, "z/app:1");
    let env = Env::new();
    let name = format!("{}/z/app:1", reg.addr());
    let mark = reg.mark();
    let children: Vec<_> = (0..4)
        .map(|_| {
            let mut c = env.cmd();
            c.args(["pull", "-q", &name]).env("REGISTRY_AUTH_FILE", env.path("auth.json"));
            c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let gets = reg.blob_gets_since(mark);
    for d in &zstd_digests {
        assert_eq!(gets.iter().filter(|g| *g == d).count(), 1, "layer {d} downloaded {} times: {gets:?}", gets.len());
    }
    let info = env.inspect(&name);
    assert!(info["layer_blobs"][0]["media_type"].as_str().unwrap().ends_with("zstd"));
    assert!(env.run(&["fsck"]).status());
    let _ = Command::new("true").status();
}

/// registries.conf: a mirror serves the image of a registry that has not got it; the
/// image keeps the name asked for.
#[test]
fn registries_conf_mirror_is_tried_first() {
    let origin = Registry::start(RegistryOptions::default());
    let mirror = Registry::start(RegistryOptions::default());
    let img = image("mirrored", "amd64");
    mirror.push_image(&img, "cache/team/app:1");
    let env = Env::new();
    let conf = env.path("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nlocation = \"{}\"\n\n[[registry.mirror]]\nlocation = \"{}/cache\"\ninsecure = true\n",
            origin.addr(),
            mirror.addr()
        ),
    )
    .unwrap();
    let name = format!("{}/team/app:1", origin.addr());
    let mut c = env.cmd();
    c.args(["pull", &name]).env("CONTAINERS_REGISTRIES_CONF", &conf).env("REGISTRY_AUTH_FILE", env.path("auth.json"));
    let o = Out(c.output().unwrap());
    assert!(o.status(), "{}", o.stderr());
    assert_eq!(o.stdout().trim(), img.manifest.digest);
    assert_eq!(env.inspect(&name)["names"], serde_json::json!([name]));
    // Without the mirror the origin has nothing.
    pull(&env, &[&name]).assert_error("HTTP 404");
}
