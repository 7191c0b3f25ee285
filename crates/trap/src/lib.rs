//! The user driver. [`policy`] says which system calls an app's seccomp filter traps
//! and why, and compiles that to BPF; [`engine`] answers the trapped calls of one app
//! in the host's network namespace, asking `ax_core`'s table what each call means.

mod datagram;
mod egress;
pub mod engine;
pub mod policy;
mod task;

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
