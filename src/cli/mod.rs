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

use clap::{Parser, Subcommand};

use crate::store::Store;

/// Exit code for coracle's own failures (bad flags, missing image, store problems).
pub const EXIT_ERROR: i32 = 125;

#[derive(Parser, Debug)]
#[command(name = "coracle", version = version::VERSION, about = "A daemonless container runtime")]
#[command(propagate_version = true)]
pub struct Cli {
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
    #[command(subcommand)]
    command: Command,
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
    let cli = match Cli::try_parse() {
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
    crate::log::set_level(cli.log_level);
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
        Command::Info(a) => return info::info(&cli.root, &cli.state, a),
        Command::Completion(a) => return completion::completion(a),
        Command::GenerateMan(a) => return completion::generate_man(a),
        _ => {}
    }
    let store = Store::open(&cli.root)?;
    match cli.command {
        Command::Pull(a) => import::pull(&store, a),
        Command::Load(a) => import::load(&store, a),
        Command::Import(a) => import::import(&store, a),
        Command::Images(a) => images::images(&store, a),
        Command::Inspect(a) => inspect::inspect(&store, a),
        Command::Tag(a) => images::tag(&store, a),
        Command::Rmi(a) => images::rmi(&store, &cli.state, a),
        Command::Gc => gc::gc(&store, &cli.state),
        Command::Run(a) => run::run(&store, cli.state, *a),
        Command::Ps(a) => ps::ps(&cli.state, a),
        Command::Login(_) | Command::Logout(_) => unreachable!("handled above"),
        Command::Version | Command::Info(_) | Command::Completion(_) | Command::GenerateMan(_) => {
            unreachable!("handled above")
        }
        Command::Exec(a) => exec::exec(&cli.state, a),
        Command::Kill(a) => ps::kill(&cli.state, a),
        Command::Stop(a) => ps::stop(&cli.state, a),
        Command::Fsck(a) => fsck::fsck(&store, a),
    }
}
