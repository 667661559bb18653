//! `probe`: a tiny, statically linked introspection tool for coracle's test
//! container images.
//!
//! Integration tests run `probe VERB [ARGS...]` inside containers and parse
//! what it prints: process identity, credentials, capabilities, signal state,
//! mounts, file descriptors, files, and a few behaviours (exit codes, signal
//! delivery, reaping, socket activation, sd_notify).
//!
//! Conventions:
//! - exactly one verb per invocation; output goes to stdout, one fact per line
//!   or a single JSON object line;
//! - failures print `probe: <verb>: <error>` on stderr and exit 99, so they are
//!   distinguishable from `probe exit N`;
//! - usage errors (no verb, unknown verb, bad arguments) exit 2.
//!
//! The program uses `#![no_main]` on purpose: Rust's normal start-up code
//! ignores SIGPIPE and installs SIGSEGV/SIGBUS handlers, which would pollute
//! what the `signals` verb reports about the dispositions the runtime set up.

#![no_main]

use std::ffi::{CStr, OsStr, OsString};
use std::fs::{self, File, FileType};
use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};
use std::{env, fmt::Write as _, mem, process, ptr, thread};

use libc::{c_char, c_int};

/// Exit status for runtime failures (as opposed to `probe exit N`).
const EXIT_FAILURE: c_int = 99;
/// Exit status for usage errors.
const EXIT_USAGE: c_int = 2;

enum Error {
    /// Bad invocation: reported with the verb's synopsis, exit 2.
    Usage(String),
    /// Something failed while running the verb: exit 99.
    Fail(String),
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Fail(e.to_string())
    }
}

type Result<T> = std::result::Result<T, Error>;

/// A verb returns the process exit status on success.
type VerbFn = fn(&[OsString]) -> Result<c_int>;

struct Verb {
    name: &'static str,
    synopsis: &'static str,
    run: VerbFn,
}

const VERBS: &[Verb] = &[
    verb("pid", "", pid),
    verb("caps", "", caps),
    verb("id", "", id),
    verb("env", "", env_vars),
    verb("cwd", "", cwd),
    verb("hostname", "", hostname),
    verb("mounts", "", mounts),
    verb("fds", "", fds),
    verb("cat", "FILE", cat),
    verb("write", "FILE CONTENT", write_file),
    verb("ls", "DIR", ls),
    verb("stat", "PATH", stat),
    verb("sleep", "SECS", sleep),
    verb("exit", "CODE", exit),
    verb("syscall", "NR [ARG...]", raw_syscall),
    verb("kill-self", "SIG", kill_self),
    verb("trap", "SIG...", trap),
    verb("signals", "", signals),
    verb("notify", "MESSAGE", notify),
    verb("listen-fds", "", listen_fds),
    verb("accept", "", accept),
    verb("echo", "ARGS...", echo),
    verb("stdin", "", stdin),
    verb("tty", "", tty),
    verb("zombie-parent", "", zombie_parent),
    verb("spawn-orphan", "SECS", spawn_orphan),
];

impl Verb {
    /// `name` followed by the argument synopsis, if any.
    fn usage(&self) -> String {
        if self.synopsis.is_empty() {
            self.name.to_owned()
        } else {
            format!("{} {}", self.name, self.synopsis)
        }
    }
}

const fn verb(name: &'static str, synopsis: &'static str, run: VerbFn) -> Verb {
    Verb { name, synopsis, run }
}

// SAFETY: this is the C `main` symbol called by the libc start-up code with a
// valid argc/argv pair; no other symbol of that name exists because of
// `#![no_main]`.
#[no_mangle]
extern "C" fn main(argc: c_int, argv: *const *const c_char) -> c_int {
    let args: Vec<OsString> = (1..usize::try_from(argc).unwrap_or(0))
        .map(|i| {
            // SAFETY: libc guarantees argv[0..argc] are valid NUL-terminated
            // strings that live for the whole program.
            let arg = unsafe { CStr::from_ptr(*argv.add(i)) };
            OsString::from_vec(arg.to_bytes().to_vec())
        })
        .collect();
    run(&args)
}

