//! How many route entries one app's rows may take, so that no app's rows crowd the
//! others' entries out of `ax_kroutes`.

use crate::kmap::RouteKey;

use super::super::Table;
use crate::ids::AppId;

/// The most route entries one app's service rows may need (see [`Table::kernel_room`]):
/// an eighth of what `ax_kroutes` holds.
pub const ROUTES_PER_APP: usize = RouteKey::MAX_ENTRIES as usize / 8;

impl Table {
    /// True when `app` may add one more service row while the kernel driver serves
    /// apps here: each row of an app costs up to two route entries (its service and its
    /// host address) per label class of this node's kernel-driver apps, and one app's
    /// rows may take at most [`ROUTES_PER_APP`] of them, so no app's rows crowd out
    /// the others' entries. Without kernel-driver apps, always.
    pub fn kernel_room(&self, app: AppId) -> bool {
        let classes = self.kernel.class_count();
        let rows = self.services.rows().filter(|b| b.app == app).count();
        classes == 0 || (rows + 1) * 2 * classes <= ROUTES_PER_APP
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;
    use crate::kmap::{Change, KernelMaps, Lookup};
    use crate::table::testing::*;
    use crate::table::{BindPlan, Proto};
    use std::net::SocketAddrV4;

    /// An app's rows may take up to ROUTES_PER_APP entries, counted at two per row and
    /// label class: with one class that is half as many rows.
    #[test]
    fn an_app_may_add_rows_while_its_entries_fit_its_share() {
        use crate::ports::PortRanges;
        use crate::table::{NodeInfo, PortPool};
        let node = NodeInfo { name: "n1".into(), cluster: "appswitch".into(), ip: NODE, ports: ports() };
        let mut t = Table::new(node, PortPool::new(PortRanges::parse("20000-60000").unwrap()), 7);
        let a = app(&mut t, Some("198.18.0.1"), "role=a");
        assert!(t.kernel_room(a), "no kernel-driver app: no bound");
        kapp(&mut t, Some("198.18.0.2"), "role=b");
        let fits = ROUTES_PER_APP / 2;
        for i in 0..fits {
            assert!(t.kernel_room(a), "row {i}");
            let port = t.take_port().unwrap();
            t.add_binding(a, bound(i as u64 + 1, &format!("198.18.0.1:{}", 1024 + i)), host(port), port);
            t.set_listening(Proto::Tcp, port, i as u64 + 1, 1);
        }
        assert!(!t.kernel_room(a));
        let other = kapp(&mut t, Some("198.18.0.3"), "role=b");
        assert!(t.kernel_room(other), "another app's share is its own");
    }

    // ---- review: one app's listeners against the routes map's capacity ----------------

    /// One app with its share of the default pool (5000 listeners) beside two other
    /// label classes needs more route entries than the map holds; the daemon's writes
    /// stop at the first that fails, so a row added later gets no REFUSE entry at its
    /// host address and falls back to the node address's PASS: a label bypass.
    #[test]
    fn one_apps_listeners_leave_room_in_the_routes_map_for_the_others() {
        use crate::ports::PortRanges;
        use crate::table::{NodeInfo, PortPool};
        let node = NodeInfo { name: "n1".into(), cluster: "appswitch".into(), ip: NODE, ports: ports() };
        let mut t = Table::new(node, PortPool::new(PortRanges::parse("40000-60000").unwrap()), 7);
        let hostile = kapp(&mut t, Some("198.18.0.1"), "role=test");
        let prod = kapp(&mut t, Some("198.18.0.2"), "role=prod");
        kapp(&mut t, Some("198.18.0.3"), "role=web");
        let share = crate::limits::pool_share(20_001);
        for i in 0..share {
            let ip = format!("198.18.0.1:{}", 1024 + i);
            let BindPlan::Host { service, .. } = t.plan_bind(hostile, ip.parse().unwrap(), root).unwrap() else {
                panic!("private")
            };
            let port = t.take_port().unwrap();
            t.add_binding(hostile, bound(i as u64 + 1, &ip), service, port);
            assert!(t.set_listening(Proto::Tcp, port, i as u64 + 1, 128).is_some());
        }
        let fits = |m: &KernelMaps, c: &Change| match c {
            Change::PutRoute(k, _) => m.routes.contains_key(k) || m.routes.len() < RouteKey::MAX_ENTRIES as usize,
            _ => true,
        };
        let write = |m: &mut KernelMaps, changes: Vec<Change>| {
            // As KernelDriver::apply: in order, stopping at the first write the map refuses.
            for c in changes {
                if !fits(m, &c) {
                    return false;
                }
                m.apply(&[c]);
            }
            true
        };
        // The apps' entries were written when they started, before any listener.
        let full = maps(&mut t);
        let mut written = KernelMaps::new(full.config);
        written.apply(&full.apps.iter().map(|(id, e)| Change::PutApp(*id, *e)).collect::<Vec<_>>());
        // Then the hostile app listens everywhere it may (the daemon's sync fails past
        // the capacity and resyncs from scratch at the next change).
        let all_written = write(&mut written, KernelMaps::diff(&KernelMaps::new(full.config), &full));
        // prod starts listening afterwards.
        let p = serve(&mut t, prod, "0.0.0.0:8080", 1_000_000);
        let after = maps(&mut t);
        write(&mut written, KernelMaps::diff(&KernelMaps::new(after.config), &after));
        let at_host: std::net::SocketAddr = SocketAddrV4::new(NODE, p).into();
        assert_eq!(after.lookup(hostile.0, Proto::Tcp, at_host), Lookup::Refuse, "the table's answer");
        assert_eq!(
            written.lookup(hostile.0, Proto::Tcp, at_host),
            Lookup::Refuse,
            "the maps as written: {} entries wanted, {} fit, all written before prod: {all_written}",
            after.routes.len(),
            RouteKey::MAX_ENTRIES
        );
    }
}
