//! Tables as the manual prints them: a header, a rule of dashes, aligned columns.

use ax_api::{AppView, ServerView, SocketView};

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

pub fn apps(rows: &[AppView]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                a.app_id.clone(),
                a.node_id.clone(),
                a.cluster.clone(),
                a.app_ip.clone(),
                a.driver.clone(),
                a.labels.clone(),
                a.zones.clone(),
            ]
        })
        .collect();
    render(&["NAME", "APPID", "NODEID", "CLUSTER", "APPIP", "DRIVER", "LABELS", "ZONES"], &body)
}

pub fn servers(rows: &[ServerView]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|s| {
            vec![
                s.node_id.clone(),
                s.cluster.clone(),
                s.app_id.clone(),
                s.proto.clone(),
                s.service_addr.clone(),
                s.ipv4_addr.clone(),
            ]
        })
        .collect();
    render(&["NODEID", "CLUSTER", "APPID", "PROTO", "SERVICEADDR", "IPV4ADDR"], &body)
}

pub fn sockets(rows: &[SocketView]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.node_id.clone(),
                s.app_id.clone(),
                s.inode.to_string(),
                s.proto.clone(),
                s.flags.to_string(),
                s.bind_ip.clone(),
                s.backlog.to_string(),
            ]
        })
        .collect();
    render(&["ID", "NODEID", "APPID", "INODE", "PROTO", "FLAGS", "BINDIP", "BACKLOG"], &body)
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
            proto: "tcp".into(),
            service_addr: "192.168.178.2:6000".into(),
            ipv4_addr: "10.0.23.11:40000".into(),
            labels: "zone=default".into(),
        }];
        let out = servers(&rows);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].chars().all(|c| c == '-'));
        let col = lines[0].find("SERVICEADDR").unwrap();
        assert_eq!(&lines[2][col..col + 18], "192.168.178.2:6000");
        assert_eq!(lines[1].len(), lines[2].len());
    }

    #[test]
    fn empty_table_has_header_and_rule() {
        assert_eq!(render(&["A", "BB"], &[]), "A  BB\n-----\n");
    }
}