fn run(args: &[OsString]) -> c_int {
    let Some((name, rest)) = args.split_first() else {
        usage();
        return EXIT_USAGE;
    };
    let name = name.to_string_lossy();
    if matches!(&*name, "help" | "-h" | "--help") {
        usage();
        return EXIT_USAGE;
    }
    let Some(verb) = VERBS.iter().find(|v| v.name == name) else {
        let _ = writeln!(io::stderr(), "probe: unknown verb {name}");
        return EXIT_USAGE;
    };
    let result = (verb.run)(rest);
    let flushed = io::stdout().flush().map_err(Error::from);
    match result.and_then(|code| flushed.map(|()| code)) {
        Ok(code) => code,
        Err(Error::Usage(msg)) => {
            let _ = writeln!(io::stderr(), "probe: {name}: {msg} (usage: probe {})", verb.usage());
            EXIT_USAGE
        }
        Err(Error::Fail(msg)) => {
            let _ = writeln!(io::stderr(), "probe: {name}: {msg}");
            EXIT_FAILURE
        }
    }
}

fn usage() {
    let mut text = String::from("usage: probe VERB [ARGS...]\nverbs:\n");
    for v in VERBS {
        let _ = writeln!(text, "  {}", v.usage());
    }
    let _ = io::stderr().write_all(text.as_bytes());
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn out() -> io::StdoutLock<'static> {
    io::stdout().lock()
}

/// Prefixes an I/O error with the path it concerns.
fn at(path: impl AsRef<Path>) -> impl FnOnce(io::Error) -> Error {
    move |e| Error::Fail(format!("{}: {e}", path.as_ref().display()))
}

fn last_os_error() -> Error {
    io::Error::last_os_error().into()
}

/// Checks that exactly `N` arguments were given.
fn exact<const N: usize>(args: &[OsString]) -> Result<&[OsString; N]> {
    args.try_into().map_err(|_| Error::Usage(format!("expected {N} argument(s), got {}", args.len())))
}

fn parse<T: FromStr>(arg: &OsStr, what: &str) -> Result<T> {
    arg.to_str().and_then(|s| s.parse().ok()).ok_or_else(|| Error::Usage(format!("invalid {what} {:?}", arg)))
}

fn parse_secs(arg: &OsStr) -> Result<Duration> {
    let secs: f64 = parse(arg, "number of seconds")?;
    Duration::try_from_secs_f64(secs).map_err(|_| Error::Usage(format!("invalid number of seconds {secs}")))
}

/// Encodes `s` as a JSON string literal.
fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", u32::from(c));
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_opt(s: Option<&OsStr>) -> String {
    s.map_or_else(|| "null".into(), |s| json_str(&s.to_string_lossy()))
}

/// Returns the values of the given `Key:` lines of /proc/self/status.
fn proc_status<const N: usize>(keys: [&str; N]) -> Result<[String; N]> {
    let status = fs::read_to_string("/proc/self/status")?;
    let mut values: [String; N] = std::array::from_fn(|_| String::new());
    for (key, value) in keys.iter().zip(&mut values) {
        *value = status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
            .ok_or_else(|| Error::Fail(format!("{key} missing from /proc/self/status")))?;
    }
    Ok(values)
}

