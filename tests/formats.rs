//! Importing every local format the ecosystem produces, and the store commands around it
//! (images, inspect, tag, rmi): our own fixtures plus archives written by skopeo and umoci.

mod util;

use std::process::Command;

use util::*;

fn small_image(tag: &str) -> Built {
    let base = LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/os-release", 0o644, b"ID=test\n")
        .file("etc/tag", 0o644, tag.as_bytes())
        .finish();
    build(&Image::new(vec![(base, Comp::Gzip)]))
}

#[test]
fn pull_oci_dir_names_image_from_ref_name() {
    let env = Env::new();
    let img = small_image("a");
    write_oci_layout(&env.path("layout"), &[(&img, Some("v1"))]);
    let out = env.ok(&["pull", &format!("oci:{}", env.path("layout").display())]);
    assert_eq!(out.trim(), img.manifest.digest, "pull prints the digest last on stdout");
    let images = env.images();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["names"], serde_json::json!(["localhost/layout:v1"]));
    assert_eq!(images[0]["digest"], img.manifest.digest);
    assert_eq!(images[0]["config"], img.config.digest);
    assert_eq!(images[0]["layers"], 1);
    assert_eq!(images[0]["size"], img.tars[0].len());
    assert_eq!(images[0]["created"], "2023-11-14T22:13:20Z");
    let layer = env.layer_root(&img.diff_ids[0]);
    assert_eq!(std::fs::read(layer.join("etc/tag")).unwrap(), b"a");
}

#[test]
fn pull_with_tag_and_selector() {
    let env = Env::new();
    let (a, b) = (small_image("a"), small_image("b"));
    write_oci_layout(&env.path("layout"), &[(&a, Some("a")), (&b, Some("b"))]);
    let src = format!("oci:{}:b", env.path("layout").display());
    env.ok(&["pull", "--tag", "test/pick:1", &src]);
    let images = env.images();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["names"], serde_json::json!(["docker.io/test/pick:1"]));
    assert_eq!(images[0]["digest"], b.manifest.digest);
    // A selector that names nothing lists what is there.
    env.run(&["pull", &format!("oci:{}:zzz", env.path("layout").display())]).assert_error("it has: a, b");
}

#[test]
fn all_three_compressions_and_shared_layers_stored_once() {
    let env = Env::new();
    let base = LayerBuilder::new().dir("usr", 0o755).file("usr/base", 0o644, &vec![7u8; 100_000]).finish();
    let top = LayerBuilder::new().file("top", 0o644, b"top").finish();
    let mut digests = Vec::new();
    for (i, c) in [Comp::None, Comp::Gzip, Comp::Zstd].into_iter().enumerate() {
        let img = build(&Image::new(vec![(base.clone(), c), (top.clone(), c)]));
        write_oci_layout(&env.path(&format!("l{i}")), &[(&img, Some("x"))]);
        env.ok(&["pull", "--tag", &format!("c/{i}"), &format!("oci:{}", env.path(&format!("l{i}")).display())]);
        digests.push(img.manifest.digest.clone());
    }
    let layers = std::fs::read_dir(env.root().join("layers/sha256")).unwrap().count();
    assert_eq!(layers, 2, "the same two tar streams are extracted once, whatever their compression");
    assert_eq!(env.images().len(), 3);
    // Every compressed blob is kept (fsck re-hashes them).
    assert_eq!(std::fs::read_dir(env.root().join("blobs/sha256")).unwrap().count(), 3 * 2 + 3 * 2 - 2);
    let o = env.run(&["fsck"]);
    assert!(o.status(), "{}", o.stdout());
}

