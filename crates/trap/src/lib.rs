//! The user driver. [`policy`] says which system calls an app's seccomp filter traps
//! and why, and compiles that to BPF; [`engine`] answers the trapped calls of one app
//! in the host's network namespace, asking `ax_core`'s table what each call means.

mod datagram;
mod egress;
pub mod engine;
pub mod policy;
mod task;

pub use engine::Engine;
