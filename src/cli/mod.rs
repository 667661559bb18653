//! Command-line interface: clap definitions and one small file per command. This is the
//! only place that prints, and the only place that picks exit codes (docs/cli.md).

mod exec;
mod fsck;
mod gc;
mod images;
mod import;
mod inspect;
mod login;
mod output;
mod progress;
mod ps;
mod run;

mod completion;
mod info;
mod version;

use std::path::PathBuf;

use std::ffi::OsString;

use clap::{Args, FromArgMatches, Parser, Subcommand};

use crate::store::Store;

/// Exit code for coracle's own failures (bad flags, missing image, store problems).
pub const EXIT_ERROR: i32 = 125;

#[derive(Parser, Debug)]
#[command(name = "coracle", version = version::VERSION, about = "A daemonless container runtime")]
#[command(propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    globals: Globals,
    #[command(subcommand)]
    command: Command,
}

/// The options every command takes, before or after its name.
#[derive(Args, Debug)]
struct Globals {
    /// Store directory.
    #[arg(long, global = true, env = "CORACLE_ROOT", default_value = "/var/lib/coracle", value_name = "DIR")]
    root: PathBuf,
    /// Directory for the state of running containers.
    #[arg(long, global = true, env = "CORACLE_STATE", default_value = "/run/coracle", value_name = "DIR")]
    state: PathBuf,
    /// Which of coracle's own diagnostics to print on stderr (errors always end a
    /// failing command's output)
    #[arg(long, global = true, env = "CORACLE_LOG_LEVEL", value_enum, default_value = "warn", value_name = "LEVEL")]
    log_level: crate::log::Level,
}

#[derive(Subcommand, Debug)]
// Only the invoked subcommand's arguments are built (clap's `defer`).
#[command(defer = true)]
enum Command {
    /// Copy an image into the store from a registry (NAME[:TAG][@DIGEST]) or from oci:DIR[:REF], oci-archive:FILE[:REF], docker-archive:FILE[:NAME:TAG]
    Pull(import::PullArgs),
    /// Load every image of a docker-save or OCI archive tarball (format detected from content)
    Load(import::LoadArgs),
    /// Make a one-layer image from a rootfs tarball (FILE, or - for standard input)
    Import(import::ImportArgs),
    /// List images
    Images(images::ImagesArgs),
    /// Show an image's names, digests, platform, layers and config as JSON
    Inspect(inspect::InspectArgs),
    /// Give an image another name
    Tag(images::TagArgs),
    /// Remove image names, and images left without names
    Rmi(images::RmiArgs),
    /// Run an image's process in new PID, mount, UTS and IPC namespaces, as a foreground process
    Run(Box<run::RunArgs>),
    /// Run a command in a running container
    Exec(exec::ExecArgs),
    /// Log in to a registry (credentials stored in the containers auth.json)
    Login(login::LoginArgs),
    /// Remove a registry's stored credentials
    Logout(login::LogoutArgs),
    /// List running containers
    Ps(ps::PsArgs),
    /// Send a signal to a running container (default SIGKILL)
    Kill(ps::KillArgs),
    /// Stop a running container: SIGTERM, then SIGKILL after a grace time
    Stop(ps::StopArgs),
    /// Delete what no image needs: blobs, layers, tmp debris, dead containers' dirs
    #[command(visible_alias = "prune")]
    Gc,
    /// Verify every blob, layer and image record; --repair drops what is broken
    Fsck(fsck::FsckArgs),
    /// Show coracle's version, the git revision and the target it was built from
    Version,
    /// Show the store, the state directory and the kernel features coracle relies on
    Info(info::InfoArgs),
    /// Print the completion script for a shell (bash, zsh or fish)
    Completion(completion::CompletionArgs),
    /// Write the man pages (coracle.1, coracle-COMMAND.1) into a directory
    #[command(hide = true)]
    GenerateMan(completion::GenerateManArgs),
}

/// A command's failure: its message and the exit code it maps to.
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl<E: std::error::Error> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure { code: EXIT_ERROR, message: e.to_string() }
    }
}