fn type_char(ft: FileType) -> char {
    if ft.is_symlink() {
        'l'
    } else if ft.is_dir() {
        'd'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else if ft.is_fifo() {
        'p'
    } else if ft.is_socket() {
        's'
    } else {
        'f'
    }
}

// ---------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------

const SIGNALS: &[(&str, c_int)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

/// Parses `TERM`, `SIGTERM`, `15`, `RTMIN+2` or `SIGRTMAX-1`.
fn parse_signal(arg: &OsStr) -> Result<c_int> {
    let invalid = || Error::Usage(format!("invalid signal {:?}", arg));
    let upper = arg.to_str().ok_or_else(invalid)?.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    let sig = if let Ok(n) = name.parse::<c_int>() {
        Some(n)
    } else if let Some(&(_, n)) = SIGNALS.iter().find(|(s, _)| *s == name) {
        Some(n)
    } else if let Some(off) = name.strip_prefix("RTMIN") {
        rt_offset(off, '+').map(|k| min + k)
    } else if let Some(off) = name.strip_prefix("RTMAX") {
        rt_offset(off, '-').map(|k| max - k)
    } else {
        None
    };
    sig.filter(|n| (1..=max).contains(n)).ok_or_else(invalid)
}

/// Parses the `+N`/`-N` suffix of a real-time signal name (empty means 0).
fn rt_offset(s: &str, sign: char) -> Option<c_int> {
    if s.is_empty() {
        return Some(0);
    }
    s.strip_prefix(sign)?.parse().ok()
}

fn signal_name(sig: c_int) -> String {
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    if let Some((name, _)) = SIGNALS.iter().find(|(_, n)| *n == sig) {
        format!("SIG{name}")
    } else if sig == min {
        "SIGRTMIN".into()
    } else if (min..=max).contains(&sig) {
        format!("SIGRTMIN+{}", sig - min)
    } else {
        format!("SIG{sig}")
    }
}

fn sigset(sigs: &[c_int]) -> Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it fully.
    let mut set: libc::sigset_t = unsafe { mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for &sig in sigs {
        // SAFETY: as above; invalid signal numbers are reported via -1.
        if unsafe { libc::sigaddset(&mut set, sig) } != 0 {
            return Err(last_os_error());
        }
    }
    Ok(set)
}

fn sigprocmask(how: c_int, set: &libc::sigset_t) -> Result<()> {
    // SAFETY: `set` points to an initialised sigset_t; the old mask is not
    // requested.
    if unsafe { libc::sigprocmask(how, set, ptr::null_mut()) } != 0 {
        return Err(last_os_error());
    }
    Ok(())
}

extern "C" fn ignore_signal(_: c_int) {}

// ---------------------------------------------------------------------------
// Verbs
// ---------------------------------------------------------------------------

fn pid(args: &[OsString]) -> Result<c_int> {
    exact::<0>(args)?;
    // SAFETY: these calls take no pointers and cannot fail (getsid(0) on the
    // calling process always succeeds).
    let (pid, ppid, pgid, sid) = unsafe { (libc::getpid(), libc::getppid(), libc::getpgrp(), libc::getsid(0)) };
    writeln!(out(), r#"{{"pid":{pid},"ppid":{ppid},"pgid":{pgid},"sid":{sid}}}"#)?;
    Ok(0)
}

fn caps(args: &[OsString]) -> Result<c_int> {
    exact::<0>(args)?;
    let [inh, prm, eff, bnd, amb] = proc_status(["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"])?;
    // SAFETY: PR_GET_* options take no pointer arguments.
    let (nnp, dumpable) =
        unsafe { (libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0), libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0)) };
    if nnp < 0 || dumpable < 0 {
        return Err(last_os_error());
    }
    writeln!(
        out(),
        r#"{{"inh":"{inh}","prm":"{prm}","eff":"{eff}","bnd":"{bnd}","amb":"{amb}","no_new_privs":{nnp},"dumpable":{dumpable}}}"#
    )?;
    Ok(0)
}

fn id(args: &[OsString]) -> Result<c_int> {
    exact::<0>(args)?;
    // SAFETY: getgroups with size 0 only returns the number of groups.
    let n = unsafe { libc::getgroups(0, ptr::null_mut()) };
    let mut groups: Vec<libc::gid_t> = vec![0; usize::try_from(n).map_err(|_| last_os_error())?];
    // SAFETY: `groups` has room for exactly `n` entries.
    let n = unsafe { libc::getgroups(n, groups.as_mut_ptr()) };
    groups.truncate(usize::try_from(n).map_err(|_| last_os_error())?);
    let groups: Vec<String> = groups.iter().map(ToString::to_string).collect();
    // SAFETY: these calls take no arguments and always succeed.
    let (uid, gid, euid, egid) = unsafe { (libc::getuid(), libc::getgid(), libc::geteuid(), libc::getegid()) };
    writeln!(out(), r#"{{"uid":{uid},"gid":{gid},"euid":{euid},"egid":{egid},"groups":[{}]}}"#, groups.join(","))?;
    Ok(0)
}

fn env_vars(args: &[OsString]) -> Result<c_int> {
    exact::<0>(args)?;
    let mut vars: Vec<(OsString, OsString)> = env::vars_os().collect();
    vars.sort();
    let mut out = out();
    for (key, value) in vars {
        out.write_all(key.as_bytes())?;
        out.write_all(b"=")?;
        out.write_all(value.as_bytes())?;
        out.write_all(b"\n")?;
    }
    Ok(0)
}

fn cwd(args: &[OsString]) -> Result<c_int> {
    exact::<0>(args)?;
    let dir = env::current_dir()?;
    let mut out = out();
    out.write_all(dir.as_os_str().as_bytes())?;
    out.write_all(b"\n")?;
    Ok(0)
}

fn hostname(args: &[OsString]) -> Result<c_int> {
    exact::<0>(args)?;
    // SAFETY: utsname is plain data and uname fills it in.
    let mut uts: libc::utsname = unsafe { mem::zeroed() };
    // SAFETY: `uts` is a valid, exclusively borrowed utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return Err(last_os_error());
    }
    let name: Vec<u8> = uts.nodename.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    let mut out = out();
    out.write_all(&name)?;
    out.write_all(b"\n")?;
    Ok(0)
}

fn mounts(args: &[OsString]) -> Result<c_int> {
    exact::<0>(args)?;
    io::copy(&mut File::open("/proc/self/mountinfo")?, &mut out())?;
    Ok(0)
}

fn fds(args: &[OsString]) -> Result<c_int> {
    exact::<0>(args)?;
    // SAFETY: the path is a valid NUL-terminated string.
    let dir = unsafe { libc::opendir(c"/proc/self/fd".as_ptr()) };
    if dir.is_null() {
        return Err(last_os_error());
    }
    // SAFETY: `dir` is an open directory stream.
    let own = unsafe { libc::dirfd(dir) };
    let mut fds = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; clearing it lets us tell the end of
        // the directory from a readdir error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `dir` is an open directory stream.
        let entry = unsafe { libc::readdir(dir) };
        if entry.is_null() {
            let err = io::Error::last_os_error();
            break if err.raw_os_error() == Some(0) { Ok(()) } else { Err(err) };
        }
        // SAFETY: readdir returned a valid entry whose d_name is
        // NUL-terminated; it is copied before the next readdir call.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
        if let Some(fd) = name.to_str().ok().and_then(|s| s.parse::<c_int>().ok()) {
            if fd != own {
                fds.push(fd);
            }
        }
    };
    // SAFETY: `dir` is open and not used afterwards.
    unsafe { libc::closedir(dir) };
    result?;
    fds.sort_unstable();
    let list: Vec<String> = fds.iter().map(ToString::to_string).collect();
    let mut out = out();
    writeln!(out, "[{}]", list.join(","))?;
    for fd in fds {
        let target = fs::read_link(format!("/proc/self/fd/{fd}"))
            .map_or_else(|e| format!("? ({e})"), |t| t.to_string_lossy().into_owned());
        writeln!(out, "{fd} -> {target}")?;
    }
    Ok(0)
}

