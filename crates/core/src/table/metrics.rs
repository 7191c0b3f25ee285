//! What the daemon's `/metrics` asks of the table: which service a connect is to (the
//! key its allowed and denied connects are counted under), and the name a service
//! address goes by.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::addr;

use super::{Proto, Table};

impl Table {
    /// The service a connect to `dest` over `proto` is a connect to, as counted: a
    /// vservice's ip:port (TCP), or an address with rows here or on another node (a
    /// row's host address counts as its service). None for anything else (outside
    /// addresses, loopback, a virtual address nothing serves), so that the services
    /// counted are only ever ones the table has had.
    pub fn service_of_connect(&self, proto: Proto, dest: SocketAddr) -> Option<SocketAddrV4> {
        let SocketAddr::V4(v4) = addr::unmap(dest) else { return None };
        let is_vservice =
            |v: &crate::vservice::Vservice| v.ip == *v4.ip() && v.ports.iter().any(|m| m.vport == v4.port());
        if proto == Proto::Tcp && self.vservices.iter().any(is_vservice) {
            return Some(v4);
        }
        let service = self.service_of_host(proto, v4).unwrap_or(v4);
        (!self.rows_at(proto, service).is_empty()).then_some(service)
    }

    /// The name the address `ip` goes by: a local app's, a vservice's, or another
    /// node's app's (the first found, in that order).
    pub fn name_of(&self, ip: Ipv4Addr) -> Option<&str> {
        let local = self.apps.iter().filter(|a| a.ip == ip).find_map(|a| a.name.as_deref());
        local
            .or_else(|| self.vservices.iter().find(|v| v.ip == ip).map(|v| v.name.as_str()))
            .or_else(|| self.remote().apps.iter().filter(|a| a.ip == ip).find_map(|a| a.name.as_deref()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::table::{Origin, RemoteApp, RemoteRow};
    use crate::vservice::LbType;

    #[test]
    fn a_connect_counts_under_the_service_it_reaches() {
        let mut t = table();
        let server = named(&mut t, "web", Some("198.18.0.1")).unwrap().id;
        let port = serve(&mut t, server, "0.0.0.0:80", 11);
        t.add_vservice(vservice("front", "198.18.2.1", LbType::Random, "198.18.0.1"), Origin::Cluster).unwrap();
        let remote_row = RemoteRow {
            node: "n2".into(),
            app: "f0000002".into(),
            proto: Proto::Tcp,
            service: "198.18.0.9:443".parse().unwrap(),
            host: "10.0.0.2:40000".parse().unwrap(),
            labels: "zone=default".parse().unwrap(),
        };
        let remote_app = RemoteApp {
            node: "n2".into(),
            id: "f0000002".into(),
            name: None,
            ip: "198.18.0.9".parse().unwrap(),
            expose: vec![],
            labels: None,
        };
        t.set_remote(crate::table::Remote {
            nodes: vec![("n2".into(), "10.0.0.2".parse().unwrap())],
            rows: vec![remote_row],
            apps: vec![remote_app],
            ..Default::default()
        });
        let of = |proto, dest: &str| t.service_of_connect(proto, sa(dest)).map(|s| s.to_string());
        let web = Some("198.18.0.1:80".to_string());
        assert_eq!(of(Proto::Tcp, "198.18.0.1:80"), web);
        assert_eq!(of(Proto::Tcp, "[::ffff:198.18.0.1]:80"), web);
        // Straight to the row's host address: the same service.
        assert_eq!(of(Proto::Tcp, &format!("10.0.0.1:{port}")), web);
        assert_eq!(of(Proto::Tcp, "198.18.2.1:80"), Some("198.18.2.1:80".into()));
        assert_eq!(of(Proto::Tcp, "198.18.0.9:443"), Some("198.18.0.9:443".into()));
        assert_eq!(of(Proto::Tcp, "10.0.0.2:40000"), Some("198.18.0.9:443".into()));
        // Nothing serves these: not counted (an app must not grow the counted set).
        for nothing in ["198.18.0.1:81", "198.18.2.1:81", "203.0.113.1:80", "127.0.0.1:80", "[2001:db8::1]:80"] {
            assert_eq!(of(Proto::Tcp, nothing), None, "{nothing}");
        }
        assert_eq!(of(Proto::Udp, "198.18.0.1:80"), None, "no UDP row there");
        assert_eq!(of(Proto::Udp, "198.18.2.1:80"), None, "vservices are TCP");
    }

    #[test]
    fn an_address_goes_by_its_apps_or_vservices_name() {
        let mut t = table();
        named(&mut t, "web", Some("198.18.0.1")).unwrap();
        app(&mut t, Some("198.18.0.2"), "zone=default");
        t.add_vservice(vservice("front", "198.18.2.1", LbType::Random, "198.18.0.1"), Origin::Cluster).unwrap();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(t.name_of(ip("198.18.0.1")), Some("web"));
        assert_eq!(t.name_of(ip("198.18.2.1")), Some("front"));
        assert_eq!(t.name_of(ip("198.18.0.2")), None);
        assert_eq!(t.name_of(ip("198.18.0.3")), None);
    }
}
