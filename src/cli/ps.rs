//! `coracle ps`, `coracle kill`, `coracle stop`: running containers, found through their
//! locked state files under --state.

use std::path::Path;
use std::time::Duration;

use clap::Args;
use serde_json::json;

use super::images::Format;
use super::output::{ago, parse_rfc3339};
use super::CmdResult;
use crate::run::control::{self, Stopped};
use crate::run::state;

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Output format: a table for people, a JSON array for scripts
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(Args, Debug)]
pub struct KillArgs {
    /// Signal to send (name or number)
    #[arg(short = 's', long, default_value = "KILL")]
    signal: String,
    /// Container ID (or unique prefix) or name
    container: String,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    /// Seconds to wait after SIGTERM before SIGKILL
    #[arg(short = 't', long = "time", default_value_t = 10)]
    time: u64,
    /// Container ID (or unique prefix) or name
    container: String,
}

pub fn ps(state_dir: &Path, a: PsArgs) -> CmdResult {
    let list = state::list(state_dir)?;
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&json!(list))?),
        Format::Table => {
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
            let mut rows = vec![[
                "CONTAINER ID".to_owned(),
                "IMAGE".into(),
                "COMMAND".into(),
                "CREATED".into(),
                "PID".into(),
                "NAMES".into(),
            ]];
            for s in &list {
                let created = parse_rfc3339(&s.started).map_or_else(String::new, |t| ago(t, now));
                rows.push([
                    s.id[..12].to_owned(),
                    s.image.clone(),
                    s.command.join(" "),
                    created,
                    s.pid.to_string(),
                    s.name.clone(),
                ]);
            }
            super::images::print_rows(&rows);
        }
    }
    Ok(0)
}

pub fn kill(state_dir: &Path, a: KillArgs) -> CmdResult {
    let sig = control::parse_signal(&a.signal)?;
    let s = control::kill(state_dir, &a.container, sig)?;
    println!("{}", s.id);
    Ok(0)
}

pub fn stop(state_dir: &Path, a: StopArgs) -> CmdResult {
    let (s, how) = control::stop(state_dir, &a.container, Duration::from_secs(a.time))?;
    if how == Stopped::Killed {
        crate::log::warn(&format!("stop: {} did not exit within {} s of SIGTERM: killed", s.name, a.time));
    }
    println!("{}", s.id);
    Ok(0)
}
