//! `coracle run`: docker-style flags in, one `run::launch::run` call, the app's exit
//! status out (mirrored: exit N → N, death by signal S → death by S).

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::{CmdResult, Failure};
use crate::image::{self, lookup};
use crate::run::capabilities;
use crate::run::launch::{self, Launch, Outcome, Scratch};
use crate::run::mounts::{PlanOptions, Volume};
use crate::run::spec::{self, ImageDefaults, ProcessOptions};
use crate::run::{notify, seccomp};
use crate::store::Store;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Network {
    /// The host's network namespace (the default)
    Host,
    /// A new network namespace with only `lo` up
    None,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum PullPolicy {
    Missing,
    Always,
    Never,
}

#[derive(Args, Debug)]
#[command(trailing_var_arg = true)]
pub struct RunArgs {
    /// A name for the container (default: its short ID)
    #[arg(long)]
    name: Option<String>,
    /// Set an environment variable (K=V), or pass K from coracle's environment
    #[arg(short = 'e', long = "env", value_name = "K=V|K")]
    env: Vec<String>,
    /// Read environment variables from a file (K=V lines, # comments)
    #[arg(long = "env-file", value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// Working directory inside the container
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// USER[:GROUP] or UID[:GID], resolved in the image's /etc/passwd and /etc/group
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Override the image's ENTRYPOINT ("" clears it; the image's CMD is dropped)
    #[arg(long)]
    entrypoint: Option<String>,
    /// Bind mount SRC:DST[:ro]
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST[:ro]")]
    volume: Vec<Volume>,
    /// Mount an empty tmpfs at DST
    #[arg(long, value_name = "DST")]
    tmpfs: Vec<String>,
    /// Make the container's root filesystem read-only (volumes and tmpfs stay writable)
    #[arg(long)]
    read_only: bool,
    /// Where the container's writable layer lives: `tmpfs[:SIZE]` (memory, the default;
    /// SIZE as tmpfs takes it, e.g. 512m or 25%) or `store` (disk, under the store root,
    /// for containers that write more than memory holds)
    #[arg(long, value_name = "tmpfs[:SIZE]|store", default_value = "tmpfs")]
    scratch: Scratch,
    /// The container's hostname (default: the host's)
    #[arg(long)]
    hostname: Option<String>,
    /// Add a capability (NAME or CAP_NAME, or ALL)
    #[arg(long = "cap-add", value_name = "CAP")]
    cap_add: Vec<String>,
    /// Drop a capability (NAME or CAP_NAME, or ALL)
    #[arg(long = "cap-drop", value_name = "CAP")]
    cap_drop: Vec<String>,
    /// All capabilities, /sys writable, no masked or read-only paths, no no_new_privs
    #[arg(long)]
    privileged: bool,
    /// Run a minimal init as PID 1 that forwards signals and reaps zombies (the default)
    #[arg(long, overrides_with = "no_init")]
    init: bool,
    /// Run the app itself as PID 1
    #[arg(long = "no-init", overrides_with = "init")]
    no_init: bool,
    /// Keep standard input connected (without it the app's stdin is /dev/null)
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a pseudo-terminal
    #[arg(short = 't', long)]
    tty: bool,
    /// Write the app's host PID to FILE
    #[arg(long = "pid-file", value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// Write the container's ID to FILE (atomically; removed when the container exits). A
    /// FILE naming a running container is an error; one left by a killed run is replaced
    #[arg(long, value_name = "FILE")]
    cidfile: Option<PathBuf>,
    /// If a running container has this --name, stop it first (SIGTERM, SIGKILL after 10 s)
    #[arg(long, requires = "name")]
    replace: bool,
    /// With NOTIFY_SOCKET set (systemd Type=notify): `container` relays the app's sd_notify
    /// messages from coracle's PID, `started` sends READY=1 once the app is exec'd,
    /// `ignore` sends nothing
    #[arg(long, value_enum, default_value = "container", value_name = "MODE")]
    sdnotify: notify::Mode,
    /// Pass N more open fds to the app: 3, 4, … (after socket activation's LISTEN_FDS)
    #[arg(long = "preserve-fds", value_name = "N", default_value_t = 0)]
    preserve_fds: u16,
    /// seccomp=unconfined, or seccomp=FILE (a docker-format JSON profile) instead of the
    /// default profile
    #[arg(long = "security-opt", value_name = "seccomp=unconfined|FILE")]
    security_opt: Vec<String>,
    /// Accepted for docker compatibility: containers are always removed on exit
    #[arg(long)]
    rm: bool,
    /// Network namespace
    #[arg(long, value_enum, default_value = "host")]
    network: Network,
    /// Pull the image from its registry: when missing from the store, always, or never
    #[arg(long, value_enum, default_value = "missing")]
    pull: PullPolicy,
    /// The platform to pull (default: this host's)
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<String>,
    /// Verify the registry's TLS certificate when pulling (false also allows plain HTTP)
    #[arg(long = "tls-verify", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    tls_verify: Option<bool>,
    /// Directory with the registry's CA and client certificate (see `coracle pull --cert-dir`)
    #[arg(long = "cert-dir", value_name = "DIR")]
    cert_dir: Option<PathBuf>,
    /// The image: a name, ID or digest in the store, or oci:DIR[:REF], oci-archive:FILE[:REF], docker-archive:FILE[:NAME:TAG]
    image: String,
    /// The command and its arguments (default: the image's ENTRYPOINT and CMD)
    #[arg(allow_hyphen_values = true)]
    command: Vec<String>,
}

