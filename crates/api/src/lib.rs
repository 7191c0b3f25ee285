//! The daemon's API, shared by the daemon and the CLI: the REST resources (served on
//! the Unix socket and on --rest-port: 127.0.0.1, or with --tls HTTPS on 127.0.0.1 and
//! the node's address) and the run channel, the one part that
//! is not REST because it carries a file descriptor (the app's seccomp listener). Its
//! values are core's types (addresses, labels, port maps, backends, exposes), checked
//! as they are read; the OpenAPI document describing it is checked against them here.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use serde::{Deserialize, Serialize};

pub use ax_core::addr::VirtualIp;
pub use ax_core::vservice::{Backends, Expose, LbType, PortMaps, Spec as VserviceRequest};
pub use ax_core::{Driver, Labels, Proto};

/// Where the daemon keeps its sockets and state.
pub const RUN_DIR: &str = "/var/run/appswitch";
/// The REST API on a Unix socket (root only).
pub const API_SOCKET: &str = "/var/run/appswitch/ax.sock";
/// The REST API's TCP port (`--rest-port`).
pub const REST_PORT: u16 = 6664;
/// The run channel: `ax run` registers here and hands over its listener.
pub const RUN_SOCKET: &str = "/var/run/appswitch/run.sock";
/// The daemon's DNS server as a resolv.conf: what a container mounts over its own where
/// `ax run` cannot (no CAP_SYS_ADMIN).
pub const CONTAINER_RESOLV_CONF: &str = "/var/run/appswitch/resolv.conf";

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
    /// The daemon's metrics in the Prometheus text format (where Prometheus looks).
    pub const METRICS: &str = "/metrics";
    /// One vservice, by name (axum's path syntax, as the OpenAPI document writes it).
    pub const VSERVICE: &str = "/v1/vservices/{name}";

    /// Every method and path the daemon serves; the OpenAPI document describes exactly
    /// these (checked by a test).
    pub const ROUTES: &[(&str, &str)] = &[
        ("get", APPS),
        ("get", SERVERS),
        ("get", SOCKETS),
        ("get", INFO),
        ("get", VSERVICES),
        ("post", VSERVICES),
        ("delete", VSERVICE),
        ("get", PROXIES),
        ("get", NODES),
        ("get", OPENAPI),
        ("get", METRICS),
    ];
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
    pub app_ip: Ipv4Addr,
    pub driver: String,
    /// The app lives in the host's network namespace and makes its TCP sockets itself
    /// (kernel driver, unprivileged `--user`); false: in a namespace of its own.
    #[serde(default)]
    pub host_sockets: bool,
    pub labels: Labels,
    /// The labels as the manual's selectors (`zone==default`).
    pub zones: Vec<String>,
}

/// `ax get servers`: one row per service (a listening socket).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerView {
    pub node_id: String,
    pub cluster: String,
    pub app_id: String,
    pub proto: Proto,
    pub service_addr: SocketAddrV4,
    pub ipv4_addr: SocketAddrV4,
    pub labels: Labels,
}

/// `ax get sockets`: one row per socket an app bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketView {
    pub id: String,
    pub node_id: String,
    pub app_id: String,
    pub inode: u64,
    pub proto: Proto,
    pub flags: i32,
    /// The address the app asked for, as it asked (IPv6 forms included).
    pub bind_ip: SocketAddr,
    pub backlog: i32,
}

/// `ax get vservices`: one row per vservice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VserviceView {
    pub name: String,
    #[serde(rename = "type")]
    pub lb_type: LbType,
    pub ip: Ipv4Addr,
    pub ports: PortMaps,
    pub backends: Backends,
    pub external: bool,
    pub source_ip: Option<Ipv4Addr>,
}

/// `ax get proxies`: one row per relay the daemon runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyView {
    pub id: u32,
    pub proto: Proto,
    pub listener: String,
    pub dialers: Vec<String>,
    /// A federation gateway's listeners: the connections they carry now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<u64>,
}

