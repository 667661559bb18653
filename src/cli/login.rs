//! `coracle login` and `coracle logout`: credentials in the containers auth.json format
//! (the file podman writes; docker's config.json is read too, never written).

use std::io::{BufRead, Write};

use clap::Args;

use super::{CmdResult, Failure, EXIT_ERROR};
use crate::registry::{auth, client::Client};

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// User name (asked for when missing)
    #[arg(short = 'u', long)]
    username: Option<String>,
    /// Read the password from standard input
    #[arg(long = "password-stdin")]
    password_stdin: bool,
    /// Verify the registry's TLS certificate (false also allows plain HTTP)
    #[arg(long = "tls-verify", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    tls_verify: Option<bool>,
    /// Directory with the registry's CA and client certificate (see `coracle pull --cert-dir`)
    #[arg(long = "cert-dir", value_name = "DIR")]
    cert_dir: Option<std::path::PathBuf>,
    /// The registry: HOST[:PORT] (docker.io for Docker Hub)
    registry: String,
}

#[derive(Args, Debug)]
pub struct LogoutArgs {
    /// The registry: HOST[:PORT]
    registry: String,
}

fn fail(message: String) -> Failure {
    Failure { code: EXIT_ERROR, message }
}

/// Normalises `https://host/…`, `host/` and docker's v1 URL to `host[:port]`.
fn registry_key(s: &str) -> String {
    let s = s.trim_start_matches("https://").trim_start_matches("http://");
    let host = s.split('/').next().unwrap_or(s);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        h => h.to_owned(),
    }
}

/// Reads a line from the terminal without echoing it.
fn read_secret(prompt: &str) -> std::io::Result<String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let tty = std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty")?;
    (&tty).write_all(prompt.as_bytes())?;
    let saved = tcgetattr(&tty)?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(&tty, SetArg::TCSANOW, &quiet)?;
    let mut line = String::new();
    let r = std::io::BufReader::new(&tty).read_line(&mut line);
    let _ = tcsetattr(&tty, SetArg::TCSANOW, &saved);
    (&tty).write_all(b"\n")?;
    r?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

pub fn login(a: LoginArgs) -> CmdResult {
    let key = registry_key(&a.registry);
    let user = match a.username {
        Some(u) => u,
        None => {
            eprint!("Username: ");
            let mut u = String::new();
            std::io::stdin().lock().read_line(&mut u).map_err(|e| fail(format!("read user name: {e}")))?;
            u.trim().to_owned()
        }
    };
    let password = if a.password_stdin {
        let mut p = String::new();
        std::io::stdin().lock().read_line(&mut p).map_err(|e| fail(format!("read password: {e}")))?;
        p.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        read_secret("Password: ")
            .map_err(|e| fail(format!("read password (use --password-stdin without a terminal): {e}")))?
    };
    if user.is_empty() || password.is_empty() {
        return Err(fail("user name and password must not be empty".into()));
    }
    let tls = crate::registry::client::Tls { verify: a.tls_verify.unwrap_or(true), cert_dir: a.cert_dir };
    Client::check_login(&key, (user.clone(), password.clone()), &tls)?;
    auth::store(&key, Some((&user, &password)))
        .map_err(|e| fail(format!("write {}: {e}", auth::write_file().display())))?;
    println!("Login Succeeded");
    Ok(0)
}

pub fn logout(a: LogoutArgs) -> CmdResult {
    let key = registry_key(&a.registry);
    let removed = auth::store(&key, None).map_err(|e| fail(format!("write {}: {e}", auth::write_file().display())))?;
    if !removed {
        return Err(fail(format!("not logged in to {key}")));
    }
    println!("Removed login credentials for {key}");
    Ok(0)
}
