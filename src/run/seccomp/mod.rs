//! The app's seccomp filter: an allow-list with docker's semantics. Syscalls this table
//! knows and the app may use are allowed; ones it knows and refuses fail with EPERM (the kernel keyring,
//! module loading, reboot, mounts and namespaces without CAP_SYS_ADMIN, …, each opened up
//! by the capability that makes it legitimate, as docker does); ones it does not know —
//! newer than this table — fail with ENOSYS, so that libcs fall back (clone3 is treated
//! as unknown without CAP_SYS_ADMIN: its flags live in memory a filter cannot read).
//!
//! The default profile is one filter: seccompiler compiles the argument rules and
//! [`dispatch`] finds a call's verdict by binary search over its number, which the
//! kernel installs ten times faster than seccompiler's linear chain (see there; the
//! tests check the two agree on every number). `seccomp=FILE` profiles are compiled by
//! seccompiler alone.
//!
//! The filter is compiled by the outer process and installed by the app last, after its
//! capabilities and no_new_privs are set, just before execve. `--privileged` runs
//! without one (as docker), `--security-opt seccomp=unconfined` too, and
//! `--security-opt seccomp=FILE` reads a docker-format JSON profile instead.

use std::collections::BTreeMap;
use std::path::Path;

use caps::{Capability, CapsHashSet};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};
use serde::Deserialize;

mod dispatch;

/// Compiled filters, installed in order (the later ones' errno wins among equal
/// actions: see seccomp(2), "multiple filters").
#[derive(Debug, Clone, Default)]
pub struct Filters(pub Vec<BpfProgram>);

/// `--security-opt seccomp=…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Profile {
    Default,
    Unconfined,
    File(std::path::PathBuf),
}