fn cat(args: &[OsString]) -> Result<c_int> {
    let [file] = exact(args)?;
    io::copy(&mut File::open(file).map_err(at(file))?, &mut out())?;
    Ok(0)
}

fn write_file(args: &[OsString]) -> Result<c_int> {
    let [file, content] = exact(args)?;
    fs::write(file, content.as_bytes()).map_err(at(file))?;
    Ok(0)
}

fn ls(args: &[OsString]) -> Result<c_int> {
    let [dir] = exact(args)?;
    let dir = Path::new(dir);
    let mut names =
        fs::read_dir(dir).map_err(at(dir))?.map(|e| e.map(|e| e.file_name())).collect::<io::Result<Vec<_>>>()?;
    names.sort();
    let mut out = out();
    for name in names {
        let path = dir.join(&name);
        let md = fs::symlink_metadata(&path).map_err(at(&path))?;
        out.write_all(name.as_bytes())?;
        writeln!(
            out,
            " {} {:04o} {} {} {}",
            type_char(md.file_type()),
            md.mode() & 0o7777,
            md.uid(),
            md.gid(),
            md.size()
        )?;
    }
    Ok(0)
}

fn stat(args: &[OsString]) -> Result<c_int> {
    let [path] = exact(args)?;
    let md = fs::symlink_metadata(path).map_err(at(path))?;
    let link = if md.file_type().is_symlink() {
        json_str(&fs::read_link(path).map_err(at(path))?.to_string_lossy())
    } else {
        "null".into()
    };
    writeln!(
        out(),
        r#"{{"type":"{}","mode":"{:04o}","uid":{},"gid":{},"size":{},"nlink":{},"ino":{},"rdev_major":{},"rdev_minor":{},"mtime":{},"link":{link}}}"#,
        type_char(md.file_type()),
        md.mode() & 0o7777,
        md.uid(),
        md.gid(),
        md.size(),
        md.nlink(),
        md.ino(),
        libc::major(md.rdev()),
        libc::minor(md.rdev()),
        md.mtime(),
    )?;
    Ok(0)
}