#[test]
fn oci_archive_and_load_detects_format() {
    let env = Env::new();
    let img = small_image("arch");
    write_oci_layout(&env.path("layout"), &[(&img, Some("docker.io/library/arch:2"))]);
    tar_dir(&env.path("layout"), &env.path("img.tar"));
    env.ok(&["pull", &format!("oci-archive:{}", env.path("img.tar").display())]);
    assert_eq!(env.images()[0]["names"], serde_json::json!(["docker.io/library/arch:2"]));
    let env2 = Env::new();
    let out = env2.ok(&["load", "-i", env.path("img.tar").to_str().unwrap()]);
    assert_eq!(out.trim(), "Loaded image: docker.io/library/arch:2");
}

#[test]
fn docker_archive_legacy_and_new_layouts() {
    let env = Env::new();
    let base = LayerBuilder::new().file("base", 0o644, b"base").finish();
    let one = build(&Image::new(vec![
        (base.clone(), Comp::None),
        (LayerBuilder::new().file("one", 0o644, b"1").finish(), Comp::None),
    ]));
    let two = build(&Image::new(vec![
        (base, Comp::None),
        (LayerBuilder::new().file("two", 0o644, b"2").finish(), Comp::None),
    ]));
    write_docker_archive(
        &env.path("save.tar"),
        &[(&one, &["busybox:1"]), (&two, &["example.com/two:2", "two:latest"])],
    );
    let out = env.ok(&["load", "-i", env.path("save.tar").to_str().unwrap()]);
    assert!(out.contains("Loaded image: docker.io/library/busybox:1"), "{out}");
    assert!(out.contains("Loaded image: example.com/two:2"), "{out}");
    assert!(out.contains("Loaded image: docker.io/library/two:latest"), "{out}");
    assert_eq!(env.images().len(), 2);
    assert_eq!(std::fs::read_dir(env.root().join("layers/sha256")).unwrap().count(), 3);
    // Loading the same archive again gives the same image digests (the manifest we write
    // for a docker-archive is deterministic).
    let before: Vec<_> = env.images().iter().map(|i| i["digest"].clone()).collect();
    env.ok(&["load", "-i", env.path("save.tar").to_str().unwrap()]);
    let after: Vec<_> = env.images().iter().map(|i| i["digest"].clone()).collect();
    assert_eq!(before, after);

    // docker-archive:FILE:NAME:TAG picks one image.
    let env2 = Env::new();
    env2.ok(&["pull", &format!("docker-archive:{}:two:latest", env.path("save.tar").display())]);
    assert_eq!(env2.images()[0]["names"], serde_json::json!(["docker.io/library/two:latest"]));
    env2.run(&["pull", &format!("docker-archive:{}:nope:1", env.path("save.tar").display())]).assert_error("it has:");

    // Docker 25+ layout: OCI blobs plus manifest.json.
    let env3 = Env::new();
    write_docker_oci_archive(&env3.path("new.tar"), &one, &["new/style:1"]);
    let out = env3.ok(&["load", "-i", env3.path("new.tar").to_str().unwrap()]);
    assert_eq!(out.trim(), "Loaded image: docker.io/new/style:1");
    let layer = env3.layer_root(&one.diff_ids[1]);
    assert_eq!(std::fs::read(layer.join("one")).unwrap(), b"1");
}

#[test]
fn compressed_docker_save_loads() {
    let env = Env::new();
    let img = small_image("gz");
    write_docker_archive(&env.path("save.tar"), &[(&img, &["gz:1"])]);
    let gz = Comp::Gzip.apply(&std::fs::read(env.path("save.tar")).unwrap());
    std::fs::write(env.path("save.tar.gz"), gz).unwrap();
    let out = env.ok(&["load", "-i", env.path("save.tar.gz").to_str().unwrap()]);
    assert_eq!(out.trim(), "Loaded image: docker.io/library/gz:1");
    assert_eq!(std::fs::read_dir(env.root().join("tmp")).unwrap().count(), 0, "the spooled copy is removed");
}

