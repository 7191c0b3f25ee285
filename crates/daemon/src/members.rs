//! Keeps the socket guard's member set current: the addresses whose packets an app's
//! pool port takes. They are this node's own address and every node gossip has shown
//! live in the last [`GRACE`] (a member briefly suspected by the failure detector keeps
//! its connections).

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ax_trap::guard::Guard;
use tracing::warn;

use crate::Daemon;

const EVERY: Duration = Duration::from_millis(250);
const GRACE: Duration = Duration::from_secs(30);

/// The members now, given the node's address, the nodes live now, and when each node
/// was last seen live (updated here).
fn members(
    node: Ipv4Addr,
    live: &[Ipv4Addr],
    seen: &mut HashMap<Ipv4Addr, Instant>,
    now: Instant,
) -> HashSet<Ipv4Addr> {
    for ip in live {
        seen.insert(*ip, now);
    }
    seen.retain(|_, last| now.duration_since(*last) <= GRACE);
    seen.keys().copied().chain([node]).collect()
}

pub fn spawn(daemon: Daemon, guard: Arc<Guard>) -> std::io::Result<()> {
    std::thread::Builder::new().name("members".into()).spawn(move || {
        let mut seen = HashMap::new();
        let mut failing = false;
        loop {
            let (node, live) = daemon.read(|s| {
                let t = &s.table;
                (t.node().ip, t.remote().nodes.iter().map(|n| n.1).collect::<Vec<_>>())
            });
            let now = members(node, &live, &mut seen, Instant::now());
            match guard.set_members(&now) {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    warn!("cannot update the socket guard's members (pool ports keep the old set): {e}");
                }
                Err(_) => {}
            }
            std::thread::sleep(EVERY);
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_is_always_a_member_and_gone_nodes_leave_after_the_grace() {
        let (node, a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3));
        let t0 = Instant::now();
        let mut seen = HashMap::new();
        assert_eq!(members(node, &[], &mut seen, t0), HashSet::from([node]));
        assert_eq!(members(node, &[a, b], &mut seen, t0), HashSet::from([node, a, b]));
        // b is suspected: it stays through the grace, then goes.
        assert_eq!(members(node, &[a], &mut seen, t0 + GRACE), HashSet::from([node, a, b]));
        assert_eq!(members(node, &[a], &mut seen, t0 + GRACE + EVERY), HashSet::from([node, a]));
    }
}