fn sleep(args: &[OsString]) -> Result<c_int> {
    let [secs] = exact(args)?;
    thread::sleep(parse_secs(secs)?);
    Ok(0)
}

fn exit(args: &[OsString]) -> Result<c_int> {
    let [code] = exact(args)?;
    parse(code, "exit code")
}

/// Makes system call NR with up to 6 integer arguments; prints `ok RET` or
/// `errno N` (the seccomp tests look for EPERM, ENOSYS).
fn raw_syscall(args: &[OsString]) -> Result<c_int> {
    if args.is_empty() || args.len() > 7 {
        return Err(Error::Usage("syscall NR [ARG...] (at most 6 arguments)".into()));
    }
    let mut v = [0 as libc::c_long; 7];
    for (i, a) in args.iter().enumerate() {
        let s = a.to_str().ok_or_else(|| Error::Usage("arguments are integers".into()))?;
        v[i] = match s.strip_prefix("0x") {
            Some(hex) => libc::c_long::from_str_radix(hex, 16),
            None => s.parse(),
        }
        .map_err(|_| Error::Usage(format!("{s:?} is not an integer")))?;
    }
    // SAFETY: the caller chooses a call whose integer arguments are harmless (the tests
    // use refused or unknown calls, and flags that make the kernel reject the call).
    let r = unsafe { libc::syscall(v[0], v[1], v[2], v[3], v[4], v[5], v[6]) };
    let mut out = out();
    if r < 0 {
        writeln!(out, "errno {}", io::Error::last_os_error().raw_os_error().unwrap_or(0))?;
    } else {
        writeln!(out, "ok {r}")?;
    }
    Ok(0)
}

fn kill_self(args: &[OsString]) -> Result<c_int> {
    let [sig] = exact(args)?;
    let sig = parse_signal(sig)?;
    if sig != libc::SIGKILL && sig != libc::SIGSTOP {
        // SAFETY: restoring the default disposition involves no handler code.
        if unsafe { libc::signal(sig, libc::SIG_DFL) } == libc::SIG_ERR {
            return Err(last_os_error());
        }
    }
    sigprocmask(libc::SIG_UNBLOCK, &sigset(&[sig])?)?;
    io::stdout().flush()?;
    // SAFETY: sending a signal to ourselves has no memory-safety implications.
    if unsafe { libc::kill(libc::getpid(), sig) } != 0 {
        return Err(last_os_error());
    }
    thread::sleep(Duration::from_secs(1));
    Ok(98)
}