#[test]
fn import_rootfs_from_file_and_stdin() {
    let env = Env::new();
    let tar = LayerBuilder::new().dir("bin", 0o755).file("bin/hello", 0o755, b"#!/bin/sh\necho hi\n").finish();
    std::fs::write(env.path("rootfs.tar.gz"), Comp::Gzip.apply(&tar)).unwrap();
    let d1 = env.ok(&["import", env.path("rootfs.tar.gz").to_str().unwrap(), "test/rootfs:1"]);
    assert!(d1.trim().starts_with("sha256:"));
    let d2 = env.run_stdin(&["import", "-", "localhost/stdin:2"], &Comp::Zstd.apply(&tar));
    assert!(d2.status(), "{}", d2.stderr());
    let info = env.inspect("test/rootfs:1");
    assert_eq!(info["names"], serde_json::json!(["docker.io/test/rootfs:1"]));
    assert_eq!(info["layers"][0], sha256(&tar));
    assert_eq!(info["platform"]["architecture"], "amd64");
    assert_eq!(info["layer_blobs"][0]["media_type"], "application/vnd.oci.image.layer.v1.tar+gzip");
    let info2 = env.inspect("localhost/stdin:2");
    assert_eq!(info2["layers"][0], sha256(&tar), "the same rootfs gives the same diff-id");
    assert_eq!(std::fs::read_dir(env.root().join("layers/sha256")).unwrap().count(), 1);
}

#[test]
fn multi_platform_index_picks_host_and_lists_platforms_when_none_match() {
    let env = Env::new();
    let mk = |arch: &str, variant: Option<&str>| {
        let mut i = Image::new(vec![(LayerBuilder::new().file("arch", 0o644, arch.as_bytes()).finish(), Comp::Gzip)]);
        i.arch = arch.into();
        i.variant = variant.map(Into::into);
        build(&i)
    };
    let (amd, arm, armv7) = (mk("amd64", None), mk("arm64", Some("v8")), mk("arm", Some("v7")));
    write_multiarch_layout(&env.path("multi"), &[&arm, &amd, &armv7], "multi");
    env.ok(&["pull", &format!("oci:{}", env.path("multi").display())]);
    let imgs = env.images();
    assert_eq!(imgs[0]["digest"], amd.manifest.digest);
    assert_eq!(imgs[0]["platform"], "linux/amd64");

    write_multiarch_layout(&env.path("noamd"), &[&arm, &armv7], "noamd");
    env.run(&["pull", &format!("oci:{}", env.path("noamd").display())])
        .assert_error("it has: linux/arm64/v8, linux/arm/v7");
}

#[test]
fn tag_rmi_and_lookup_by_id() {
    let env = Env::new();
    let img = small_image("t");
    write_oci_layout(&env.path("layout"), &[(&img, Some("t"))]);
    env.ok(&["pull", "--tag", "one:1", &format!("oci:{}", env.path("layout").display())]);
    let id = &hex(&img.manifest.digest)[..12];
    env.ok(&["tag", id, "localhost/two:2"]);
    assert_eq!(
        env.inspect(&img.manifest.digest)["names"],
        serde_json::json!(["docker.io/library/one:1", "localhost/two:2"])
    );
    assert_eq!(env.inspect(&format!("one@{}", img.manifest.digest))["id"], hex(&img.manifest.digest));
    let table = env.ok(&["images"]);
    assert!(table.contains("docker.io/library/one") && table.contains(id), "{table}");
    assert_eq!(env.ok(&["rmi", "one:1"]).trim(), "Untagged: docker.io/library/one:1");
    assert_eq!(env.images().len(), 1, "still named localhost/two:2");
    let out = env.ok(&["rmi", "localhost/two:2"]);
    assert!(out.contains("Deleted: sha256:"), "{out}");
    assert!(env.images().is_empty());
    env.run(&["inspect", "one:1"]).assert_error("not found");
    env.run(&["rmi", "nothing:here"]).assert_error("not found");
    let gc = env.ok(&["gc"]);
    assert!(gc.contains("1 layers") && gc.contains("3 blobs"), "{gc}");
    assert!(env.store_objects().is_empty(), "{:?}", env.store_objects());
}