/// `ax get nodes`: one row per node of the cluster, this one first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub cluster: String,
    pub ip: Ipv4Addr,
    pub external_ip: Ipv4Addr,
    pub role: String,
    pub app_count: usize,
    pub live: bool,
    /// With `--tls`: why the node's current gossip state does not count (it counts as
    /// it last sealed it), if it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// `GET /v1/info`: what the daemon is and how it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub version: String,
    pub node_id: String,
    pub cluster: String,
    pub node_ip: Ipv4Addr,
    pub driver: String,
    pub ports: String,
    pub ports_in_use: usize,
}

/// The body of every 4xx/5xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// What `ax run` asks when it registers an app: its flags, parsed and checked by the
/// CLI, and checked again on the way in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    pub ip: Option<VirtualIp>,
    /// A DNS label; the app answers to it (and to it under the DNS domain).
    pub name: Option<String>,
    pub labels: Labels,
    /// Give the app a resolv.conf pointing at the daemon's DNS server.
    pub dns_override: bool,
    pub expose: Vec<Expose>,
    /// The `ax run` process (the app's parent) as it numbers itself; its PID namespace may
    /// be a container's, so the daemon takes the kernel's number (SO_PEERCRED) instead.
    pub pid: i32,
    /// The app may live in the host's network namespace and make its own TCP sockets
    /// there (it runs as a user other than root, in no namespace of its own choosing,
    /// and Landlock can scope its abstract sockets): see [`RunReply::Registered`].
    #[serde(default)]
    pub host_sockets: bool,
    /// `--ip` may be an address of the host or inside a network it reaches directly
    /// (`ax run --ip-overlap-ok`); an older `ax run` never asks.
    #[serde(default)]
    pub ip_overlap_ok: bool,
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

fn guarded() -> bool {
    true
}

