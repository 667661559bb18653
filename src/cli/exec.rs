//! `coracle exec`: run one more command in a running container; its exit status is
//! mirrored like `coracle run`'s.

use std::path::Path;

use clap::Args;

use super::{CmdResult, Failure};
use crate::run::exec::{self, ExecRequest};
use crate::run::launch::Outcome;

#[derive(Args, Debug)]
#[command(trailing_var_arg = true)]
pub struct ExecArgs {
    /// Set an environment variable (K=V), or pass K from coracle's environment
    #[arg(short = 'e', long = "env", value_name = "K=V|K")]
    env: Vec<String>,
    /// USER[:GROUP] or UID[:GID] (default: the container's user)
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Working directory (default: the container's)
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// Keep standard input connected
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a pseudo-terminal
    #[arg(short = 't', long)]
    tty: bool,
    /// Container ID (or unique prefix) or name
    container: String,
    /// The command and its arguments
    #[arg(required = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub fn exec(state_dir: &Path, a: ExecArgs) -> CmdResult {
    let outcome = exec::exec(
        state_dir,
        ExecRequest {
            container: a.container,
            args: a.command,
            env: a.env,
            user: a.user,
            workdir: a.workdir,
            tty: a.tty,
            interactive: a.interactive,
        },
    )
    .map_err(|e| Failure { code: e.code, message: e.message })?;
    match outcome {
        Outcome::Exited(n) => Ok(n),
        Outcome::Signaled(s) => crate::sys::die_by_signal(s),
    }
}
