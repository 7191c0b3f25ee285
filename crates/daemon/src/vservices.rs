//! Vservices as the node's state keeps them: a request checked field by field (every
//! wrong field named; all but the name by its type, as the request is read), installed
//! in the table with its relays when `--external`, and recorded with a version for the
//! cluster to carry everywhere. Called from [`State::apply`](crate::state::State::apply)
//! only.

use ax_api::{Backends, PortMaps, VserviceRequest, VserviceView};
use ax_cluster::state::VsRecord;
use ax_core::vservice::Vservice;
use ax_core::{Origin, Table};
use tracing::warn;

use crate::relay::{Dial, RelayKey, RelaySpec};
use crate::state::{Out, State};

/// Why a request failed: a bad field (400), a conflict (409) or a missing thing (404).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Bad(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Missing(String),
}

/// Checks what a request's types cannot (its name, its size); the vservice it asks for.
/// Requests from the API, definitions from the cluster and records from the state file
/// alike come through here.
pub fn parse(req: &VserviceRequest) -> Result<Vservice, Refusal> {
    ax_dns::wire::check_label(&req.name).map_err(|e| Refusal::Bad(e.to_string().replacen("--name", "name", 1)))?;
    req.check_limits().map_err(|e| Refusal::Bad(e.to_string()))?;
    Ok(req.vservice())
}

/// Creates a vservice here and records it for the cluster. `unbindable` is an external
/// port the caller could not listen on: the vservice is refused then, after the table
/// had its say (a duplicate is named as such, not as a busy port).
pub(crate) fn create(
    state: &mut State,
    v: Vservice,
    spec: VserviceRequest,
    at_ms: u64,
    unbindable: Option<(u16, String)>,
    out: &mut Out,
) -> Result<(), Refusal> {
    let name = v.name.clone();
    install(state, v, unbindable, Origin::Request, out)?;
    record(state, &name, Some(spec), at_ms);
    Ok(())
}

/// Puts a vservice in the table (checked as far as `origin` asks: see
/// [`Origin`]) and owes its relays. A name or an address taken is a conflict; anything
/// else the table refuses is a bad request.
pub(crate) fn install(
    state: &mut State,
    v: Vservice,
    unbindable: Option<(u16, String)>,
    origin: Origin,
    out: &mut Out,
) -> Result<(), Refusal> {
    let (name, ip, ports, external) = (v.name.clone(), v.ip, v.ports.clone(), v.external);
    let dialers: Vec<String> = v.backends.iter().map(|b| b.to_string()).collect();
    let not_yet = state.table.add_vservice(v, origin).map_err(|e| {
        if e.is_conflict() {
            Refusal::Conflict(e.to_string())
        } else {
            Refusal::Bad(e.to_string())
        }
    })?;
    for addr in not_yet {
        warn!(
            vservice = %name,
            "backend {addr} is neither an app's address nor a service row's host address yet: it is dialled once one is \
             (an outside host needs --allow-external-backends)"
        );
    }
    if let Some((port, e)) = unbindable {
        let _ = state.table.remove_vservice(&name);
        return Err(Refusal::Conflict(format!(
            "cannot listen on port {port} of this node for the external vservice: {e}"
        )));
    }
    if external {
        for m in ports {
            let spec = RelaySpec { dial: Dial::Vservice { vip: ip, vport: m.vport }, dialers: dialers.clone() };
            state.want_relay(RelayKey { owner: name.clone(), port: m.vport }, spec, out);
        }
    }
    Ok(())
}

pub(crate) fn delete(state: &mut State, name: &str, at_ms: u64, out: &mut Out) -> Result<(), Refusal> {
    let name = name.to_ascii_lowercase();
    uninstall(state, &name, out)?;
    record(state, &name, None, at_ms);
    Ok(())
}

pub(crate) fn uninstall(state: &mut State, name: &str, out: &mut Out) -> Result<(), Refusal> {
    state.table.remove_vservice(name).map_err(|e| Refusal::Missing(e.to_string()))?;
    state.drop_relays(name, out);
    Ok(())
}

/// Records a change made here, newer than any version of the name seen so far.
fn record(state: &mut State, name: &str, spec: Option<VserviceRequest>, at_ms: u64) {
    let origin = state.table.node().name.clone();
    let version = state.vservices.get(name).map_or(at_ms, |r| at_ms.max(r.version.saturating_add(1)));
    state.vservices.insert(name.to_string(), VsRecord { name: name.to_string(), version, origin, spec });
}

pub fn views(t: &Table) -> Vec<VserviceView> {
    t.vservices()
        .map(|v| VserviceView {
            name: v.name.clone(),
            lb_type: v.lb,
            ip: v.ip,
            ports: PortMaps(v.ports.clone()),
            backends: Backends(v.backends.clone()),
            external: v.external,
            source_ip: v.source_ip,
        })
        .collect()
}
