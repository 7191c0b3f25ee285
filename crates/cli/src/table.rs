//! Tables as the manual prints them: a header, a rule of dashes, aligned columns.

use ax_api::{AppView, NodeView, ProxyView, ServerView, SocketView, VserviceView};

/// Renders rows under `header`, each column as wide as its widest cell.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    let total = widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1);
    out.push_str(&"-".repeat(total));
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// A resource that prints as a table row.
pub trait Row {
    const HEADER: &'static [&'static str];
    fn cells(&self) -> Vec<String>;
}

/// Renders rows of one resource under its header.
pub fn rows<T: Row>(rows: &[T]) -> String {
    let body: Vec<Vec<String>> = rows.iter().map(Row::cells).collect();
    render(T::HEADER, &body)
}

impl Row for AppView {
    const HEADER: &'static [&'static str] =
        &["NAME", "APPID", "NODEID", "CLUSTER", "APPIP", "DRIVER", "LABELS", "ZONES"];
    fn cells(&self) -> Vec<String> {
        let a = self.clone();
        let zones = format!("[{}]", a.zones.join(","));
        // Where its sockets live, when not in a namespace of its own.
        let driver = if a.host_sockets { format!("{}/host", a.driver) } else { a.driver };
        vec![a.name, a.app_id, a.node_id, a.cluster, a.app_ip.to_string(), driver, a.labels.to_string(), zones]
    }
}

impl Row for ServerView {
    const HEADER: &'static [&'static str] = &["NODEID", "CLUSTER", "APPID", "PROTO", "SERVICEADDR", "IPV4ADDR"];
    fn cells(&self) -> Vec<String> {
        let s = self.clone();
        let (proto, service, host) = (s.proto.name().into(), s.service_addr.to_string(), s.ipv4_addr.to_string());
        vec![s.node_id, s.cluster, s.app_id, proto, service, host]
    }
}

impl Row for SocketView {
    const HEADER: &'static [&'static str] = &["ID", "NODEID", "APPID", "INODE", "PROTO", "FLAGS", "BINDIP", "BACKLOG"];
    fn cells(&self) -> Vec<String> {
        let s = self.clone();
        vec![
            s.id,
            s.node_id,
            s.app_id,
            s.inode.to_string(),
            s.proto.name().into(),
            s.flags.to_string(),
            s.bind_ip.to_string(),
            s.backlog.to_string(),
        ]
    }
}

impl Row for VserviceView {
    const HEADER: &'static [&'static str] = &["NAME", "TYPE", "IP", "PORTS", "BACKENDS", "EXTERNAL"];
    fn cells(&self) -> Vec<String> {
        let v = self.clone();
        let (ip, ports, backends) = (v.ip.to_string(), v.ports.to_string(), v.backends.to_string());
        vec![v.name, v.lb_type.name().into(), ip, ports, backends, v.external.to_string()]
    }
}

impl Row for ProxyView {
    const HEADER: &'static [&'static str] = &["ID", "PROTO", "LISTENER", "DIALERS"];
    fn cells(&self) -> Vec<String> {
        let p = self.clone();
        vec![p.id.to_string(), p.proto.name().into(), p.listener, format!("[{}]", p.dialers.join(" "))]
    }
}

impl Row for NodeView {
    const HEADER: &'static [&'static str] = &["NAME", "CLUSTER", "IP", "EXTERNALIP", "ROLE", "APPCOUNT", "STATUS"];
    fn cells(&self) -> Vec<String> {
        let n = self.clone();
        let status = if n.live { "alive" } else { "dead" };
        let status = match &n.problem {
            Some(problem) => format!("{status} (gossip state as last sealed: {problem})"),
            None => status.into(),
        };
        let (ip, external_ip) = (n.ip.to_string(), n.external_ip.to_string());
        vec![n.name, n.cluster, ip, external_ip, n.role, n.app_count.to_string(), status]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_under_their_headers() {
        let rows = vec![ServerView {
            node_id: "node1".into(),
            cluster: "appswitch".into(),
            app_id: "f00001bb".into(),
            proto: ax_api::Proto::Tcp,
            service_addr: "192.168.178.2:6000".parse().unwrap(),
            ipv4_addr: "10.0.23.11:40000".parse().unwrap(),
            labels: "zone=default".parse().unwrap(),
        }];
        let out = super::rows(&rows);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].chars().all(|c| c == '-'));
        let col = lines[0].find("SERVICEADDR").unwrap();
        assert_eq!(&lines[2][col..col + 18], "192.168.178.2:6000");
        assert_eq!(lines[1].len(), lines[2].len());
    }

    /// The typed rows print as the manual's tables did when they were strings.
    #[test]
    fn typed_cells_print_as_the_manual_shows_them() {
        let labels: ax_api::Labels = "zone=default,team=a".parse().unwrap();
        let app = AppView {
            name: "web".into(),
            app_id: "f0000001".into(),
            node_id: "n".into(),
            cluster: "appswitch".into(),
            app_ip: "198.18.0.1".parse().unwrap(),
            driver: "user".into(),
            host_sockets: false,
            zones: labels.selectors(),
            labels,
        };
        assert_eq!(app.cells()[4..], ["198.18.0.1", "user", "zone=default,team=a", "[zone==default,team==a]"]);
        let host = AppView { driver: "kernel".into(), host_sockets: true, ..app.clone() };
        assert_eq!(host.cells()[5], "kernel/host");
        let v = VserviceView {
            name: "web".into(),
            lb_type: ax_api::LbType::RoundRobin,
            ip: "198.18.2.1".parse().unwrap(),
            ports: "80:8000,443".parse().unwrap(),
            backends: "198.18.1.1,10.0.0.5:8080".parse().unwrap(),
            external: false,
            source_ip: None,
        };
        assert_eq!(
            v.cells(),
            ["web", "RoundRobin", "198.18.2.1", "80:8000,443:443", "198.18.1.1,10.0.0.5:8080", "false"]
        );
        let s = SocketView {
            id: "s".into(),
            node_id: "n".into(),
            app_id: "f0000001".into(),
            inode: 7,
            proto: ax_api::Proto::Udp,
            flags: 2,
            bind_ip: "[::]:80".parse().unwrap(),
            backlog: 0,
        };
        assert_eq!(s.cells()[3..7], ["7", "udp", "2", "[::]:80"]);
    }

    #[test]
    fn empty_table_has_header_and_rule() {
        assert_eq!(render(&["A", "BB"], &[]), "A  BB\n-----\n");
    }
}
