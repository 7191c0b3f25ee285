//! Creating and deleting vservices through the API: every field is checked and named
//! when wrong, a conflict changes nothing, and an external vservice's relays start and
//! stop with it.

use std::net::Ipv4Addr;

use ax_api::{VserviceRequest, VserviceView};
use ax_core::vservice::{self, LbType, Vservice};
use ax_core::{addr, Table, VserviceError};

use std::time::{SystemTime, UNIX_EPOCH};

use ax_cluster::state::{merge_vservices, VsRecord};
use tracing::{info, warn};

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
    ax_dns::wire::check_label(&req.name).map_err(|e| bad(e.to_string().replacen("--name", "name", 1)))?;
    let ip: Ipv4Addr = req.ip.parse().map_err(|_| bad(format!("--ip {} is not an IPv4 address", req.ip)))?;
    addr::check_app_ip(ip).map_err(|e| bad(e.to_string()))?;
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
    install(daemon, req)?;
    let spec = serde_json::to_string(req).expect("a request serializes");
    record(daemon, &req.name.to_ascii_lowercase(), Some(spec));
    crate::state::save(daemon);
    Ok(())
}

/// Puts a vservice in the table and starts its relays.
fn install(daemon: &Daemon, req: &VserviceRequest) -> Result<(), Refusal> {
    let v = parse(req)?;
    let (name, ip, ports, external) = (v.name.clone(), v.ip, v.ports.clone(), v.external);
    let dialers: Vec<String> = v.backends.iter().map(|b| b.to_string()).collect();
    daemon.table().add_vservice(v).map_err(|e| Refusal::Conflict(e.to_string()))?;
    if external {
        for m in ports {
            if let Err(e) =
                relay::start(daemon, &name, m.vport, relay::Dial::Vservice { vip: ip, vport: m.vport }, dialers.clone())
            {
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
    let name = name.to_ascii_lowercase();
    uninstall(daemon, &name).map_err(|e| Refusal::Missing(e.to_string()))?;
    record(daemon, &name, None);
    crate::state::save(daemon);
    Ok(())
}

fn uninstall(daemon: &Daemon, name: &str) -> Result<(), VserviceError> {
    daemon.table().remove_vservice(name)?;
    relay::stop(daemon, name);
    Ok(())
}

/// Records a change made here, newer than any version of the name seen so far, for
/// the cluster to carry everywhere.
fn record(daemon: &Daemon, name: &str, spec: Option<String>) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    // The table first, the records after, never the other way round: state::save takes
    // them in this order.
    let origin = daemon.table().node().name.clone();
    let mut records = daemon.vservice_records();
    let version = records.get(name).map_or(now, |r| now.max(r.version + 1));
    records.insert(name.to_string(), VsRecord { name: name.to_string(), version, origin, spec });
}

/// Takes in the cluster's vservice records: where a newer version than ours exists,
/// the table (and this node's relays) follow it.
pub fn converge(daemon: &Daemon, theirs: Vec<VsRecord>) {
    let merged = {
        let ours = daemon.vservice_records();
        merge_vservices(ours.values().chain(theirs.iter()))
    };
    let mut changed = false;
    for (name, rec) in merged {
        if daemon.vservice_records().get(&name) == Some(&rec) {
            continue;
        }
        changed = true;
        let _ = uninstall(daemon, &name);
        if let Some(spec) = &rec.spec {
            match serde_json::from_str::<VserviceRequest>(spec) {
                Ok(req) => {
                    if let Err(e) = install(daemon, &req) {
                        warn!(vservice = %name, "cannot take in the cluster's vservice: {e:?}");
                    }
                }
                Err(e) => warn!(vservice = %name, "unreadable vservice from the cluster: {e}"),
            }
        }
        info!(vservice = %name, version = rec.version, origin = %rec.origin, deleted = rec.spec.is_none(), "vservice from the cluster");
        daemon.vservice_records().insert(name, rec);
    }
    if changed {
        crate::state::save(daemon);
    }
}

/// This node's vservice records, for gossip.
pub fn records(daemon: &Daemon) -> Vec<VsRecord> {
    daemon.vservice_records().values().cloned().collect()
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
