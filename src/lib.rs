//! coracle: a daemonless container runtime. The library holds every capability; the
//! `coracle` binary only parses arguments, calls in here and maps errors to exit codes.

pub mod cli;
pub mod digest;
pub mod image;
pub mod layer;
pub mod log;
pub mod reference;
pub mod registry;
pub mod run;
pub mod store;
pub mod sys;