fn trap(args: &[OsString]) -> Result<c_int> {
    let sigs = args.iter().map(|a| parse_signal(a)).collect::<Result<Vec<_>>>()?;
    if let Some(&sig) = sigs.iter().find(|&&s| s == libc::SIGKILL || s == libc::SIGSTOP) {
        return Err(Error::Usage(format!("cannot trap {}", signal_name(sig))));
    }
    // SIGUSR2 ends the wait with status 0 unless it is one of the trapped ones.
    let usr2_quits = !sigs.contains(&libc::SIGUSR2);
    let mut waited = sigs.clone();
    if usr2_quits {
        waited.push(libc::SIGUSR2);
    }
    let set = sigset(&waited)?;
    sigprocmask(libc::SIG_BLOCK, &set)?;
    // Install (never run) handlers so the trapped signals show up as caught in
    // /proc/PID/status; delivery happens through sigtimedwait below.
    for &sig in &sigs {
        // SAFETY: sigaction is plain data; the handler is an extern "C" fn
        // that does nothing, which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = mem::zeroed();
            action.sa_sigaction = ignore_signal as extern "C" fn(c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(sig, &action, ptr::null_mut()) != 0 {
                return Err(last_os_error());
            }
        }
    }
    let mut out = out();
    writeln!(out, "ready")?;
    out.flush()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout =
            libc::timespec { tv_sec: left.as_secs() as libc::time_t, tv_nsec: libc::c_long::from(left.subsec_nanos()) };
        // SAFETY: `set` and `timeout` are initialised; siginfo is not wanted.
        let sig = unsafe { libc::sigtimedwait(&set, ptr::null_mut(), &timeout) };
        if sig < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EAGAIN) => return Ok(97),
                Some(libc::EINTR) => continue,
                _ => return Err(err.into()),
            }
        }
        if sig == libc::SIGUSR2 && usr2_quits {
            return Ok(0);
        }
        writeln!(out, "got {}", signal_name(sig))?;
        out.flush()?;
    }
}

fn signals(args: &[OsString]) -> Result<c_int> {
    exact::<0>(args)?;
    let [blocked, ignored, caught] = proc_status(["SigBlk", "SigIgn", "SigCgt"])?;
    writeln!(out(), r#"{{"blocked":"{blocked}","ignored":"{ignored}","caught":"{caught}"}}"#)?;
    Ok(0)
}

fn notify(args: &[OsString]) -> Result<c_int> {
    let [message] = exact(args)?;
    let target = env::var_os("NOTIFY_SOCKET")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::Fail("NOTIFY_SOCKET is not set".into()))?;
    let addr = match target.as_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(&target)?,
    };
    UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), &addr)?;
    Ok(0)
}

fn listen_fds(args: &[OsString]) -> Result<c_int> {
    exact::<0>(args)?;
    let listen_pid = env::var_os("LISTEN_PID");
    let listen_fds = env::var_os("LISTEN_FDS");
    let names = env::var_os("LISTEN_FDNAMES");
    let mut out = out();
    writeln!(
        out,
        r#"{{"LISTEN_PID":{},"LISTEN_FDS":{},"LISTEN_FDNAMES":{},"pid":{}}}"#,
        json_opt(listen_pid.as_deref()),
        json_opt(listen_fds.as_deref()),
        json_opt(names.as_deref()),
        process::id()
    )?;
    let count: c_int = listen_fds.and_then(|n| n.to_str()?.parse().ok()).unwrap_or(0);
    for fd in 3..3 + count.max(0) {
        let target = fs::read_link(format!("/proc/self/fd/{fd}"))
            .map_or_else(|_| "closed".into(), |t| t.to_string_lossy().into_owned());
        writeln!(out, "{fd} {target}")?;
    }
    Ok(0)
}

fn accept(args: &[OsString]) -> Result<c_int> {
    exact::<0>(args)?;
    let fd = loop {
        // SAFETY: peer address is not requested; an invalid fd 3 is reported
        // through errno.
        let fd = unsafe { libc::accept4(3, ptr::null_mut(), ptr::null_mut(), libc::SOCK_CLOEXEC) };
        if fd >= 0 {
            break fd;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err.into());
        }
    };
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    let mut conn = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    conn.write_all(b"hello from probe\n")?;
    Ok(0)
}

