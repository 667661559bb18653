//! `coracle pull` (registries and local transports), `coracle load`, `coracle import`.

use clap::Args;

use super::{CmdResult, Failure};
use crate::image::{self, Imported};
use crate::reference::Reference;
use crate::store::Store;

#[derive(Args, Debug)]
pub struct PullArgs {
    /// Name the image NAME[:TAG] instead of the name the source gives it (local sources)
    #[arg(long, value_name = "NAME[:TAG]")]
    tag: Option<Reference>,
    /// The platform to pull from a multi-platform image (default: this host's)
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Verify the registry's TLS certificate (false also allows plain HTTP)
    #[arg(long = "tls-verify", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub tls_verify: Option<bool>,
    /// Directory with the registry's CA (*.crt) and client certificate (*.cert, *.key),
    /// instead of /etc/containers/certs.d/HOST and /etc/docker/certs.d/HOST
    #[arg(long = "cert-dir", value_name = "DIR")]
    pub cert_dir: Option<std::path::PathBuf>,
    /// No progress output (the digest is still printed on stdout)
    #[arg(short = 'q', long)]
    quiet: bool,
    /// NAME[:TAG][@DIGEST] or docker://NAME… from a registry; oci:DIR[:REF],
    /// oci-archive:FILE[:REF] or docker-archive:FILE[:NAME:TAG|:@N] from local files
    source: String,
}

/// Local sources by their transport prefix; anything else names a registry image.
pub const LOCAL_TRANSPORTS: [&str; 3] = ["oci:", "oci-archive:", "docker-archive:"];

/// `OS/ARCH[/VARIANT]`.
pub fn parse_platform(s: &str) -> Result<crate::store::images::Platform, Failure> {
    let parts: Vec<&str> = s.split('/').collect();
    match parts.as_slice() {
        [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => {
            Ok(crate::image::platform::normalize(os, arch, parts.get(2).copied()))
        }
        _ => Err(Failure {
            code: super::EXIT_ERROR,
            message: format!("invalid platform {s:?}: expected OS/ARCH[/VARIANT]"),
        }),
    }
}

/// Pulls `name` from its registry, with progress on stderr unless `quiet`.
pub fn pull_registry(
    store: &Store,
    name: &str,
    platform: Option<&str>,
    tls: crate::registry::client::Tls,
    quiet: bool,
) -> Result<Imported, Failure> {
    let r: Reference = name.parse()?;
    let bar = super::progress::PullProgress::new();
    let report = |p: &crate::registry::Progress| bar.report(p);
    let opts = crate::registry::PullOptions {
        platform: platform.map(parse_platform).transpose()?,
        tls,
        progress: if quiet { None } else { Some(&report) },
    };
    let imported = crate::registry::pull(store, &r, &opts);
    bar.finish();
    let imported = imported?;
    if quiet {
        return Ok(imported);
    }
    eprintln!(
        "Pulled {r}: {} layers, {} ({})",
        imported.record.layers.len(),
        super::output::human_size(imported.record.size),
        imported.record.platform
    );
    Ok(imported)
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// The archive to load (- for standard input)
    #[arg(short, long, value_name = "FILE")]
    input: String,
    /// Name the image NAME[:TAG] (the archive must hold one image)
    #[arg(long, value_name = "NAME[:TAG]")]
    tag: Option<Reference>,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// A tarball of a root filesystem (plain, gzip or zstd), or - for standard input
    file: String,
    /// The new image's name
    name: Option<Reference>,
}

pub fn pull(store: &Store, a: PullArgs) -> CmdResult {
    if !LOCAL_TRANSPORTS.iter().any(|t| a.source.starts_with(t)) {
        if a.tag.is_some() {
            return Err(Failure { code: super::EXIT_ERROR, message: "--tag applies to local sources only".into() });
        }
        let name = a.source.strip_prefix("docker://").unwrap_or(&a.source);
        let tls = crate::registry::client::Tls { verify: a.tls_verify.unwrap_or(true), cert_dir: a.cert_dir.clone() };
        let imported = pull_registry(store, name, a.platform.as_deref(), tls, a.quiet)?;
        println!("{}", imported.record.digest);
        return Ok(0);
    }
    if a.tls_verify.is_some() || a.cert_dir.is_some() {
        return Err(Failure {
            code: super::EXIT_ERROR,
            message: "--tls-verify and --cert-dir apply to registries only".into(),
        });
    }
    let platform = a.platform.as_deref().map(parse_platform).transpose()?;
    let imported = image::pull(store, &a.source, a.tag.as_ref(), platform.as_ref())?;
    for i in &imported {
        for n in &i.names {
            eprintln!("Copied {} as {}", a.source, n);
        }
    }
    // The digests last, on stdout, for scripts.
    for i in &imported {
        println!("{}", i.record.digest);
    }
    Ok(0)
}

pub fn load(store: &Store, a: LoadArgs) -> CmdResult {
    let imported = image::load(store, &a.input, a.tag.as_ref())?;
    print_loaded(&imported);
    Ok(0)
}

fn print_loaded(imported: &[Imported]) {
    for i in imported {
        if i.names.is_empty() {
            println!("Loaded image ID: {}", i.record.digest);
        }
        for n in &i.names {
            println!("Loaded image: {n}");
        }
    }
}

pub fn import(store: &Store, a: ImportArgs) -> CmdResult {
    let imported = image::import_rootfs(store, &a.file, a.name.as_ref())?;
    println!("{}", imported.record.digest);
    Ok(0)
}
