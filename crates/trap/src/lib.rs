//! The user driver. [`policy`] says which system calls an app's seccomp filter traps
//! and why, and compiles that to BPF. [`Engine`] answers the trapped calls of one app:
//! [`call`] decodes a notification into a typed call, `ax_core::plan` decides what it
//! means (over the table), and the engine carries that out through the kernel seam
//! (`ax_sys::kernel::Kernel`), so every decision is tested without root against a
//! recording double of the kernel.

mod appcg;
pub mod call;
mod datagram;
mod echo;
mod egress;
mod engine;
pub mod fds;
pub mod guard;
mod held;
mod helper;
mod hooks;
pub mod kdriver;
pub mod policy;
mod resume;
mod spare;
pub mod stats;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

pub use engine::Engine;

use ax_core::Table;

/// What an engine needs of its daemon: the node's table, under the daemon's one lock,
/// and a word after a change worth keeping. The daemon implements it over the state it
/// owns; tests implement it over a plain `Mutex<Table>`.
pub trait Node: Send + Sync + 'static {
    /// Runs `f` on the table while no one else can change it.
    fn with_table<R>(&self, f: impl FnOnce(&mut Table) -> R) -> R;
    /// A bind or a listen changed the table; called before the app is answered.
    fn changed(&self);
}