fn echo(args: &[OsString]) -> Result<c_int> {
    let mut line = args.iter().map(|a| a.as_bytes()).collect::<Vec<_>>().join(&b' ');
    line.push(b'\n');
    out().write_all(&line)?;
    Ok(0)
}

fn stdin(args: &[OsString]) -> Result<c_int> {
    exact::<0>(args)?;
    io::copy(&mut io::stdin().lock(), &mut out())?;
    Ok(0)
}

fn tty(args: &[OsString]) -> Result<c_int> {
    exact::<0>(args)?;
    let stdout_tty = io::stdout().is_terminal();
    let mut line = format!(
        r#"{{"stdin":{},"stdout":{stdout_tty},"stderr":{}"#,
        io::stdin().is_terminal(),
        io::stderr().is_terminal()
    );
    if stdout_tty {
        // SAFETY: winsize is plain data that TIOCGWINSZ fills in.
        let mut ws: libc::winsize = unsafe { mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes one winsize through the given pointer.
        if unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) } != 0 {
            return Err(last_os_error());
        }
        let _ = write!(line, r#","rows":{},"cols":{}"#, ws.ws_row, ws.ws_col);
    }
    line.push('}');
    writeln!(out(), "{line}")?;
    Ok(0)
}

/// Forks; the child runs `child` and exits without returning.
fn fork(child: impl FnOnce() -> c_int) -> Result<libc::pid_t> {
    io::stdout().flush()?;
    // SAFETY: the process is single-threaded, so the child may keep running
    // ordinary code; it never returns into the caller.
    match unsafe { libc::fork() } {
        -1 => Err(last_os_error()),
        0 => {
            let code = child();
            // SAFETY: _exit skips atexit handlers and stdio flushing that
            // belong to the parent.
            unsafe { libc::_exit(code) }
        }
        pid => Ok(pid),
    }
}

fn zombie_parent(args: &[OsString]) -> Result<c_int> {
    exact::<0>(args)?;
    fork(|| 0)?;
    thread::sleep(Duration::from_secs(2));
    let me = process::id().to_string();
    let mut zombies = 0;
    for entry in fs::read_dir("/proc")? {
        let path = entry?.path().join("stat");
        // Processes come and go; ignore the ones that vanished.
        let Ok(stat) = fs::read_to_string(path) else {
            continue;
        };
        // Format: "PID (COMM) STATE PPID ..."; COMM may contain anything.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        if fields.next() == Some("Z") && fields.next() == Some(me.as_str()) {
            zombies += 1;
        }
    }
    writeln!(out(), "{zombies}")?;
    Ok(0)
}

fn spawn_orphan(args: &[OsString]) -> Result<c_int> {
    let [secs] = exact(args)?;
    let secs = parse_secs(secs)?;
    let devnull = File::options().read(true).write(true).open("/dev/null")?;
    let (mut reader, mut writer) = io::pipe()?;
    let intermediate = fork(|| {
        let grandchild = fork(|| {
            // SAFETY: plain fd juggling in our own process: drop the pid pipe
            // and point stdio at /dev/null so the orphan keeps none of the
            // caller's pipes open.
            unsafe {
                libc::close(writer.as_raw_fd());
                for fd in 0..3 {
                    libc::dup2(devnull.as_raw_fd(), fd);
                }
            }
            thread::sleep(secs);
            0
        });
        match grandchild {
            Ok(pid) => c_int::from(writer.write_all(&pid.to_ne_bytes()).is_err()),
            Err(_) => 1,
        }
    })?;
    drop(writer);
    let mut buf = [0; mem::size_of::<libc::pid_t>()];
    let read = reader.read_exact(&mut buf);
    // SAFETY: reaps the intermediate child; the status is not needed.
    unsafe { libc::waitpid(intermediate, ptr::null_mut(), 0) };
    read.map_err(|e| Error::Fail(format!("intermediate child failed: {e}")))?;
    writeln!(out(), "{}", libc::pid_t::from_ne_bytes(buf))?;
    Ok(0)
}
