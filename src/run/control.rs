//! Acting on running containers from another process: `kill` and `stop`. The target is
//! found through its state (whose flock proves it alive) and reached through a pidfd, so
//! a recycled pid is never signalled.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::state::{self, State};
use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no running container {0:?}")]
    NotFound(String),
    #[error("invalid signal {0:?}")]
    BadSignal(String),
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
}

/// Parses `TERM`, `SIGTERM`, `sigterm` or `15`.
pub fn parse_signal(s: &str) -> Result<i32, ControlError> {
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=64).contains(&n) { Ok(n) } else { Err(ControlError::BadSignal(s.into())) };
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    name.parse::<nix::sys::signal::Signal>().map(|s| s as i32).map_err(|_| ControlError::BadSignal(s.into()))
}

/// Finds `key` and opens a pidfd for its PID 1, checking afterwards that the container
/// is still the one the state describes (its lock still held).
fn open(state_dir: &Path, key: &str) -> Result<(State, OwnedFd), ControlError> {
    let s = state::find(state_dir, key)
        .map_err(|e| ControlError::Io("read state", e))?
        .ok_or_else(|| ControlError::NotFound(key.into()))?;
    let fd = sys::pidfd_open(s.init_pid).map_err(|_| ControlError::NotFound(key.into()))?;
    match state::find(state_dir, &s.id) {
        Ok(Some(again)) if again.init_pid == s.init_pid => Ok((s, fd)),
        _ => Err(ControlError::NotFound(key.into())),
    }
}

/// `coracle kill`: one signal to the container's PID 1 (init forwards it to the app).
pub fn kill(state_dir: &Path, key: &str, sig: i32) -> Result<State, ControlError> {
    let (s, fd) = open(state_dir, key)?;
    sys::pidfd_send_signal(fd.as_fd(), sig).map_err(|e| ControlError::Io("signal", e))?;
    Ok(s)
}

/// How `stop` ended the container.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    Exited,
    Killed,
}

/// `coracle stop`: SIGTERM, then SIGKILL after `grace`; returns once the container's
/// `coracle run` has cleaned up (its state lock is gone), or after 10 more seconds.
pub fn stop(state_dir: &Path, key: &str, grace: Duration) -> Result<(State, Stopped), ControlError> {
    let (s, fd) = open(state_dir, key)?;
    sys::pidfd_send_signal(fd.as_fd(), libc::SIGTERM).map_err(|e| ControlError::Io("signal", e))?;
    let how = if wait_exit(&fd, grace) {
        Stopped::Exited
    } else {
        // Killing PID 1 kills every process of the container.
        let _ = sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
        wait_exit(&fd, Duration::from_secs(10));
        Stopped::Killed
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && matches!(state::find(state_dir, &s.id), Ok(Some(_))) {
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok((s, how))
}

fn wait_exit(fd: &OwnedFd, timeout: Duration) -> bool {
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    let mut p = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    poll(&mut p, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)).unwrap_or(0) > 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn signal_names() {
        assert_eq!(super::parse_signal("TERM").unwrap(), 15);
        assert_eq!(super::parse_signal("sigkill").unwrap(), 9);
        assert_eq!(super::parse_signal("10").unwrap(), 10);
        assert!(super::parse_signal("NOPE").is_err());
        assert!(super::parse_signal("0").is_err());
    }
}