/// The daemon's answers on the run channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunReply {
    Registered {
        app_id: String,
        ip: Ipv4Addr,
        /// The private resolv.conf to mount over /etc/resolv.conf, when asked for.
        resolv_conf: Option<String>,
        /// How the app's socket calls are carried out: `ax run` installs that
        /// driver's filter.
        #[serde(default)]
        driver: Driver,
        /// Whether the daemon's socket guard (eBPF) polices the app's host sockets:
        /// without it `ax run` installs the filter that traps what the guard would have
        /// refused. Daemons from before the guard could be absent always had it.
        #[serde(default = "guarded")]
        socket_guard: bool,
        /// The app lives in the host's network namespace, in a cgroup of its own where
        /// the kernel driver's programs rule the TCP sockets it makes itself (`ax run`
        /// lets `socket()` of TCP through and keeps the app's own namespace for its
        /// loopback in its own process); false: as every app, in a namespace of its own.
        #[serde(default)]
        host_sockets: bool,
    },
    Attached,
    Error {
        error: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;
    use serde_json::{json, Value};

    fn doc() -> Value {
        serde_json::from_str(OPENAPI_DOCUMENT).expect("valid JSON")
    }

    /// The JSON type names OpenAPI uses for a value.
    fn json_type(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    /// Checks schema `name` against `T`, from `sample` (a value of `T` with every
    /// optional field set): the fields it serializes, which of them it cannot be read
    /// without, their JSON types, which take null, and that each documented enum value
    /// reads and an undocumented one does not.
    fn check_schema<T: Serialize + DeserializeOwned>(name: &str, sample: T) {
        let doc = doc();
        let schema = &doc["components"]["schemas"][name];
        assert_eq!(schema["type"], "object", "{name}");
        let props = schema["properties"].as_object().unwrap_or_else(|| panic!("{name} has no properties"));
        let value = serde_json::to_value(&sample).unwrap();
        let fields = value.as_object().expect("an object");
        let mut documented: Vec<&String> = props.keys().collect();
        let mut serialized: Vec<&String> = fields.keys().collect();
        documented.sort();
        serialized.sort();
        assert_eq!(documented, serialized, "{name}: documented vs serialized fields");
        let reads = |v: Value| serde_json::from_value::<T>(v).is_ok();
        assert!(reads(value.clone()), "{name}: the sample reads back");
        let mut required: Vec<&str> = Vec::new();
        for (field, v) in fields {
            let prop = &props[field];
            let ty = prop["type"].as_str().unwrap_or_else(|| panic!("{name}.{field} has no type"));
            assert_eq!(json_type(v), ty, "{name}.{field}: JSON type");
            match v {
                Value::Array(items) => {
                    let item = items.first().unwrap_or_else(|| panic!("{name}.{field}: give the sample an item"));
                    assert_eq!(json_type(item), prop["items"]["type"], "{name}.{field}: item type");
                }
                Value::Object(entries) => {
                    let (_, entry) = entries.iter().next().unwrap_or_else(|| panic!("{name}.{field}: give an entry"));
                    assert_eq!(json_type(entry), prop["additionalProperties"]["type"], "{name}.{field}: value type");
                }
                _ => {}
            }
            let mut without = value.clone();
            without.as_object_mut().unwrap().remove(field);
            if !reads(without) {
                required.push(field);
            }
            let mut null = value.clone();
            null[field] = Value::Null;
            assert_eq!(reads(null), prop["nullable"] == true, "{name}.{field}: nullable");
            if let Some(values) = prop["enum"].as_array() {
                assert!(values.contains(v), "{name}.{field}: {v} is not among {values:?}");
                for e in values {
                    let mut one = value.clone();
                    one[field] = e.clone();
                    assert!(reads(one), "{name}.{field}: documented {e} does not read");
                }
                let mut bogus = value.clone();
                bogus[field] = json!("bogus");
                assert!(!reads(bogus), "{name}.{field}: an undocumented value reads");
            }
        }
        let mut documented_required: Vec<&str> =
            schema["required"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        documented_required.sort();
        required.sort();
        assert_eq!(documented_required, required, "{name}: required fields");
    }

    fn labels() -> Labels {
        "zone=default".parse().unwrap()
    }

    #[test]
    fn every_schema_matches_its_type() {
        check_schema("ErrorBody", ErrorBody { error: "no".into() });
        check_schema(
            "AppView",
            AppView {
                name: "web".into(),
                app_id: "f0000001".into(),
                node_id: "n".into(),
                cluster: "c".into(),
                app_ip: "198.18.0.1".parse().unwrap(),
                driver: "user".into(),
                host_sockets: false,
                labels: labels(),
                zones: labels().selectors(),
            },
        );
        check_schema(
            "ServerView",
            ServerView {
                node_id: "n".into(),
                cluster: "c".into(),
                app_id: "f0000001".into(),
                proto: Proto::Udp,
                service_addr: "198.18.0.1:80".parse().unwrap(),
                ipv4_addr: "10.0.0.1:40000".parse().unwrap(),
                labels: labels(),
            },
        );
        check_schema(
            "SocketView",
            SocketView {
                id: "s".into(),
                node_id: "n".into(),
                app_id: "f0000001".into(),
                inode: 7,
                proto: Proto::Tcp,
                flags: 2048,
                bind_ip: "[::]:80".parse().unwrap(),
                backlog: 128,
            },
        );
        check_schema(
            "DaemonInfo",
            DaemonInfo {
                version: "0.1.0".into(),
                node_id: "n".into(),
                cluster: "c".into(),
                node_ip: "10.0.0.1".parse().unwrap(),
                driver: "user".into(),
                ports: "40000-60000".into(),
                ports_in_use: 1,
            },
        );
        check_schema(
            "NodeView",
            NodeView {
                name: "n".into(),
                cluster: "c".into(),
                ip: "10.0.0.1".parse().unwrap(),
                external_ip: "10.0.0.1".parse().unwrap(),
                role: "node".into(),
                app_count: 1,
                live: true,
                problem: Some("their seal does not hold".into()),
            },
        );
        check_schema(
            "ProxyView",
            ProxyView {
                id: 1,
                proto: Proto::Tcp,
                listener: "10.0.0.1:80".into(),
                dialers: vec!["198.18.1.1".into()],
                sessions: Some(3),
            },
        );
        check_schema(
            "VserviceView",
            VserviceView {
                name: "web".into(),
                lb_type: LbType::RoundRobin,
                ip: "198.18.2.1".parse().unwrap(),
                ports: "80:8000".parse().unwrap(),
                backends: "198.18.1.1".parse().unwrap(),
                external: true,
                source_ip: Some("10.0.0.1".parse().unwrap()),
            },
        );
        check_schema(
            "VserviceRequest",
            VserviceRequest {
                name: "web".into(),
                ip: "198.18.2.1".parse().unwrap(),
                ports: "80:8000".parse().unwrap(),
                backends: "198.18.1.1".parse().unwrap(),
                lbtype: LbType::Random,
                source_ip: Some("10.0.0.1".parse().unwrap()),
                external: false,
                allow_external_backends: true,
            },
        );
        let documented = doc()["components"]["schemas"].as_object().unwrap().len();
        assert_eq!(documented, 9, "a schema was added: check it above");
    }

    #[test]
    fn the_document_describes_exactly_the_routes_served() {
        let doc = doc();
        assert_eq!(doc["openapi"], "3.0.3");
        let mut documented: Vec<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(p, ops)| ops.as_object().unwrap().keys().map(move |m| (m.clone(), p.clone())))
            .collect();
        let mut served: Vec<(String, String)> =
            path::ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
        // What each route takes and answers, by schema.
        let list = |s: &str| json!({"type": "array", "items": {"$ref": format!("#/components/schemas/{s}")}});
        let one = |s: &str| json!({"$ref": format!("#/components/schemas/{s}")});
        let answers = [
            (path::APPS, list("AppView")),
            (path::SERVERS, list("ServerView")),
            (path::SOCKETS, list("SocketView")),
            (path::INFO, one("DaemonInfo")),
            (path::VSERVICES, list("VserviceView")),
            (path::PROXIES, list("ProxyView")),
            (path::NODES, list("NodeView")),
        ];
        for (p, schema) in answers {
            assert_eq!(
                doc["paths"][p]["get"]["responses"]["200"]["content"]["application/json"]["schema"], schema,
                "{p}"
            );
        }
        let post = &doc["paths"][path::VSERVICES]["post"];
        assert_eq!(post["requestBody"]["content"]["application/json"]["schema"], one("VserviceRequest"));
        for status in ["400", "409"] {
            assert_eq!(post["responses"][status]["content"]["application/json"]["schema"], one("ErrorBody"));
        }
        let delete = &doc["paths"][path::VSERVICE]["delete"];
        assert_eq!(delete["parameters"][0]["name"], "name");
        assert_eq!(delete["responses"]["404"]["content"]["application/json"]["schema"], one("ErrorBody"));
    }

    #[test]
    fn run_messages_are_tagged_json() {
        let m = RunRequest::Attach { pid: 7 };
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"attach":{"pid":7}}"#);
        let r: RunReply = serde_json::from_str(r#"{"error":{"error":"no"}}"#).unwrap();
        assert_eq!(r, RunReply::Error { error: "no".into() });
    }

    #[test]
    fn a_registration_carries_typed_values_and_refuses_bad_ones() {
        let reg = Register {
            ip: Some("198.18.0.1".parse().unwrap()),
            name: Some("web".into()),
            labels: "role=prod,team=a".parse().unwrap(),
            dns_override: true,
            expose: vec!["8000:0.0.0.0:9999".parse().unwrap()],
            pid: 9,
            host_sockets: true,
            ip_overlap_ok: true,
        };
        let j = serde_json::to_value(RunRequest::Register(reg.clone())).unwrap();
        // An older ax run asks for no host placement and no overlap.
        let mut old = j.clone();
        old["register"].as_object_mut().unwrap().remove("host_sockets");
        old["register"].as_object_mut().unwrap().remove("ip_overlap_ok");
        let RunRequest::Register(old) = serde_json::from_value::<RunRequest>(old).unwrap() else { panic!() };
        assert!(!old.host_sockets && !old.ip_overlap_ok);
        assert_eq!(j["register"]["labels"], json!({"role": "prod", "team": "a"}));
        assert_eq!(j["register"]["expose"], json!(["8000:0.0.0.0:9999"]));
        assert_eq!(serde_json::from_value::<RunRequest>(j.clone()).unwrap(), RunRequest::Register(reg));
        for (field, bad, want) in [
            ("ip", json!("127.0.0.1"), "--ip 127.0.0.1 is a loopback address"),
            ("labels", json!({"role": ""}), "label 'role=' has an empty value"),
            ("expose", json!(["8000"]), "--expose '8000' is not internal:host-port"),
        ] {
            let mut j = j.clone();
            j["register"][field] = bad;
            let e = serde_json::from_value::<RunRequest>(j).unwrap_err().to_string();
            assert!(e.contains(want), "{field}: {e}");
        }
    }
}
