//! Whether an app's ping is answered: an ICMP echo request to a virtual address earns a
//! reply when the app could reach something at that address (the address of an app
//! that shares a label with it, of a row it may connect to, of a vservice with a
//! backend it may reach, or of a remote cluster's service it may connect to), as its
//! connects would find. Anything else fails at once, as
//! a host's ping of an address nobody answers on its own network does. Nothing here
//! says whether a port is open: a real host answers pings whatever it serves.

use std::net::{IpAddr, Ipv4Addr};

use crate::ids::AppId;
use crate::labels::Labels;

use super::routing::Decision;
use super::Table;

/// What an app's echo request to an address earns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// An echo reply, from the address pinged.
    Reply,
    /// A virtual address the app reaches nothing at (nobody has it, or no one there
    /// shares a label with the app): ICMP host unreachable.
    HostUnreachable,
    /// Not a virtual address (a real host's, say): ax answers pings of its own
    /// addresses only, so this is ICMP network unreachable, the error the app's empty
    /// namespace gave before.
    NetUnreachable,
}

impl Table {
    /// What an echo request by `client` to `dst` earns.
    pub fn echo(&mut self, client: AppId, dst: Ipv4Addr) -> Echo {
        let Some(me) = self.apps.get(client) else { return Echo::HostUnreachable };
        if dst == me.ip {
            return Echo::Reply;
        }
        if !self.is_virtual(IpAddr::V4(dst)) {
            return Echo::NetUnreachable;
        }
        let labels = me.labels.clone();
        if self.reaches_address(&labels, dst) || self.reaches_vservice(&labels, dst) {
            Echo::Reply
        } else {
            Echo::HostUnreachable
        }
    }

    /// Whether an app with `labels` shares a label with an app that has `ip` (on this
    /// node or, as gossip says, another), or with a row serving there.
    fn reaches_address(&self, labels: &Labels, ip: Ipv4Addr) -> bool {
        let local_app = self.apps.iter().any(|a| a.ip == ip && a.labels.shares(labels));
        let remote_app =
            self.remote.get().apps.iter().any(|a| a.ip == ip && a.labels.as_ref().is_some_and(|l| l.shares(labels)));
        let local_row = self
            .services
            .rows()
            .any(|b| *b.service.ip() == ip && self.apps.get(b.app).is_some_and(|a| a.labels.shares(labels)));
        let remote_row = self.remote.rows().any(|r| *r.service.ip() == ip && r.labels.shares(labels));
        let federated = self
            .federated_services()
            .iter()
            .any(|(_, s, f)| *s.ip() == ip && f.labels.iter().any(|l| l.shares(labels)));
        local_app || remote_app || local_row || remote_row || federated
    }

