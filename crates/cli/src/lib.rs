//! The `ax` command line: every command and flag of the manual (`args`), the API
//! client the commands use (`client`; `remote` for a daemon over HTTPS), and the tables
//! they print (`table`).

pub mod args;
pub mod client;
pub mod remote;
pub mod table;

use ax_api::{path, AppView, NodeView, ProxyView, ServerView, SocketView, VserviceRequest, VserviceView};
use serde::de::DeserializeOwned;
use serde::Serialize;

use args::{Output, Resource};
use client::{ClientError, Target};

type Result<T> = std::result::Result<T, ClientError>;

/// `ax get RESOURCE`: fetches the rows from the daemon and prints them.
pub fn get(target: &Target, resource: Resource, output: Output) -> Result<String> {
    match resource {
        Resource::Apps => render::<AppView>(target, path::APPS, output),
        Resource::Servers => render::<ServerView>(target, path::SERVERS, output),
        Resource::Sockets => render::<SocketView>(target, path::SOCKETS, output),
        Resource::Vservices => render::<VserviceView>(target, path::VSERVICES, output),
        Resource::Proxies => render::<ProxyView>(target, path::PROXIES, output),
        Resource::Nodes => render::<NodeView>(target, path::NODES, output),
    }
}

/// `ax create vservice`.
pub fn create(target: &Target, resource: args::CreateResource) -> Result<()> {
    let args::CreateResource::Vservice(v) = resource;
    client::post(target, path::VSERVICES, &request(v))
}

/// The API request the flags make: their values are already checked, by their types.
fn request(v: args::VserviceArgs) -> VserviceRequest {
    VserviceRequest {
        name: v.name,
        ip: v.ip,
        ports: v.ports,
        backends: v.backends,
        lbtype: v.lbtype,
        source_ip: v.source_ip,
        external: v.external,
        allow_external_backends: v.allow_external_backends,
    }
}

/// `ax delete vservice NAME`.
pub fn delete(target: &Target, resource: args::DeleteResource) -> Result<()> {
    let args::DeleteResource::Vservice { name } = resource;
    client::delete(target, &format!("{}/{name}", path::VSERVICES))
}

fn render<T: DeserializeOwned + Serialize + table::Row>(target: &Target, path: &str, output: Output) -> Result<String> {
    let rows: Vec<T> = client::get(target, path)?;
    Ok(match output {
        Output::Table => table::rows(&rows),
        Output::Json => serde_json::to_string_pretty(&rows).map_err(ClientError::Encode)? + "\n",
    })
}