pub type CmdResult = Result<i32, Failure>;

pub fn main() -> i32 {
    let cli = match parse(std::env::args_os().collect()) {
        Ok(c) => c,
        // --help and --version print as clap renders them.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return 0;
        }
        Err(e) => {
            // Usage errors are one line too, like every other error.
            let text = e.render().to_string();
            let first: Vec<&str> = text.lines().map(str::trim).take_while(|l| !l.is_empty()).collect();
            let msg = match e.kind() {
                clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => "no command given".to_owned(),
                _ => first.join(" ").trim_start_matches("error: ").to_owned(),
            };
            eprintln!("coracle: {msg} (see 'coracle --help')");
            return EXIT_ERROR;
        }
    };
    crate::log::set_level(cli.globals.log_level);
    let verb = command_name(&cli.command);
    match run(cli) {
        Ok(code) => code,
        Err(f) => {
            // One line, always: supervisors and journald show the first line only.
            eprintln!("coracle: {verb}: {}", f.message.replace('\n', " "));
            f.code
        }
    }
}

/// Parses argv. `coracle run`, the command supervisors start over and over, is parsed
/// with a command line of its own and the global options only: building all twenty
/// subcommands and their copies of the global options costs a start ~0.1 ms and ~50 heap
/// pages. The same derived definitions make both, so a successful parse gives the same
/// `Cli`; anything else (an error, --help, --version) goes through the full command, so
/// that help and error messages are the full command's.
fn parse(args: Vec<OsString>) -> Result<Cli, clap::Error> {
    if names_run(&args) {
        let cmd = Cli::command_for_run();
        if let Ok(mut m) = cmd.try_get_matches_from(&args) {
            if let Some(cli) = run_from_matches(&mut m) {
                return Ok(cli);
            }
        }
    }
    Cli::try_parse_from(args)
}

/// Whether the first word after the global options is `run`.
fn names_run(args: &[OsString]) -> bool {
    let mut words = args.iter().skip(1);
    while let Some(w) = words.next() {
        match w.to_str() {
            Some("--root" | "--state" | "--log-level") => {
                words.next();
            }
            Some(w) if ["--root=", "--state=", "--log-level="].iter().any(|p| w.starts_with(p)) => {}
            Some(w) => return w == "run",
            None => return false,
        }
    }
    false
}

impl Cli {
    /// The command line of `coracle run` alone, as the full one defines it: the global
    /// options and `run`'s.
    fn command_for_run() -> clap::Command {
        Globals::augment_args(clap::Command::new("coracle"))
            .subcommand(run::RunArgs::augment_args(clap::Command::new("run")))
    }
}

fn run_from_matches(m: &mut clap::ArgMatches) -> Option<Cli> {
    let globals = Globals::from_arg_matches_mut(m).ok()?;
    let (name, mut sub) = m.remove_subcommand()?;
    if name != "run" {
        return None;
    }
    let args = run::RunArgs::from_arg_matches_mut(&mut sub).ok()?;
    Some(Cli { globals, command: Command::Run(Box::new(args)) })
}

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Pull(_) => "pull",
        Command::Load(_) => "load",
        Command::Import(_) => "import",
        Command::Images(_) => "images",
        Command::Inspect(_) => "inspect",
        Command::Tag(_) => "tag",
        Command::Rmi(_) => "rmi",
        Command::Gc => "gc",
        Command::Run(_) => "run",
        Command::Ps(_) => "ps",
        Command::Login(_) => "login",
        Command::Logout(_) => "logout",
        Command::Exec(_) => "exec",
        Command::Kill(_) => "kill",
        Command::Stop(_) => "stop",
        Command::Fsck(_) => "fsck",
        Command::Version => "version",
        Command::Info(_) => "info",
        Command::Completion(_) => "completion",
        Command::GenerateMan(_) => "generate-man",
    }
}