    /// Whether `ip` is a vservice's with a port whose connect by an app with `labels`
    /// would find a backend.
    fn reaches_vservice(&mut self, labels: &Labels, ip: Ipv4Addr) -> bool {
        let ports: Vec<u16> =
            self.vservices.iter().filter(|v| v.ip == ip).flat_map(|v| v.ports.iter().map(|m| m.vport)).collect();
        ports.into_iter().any(|port| match self.decide_vservice(ip, port, Some(labels)) {
            Some(Decision::Balanced(b)) => !b.groups.is_empty(),
            _ => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::testing::*;
    use crate::table::{Origin, Remote, RemoteApp, RemoteRow};
    use crate::vservice::LbType;
    use crate::Proto;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn an_app_pings_itself_and_the_apps_it_shares_a_label_with() {
        let mut t = table();
        let a = app(&mut t, Some("198.18.0.1"), "role=web");
        app(&mut t, Some("198.18.0.2"), "role=web,zone=x");
        app(&mut t, Some("198.18.0.3"), "role=db");
        assert_eq!(t.echo(a, ip("198.18.0.1")), Echo::Reply);
        assert_eq!(t.echo(a, ip("198.18.0.2")), Echo::Reply);
        // Another app's address with no label in common: unreachable, as a connect
        // there is refused.
        assert_eq!(t.echo(a, ip("198.18.0.3")), Echo::HostUnreachable);
    }

    #[test]
    fn addresses_that_are_not_virtual_are_not_answered() {
        let mut t = table();
        let a = app(&mut t, Some("198.18.0.1"), "zone=default");
        t.set_remote(Remote { nodes: vec![("n2".into(), ip("10.0.0.2"))], ..Remote::default() });
        // Real hosts, this node and another, and an address nobody ever had: none is
        // ax's to answer for.
        for outside in ["203.0.113.5", "10.0.0.1", "10.0.0.2", "198.18.7.7"] {
            assert_eq!(t.echo(a, ip(outside)), Echo::NetUnreachable, "{outside}");
        }
    }

    #[test]
    fn a_gone_app_gets_no_reply() {
        let mut t = table();
        let a = app(&mut t, Some("198.18.0.1"), "zone=default");
        app(&mut t, Some("198.18.0.2"), "zone=default");
        t.remove_app(a);
        assert_eq!(t.echo(a, ip("198.18.0.2")), Echo::HostUnreachable);
    }

    #[test]
    fn remote_apps_and_rows_answer_by_their_labels() {
        let mut t = table();
        let a = app(&mut t, Some("198.18.0.1"), "role=web");
        let remote_app = |ip_: &str, labels: Option<&str>| RemoteApp {
            node: "n2".into(),
            id: "f0000002".into(),
            name: None,
            ip: ip(ip_),
            expose: vec![],
            labels: labels.map(|l| Labels::parse(l).unwrap()),
        };
        let row = RemoteRow {
            node: "n2".into(),
            app: "f0000003".into(),
            proto: Proto::Udp,
            service: "198.18.3.3:53".parse().unwrap(),
            host: "10.0.0.2:40001".parse().unwrap(),
            labels: Labels::parse("role=web").unwrap(),
        };
        t.set_remote(Remote {
            nodes: vec![("n2".into(), ip("10.0.0.2"))],
            apps: vec![
                remote_app("198.18.3.1", Some("role=web")),
                remote_app("198.18.3.2", Some("role=db")),
                // A node too old to say its apps' labels: only its rows can tell.
                remote_app("198.18.3.3", None),
                remote_app("198.18.3.4", None),
            ],
            rows: vec![row],
            ..Remote::default()
        });
        assert_eq!(t.echo(a, ip("198.18.3.1")), Echo::Reply);
        assert_eq!(t.echo(a, ip("198.18.3.2")), Echo::HostUnreachable);
        assert_eq!(t.echo(a, ip("198.18.3.3")), Echo::Reply);
        assert_eq!(t.echo(a, ip("198.18.3.4")), Echo::HostUnreachable);
        // Gone from gossip, still virtual: unreachable, never out to the network.
        t.set_remote(Remote { nodes: vec![("n2".into(), ip("10.0.0.2"))], ..Remote::default() });
        assert_eq!(t.echo(a, ip("198.18.3.1")), Echo::HostUnreachable);
    }

    #[test]
    fn a_vservice_answers_while_a_backend_the_app_may_reach_serves() {
        let mut t = table();
        let a = app(&mut t, Some("198.18.0.1"), "role=web");
        let b = app(&mut t, Some("198.18.1.1"), "role=web");
        let c = app(&mut t, Some("198.18.1.2"), "role=db");
        t.add_vservice(vservice("web", "198.18.2.1", LbType::Random, "198.18.1.1"), Origin::Request).unwrap();
        t.add_vservice(vservice("db", "198.18.2.2", LbType::Random, "198.18.1.2"), Origin::Request).unwrap();
        // Nobody serves the port yet.
        assert_eq!(t.echo(a, ip("198.18.2.1")), Echo::HostUnreachable);
        serve(&mut t, b, "0.0.0.0:8000", 11);
        serve(&mut t, c, "0.0.0.0:8000", 12);
        assert_eq!(t.echo(a, ip("198.18.2.1")), Echo::Reply);
        // Its backend serves, but shares no label with the app.
        assert_eq!(t.echo(a, ip("198.18.2.2")), Echo::HostUnreachable);
        assert_eq!(t.echo(c, ip("198.18.2.2")), Echo::Reply);
    }
}
