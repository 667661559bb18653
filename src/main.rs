//! The `coracle` binary: parse argv, run one command, map its outcome to an exit code.
//!
//! `main` is the C entry point (`no_main`): std's runtime setup before a Rust `main`
//! (reading /proc/self/maps for the main thread's stack guard, an alternate signal stack
//! and its handlers, SIGPIPE ignored) costs each start ~0.1 ms, and coracle needs none of
//! it. Of that setup, coracle keeps what it relies on: fds 0-2 are open (on /dev/null if
//! its caller closed them), so that none of its own descriptors takes their numbers. std
//! still finds argv (glibc passes it to std's init_array hook), and `process::exit`
//! still flushes stdout. (A test build keeps std's `main`, which runs the tests.)
#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn main(_argc: std::ffi::c_int, _argv: *const *const std::ffi::c_char) -> std::ffi::c_int {
    coracle::sys::open_standard_fds();
    coracle::sys::default_sigpipe();
    // A panic has printed its message; end as a Rust main would (release builds abort).
    let code = std::panic::catch_unwind(coracle::cli::main).unwrap_or(101);
    std::process::exit(code)
}
