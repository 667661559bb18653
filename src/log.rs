//! coracle's own diagnostics: one line each on stderr, prefixed `coracle:`, filtered by
//! `--log-level` (default `warn`). Nothing of coracle's ever goes to stdout, which
//! belongs to the app (or to a command's result).

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

/// `--log-level`, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
#[repr(u8)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Warn as u8);

pub fn set_level(l: Level) {
    LEVEL.store(l as u8, Ordering::Relaxed);
}

pub fn enabled(l: Level) -> bool {
    l as u8 <= LEVEL.load(Ordering::Relaxed)
}

fn emit(l: Level, tag: &str, msg: &str) {
    if enabled(l) {
        // One write per line, newlines in the message flattened: lines from concurrent
        // processes on one stderr do not interleave mid-line.
        let line = format!("coracle: {tag}{}\n", msg.replace('\n', " "));
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// An error that does not end the command (the command's own failure is printed by
/// the CLI as `coracle: MESSAGE`).
pub fn error(msg: &str) {
    emit(Level::Error, "error: ", msg);
}

pub fn warn(msg: &str) {
    emit(Level::Warn, "warning: ", msg);
}

pub fn info(msg: &str) {
    emit(Level::Info, "", msg);
}

pub fn debug(msg: &str) {
    emit(Level::Debug, "debug: ", msg);
}