impl Profile {
    /// The value of `seccomp=` (and of the state file's `seccomp`).
    pub fn parse(v: &str) -> Profile {
        match v {
            "default" | "" => Profile::Default,
            "unconfined" => Profile::Unconfined,
            path => Profile::File(path.into()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Profile::Default => "default".into(),
            Profile::Unconfined => "unconfined".into(),
            Profile::File(p) => p.display().to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp profile {path}: {msg}")]
    Profile { path: String, msg: String },
    #[error("seccomp: {0}")]
    Build(String),
}

fn build_err(e: impl std::fmt::Display) -> SeccompError {
    SeccompError::Build(e.to_string())
}

#[cfg(target_arch = "x86_64")]
const ARCH: seccompiler::TargetArch = seccompiler::TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: seccompiler::TargetArch = seccompiler::TargetArch::aarch64;

/// The AUDIT_ARCH_* value of this architecture (linux/audit.h) in `seccomp_data.arch`.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

/// The filters for `profile` given the app's capabilities; `None` when the app runs
/// without one.
pub fn filters(profile: &Profile, caps: &CapsHashSet, privileged: bool) -> Result<Option<Filters>, SeccompError> {
    match profile {
        Profile::Unconfined => Ok(None),
        Profile::Default if privileged => Ok(None),
        Profile::Default if KNOWN.is_empty() => {
            crate::log::warn("no default seccomp profile for this architecture yet: the app runs without one");
            Ok(None)
        }
        Profile::Default => default_filters(caps).map(Some),
        Profile::File(p) => file_filters(p, caps).map(Some),
    }
}

/// Installs the filters in this thread (the app, just before execve).
pub fn install(f: &Filters) -> std::io::Result<()> {
    for p in &f.0 {
        crate::sys::seccomp_install(p)?;
    }
    Ok(())
}

/// Every syscall this profile knows (x86_64 numbers, from the kernel's
/// asm/unistd_64.h up to Linux 6.5).
#[cfg(target_arch = "x86_64")]
const KNOWN: &[(&str, i64)] = &[
    ("read", 0),
    ("write", 1),
    ("open", 2),
    ("close", 3),
    ("stat", 4),
    ("fstat", 5),
    ("lstat", 6),
    ("poll", 7),
    ("lseek", 8),
    ("mmap", 9),
    ("mprotect", 10),
    ("munmap", 11),
    ("brk", 12),
    ("rt_sigaction", 13),
    ("rt_sigprocmask", 14),
    ("rt_sigreturn", 15),
    ("ioctl", 16),
    ("pread64", 17),
    ("pwrite64", 18),
    ("readv", 19),
    ("writev", 20),
    ("access", 21),
    ("pipe", 22),
    ("select", 23),
    ("sched_yield", 24),
    ("mremap", 25),
    ("msync", 26),
    ("mincore", 27),
    ("madvise", 28),
    ("shmget", 29),
    ("shmat", 30),
    ("shmctl", 31),
    ("dup", 32),
    ("dup2", 33),
    ("pause", 34),
    ("nanosleep", 35),
    ("getitimer", 36),
    ("alarm", 37),
    ("setitimer", 38),
    ("getpid", 39),
    ("sendfile", 40),
    ("socket", 41),
    ("connect", 42),
    ("accept", 43),
    ("sendto", 44),
    ("recvfrom", 45),
    ("sendmsg", 46),
    ("recvmsg", 47),
    ("shutdown", 48),
    ("bind", 49),
    ("listen", 50),
    ("getsockname", 51),
    ("getpeername", 52),
    ("socketpair", 53),
    ("setsockopt", 54),
    ("getsockopt", 55),
    ("clone", 56),
    ("fork", 57),
    ("vfork", 58),
    ("execve", 59),
    ("exit", 60),
    ("wait4", 61),
    ("kill", 62),
    ("uname", 63),
    ("semget", 64),
    ("semop", 65),
    ("semctl", 66),
    ("shmdt", 67),
    ("msgget", 68),
    ("msgsnd", 69),
    ("msgrcv", 70),
    ("msgctl", 71),
    ("fcntl", 72),
    ("flock", 73),
    ("fsync", 74),
    ("fdatasync", 75),
    ("truncate", 76),
    ("ftruncate", 77),
    ("getdents", 78),
    ("getcwd", 79),
    ("chdir", 80),
    ("fchdir", 81),
    ("rename", 82),
    ("mkdir", 83),
    ("rmdir", 84),
    ("creat", 85),
    ("link", 86),
    ("unlink", 87),
    ("symlink", 88),
    ("readlink", 89),
    ("chmod", 90),
    ("fchmod", 91),
    ("chown", 92),
    ("fchown", 93),
    ("lchown", 94),
    ("umask", 95),
    ("gettimeofday", 96),
    ("getrlimit", 97),
    ("getrusage", 98),
    ("sysinfo", 99),
    ("times", 100),
    ("ptrace", 101),
    ("getuid", 102),
    ("syslog", 103),
    ("getgid", 104),
    ("setuid", 105),
    ("setgid", 106),
    ("geteuid", 107),
    ("getegid", 108),
    ("setpgid", 109),
    ("getppid", 110),
    ("getpgrp", 111),
    ("setsid", 112),
    ("setreuid", 113),
    ("setregid", 114),
    ("getgroups", 115),
    ("setgroups", 116),
    ("setresuid", 117),
    ("getresuid", 118),
    ("setresgid", 119),
    ("getresgid", 120),
    ("getpgid", 121),
    ("setfsuid", 122),
    ("setfsgid", 123),
    ("getsid", 124),
    ("capget", 125),
    ("capset", 126),
    ("rt_sigpending", 127),
    ("rt_sigtimedwait", 128),
    ("rt_sigqueueinfo", 129),
    ("rt_sigsuspend", 130),
    ("sigaltstack", 131),
    ("utime", 132),
    ("mknod", 133),
    ("uselib", 134),
    ("personality", 135),
    ("ustat", 136),
    ("statfs", 137),
    ("fstatfs", 138),
    ("sysfs", 139),
    ("getpriority", 140),
    ("setpriority", 141),
    ("sched_setparam", 142),
    ("sched_getparam", 143),
    ("sched_setscheduler", 144),
    ("sched_getscheduler", 145),
    ("sched_get_priority_max", 146),
    ("sched_get_priority_min", 147),
    ("sched_rr_get_interval", 148),
    ("mlock", 149),
    ("munlock", 150),
    ("mlockall", 151),
    ("munlockall", 152),
    ("vhangup", 153),
    ("modify_ldt", 154),
    ("pivot_root", 155),
    ("_sysctl", 156),
    ("prctl", 157),
    ("arch_prctl", 158),
    ("adjtimex", 159),
    ("setrlimit", 160),
    ("chroot", 161),
    ("sync", 162),
    ("acct", 163),
    ("settimeofday", 164),
    ("mount", 165),
    ("umount2", 166),
    ("swapon", 167),
    ("swapoff", 168),
    ("reboot", 169),
    ("sethostname", 170),
    ("setdomainname", 171),
    ("iopl", 172),
    ("ioperm", 173),
    ("create_module", 174),
    ("init_module", 175),
    ("delete_module", 176),
    ("get_kernel_syms", 177),
    ("query_module", 178),
    ("quotactl", 179),
    ("nfsservctl", 180),
    ("getpmsg", 181),
    ("putpmsg", 182),
    ("afs_syscall", 183),
    ("tuxcall", 184),
    ("security", 185),
    ("gettid", 186),
    ("readahead", 187),
    ("setxattr", 188),
    ("lsetxattr", 189),
    ("fsetxattr", 190),
    ("getxattr", 191),
    ("lgetxattr", 192),
    ("fgetxattr", 193),
    ("listxattr", 194),
    ("llistxattr", 195),
    ("flistxattr", 196),
    ("removexattr", 197),
    ("lremovexattr", 198),
    ("fremovexattr", 199),
    ("tkill", 200),
    ("time", 201),
    ("futex", 202),
    ("sched_setaffinity", 203),
    ("sched_getaffinity", 204),
    ("set_thread_area", 205),
    ("io_setup", 206),
    ("io_destroy", 207),
    ("io_getevents", 208),
    ("io_submit", 209),
    ("io_cancel", 210),
    ("get_thread_area", 211),
    ("lookup_dcookie", 212),
    ("epoll_create", 213),
    ("epoll_ctl_old", 214),
    ("epoll_wait_old", 215),
    ("remap_file_pages", 216),
    ("getdents64", 217),
    ("set_tid_address", 218),
    ("restart_syscall", 219),
    ("semtimedop", 220),
    ("fadvise64", 221),
    ("timer_create", 222),
    ("timer_settime", 223),
    ("timer_gettime", 224),
    ("timer_getoverrun", 225),
    ("timer_delete", 226),
    ("clock_settime", 227),
    ("clock_gettime", 228),
    ("clock_getres", 229),
    ("clock_nanosleep", 230),
    ("exit_group", 231),
    ("epoll_wait", 232),
    ("epoll_ctl", 233),
    ("tgkill", 234),
    ("utimes", 235),
    ("vserver", 236),
    ("mbind", 237),
    ("set_mempolicy", 238),
    ("get_mempolicy", 239),
    ("mq_open", 240),
    ("mq_unlink", 241),
    ("mq_timedsend", 242),
    ("mq_timedreceive", 243),
    ("mq_notify", 244),
    ("mq_getsetattr", 245),
    ("kexec_load", 246),
    ("waitid", 247),
    ("add_key", 248),
    ("request_key", 249),
    ("keyctl", 250),
    ("ioprio_set", 251),
    ("ioprio_get", 252),
    ("inotify_init", 253),
    ("inotify_add_watch", 254),
    ("inotify_rm_watch", 255),
    ("migrate_pages", 256),
    ("openat", 257),
    ("mkdirat", 258),
    ("mknodat", 259),
    ("fchownat", 260),
    ("futimesat", 261),
    ("newfstatat", 262),
    ("unlinkat", 263),
    ("renameat", 264),
    ("linkat", 265),
    ("symlinkat", 266),
    ("readlinkat", 267),
    ("fchmodat", 268),
    ("faccessat", 269),
    ("pselect6", 270),
    ("ppoll", 271),
    ("unshare", 272),
    ("set_robust_list", 273),
    ("get_robust_list", 274),
    ("splice", 275),
    ("tee", 276),
    ("sync_file_range", 277),
    ("vmsplice", 278),
    ("move_pages", 279),
    ("utimensat", 280),
    ("epoll_pwait", 281),
    ("signalfd", 282),
    ("timerfd_create", 283),
    ("eventfd", 284),
    ("fallocate", 285),
    ("timerfd_settime", 286),
    ("timerfd_gettime", 287),
    ("accept4", 288),
    ("signalfd4", 289),
    ("eventfd2", 290),
    ("epoll_create1", 291),
    ("dup3", 292),
    ("pipe2", 293),
    ("inotify_init1", 294),
    ("preadv", 295),
    ("pwritev", 296),
    ("rt_tgsigqueueinfo", 297),
    ("perf_event_open", 298),
    ("recvmmsg", 299),
    ("fanotify_init", 300),
    ("fanotify_mark", 301),
    ("prlimit64", 302),
    ("name_to_handle_at", 303),
    ("open_by_handle_at", 304),
    ("clock_adjtime", 305),
    ("syncfs", 306),
    ("sendmmsg", 307),
    ("setns", 308),
    ("getcpu", 309),
    ("process_vm_readv", 310),
    ("process_vm_writev", 311),
    ("kcmp", 312),
    ("finit_module", 313),
    ("sched_setattr", 314),
    ("sched_getattr", 315),
    ("renameat2", 316),
    ("seccomp", 317),
    ("getrandom", 318),
    ("memfd_create", 319),
    ("kexec_file_load", 320),
    ("bpf", 321),
    ("execveat", 322),
    ("userfaultfd", 323),
    ("membarrier", 324),
    ("mlock2", 325),
    ("copy_file_range", 326),
    ("preadv2", 327),
    ("pwritev2", 328),
    ("pkey_mprotect", 329),
    ("pkey_alloc", 330),
    ("pkey_free", 331),
    ("statx", 332),
    ("io_pgetevents", 333),
    ("rseq", 334),
    ("pidfd_send_signal", 424),
    ("io_uring_setup", 425),
    ("io_uring_enter", 426),
    ("io_uring_register", 427),
    ("open_tree", 428),
    ("move_mount", 429),
    ("fsopen", 430),
    ("fsconfig", 431),
    ("fsmount", 432),
    ("fspick", 433),
    ("pidfd_open", 434),
    ("clone3", 435),
    ("close_range", 436),
    ("openat2", 437),
    ("pidfd_getfd", 438),
    ("faccessat2", 439),
    ("process_madvise", 440),
    ("epoll_pwait2", 441),
    ("mount_setattr", 442),
    ("quotactl_fd", 443),
    ("landlock_create_ruleset", 444),
    ("landlock_add_rule", 445),
    ("landlock_restrict_self", 446),
    ("memfd_secret", 447),
    ("process_mrelease", 448),
    ("futex_waitv", 449),
    ("set_mempolicy_home_node", 450),
];

#[cfg(not(target_arch = "x86_64"))]
const KNOWN: &[(&str, i64)] = &[];

/// Known syscalls refused unless the app holds one of the capabilities listed with them
/// (an empty list: always refused). Everything else in [`KNOWN`] is allowed.
const GATED: &[(&str, &[Capability])] = {
    use Capability::*;
    &[
        // Mounts, namespaces and what only the host's admin should do.
        ("mount", &[CAP_SYS_ADMIN]),
        ("umount2", &[CAP_SYS_ADMIN]),
        ("pivot_root", &[CAP_SYS_ADMIN]),
        ("unshare", &[CAP_SYS_ADMIN]),
        ("setns", &[CAP_SYS_ADMIN]),
        ("fsopen", &[CAP_SYS_ADMIN]),
        ("fsconfig", &[CAP_SYS_ADMIN]),
        ("fsmount", &[CAP_SYS_ADMIN]),
        ("fspick", &[CAP_SYS_ADMIN]),
        ("move_mount", &[CAP_SYS_ADMIN]),
        ("open_tree", &[CAP_SYS_ADMIN]),
        ("mount_setattr", &[CAP_SYS_ADMIN]),
        ("quotactl", &[CAP_SYS_ADMIN]),
        ("quotactl_fd", &[CAP_SYS_ADMIN]),
        ("swapon", &[CAP_SYS_ADMIN]),
        ("swapoff", &[CAP_SYS_ADMIN]),
        ("lookup_dcookie", &[CAP_SYS_ADMIN]),
        ("fanotify_init", &[CAP_SYS_ADMIN]),
        ("name_to_handle_at", &[CAP_SYS_ADMIN, CAP_DAC_READ_SEARCH]),
        ("open_by_handle_at", &[CAP_DAC_READ_SEARCH]),
        ("bpf", &[CAP_SYS_ADMIN, CAP_BPF]),
        ("perf_event_open", &[CAP_SYS_ADMIN, CAP_PERFMON]),
        ("vhangup", &[CAP_SYS_TTY_CONFIG]),
        // Other processes' memory.
        ("process_vm_readv", &[CAP_SYS_PTRACE]),
        ("process_vm_writev", &[CAP_SYS_PTRACE]),
        ("kcmp", &[CAP_SYS_PTRACE]),
        ("pidfd_getfd", &[CAP_SYS_PTRACE]),
        ("userfaultfd", &[CAP_SYS_PTRACE]),
        // Kernel modules, reboot, clocks, accounting, I/O ports, NUMA policy, syslog.
        ("init_module", &[CAP_SYS_MODULE]),
        ("finit_module", &[CAP_SYS_MODULE]),
        ("delete_module", &[CAP_SYS_MODULE]),
        ("reboot", &[CAP_SYS_BOOT]),
        ("kexec_load", &[CAP_SYS_BOOT]),
        ("kexec_file_load", &[CAP_SYS_BOOT]),
        ("settimeofday", &[CAP_SYS_TIME]),
        ("clock_settime", &[CAP_SYS_TIME]),
        ("clock_adjtime", &[CAP_SYS_TIME]),
        ("acct", &[CAP_SYS_PACCT]),
        ("iopl", &[CAP_SYS_RAWIO]),
        ("ioperm", &[CAP_SYS_RAWIO]),
        ("mbind", &[CAP_SYS_NICE]),
        ("set_mempolicy", &[CAP_SYS_NICE]),
        ("set_mempolicy_home_node", &[CAP_SYS_NICE]),
        ("migrate_pages", &[CAP_SYS_NICE]),
        ("move_pages", &[CAP_SYS_NICE]),
        ("get_mempolicy", &[CAP_SYS_NICE]),
        ("syslog", &[CAP_SYSLOG]),
        // Never: the kernel keyring is not namespaced; io_uring bypasses this filter;
        // obsolete or unimplemented calls.
        ("add_key", &[]),
        ("request_key", &[]),
        ("keyctl", &[]),
        ("io_uring_setup", &[]),
        ("io_uring_enter", &[]),
        ("io_uring_register", &[]),
        ("modify_ldt", &[]),
        ("uselib", &[]),
        ("ustat", &[]),
        ("sysfs", &[]),
        ("_sysctl", &[]),
        ("create_module", &[]),
        ("get_kernel_syms", &[]),
        ("query_module", &[]),
        ("nfsservctl", &[]),
        ("getpmsg", &[]),
        ("putpmsg", &[]),
        ("afs_syscall", &[]),
        ("tuxcall", &[]),
        ("security", &[]),
        ("vserver", &[]),
        ("epoll_ctl_old", &[]),
        ("epoll_wait_old", &[]),
    ]
};

/// CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET: clone(2) may create no
/// namespace without CAP_SYS_ADMIN.
const CLONE_NS_FLAGS: [u64; 7] =
    [0x0002_0000, 0x0200_0000, 0x0400_0000, 0x0800_0000, 0x1000_0000, 0x2000_0000, 0x4000_0000];

/// personality(2) values that change nothing dangerous (as docker's default).
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

fn num(name: &str) -> Option<i64> {
    KNOWN.iter().find(|(n, _)| *n == name).map(|(_, nr)| *nr)
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).map_err(build_err)
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let f = SeccompFilter::new(rules, mismatch, matched, ARCH).map_err(build_err)?;
    BpfProgram::try_from(f).map_err(build_err)
}

/// The default profile as one filter: the allow-list, EPERM for the known calls the app
/// may not make, ENOSYS for every other number (see the module's documentation). Built
/// at every start, so without lookups by name or maps: [`KNOWN`] is in syscall order.
fn default_filters(caps: &CapsHashSet) -> Result<Filters, SeccompError> {
    use dispatch::Verdict;
    let admin = caps.contains(&Capability::CAP_SYS_ADMIN);
    let mut refused = [false; 1024];
    for ((_, need), nr) in GATED.iter().zip(GATED_NRS) {
        if nr >= 0 && !need.iter().any(|c| caps.contains(c)) {
            refused[nr as usize] = true;
        }
    }
    let eperm = SeccompAction::Errno(libc::EPERM as u32);
    let (allow, deny) = (Verdict::Always(SeccompAction::Allow), Verdict::Always(eperm.clone()));
    let clone_rules = if admin {
        None
    } else {
        // No namespace flag: the flags are argument 0 on x86_64 and arm64.
        let no_ns = CLONE_NS_FLAGS.iter().fold(0, |a, f| a | f);
        let rule = SeccompRule::new(vec![cond(0, SeccompCmpOp::MaskedEq(no_ns), 0)?]).map_err(build_err)?;
        Some(Verdict::Rules { rules: vec![(rule, SeccompAction::Allow)], otherwise: eperm })
    };
    let personality_rules = Verdict::Rules {
        rules: PERSONALITIES
            .iter()
            .map(|p| {
                Ok((SeccompRule::new(vec![cond(0, SeccompCmpOp::Eq, *p)?]).map_err(build_err)?, SeccompAction::Allow))
            })
            .collect::<Result<_, SeccompError>>()?,
        otherwise: SeccompAction::Errno(libc::ENOSYS as u32),
    };
    let table = KNOWN.iter().filter_map(|&(_, nr)| {
        let verdict = if refused.get(nr as usize).copied().unwrap_or(false) {
            &deny
        } else if nr == NR_CLONE3 && !admin {
            return None; // unknown: ENOSYS, so that libcs fall back to clone
        } else if nr == NR_CLONE {
            clone_rules.as_ref().unwrap_or(&allow)
        } else if nr == NR_PERSONALITY {
            &personality_rules
        } else {
            &allow
        };
        Some((nr as u32, verdict))
    });
    let prog = dispatch::compile(table, SeccompAction::Errno(libc::ENOSYS as u32), AUDIT_ARCH).map_err(build_err)?;
    Ok(Filters(vec![prog]))
}

/// The number of the syscall `name` in [`KNOWN`], at compile time; -1 when this
/// architecture's table lacks it.
const fn nr_of(name: &str) -> i64 {
    let mut i = 0;
    while i < KNOWN.len() {
        let (k, n) = (KNOWN[i].0.as_bytes(), name.as_bytes());
        if k.len() == n.len() {
            let mut j = 0;
            while j < k.len() && k[j] == n[j] {
                j += 1;
            }
            if j == k.len() {
                return KNOWN[i].1;
            }
        }
        i += 1;
    }
    -1
}

const NR_CLONE: i64 = nr_of("clone");
const NR_CLONE3: i64 = nr_of("clone3");
const NR_PERSONALITY: i64 = nr_of("personality");

/// The numbers of [`GATED`]'s calls, in its order.
const GATED_NRS: [i64; GATED.len()] = {
    let mut out = [0; GATED.len()];
    let mut i = 0;
    while i < GATED.len() {
        out[i] = nr_of(GATED[i].0);
        i += 1;
    }
    out
};

// ---------------------------------------------------------------------------------------
// docker-format JSON profiles.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonProfile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    syscalls: Vec<JsonRule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonRule {
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<JsonArg>,
    #[serde(default)]
    includes: JsonFilter,
    #[serde(default)]
    excludes: JsonFilter,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct JsonFilter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonArg {
    index: u8,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

#[cfg(target_arch = "x86_64")]
const ARCH_NAMES: &[&str] = &["amd64", "x86_64", "SCMP_ARCH_X86_64"];
#[cfg(target_arch = "aarch64")]
const ARCH_NAMES: &[&str] = &["arm64", "aarch64", "SCMP_ARCH_AARCH64"];

fn action(name: &str, errno: Option<u32>, default_errno: u32) -> Result<SeccompAction, String> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => SeccompAction::Allow,
        "SCMP_ACT_ERRNO" => SeccompAction::Errno(errno.unwrap_or(default_errno)),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => SeccompAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => SeccompAction::KillProcess,
        "SCMP_ACT_TRAP" => SeccompAction::Trap,
        "SCMP_ACT_LOG" => SeccompAction::Log,
        other => return Err(format!("action {other} is not supported")),
    })
}