#[test]
fn untagged_image_is_listed_as_none_and_survives_gc() {
    let env = Env::new();
    let img = small_image("n");
    write_oci_layout(&env.path("layout"), &[(&img, None)]);
    env.ok(&["pull", &format!("oci:{}", env.path("layout").display())]);
    let table = env.ok(&["images"]);
    assert!(table.contains("<none>"), "{table}");
    env.ok(&["gc"]);
    assert_eq!(env.images().len(), 1);
}

#[test]
fn skopeo_and_umoci_produced_images_import() {
    need_tool("skopeo");
    need_tool("umoci");
    let env = Env::new();
    let img = small_image("peer");
    write_oci_layout(&env.path("ours"), &[(&img, Some("v1"))]);
    let ours = format!("oci:{}:v1", env.path("ours").display());
    // skopeo rewrites to each format; we must take all of them.
    let targets = [
        format!("docker-archive:{}:peer/docker:1", env.path("d.tar").display()),
        format!("oci-archive:{}:v2", env.path("o.tar").display()),
        format!("oci:{}:v3", env.path("sko").display()),
    ];
    for t in &targets {
        sh(Command::new("skopeo").args(["--insecure-policy", "copy", "--quiet", &ours, t]));
    }
    // umoci: create an image from scratch and add a layer with its own tooling.
    let um = env.path("umoci");
    sh(Command::new("umoci").args(["init", "--layout"]).arg(&um));
    sh(Command::new("umoci").args(["new", "--image"]).arg(format!("{}:u", um.display())));
    sh(Command::new("umoci").args(["unpack", "--image"]).arg(format!("{}:u", um.display())).arg(env.path("bundle")));
    std::fs::write(env.path("bundle/rootfs/hello"), b"from umoci").unwrap();
    sh(Command::new("umoci").args(["repack", "--image"]).arg(format!("{}:u", um.display())).arg(env.path("bundle")));

    env.ok(&["pull", &targets[0]]);
    env.ok(&["pull", &targets[1]]);
    env.ok(&["pull", &targets[2]]);
    env.ok(&["pull", "--tag", "umoci:1", &format!("oci:{}:u", um.display())]);
    let names: Vec<String> = env
        .images()
        .iter()
        .flat_map(|i| i["names"].as_array().unwrap().clone())
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    for n in ["docker.io/peer/docker:1", "localhost/o:v2", "localhost/sko:v3", "docker.io/library/umoci:1"] {
        assert!(names.contains(&n.to_owned()), "{n} missing from {names:?}");
    }
    let u = env.inspect("umoci:1");
    let top = u["layers"].as_array().unwrap().last().unwrap().as_str().unwrap().to_owned();
    assert_eq!(std::fs::read(env.layer_root(&top).join("hello")).unwrap(), b"from umoci");
    let o = env.run(&["fsck"]);
    assert!(o.status(), "{}", o.stdout());
}

/// A bad layer after good ones: the good ones were extracted, but nothing of the image
/// may become visible (no layer dir, no blob, no record), and the tmp/ copies are gone.
#[test]
fn regression_failed_last_layer_commits_no_earlier_layer() {
    let env = Env::new();
    let good1 = LayerBuilder::new().file("a", 0o644, b"a").finish();
    let good2 = LayerBuilder::new().file("b", 0o644, b"b").finish();
    let bad = LayerBuilder::new().symlink("evil", "/etc").file("evil/x", 0o644, b"x").finish();
    let img = build(&Image::new(vec![(good1, Comp::Gzip), (good2, Comp::Zstd), (bad, Comp::Gzip)]));
    write_oci_layout(&env.path("layout"), &[(&img, Some("t"))]);
    env.run(&["pull", &format!("oci:{}", env.path("layout").display())]).assert_error("evil/x");
    assert!(env.store_objects().is_empty(), "{:?}", env.store_objects());
    assert_eq!(std::fs::read_dir(env.root().join("tmp")).unwrap().count(), 0);
}