pub fn run(store: &Store, state: PathBuf, a: RunArgs) -> CmdResult {
    let (record, image_name) = if super::import::LOCAL_TRANSPORTS.iter().any(|t| a.image.starts_with(t)) {
        if a.tls_verify.is_some() || a.cert_dir.is_some() {
            return Err(fail("--tls-verify and --cert-dir apply to registries only".into()));
        }
        let platform = a.platform.as_deref().map(super::import::parse_platform).transpose()?;
        let imported = image::pull(store, &a.image, None, platform.as_ref())?;
        let first = imported.into_iter().next().ok_or_else(|| fail(format!("{} holds no image", a.image)))?;
        (first.record, a.image.clone())
    } else {
        let local_name = a.image.strip_prefix("docker://").unwrap_or(&a.image);
        let found = if a.pull == PullPolicy::Always {
            None
        } else {
            lookup::find(store, local_name).map(Some).or_else(|e| match e {
                image::ImageError::NotFound(_) => Ok(None),
                e => Err(e),
            })?
        };
        match (found, a.pull) {
            (Some(r), _) => (r, a.image.clone()),
            (None, PullPolicy::Never) => {
                return Err(fail(format!(
                    "image {:?} is not in the store and --pull never forbids pulling it: bring it in with `coracle pull {}`",
                    a.image, a.image
                )))
            }
            (None, _) => {
                let name = a.image.strip_prefix("docker://").unwrap_or(&a.image);
                {
                    let tls = crate::registry::client::Tls { verify: a.tls_verify.unwrap_or(true), cert_dir: a.cert_dir.clone() };
                    (super::import::pull_registry(store, name, a.platform.as_deref(), tls, false)?.record, a.image.clone())
                }
            }
        }
    };
    let cfg: serde_json::Value = serde_json::from_slice(&store.read_blob(&record.config)?)?;
    let c = &cfg["config"];
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|x| x.as_str().map(str::to_owned)).collect()
    };
    let defaults = ImageDefaults {
        env: strings(&c["Env"]),
        entrypoint: strings(&c["Entrypoint"]),
        cmd: strings(&c["Cmd"]),
        workdir: c["WorkingDir"].as_str().map(str::to_owned),
        user: c["User"].as_str().filter(|u| !u.is_empty()).map(str::to_owned),
    };
    let mut env_files = Vec::new();
    for f in &a.env_file {
        env_files.push(std::fs::read_to_string(f).map_err(|e| fail(format!("--env-file {}: {e}", f.display())))?);
    }
    let hostname = a.hostname.clone().unwrap_or_else(launch::host_hostname);
    let process = spec::process(
        &defaults,
        &ProcessOptions {
            entrypoint: a.entrypoint.clone(),
            cmd: a.command.clone(),
            env_files,
            env: a.env.clone(),
            workdir: a.workdir.clone(),
            user: a.user.clone(),
            tty: a.tty,
            hostname: hostname.clone(),
        },
        &|k| std::env::var(k).ok(),
    )?;
    for v in &a.volume {
        if !v.source.exists() {
            return Err(fail(format!("volume source {} does not exist", v.source.display())));
        }
    }
    for t in &a.tmpfs {
        if !t.starts_with('/') {
            return Err(fail(format!("--tmpfs {t:?}: the target must be an absolute path")));
        }
    }
    let mut process = process;
    let mut own_pid_env = Vec::new();
    // sd_notify: the container gets its own socket (container mode), never coracle's.
    let notify = notify::Target::from_env().filter(|_| a.sdnotify != notify::Mode::Ignore).map(|t| (a.sdnotify, t));
    let our_pid = std::process::id().to_string();
    let for_us = |pid_var: &str| std::env::var(pid_var).map_or(true, |p| p.trim() == our_pid);
    if let Some((notify::Mode::Container, _)) = &notify {
        set_env(&mut process.env, "NOTIFY_SOCKET", notify::CONTAINER_PATH);
        // The watchdog is the app's to serve, through the relay.
        if let (Ok(usec), true) = (std::env::var("WATCHDOG_USEC"), for_us("WATCHDOG_PID")) {
            set_env(&mut process.env, "WATCHDOG_USEC", &usec);
            own_pid_env.push("WATCHDOG_PID".to_owned());
        }
    }
    // Socket activation (sd_listen_fds(3)): LISTEN_FDS meant for this process passes on
    // to the app, with LISTEN_PID its own PID.
    let mut listen = 0;
    if let (Ok(n), true) = (std::env::var("LISTEN_FDS"), for_us("LISTEN_PID")) {
        listen = n
            .trim()
            .parse::<u16>()
            .map_err(|_| fail(format!("LISTEN_FDS={n:?} in the environment is not a number of file descriptors")))?;
        if listen > 0 {
            set_env(&mut process.env, "LISTEN_FDS", &listen.to_string());
            if let Ok(names) = std::env::var("LISTEN_FDNAMES") {
                set_env(&mut process.env, "LISTEN_FDNAMES", &names);
            }
            own_pid_env.push("LISTEN_PID".to_owned());
        }
    }
    let preserve = i32::from(listen) + i32::from(a.preserve_fds);
    for n in 3..3 + preserve {
        if nix::fcntl::fcntl(unsafe_fd(n), nix::fcntl::FcntlArg::F_GETFD).is_err() {
            let what = if n < 3 + i32::from(listen) { format!("LISTEN_FDS={listen}") } else { "--preserve-fds".into() };
            return Err(fail(format!("{what}: file descriptor {n} is not open")));
        }
    }
    if let Some(f) = &a.cidfile {
        if let Ok(old) = std::fs::read_to_string(f) {
            let old = old.trim();
            if let Ok(Some(running)) = crate::run::state::find(&state, old).map(|s| s.filter(|s| s.id == old)) {
                return Err(fail(format!(
                    "--cidfile {}: names running container {} ({})",
                    f.display(),
                    &running.id[..12],
                    running.name
                )));
            }
        }
    }
    let caps = capabilities::compute(&a.cap_add, &a.cap_drop, a.privileged, &capabilities::own())?;
    let mut profile = seccomp::Profile::Default;
    for o in &a.security_opt {
        match o.split_once(['=', ':']) {
            Some(("seccomp", v)) if !v.is_empty() => profile = seccomp::Profile::parse(v),
            _ => return Err(fail(format!("--security-opt {o:?}: only seccomp=unconfined|FILE is supported"))),
        }
    }
    if let seccomp::Profile::File(p) = &mut profile {
        // Absolute, so that `coracle exec` finds the same file from anywhere.
        *p = std::fs::canonicalize(&*p).map_err(|e| fail(format!("seccomp profile {}: {e}", p.display())))?;
    }
    let seccomp_filters = seccomp::filters(&profile, &caps, a.privileged)?;
    let outcome = launch::run(Launch {
        store: store.clone(),
        state_dir: state,
        image: record,
        image_name,
        process,
        plan: PlanOptions {
            privileged: a.privileged,
            volumes: a.volume,
            tmpfs: a.tmpfs,
            etc_files: Vec::new(),
            notify_socket: None,
        },
        hostname,
        name: a.name,
        caps,
        init: !a.no_init,
        tty: a.tty,
        interactive: a.interactive,
        read_only: a.read_only,
        scratch: a.scratch,
        notify,
        preserve_fds: preserve,
        own_pid_env,
        cidfile: a.cidfile,
        replace: a.replace,
        seccomp: seccomp_filters,
        seccomp_profile: profile.describe(),
        network_none: a.network == Network::None,
        pid_file: a.pid_file,
    })
    .map_err(|e| Failure { code: e.code, message: e.message })?;
    match outcome {
        Outcome::Exited(n) => Ok(n),
        Outcome::Signaled(s) => crate::sys::die_by_signal(s),
    }
}

/// Sets (or replaces) `k` in the app's environment.
fn set_env(env: &mut Vec<(String, String)>, k: &str, v: &str) {
    env.retain(|(key, _)| key != k);
    env.push((k.to_owned(), v.to_owned()));
}

fn unsafe_fd(n: i32) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: only used for an fcntl(F_GETFD) probe, which is harmless on any number.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(n) }
}

fn fail(message: String) -> Failure {
    Failure { code: super::EXIT_ERROR, message }
}