fn cap_named(name: &str) -> Option<Capability> {
    let full = if name.starts_with("CAP_") { name.to_owned() } else { format!("CAP_{name}") };
    full.parse().ok()
}

/// A docker/podman profile as several filters: one that allows every listed call (under
/// its conditions) and gives the default action to the rest, then one per other action,
/// turning its calls into that action. Names this table does not know are skipped, as
/// docker does for calls the kernel lacks.
fn file_filters(path: &Path, caps: &CapsHashSet) -> Result<Filters, SeccompError> {
    let perr = |msg: String| SeccompError::Profile { path: path.display().to_string(), msg };
    let text = std::fs::read_to_string(path).map_err(|e| perr(e.to_string()))?;
    let p: JsonProfile = serde_json::from_str(&text).map_err(|e| perr(format!("not a seccomp profile: {e}")))?;
    let default_errno = p.default_errno_ret.unwrap_or(libc::EPERM as u32);
    let default = action(&p.default_action, p.default_errno_ret, default_errno).map_err(perr)?;
    let mut base = Rules::default();
    let mut groups: Vec<(SeccompAction, Rules)> = Vec::new();
    for r in &p.syscalls {
        let applies = r.includes.caps.iter().all(|c| cap_named(c).is_some_and(|c| caps.contains(&c)))
            && !r.excludes.caps.iter().any(|c| cap_named(c).is_some_and(|c| caps.contains(&c)))
            && (r.includes.arches.is_empty() || r.includes.arches.iter().any(|a| ARCH_NAMES.contains(&a.as_str())))
            && !r.excludes.arches.iter().any(|a| ARCH_NAMES.contains(&a.as_str()));
        if !applies {
            continue;
        }
        let act = action(&r.action, r.errno_ret, default_errno).map_err(perr)?;
        if act == default {
            continue;
        }
        let mut conds = Vec::new();
        for a in &r.args {
            let op = match a.op.as_str() {
                "SCMP_CMP_EQ" => SeccompCmpOp::Eq,
                "SCMP_CMP_NE" => SeccompCmpOp::Ne,
                "SCMP_CMP_LT" => SeccompCmpOp::Lt,
                "SCMP_CMP_LE" => SeccompCmpOp::Le,
                "SCMP_CMP_GT" => SeccompCmpOp::Gt,
                "SCMP_CMP_GE" => SeccompCmpOp::Ge,
                "SCMP_CMP_MASKED_EQ" => SeccompCmpOp::MaskedEq(a.value),
                other => return Err(perr(format!("comparison {other} is not supported"))),
            };
            let value = if a.op == "SCMP_CMP_MASKED_EQ" { a.value_two } else { a.value };
            conds.push(cond(a.index, op, value).map_err(|e| perr(e.to_string()))?);
        }
        let rule = if conds.is_empty() { None } else { Some(SeccompRule::new(conds).map_err(build_err)?) };
        for n in r.names.iter().chain(r.name.iter()) {
            let Some(nr) = num(n) else { continue };
            base.add(nr, rule.clone());
            if act != SeccompAction::Allow {
                match groups.iter_mut().find(|(a, _)| *a == act) {
                    Some((_, g)) => g.add(nr, rule.clone()),
                    None => {
                        let mut g = Rules::default();
                        g.add(nr, rule.clone());
                        groups.push((act.clone(), g));
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    if default != SeccompAction::Allow {
        out.push(compile(base.map, default, SeccompAction::Allow)?);
    }
    for (act, g) in groups {
        out.push(compile(g.map, SeccompAction::Allow, act)?);
    }
    Ok(Filters(out))
}

/// Rules per syscall; an unconditional entry (an empty list) absorbs conditional ones.
#[derive(Default)]
struct Rules {
    map: BTreeMap<i64, Vec<SeccompRule>>,
    unconditional: std::collections::BTreeSet<i64>,
}

impl Rules {
    fn add(&mut self, nr: i64, rule: Option<SeccompRule>) {
        match rule {
            None => {
                self.unconditional.insert(nr);
                self.map.insert(nr, Vec::new());
            }
            Some(r) if !self.unconditional.contains(&nr) => self.map.entry(nr).or_default().push(r),
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default profile as seccompiler alone compiles it (two linear filters: the
    /// allow-list with ENOSYS, then EPERM for the refused calls): the reference the
    /// one-filter tree must agree with.
    fn reference_filters(caps: &CapsHashSet) -> Result<Filters, SeccompError> {
        let admin = caps.contains(&Capability::CAP_SYS_ADMIN);
        let refused: Vec<i64> = GATED
            .iter()
            .filter(|(_, need)| !need.iter().any(|c| caps.contains(c)))
            .filter_map(|(name, _)| num(name))
            .collect();
        let clone = num("clone").unwrap_or(-1);
        let clone3 = num("clone3").unwrap_or(-1);
        let personality = num("personality").unwrap_or(-1);
        // Filter 1: the allow-list; anything else is ENOSYS ("no such call").
        let mut allow: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for (_, nr) in KNOWN {
            if refused.contains(nr) || (*nr == clone3 && !admin) {
                continue;
            }
            let rules = if *nr == clone && !admin {
                // No namespace flag: the flags are argument 0 on x86_64 and arm64.
                let no_ns = CLONE_NS_FLAGS.iter().fold(0, |a, f| a | f);
                vec![SeccompRule::new(vec![cond(0, SeccompCmpOp::MaskedEq(no_ns), 0)?]).map_err(build_err)?]
            } else if *nr == personality {
                PERSONALITIES
                    .iter()
                    .map(|p| SeccompRule::new(vec![cond(0, SeccompCmpOp::Eq, *p)?]).map_err(build_err))
                    .collect::<Result<_, _>>()?
            } else {
                Vec::new()
            };
            allow.insert(*nr, rules);
        }
        let first = compile(allow, SeccompAction::Errno(libc::ENOSYS as u32), SeccompAction::Allow)?;
        // Filter 2, installed after: the refused known calls are EPERM ("not allowed here"),
        // which wins over filter 1's ENOSYS for them (same action, later filter).
        let mut deny: BTreeMap<i64, Vec<SeccompRule>> = refused.iter().map(|nr| (*nr, Vec::new())).collect();
        if !admin {
            let rules = CLONE_NS_FLAGS
                .iter()
                .map(|f| SeccompRule::new(vec![cond(0, SeccompCmpOp::MaskedEq(*f), *f)?]).map_err(build_err))
                .collect::<Result<_, _>>()?;
            deny.insert(clone, rules);
        }
        let second = compile(deny, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32))?;
        Ok(Filters(vec![first, second]))
    }

    #[test]
    fn gated_names_are_all_known() {
        for ((name, _), nr) in GATED.iter().zip(GATED_NRS) {
            assert!(num(name).is_some(), "{name}");
            assert_eq!(Some(nr), num(name), "{name}");
        }
        assert_eq!(Some(NR_CLONE), num("clone"));
        assert_eq!(Some(NR_CLONE3), num("clone3"));
        assert_eq!(Some(NR_PERSONALITY), num("personality"));
    }

    /// default_filters relies on it: the table is in syscall order, numbers below 1024.
    #[test]
    fn known_is_sorted_and_small() {
        assert!(KNOWN.windows(2).all(|w| w[0].1 < w[1].1));
        assert!(KNOWN.iter().all(|(_, nr)| (0..1024).contains(nr)));
    }

    #[test]
    fn default_profile_is_one_filter_with_and_without_admin() {
        let mut caps: CapsHashSet = super::super::capabilities::DEFAULT.iter().copied().collect();
        let f = default_filters(&caps).unwrap();
        assert_eq!(f.0.len(), 1);
        assert!(f.0[0].len() < 300, "{} instructions", f.0[0].len());
        caps.insert(Capability::CAP_SYS_ADMIN);
        assert_eq!(default_filters(&caps).unwrap().0.len(), 1);
    }

    /// The capability sets the equivalence test tries: none, the default, the default
    /// plus each capability a gated call names, all of them, and pseudo-random subsets.
    fn cap_sets() -> Vec<CapsHashSet> {
        let default: CapsHashSet = super::super::capabilities::DEFAULT.iter().copied().collect();
        let gating: Vec<Capability> = GATED.iter().flat_map(|(_, c)| c.iter().copied()).collect();
        let mut sets = vec![CapsHashSet::new(), default.clone(), caps::all()];
        for c in &gating {
            let mut s = default.clone();
            s.insert(*c);
            sets.push(s);
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..40 {
            let mut s = CapsHashSet::new();
            for c in caps::all() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x.is_multiple_of(3) {
                    s.insert(c);
                }
            }
            sets.push(s);
        }
        sets
    }

    /// Argument vectors worth trying for syscall `nr`: zeros and all ones everywhere, and
    /// for the calls with argument rules every value and flag combination they test,
    /// with and without bits in the upper half.
    fn args_for(nr: i64) -> Vec<[u64; 6]> {
        let mut firsts = vec![0u64, u64::MAX, 1, 0x1_0000_0000];
        if Some(nr) == num("clone") {
            let base = [0u64, 0x11 /* SIGCHLD */, 0x003d_0f00 /* a thread */, 0xffff_ffff_0000_0000];
            for mask in 0..(1u64 << CLONE_NS_FLAGS.len()) {
                let flags =
                    CLONE_NS_FLAGS.iter().enumerate().filter(|(i, _)| mask >> i & 1 == 1).fold(0, |a, (_, f)| a | f);
                firsts.extend(base.iter().map(|b| b | flags));
            }
        }
        if Some(nr) == num("personality") {
            for p in PERSONALITIES {
                firsts.extend([p, p | 1 << 32, p ^ 1, p.wrapping_add(0x100)]);
            }
        }
        firsts.into_iter().map(|a| [a, 0, 0, 0, 0, 0]).chain([[u64::MAX; 6]]).collect()
    }

    /// The one-filter tree gives every syscall number (the table's, the numbers past it,
    /// the x32 ones, -1), through every architecture's entry point and with the
    /// arguments the rules look at, exactly what seccompiler's two linear filters give
    /// together, for every capability set tried.
    #[test]
    fn tree_filter_agrees_with_seccompilers_linear_filters() {
        use dispatch::interp::{check, run, run_all, Data};
        let mut numbers: Vec<u32> = (0..1100).collect();
        numbers.extend((0x4000_0000..0x4000_0000 + 600).step_by(7));
        numbers.extend([0x4000_0000 + 435, 0x7fff_ffff, 0x8000_0000, u32::MAX - 1, u32::MAX]);
        let arches = [AUDIT_ARCH, 0x4000_0003 /* i386 */, 0xc000_00b7 /* aarch64 */, 0];
        let mut checked = 0usize;
        for caps in cap_sets() {
            let tree = default_filters(&caps).unwrap().0;
            let linear = reference_filters(&caps).unwrap().0;
            for p in tree.iter().chain(&linear) {
                check(p);
            }
            for &nr in &numbers {
                for args in args_for(i64::from(nr)) {
                    for arch in arches {
                        let d = Data { nr, arch, ip: 0x7f00_0000_1234, args };
                        let (got, want) = (run(&tree[0], &d), run_all(&linear, &d));
                        assert_eq!(got, want, "nr {nr} arch {arch:#x} args {args:x?} caps {caps:?}");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 1_000_000, "{checked}");
    }

    /// The tree agrees with itself where the reference cannot speak: every refused
    /// call is EPERM, the ones beyond the table ENOSYS, and the allowed ones allowed.
    #[test]
    fn default_filter_verdicts() {
        use dispatch::interp::{run, Data};
        let caps: CapsHashSet = super::super::capabilities::DEFAULT.iter().copied().collect();
        let f = default_filters(&caps).unwrap().0;
        let at = |name: &str, a0: u64| {
            let nr = u32::try_from(num(name).unwrap()).unwrap();
            run(&f[0], &Data { nr, arch: AUDIT_ARCH, ip: 0, args: [a0, 0, 0, 0, 0, 0] })
        };
        let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        assert_eq!(at("read", 0), libc::SECCOMP_RET_ALLOW);
        assert_eq!(at("mount", 0), eperm);
        assert_eq!(at("keyctl", 0), eperm);
        assert_eq!(at("clone3", 0), enosys);
        assert_eq!(at("clone", 0x11), libc::SECCOMP_RET_ALLOW);
        assert_eq!(at("clone", 0x11 | 0x2000_0000), eperm);
        assert_eq!(at("personality", 0x8), libc::SECCOMP_RET_ALLOW);
        assert_eq!(at("personality", 0x9), enosys);
        assert_eq!(run(&f[0], &Data { nr: 451, arch: AUDIT_ARCH, ip: 0, args: [0; 6] }), enosys);
        assert_eq!(run(&f[0], &Data { nr: 0, arch: 0x4000_0003, ip: 0, args: [0; 6] }), libc::SECCOMP_RET_KILL_PROCESS);
    }
}
