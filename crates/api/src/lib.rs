//! The daemon's API, shared by the daemon and the CLI: the REST resources (served on
//! the Unix socket and on 127.0.0.1:--rest-port) and the run channel, the one part that
//! is not REST because it carries a file descriptor (the app's seccomp listener).

use serde::{Deserialize, Serialize};

/// Where the daemon keeps its sockets and state.
pub const RUN_DIR: &str = "/var/run/appswitch";
/// The REST API on a Unix socket (root only).
pub const API_SOCKET: &str = "/var/run/appswitch/ax.sock";
/// The run channel: `ax run` registers here and hands over its listener.
pub const RUN_SOCKET: &str = "/var/run/appswitch/run.sock";

pub mod wire;

/// What a client says when the daemon's socket cannot be reached.
pub fn unreachable(path: &str, err: &std::io::Error) -> String {
    format!("cannot reach the ax daemon at {path} ({err}): start it first with 'ax daemon' (as root)")
}

/// REST paths.
pub mod path {
    pub const APPS: &str = "/v1/apps";
    pub const SERVERS: &str = "/v1/servers";
    pub const SOCKETS: &str = "/v1/sockets";
    pub const INFO: &str = "/v1/info";
    pub const VSERVICES: &str = "/v1/vservices";
    pub const PROXIES: &str = "/v1/proxies";
    pub const NODES: &str = "/v1/nodes";
    pub const OPENAPI: &str = "/v1/openapi.json";
}

/// The OpenAPI 3 document of the REST API (served at [`path::OPENAPI`]).
pub const OPENAPI_DOCUMENT: &str = include_str!("openapi.json");

/// `ax get apps`: one row per running app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppView {
    pub name: String,
    pub app_id: String,
    pub node_id: String,
    pub cluster: String,
    pub app_ip: String,
    pub driver: String,
    pub labels: String,
    pub zones: String,
}

/// `ax get servers`: one row per service (a listening socket).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerView {
    pub node_id: String,
    pub cluster: String,
    pub app_id: String,
    pub proto: String,
    pub service_addr: String,
    pub ipv4_addr: String,
    pub labels: String,
}

/// `ax get sockets`: one row per socket an app bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketView {
    pub id: String,
    pub node_id: String,
    pub app_id: String,
    pub inode: u64,
    pub proto: String,
    pub flags: i32,
    pub bind_ip: String,
    pub backlog: i32,
}

/// `POST /v1/vservices`: the flags of `ax create vservice`, as given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VserviceRequest {
    pub name: String,
    pub ip: String,
    pub ports: String,
    pub backends: String,
    #[serde(default = "default_lbtype")]
    pub lbtype: String,
    #[serde(default)]
    pub source_ip: Option<String>,
    #[serde(default)]
    pub external: bool,
}

fn default_lbtype() -> String {
    "Random".into()
}

/// `ax get vservices`: one row per vservice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VserviceView {
    pub name: String,
    #[serde(rename = "type")]
    pub lb_type: String,
    pub ip: String,
    pub ports: String,
    pub backends: String,
    pub external: bool,
    pub source_ip: String,
}

/// `ax get proxies`: one row per relay the daemon runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyView {
    pub id: u32,
    pub proto: String,
    pub listener: String,
    pub dialers: Vec<String>,
}

/// `ax get nodes`: one row per node of the cluster, this one first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub cluster: String,
    pub ip: String,
    pub external_ip: String,
    pub role: String,
    pub app_count: usize,
    pub live: bool,
}

/// `GET /v1/info`: what the daemon is and how it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub version: String,
    pub node_id: String,
    pub cluster: String,
    pub node_ip: String,
    pub driver: String,
    pub ports: String,
    pub ports_in_use: usize,
}

/// The body of every 4xx/5xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// What `ax run` asks when it registers an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    pub ip: Option<String>,
    /// A DNS label; the app answers to it (and to it under the DNS domain).
    pub name: Option<String>,
    pub labels: String,
    /// Give the app a resolv.conf pointing at the daemon's DNS server.
    pub dns_override: bool,
    /// `--expose` values, as given.
    pub expose: Vec<String>,
    /// The `ax run` process (the app's parent), for the log.
    pub pid: i32,
}

/// Messages from `ax run` on the run channel, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunRequest {
    Register(Register),
    /// Sent with the app's seccomp listener attached (SCM_RIGHTS); `pid` is the app's
    /// first process.
    Attach {
        pid: i32,
    },
    /// A restarted daemon takes back an app it restored from its saved state; sent with
    /// the listener attached, like Attach.
    Reattach {
        app_id: String,
        pid: i32,
    },
}

/// The daemon's answers on the run channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunReply {
    Registered {
        app_id: String,
        ip: String,
        /// The private resolv.conf to mount over /etc/resolv.conf, when asked for.
        resolv_conf: Option<String>,
    },
    Attached,
    Error {
        error: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_names_every_path_and_field() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_DOCUMENT).expect("valid JSON");
        assert_eq!(doc["openapi"], "3.0.3");
        for p in [
            path::APPS,
            path::SERVERS,
            path::SOCKETS,
            path::INFO,
            path::NODES,
            path::PROXIES,
            path::VSERVICES,
            path::OPENAPI,
        ] {
            assert!(doc["paths"].get(p).is_some(), "{p} is not documented");
        }
        // Each documented schema lists exactly the fields the type serializes.
        let fields = |v: serde_json::Value| -> Vec<String> {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        let documented = |name: &str| -> Vec<String> {
            let mut k: Vec<String> =
                doc["components"]["schemas"][name]["properties"].as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        let info = DaemonInfo {
            version: String::new(),
            node_id: String::new(),
            cluster: String::new(),
            node_ip: String::new(),
            driver: String::new(),
            ports: String::new(),
            ports_in_use: 0,
        };
        assert_eq!(fields(serde_json::to_value(info).unwrap()), documented("DaemonInfo"));
        let v = VserviceView {
            name: String::new(),
            lb_type: String::new(),
            ip: String::new(),
            ports: String::new(),
            backends: String::new(),
            external: false,
            source_ip: String::new(),
        };
        assert_eq!(fields(serde_json::to_value(v).unwrap()), documented("VserviceView"));
        let n = NodeView {
            name: String::new(),
            cluster: String::new(),
            ip: String::new(),
            external_ip: String::new(),
            role: String::new(),
            app_count: 0,
            live: true,
        };
        assert_eq!(fields(serde_json::to_value(n).unwrap()), documented("NodeView"));
    }

    #[test]
    fn run_messages_are_tagged_json() {
        let m = RunRequest::Attach { pid: 7 };
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"attach":{"pid":7}}"#);
        let r: RunReply = serde_json::from_str(r#"{"error":{"error":"no"}}"#).unwrap();
        assert_eq!(r, RunReply::Error { error: "no".into() });
    }
}
