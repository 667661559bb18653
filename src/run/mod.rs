//! Running an image's process: the spec (what to run), the mount plan (as data), and the
//! two sides of the launch — the outer `coracle run` and the container's init.

pub mod capabilities;
pub mod container;
pub mod control;
pub mod exec;
pub mod launch;
pub mod mounts;
pub mod notify;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod state;
pub mod tty;
pub mod user;