fn run(cli: Cli) -> CmdResult {
    // Commands that never touch the store.
    match cli.command {
        Command::Login(a) => return login::login(a),
        Command::Logout(a) => return login::logout(a),
        Command::Version => return version::version(),
        Command::Info(a) => return info::info(&cli.globals.root, &cli.globals.state, a),
        Command::Completion(a) => return completion::completion(a),
        Command::GenerateMan(a) => return completion::generate_man(a),
        _ => {}
    }
    let store = Store::open(&cli.globals.root)?;
    match cli.command {
        Command::Pull(a) => import::pull(&store, a),
        Command::Load(a) => import::load(&store, a),
        Command::Import(a) => import::import(&store, a),
        Command::Images(a) => images::images(&store, a),
        Command::Inspect(a) => inspect::inspect(&store, a),
        Command::Tag(a) => images::tag(&store, a),
        Command::Rmi(a) => images::rmi(&store, &cli.globals.state, a),
        Command::Gc => gc::gc(&store, &cli.globals.state),
        Command::Run(a) => run::run(&store, cli.globals.state, *a),
        Command::Ps(a) => ps::ps(&cli.globals.state, a),
        Command::Login(_) | Command::Logout(_) => unreachable!("handled above"),
        Command::Version | Command::Info(_) | Command::Completion(_) | Command::GenerateMan(_) => {
            unreachable!("handled above")
        }
        Command::Exec(a) => exec::exec(&cli.globals.state, a),
        Command::Kill(a) => ps::kill(&cli.globals.state, a),
        Command::Stop(a) => ps::stop(&cli.globals.state, a),
        Command::Fsck(a) => fsck::fsck(&store, a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &str) -> Vec<OsString> {
        std::iter::once("coracle").chain(args.split(' ').filter(|a| !a.is_empty())).map(OsString::from).collect()
    }

    #[test]
    fn run_parses_the_same_on_its_own_command_line() {
        for args in [
            "run img",
            "run img /bin/sh -c 'x'",
            "--root /r --state /s --log-level debug run img true",
            "--root=/r run --state /s img",
            "run --log-level=info img",
            "run --name n --replace -e A=1 -e B --env-file /f -w /tmp -u 1:2 --entrypoint /e img a b",
            "run -v /a:/b -v /c:/d:ro --tmpfs /t --read-only --scratch store --hostname h img",
            "run --scratch tmpfs:64m --cap-add NET_ADMIN --cap-drop ALL --privileged --no-init -i -t img",
            "run --init --pid-file /p --cidfile /c --sdnotify started --preserve-fds 2 img",
            "run --security-opt seccomp=unconfined --rm --network none --pull never img",
            "run --platform linux/arm64 --tls-verify=false --cert-dir /d img -- --not-a-flag",
            "run -it img sh",
        ] {
            let a = argv(args);
            assert!(names_run(&a), "{args}");
            let fast = run_from_matches(&mut Cli::command_for_run().try_get_matches_from(&a).unwrap()).unwrap();
            let full = Cli::try_parse_from(&a).unwrap_or_else(|e| panic!("{args}: {e}"));
            assert_eq!(format!("{fast:?}"), format!("{full:?}"), "{args}");
        }
    }

    #[test]
    fn only_run_takes_the_short_path() {
        for (args, run) in [
            ("run img", true),
            ("--root /r run img", true),
            ("--log-level=debug --state /s run img", true),
            ("ps", false),
            ("--root run ps", false),
            ("images run", false),
            ("--bogus run img", false),
            ("", false),
        ] {
            assert_eq!(names_run(&argv(args)), run, "{args}");
        }
    }

    #[test]
    fn help_and_errors_come_from_the_full_command() {
        let err = |args: &str| parse(argv(args)).err().unwrap_or_else(|| panic!("{args} parsed"));
        for args in ["run", "run --bogus img", "run --network bogus img", "run --help", "--version run img"] {
            let full = Cli::try_parse_from(argv(args)).err().unwrap();
            let got = err(args);
            assert_eq!((got.kind(), got.render().to_string()), (full.kind(), full.render().to_string()), "{args}");
        }
        assert!(err("run --help").render().to_string().contains("Usage: coracle run"));
    }
}
