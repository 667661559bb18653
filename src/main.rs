//! The `coracle` binary: parse argv, run one command, map its outcome to an exit code.

fn main() {
    coracle::sys::default_sigpipe();
    std::process::exit(coracle::cli::main());
}
