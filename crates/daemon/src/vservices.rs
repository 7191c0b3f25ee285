//! Creating and deleting vservices through the API: every field is checked and named
//! when wrong, a conflict changes nothing, and an external vservice's relays start and
//! stop with it.

use std::net::Ipv4Addr;

use ax_api::{VserviceRequest, VserviceView};
use ax_core::vservice::{self, LbType, Vservice};
use ax_core::{addr, Table};

use crate::{relay, Daemon};

/// Why a request failed: a bad field (400), a conflict (409) or a missing vservice (404).
#[derive(Debug)]
pub enum Refusal {
    Bad(String),
    Conflict(String),
    Missing(String),
}

fn parse(req: &VserviceRequest) -> Result<Vservice, Refusal> {
    let bad = Refusal::Bad;
    ax_dns::wire::check_label(&req.name).map_err(|e| bad(e.replacen("--name", "name", 1)))?;
    let ip: Ipv4Addr = req.ip.parse().map_err(|_| bad(format!("--ip {} is not an IPv4 address", req.ip)))?;
    addr::check_app_ip(ip).map_err(bad)?;
    let source_ip = match &req.source_ip {
        Some(s) => Some(s.parse::<Ipv4Addr>().map_err(|_| bad(format!("--source-ip {s} is not an IPv4 address")))?),
        None => None,
    };
    Ok(Vservice {
        name: req.name.to_ascii_lowercase(),
        ip,
        ports: vservice::parse_ports(&req.ports).map_err(bad)?,
        backends: vservice::parse_backends(&req.backends).map_err(bad)?,
        lb: LbType::parse(&req.lbtype).map_err(bad)?,
        source_ip,
        external: req.external,
        app_backends: Default::default(),
    })
}

pub fn create(daemon: &Daemon, req: &VserviceRequest) -> Result<(), Refusal> {
    let v = parse(req)?;
    let (name, ip, ports, external) = (v.name.clone(), v.ip, v.ports.clone(), v.external);
    let dialers: Vec<String> = v.backends.iter().map(|b| b.to_string()).collect();
    daemon.table().add_vservice(v).map_err(Refusal::Conflict)?;
    if external {
        for m in ports {
            if let Err(e) = relay::start(daemon, &name, ip, m.vport, dialers.clone()) {
                relay::stop(daemon, &name);
                let _ = daemon.table().remove_vservice(&name);
                return Err(Refusal::Conflict(format!(
                    "cannot listen on port {} of this node for the external vservice: {e}",
                    m.vport
                )));
            }
        }
    }
    Ok(())
}

pub fn delete(daemon: &Daemon, name: &str) -> Result<(), Refusal> {
    daemon.table().remove_vservice(&name.to_ascii_lowercase()).map_err(Refusal::Missing)?;
    relay::stop(daemon, &name.to_ascii_lowercase());
    Ok(())
}

pub fn views(t: &Table) -> Vec<VserviceView> {
    t.vservices()
        .map(|v| VserviceView {
            name: v.name.clone(),
            lb_type: v.lb.name().into(),
            ip: v.ip.to_string(),
            ports: v.ports.iter().map(|m| format!("{}:{}", m.vport, m.app_port)).collect::<Vec<_>>().join(","),
            backends: v.backends.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(","),
            external: v.external,
            source_ip: v.source_ip.map(|s| s.to_string()).unwrap_or_default(),
        })
        .collect()
}
