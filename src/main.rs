//! The `coracle` binary: parse argv, run one command, map its outcome to an exit code.
//!
//! `main` is the C entry point (`no_main`): std's runtime setup before a Rust `main`
//! (reading /proc/self/maps for the main thread's stack guard, an alternate signal stack
//! and its handlers, SIGPIPE ignored, a poll of fds 0-2) costs each start ~0.1 ms, and
//! coracle needs none of it. std still finds argv (glibc passes it to std's init_array
//! hook), and `process::exit` still flushes stdout.
#![no_main]

#[no_mangle]
pub extern "C" fn main(_argc: std::ffi::c_int, _argv: *const *const std::ffi::c_char) -> std::ffi::c_int {
    coracle::sys::default_sigpipe();
    // A panic has printed its message; end as a Rust main would (release builds abort).
    let code = std::panic::catch_unwind(coracle::cli::main).unwrap_or(101);
    std::process::exit(code)
}
