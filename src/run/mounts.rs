//! The container's mount table as data: what goes where, with which flags. Built here,
//! checked by unit tests without root, applied by one executor inside the container's
//! mount namespace (containerd's snapshotters return mounts the same way).
//!
//! The defaults follow runc's and podman's: fresh /proc, a tmpfs /dev with the usual
//! nodes, devpts with newinstance, /dev/shm, /dev/mqueue, read-only /sys, masked and
//! read-only paths of /proc and /sys.

use std::path::PathBuf;

use nix::mount::MsFlags;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A new filesystem of this type (`proc`, `tmpfs`, `sysfs`, `devpts`, `mqueue`).
    Fs(&'static str),
    /// A bind mount of a host path (recursive).
    Bind(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Dir,
    File,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Absolute path inside the container.
    pub target: String,
    pub source: Source,
    pub flags: MsFlags,
    pub data: String,
    pub kind: Target,
}

/// A device node made in the container's /dev.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    pub name: &'static str,
    pub major: u32,
    pub minor: u32,
    pub mode: u32,
}

pub const DEVICES: &[Device] = &[
    Device { name: "null", major: 1, minor: 3, mode: 0o666 },
    Device { name: "zero", major: 1, minor: 5, mode: 0o666 },
    Device { name: "full", major: 1, minor: 7, mode: 0o666 },
    Device { name: "random", major: 1, minor: 8, mode: 0o666 },
    Device { name: "urandom", major: 1, minor: 9, mode: 0o666 },
    Device { name: "tty", major: 5, minor: 0, mode: 0o666 },
];

/// Symlinks made in /dev: (name, target).
pub const DEV_LINKS: &[(&str, &str)] = &[
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("core", "/proc/kcore"),
];

/// Hidden from the container (podman's list): directories get an empty read-only tmpfs,
/// files /dev/null.
pub const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/fs/selinux",
    "/sys/dev/block",
    "/sys/devices/virtual/powercap",
];

/// Visible but read-only.
pub const READ_ONLY: &[&str] =
    &["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// A `-v SRC:DST[:ro]` volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VolumeError {
    #[error("invalid volume {0:?}: expected SRC:DST[:ro|rw] with absolute paths")]
    Syntax(String),
}

impl std::str::FromStr for Volume {
    type Err = VolumeError;
    fn from_str(s: &str) -> Result<Self, VolumeError> {
        let parts: Vec<&str> = s.split(':').collect();
        let (src, dst, ro) = match parts.as_slice() {
            [src, dst] => (*src, *dst, false),
            [src, dst, "ro"] => (*src, *dst, true),
            [src, dst, "rw"] => (*src, *dst, false),
            _ => return Err(VolumeError::Syntax(s.to_owned())),
        };
        if !src.starts_with('/') || !dst.starts_with('/') {
            return Err(VolumeError::Syntax(s.to_owned()));
        }
        Ok(Volume { source: src.into(), target: dst.to_owned(), read_only: ro })
    }
}

/// Inputs of the plan.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    pub privileged: bool,
    pub volumes: Vec<Volume>,
    pub tmpfs: Vec<String>,
    /// Host files to show at /etc/hosts, /etc/hostname, /etc/resolv.conf.
    pub etc_files: Vec<(PathBuf, &'static str)>,
    /// The sd_notify relay socket (in the scratch dir), shown at
    /// [`super::notify::CONTAINER_PATH`].
    pub notify_socket: Option<PathBuf>,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC);

fn fs(target: &str, fstype: &'static str, flags: MsFlags, data: &str) -> Mount {
    Mount { target: target.into(), source: Source::Fs(fstype), flags, data: data.into(), kind: Target::Dir }
}

/// The mounts to make on top of the rootfs, in order.
pub fn plan(o: &PlanOptions) -> Vec<Mount> {
    let mut m = vec![
        fs("/proc", "proc", NOSUID_NODEV_NOEXEC, ""),
        fs("/dev", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME, "mode=755,size=65536k"),
        fs("/dev/pts", "devpts", MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"),
        fs("/dev/shm", "tmpfs", NOSUID_NODEV_NOEXEC, "mode=1777,size=65536k"),
        fs("/dev/mqueue", "mqueue", NOSUID_NODEV_NOEXEC, ""),
        fs("/sys", "sysfs", NOSUID_NODEV_NOEXEC | if o.privileged { MsFlags::empty() } else { MsFlags::MS_RDONLY }, ""),
    ];
    for (src, target) in &o.etc_files {
        m.push(Mount {
            target: (*target).into(),
            source: Source::Bind(src.clone()),
            flags: MsFlags::MS_BIND,
            data: String::new(),
            kind: Target::File,
        });
    }
    if let Some(sock) = &o.notify_socket {
        m.push(Mount {
            target: super::notify::CONTAINER_PATH.into(),
            source: Source::Bind(sock.clone()),
            flags: MsFlags::MS_BIND,
            data: String::new(),
            kind: Target::File,
        });
    }
    for t in &o.tmpfs {
        m.push(fs(t, "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, "mode=1777"));
    }
    for v in &o.volumes {
        let kind = if v.source.is_dir() { Target::Dir } else { Target::File };
        let ro = if v.read_only { MsFlags::MS_RDONLY } else { MsFlags::empty() };
        m.push(Mount {
            target: v.target.clone(),
            source: Source::Bind(v.source.clone()),
            flags: MsFlags::MS_BIND | MsFlags::MS_REC | ro,
            data: String::new(),
            kind,
        });
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_plan_has_the_usual_filesystems_in_order() {
        let p = plan(&PlanOptions::default());
        let targets: Vec<&str> = p.iter().map(|m| m.target.as_str()).collect();
        assert_eq!(targets, ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys"]);
        let sys = &p[5];
        assert!(sys.flags.contains(MsFlags::MS_RDONLY));
        assert!(p[2].data.contains("newinstance"));
        let privileged = plan(&PlanOptions { privileged: true, ..Default::default() });
        assert!(!privileged[5].flags.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn volumes_parse_and_plan() {
        let v: Volume = "/tmp:/data:ro".parse().unwrap();
        assert_eq!(v, Volume { source: "/tmp".into(), target: "/data".into(), read_only: true });
        for bad in ["/a", "a:/b", "/a:b", "/a:/b:xx", "/a:/b:ro:x"] {
            assert!(bad.parse::<Volume>().is_err(), "{bad}");
        }
        let p = plan(&PlanOptions { volumes: vec![v], tmpfs: vec!["/scratch".into()], ..Default::default() });
        let data = p.iter().find(|m| m.target == "/data").unwrap();
        assert_eq!(data.source, Source::Bind("/tmp".into()));
        assert!(data.flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC));
        assert!(p.iter().any(|m| m.target == "/scratch" && m.source == Source::Fs("tmpfs")));
    }
}
