//! Every command and flag of the manual, with its default. Each daemon flag also reads
//! `AX_<FLAG>` from the environment. Flags that only go together are checked here
//! ([`federation`]); none is silently ignored.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ax_api::{Backends, Expose, Labels, LbType, PortMaps, VirtualIp};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Parser, Subcommand, ValueEnum};

use crate::remote::Server;

#[derive(Debug, Parser)]
#[command(
    name = "ax",
    version,
    about = "Application-level network virtualization: virtual IPs, names, labels and load balancing for unmodified programs, with a native data path"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the ax daemon (once per host, as root)
    Daemon(Box<DaemonArgs>),
    /// Run an application under ax
    Run(RunArgs),
    /// Get active resources
    Get(GetArgs),
    /// Create a resource
    Create(CreateArgs),
    /// Delete a resource
    #[command(visible_alias = "del")]
    Delete(DeleteArgs),
    /// Print the version of ax
    Version,
    /// Write a test CA and certificates for --tls (a first cluster, tests; not a production CA)
    TlsCerts(TlsCertsArgs),
}

#[derive(Debug, Args)]
pub struct TlsCertsArgs {
    /// Folder to write ca.pem, ca.key and NAME.pem, NAME.key into (an existing CA there is reused)
    pub dir: std::path::PathBuf,
    /// A node certificate per name (as --node-name)
    pub names: Vec<String>,
    /// A client certificate (REST over HTTPS, `ax --server`; never a node) for NAME
    #[arg(long = "client", value_name = "NAME")]
    pub clients: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// System call forwarding driver ('user' or 'kernel'); default: kernel where it loads, else user
    #[arg(long, env = "AX_DRIVER", value_parser = ["user", "kernel"])]
    pub driver: Option<String>,
    /// Node interface to use: an IPv4 address or an interface name (eg eth0); default: the first non-loopback interface with an IPv4 address
    #[arg(long, env = "AX_NODE_INTERFACE", value_name = "INTERFACE")]
    pub node_interface: Option<String>,
    /// List (csv) of IP addresses of cluster neighbors
    #[arg(long, env = "AX_NEIGHBORS", value_name = "CSV")]
    pub neighbors: Option<String>,
    /// Remove any saved state from previous sessions
    #[arg(long, env = "AX_CLEAN")]
    pub clean: bool,
    /// Name of the node (defaults to host name)
    #[arg(long, env = "AX_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// Write CPU profile output to file
    #[arg(long, env = "AX_CPU_PROFILE", value_name = "FILE")]
    pub cpu_profile: Option<String>,
    /// Write memory profile output to file
    #[arg(long, env = "AX_MEM_PROFILE", value_name = "FILE")]
    pub mem_profile: Option<String>,
    /// Start the built-in DNS server (default: true)
    #[arg(long, env = "AX_DNS", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub dns: Option<bool>,
    /// DNS domain name suffix
    #[arg(long, env = "AX_DNS_DOMAIN", default_value = "appswitch.local", value_name = "NAME")]
    pub dns_domain: String,
    /// List (csv) of 'IP[:port]' strings of forwarding servers
    #[arg(long, env = "AX_DNS_SERVERS", value_name = "CSV")]
    pub dns_servers: Option<String>,
    /// Enable Transport Layer Security
    #[arg(long, env = "AX_TLS")]
    pub tls: bool,
    /// Path to TLS CA certificate file
    #[arg(long, env = "AX_TLS_CA_CERT", value_name = "FILE")]
    pub tls_ca_cert: Option<String>,
    /// Path to TLS certificate file
    #[arg(long, env = "AX_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<String>,
    /// Path to TLS key file
    #[arg(long, env = "AX_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<String>,
    /// List (csv) of ports, or port ranges, reserved for applications
    #[arg(long, env = "AX_PORTS", default_value = "40000-60000", value_name = "CSV")]
    pub ports: String,
    /// REST API port number
    #[arg(long, env = "AX_REST_PORT", default_value_t = ax_api::REST_PORT, value_name = "NUMBER")]
    pub rest_port: u16,
    /// Gossip protocol port number
    #[arg(long, env = "AX_GOSSIP_PORT", default_value_t = 7946, value_name = "NUMBER")]
    pub gossip_port: u16,
    /// Auto discover neighbors
    #[arg(long, env = "AX_GOSSIP_AUTO_DISCOVER")]
    pub gossip_auto_discover: bool,
    /// Configure node as egress gateway
    #[arg(long, env = "AX_EGRESS_GATEWAY")]
    pub egress_gateway: bool,
    /// Cluster name; required if the cluster is part of a federation
    #[arg(long, env = "AX_CLUSTER", default_value = "appswitch", value_name = "NAME")]
    pub cluster: String,
    /// IP address or interface name for federation connectivity
    #[arg(long, env = "AX_FEDERATION_GATEWAY_IP", value_name = "INTERFACE")]
    pub federation_gateway_ip: Option<String>,
    /// Required iff proxy node is behind NAT
    #[arg(long, env = "AX_FEDERATION_GATEWAY_ADVERTISE_IP", value_name = "VALUE")]
    pub federation_gateway_advertise_ip: Option<String>,
    /// TCP port number for federation gateway sessions
    #[arg(long, env = "AX_FEDERATION_GATEWAY_PORT", default_value_t = 6660, value_name = "NUMBER")]
    pub federation_gateway_port: u16,
    /// Federation gossip protocol port number
    #[arg(long, env = "AX_FEDERATION_GATEWAY_GOSSIP_PORT", default_value_t = 7947, value_name = "NUMBER")]
    pub federation_gateway_gossip_port: u16,
    /// List (csv) of IP addresses of federation neighbors (other gateway nodes)
    #[arg(long, env = "AX_FEDERATION_GATEWAY_NEIGHBORS", value_name = "CSV")]
    pub federation_gateway_neighbors: Option<String>,
    /// Log level or filter (error, warn, info, debug, trace, or a RUST_LOG-style filter); RUST_LOG also works
    #[arg(long, env = "AX_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log form: 'text' (coloured on a terminal only) or 'json' (one object a line, for log shippers)
    #[arg(long, env = "AX_LOG_FORMAT", value_enum, default_value = "text", value_name = "FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// IPv4 address at which services of this application would be reachable (default: the node address)
    #[arg(long, value_name = "ADDRESS")]
    pub ip: Option<VirtualIp>,
    /// Let --ip be an address of this host or inside a network it reaches directly (ax apps then reach the app, not the real host there)
    #[arg(long, requires = "ip")]
    pub ip_overlap_ok: bool,
    /// DNS resolvable name of the application
    #[arg(long, value_name = "VALUE")]
    pub name: Option<String>,
    /// Labels of this application
    #[arg(long, default_value = "zone=default", value_name = "CSV")]
    pub labels: Labels,
    /// Expose an application port: internal:host-port, internal:<node-IP>:node-port or internal:0.0.0.0:node-port
    #[arg(long, value_name = "SPEC")]
    pub expose: Vec<Expose>,
    /// UID or user name to run the child process
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Name of the dummy interface created within the application's network namespace
    #[arg(long, value_name = "NAME")]
    pub interface: Option<String>,
    /// Create a new network namespace (default: true)
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub new_netns: Option<bool>,
    /// Take over application's DNS requests (default: true)
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub dns_override: Option<bool>,
    /// Seconds to wait for a daemon that is restarting (its socket missing or refusing) before giving up; 0: do not wait
    #[arg(long, env = "AX_DAEMON_WAIT", default_value_t = 30, value_name = "SECONDS")]
    pub daemon_wait: u64,
    /// The program and its arguments (every word from the program on is the program's;
    /// a word before it that starts with '-' is an ax flag, so a mistyped one is an error)
    #[arg(trailing_var_arg = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Resource {
    Apps,
    Servers,
    Sockets,
    Proxies,
    Vservices,
    Nodes,
}

impl Resource {
    pub fn name(self) -> &'static str {
        match self {
            Resource::Apps => "apps",
            Resource::Servers => "servers",
            Resource::Sockets => "sockets",
            Resource::Proxies => "proxies",
            Resource::Vservices => "vservices",
            Resource::Nodes => "nodes",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Where `get`, `create` and `delete` send their requests (as kubectl's --server or
/// docker's -H): this host's daemon over its Unix socket, or with `--server` a daemon's
/// HTTPS port, with a client certificate from its CA.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// A daemon's REST API over HTTPS, https://HOST[:PORT] (the daemon runs with --tls); default: this host's daemon over its Unix socket
    #[arg(long, env = "AX_SERVER", value_name = "URL", global = true)]
    pub server: Option<Server>,
    /// With --server: the CA the server's certificate must be from
    #[arg(long, env = "AX_TLS_CA_CERT", value_name = "FILE", global = true)]
    pub tls_ca_cert: Option<PathBuf>,
    /// With --server: our certificate, from the server's CA
    #[arg(long, env = "AX_TLS_CERT", value_name = "FILE", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// With --server: the key of --tls-cert
    #[arg(long, env = "AX_TLS_KEY", value_name = "FILE", global = true)]
    pub tls_key: Option<PathBuf>,
}

/// `--server` flags that do not go together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerFlagError {
    #[error("--server needs {}: the daemon answers only clients with a certificate from its CA (make one with: ax tls-certs DIR admin, DIR being the CA's folder)", .0.join(", "))]
    Missing(Vec<&'static str>),
    #[error("{0} goes with --server: without it ax talks to this host's daemon over its Unix socket")]
    WithoutServer(&'static str),
}

impl ServerArgs {
    /// The remote daemon and the files to reach it with; None: this host's daemon. A TLS
    /// flag on the command line without --server is refused; one from the environment
    /// (where the daemon's own AX_TLS_* may be) is left unused. `m`: the command's
    /// matches.
    pub fn remote(&self, m: &ArgMatches) -> Result<Option<(Server, ax_tls::Files)>, ServerFlagError> {
        let files = [
            ("tls_ca_cert", "--tls-ca-cert", &self.tls_ca_cert),
            ("tls_cert", "--tls-cert", &self.tls_cert),
            ("tls_key", "--tls-key", &self.tls_key),
        ];
        let Some(server) = &self.server else {
            return match files.iter().find(|(id, _, _)| m.value_source(id) == Some(ValueSource::CommandLine)) {
                Some((_, flag, _)) => Err(ServerFlagError::WithoutServer(flag)),
                None => Ok(None),
            };
        };
        match (&self.tls_ca_cert, &self.tls_cert, &self.tls_key) {
            (Some(ca), Some(cert), Some(key)) => {
                Ok(Some((server.clone(), ax_tls::Files { ca: ca.clone(), cert: cert.clone(), key: key.clone() })))
            }
            _ => Err(ServerFlagError::Missing(
                files.iter().filter(|(_, _, v)| v.is_none()).map(|(_, flag, _)| *flag).collect(),
            )),
        }
    }
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// What to list
    pub resource: Resource,
    /// Output format
    #[arg(short, long, default_value = "table")]
    pub output: Output,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(subcommand)]
    pub resource: CreateResource,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Subcommand)]
pub enum CreateResource {
    /// Create a virtual service
    Vservice(VserviceArgs),
}

#[derive(Debug, Args)]
pub struct VserviceArgs {
    /// Name of the virtual service
    pub name: String,
    /// IPv4 address for the virtual service
    #[arg(long, value_name = "VALUE", required = true)]
    pub ip: VirtualIp,
    /// Make this vservice external
    #[arg(long)]
    pub external: bool,
    /// Load Balancer Type <possible values: Random, RoundRobin>
    #[arg(long, default_value = "Random", value_name = "VALUE")]
    pub lbtype: LbType,
    /// Comma separated list of IPv4 IPs
    #[arg(long, value_name = "VALUE", required = true)]
    pub backends: Backends,
    /// Comma separated list of <virtual port:application port>
    #[arg(long, value_name = "VALUE", required = true)]
    pub ports: PortMaps,
    /// Host IP address to use when making the outbound connection
    #[arg(long, value_name = "IP", value_parser = source_ip)]
    pub source_ip: Option<Ipv4Addr>,
    /// Allow backends outside the service table (neither an app's address nor a
    /// service row's host address), reached directly from the host
    #[arg(long)]
    pub allow_external_backends: bool,
}

/// A flag's value that does not parse (the others parse through their types' `FromStr`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    #[error("--source-ip {0} is not an IPv4 address")]
    SourceIp(String),
}

fn source_ip(s: &str) -> Result<Ipv4Addr, FlagError> {
    s.parse().map_err(|_| FlagError::SourceIp(s.into()))
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(subcommand)]
    pub resource: DeleteResource,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Subcommand)]
pub enum DeleteResource {
    /// Delete a virtual service
    Vservice {
        /// Name of the virtual service
        name: String,
    },
}

fn given(m: &ArgMatches, id: &str) -> bool {
    matches!(m.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
}

/// The addresses of a CSV list (`--neighbors`, `--federation-gateway-neighbors`), blanks
/// skipped; the first item that is not an IPv4 address is the error.
pub fn ipv4_list(csv: Option<&str>) -> Result<Vec<Ipv4Addr>, String> {
    let items = csv.into_iter().flat_map(|csv| csv.split(',')).map(str::trim).filter(|s| !s.is_empty());
    items.map(|s| s.parse().map_err(|_| s.to_string())).collect()
}

/// The federation flags of a gateway, checked (the gateway address may still be an
/// interface name: the daemon resolves it on its host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Federation {
    /// `--federation-gateway-ip`: an IPv4 address or an interface name.
    pub ip: String,
    pub advertise: Option<Ipv4Addr>,
    pub port: u16,
    pub gossip_port: u16,
    pub neighbors: Vec<Ipv4Addr>,
}

/// Why the federation flags do not make a gateway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FederationError {
    #[error(
        "{0} is a federation gateway's: give --federation-gateway-ip (the gateway's WAN address or interface) too"
    )]
    NotAGateway(&'static str),
    #[error("a federation gateway needs --cluster: cluster names must be unique in a federation, so name this one")]
    NoCluster,
    #[error("--cluster '{0}' is not a DNS label (letters, digits and '-'): remote services are named <name>.<cluster>.<domain>")]
    ClusterName(String),
    #[error("--federation-gateway-ip {0}: the address must be IPv4 (or name an interface)")]
    Ip(String),
    #[error("--federation-gateway-advertise-ip {0}: not an IPv4 address other gateways can reach (no wildcard, loopback or multicast)")]
    Advertise(String),
    #[error("--federation-gateway-neighbors: '{0}' is not an IPv4 address")]
    Neighbor(String),
    #[error("{0} 0: give a port number")]
    PortZero(&'static str),
    #[error("--federation-gateway-gossip-port {0} is also the cluster's --gossip-port: give each its own")]
    GossipPort(u16),
}

/// A federation gateway's flags, checked; None when this node is no gateway. `m` are
/// the daemon's matches (which flags were given).
pub fn federation(d: &DaemonArgs, m: &ArgMatches) -> Result<Option<Federation>, FederationError> {
    let Some(ip) = &d.federation_gateway_ip else {
        let others = [
            ("federation_gateway_advertise_ip", "--federation-gateway-advertise-ip"),
            ("federation_gateway_port", "--federation-gateway-port"),
            ("federation_gateway_gossip_port", "--federation-gateway-gossip-port"),
            ("federation_gateway_neighbors", "--federation-gateway-neighbors"),
        ];
        return match others.iter().find(|(id, _)| given(m, id)) {
            Some((_, flag)) => Err(FederationError::NotAGateway(flag)),
            None => Ok(None),
        };
    };
    if !given(m, "cluster") {
        return Err(FederationError::NoCluster);
    }
    if ax_dns::wire::check_label(&d.cluster).is_err() {
        return Err(FederationError::ClusterName(d.cluster.clone()));
    }
    let ip = ip.trim();
    if ip.is_empty() || ip.parse::<std::net::Ipv6Addr>().is_ok() {
        return Err(FederationError::Ip(ip.into()));
    }
    let advertise = match d.federation_gateway_advertise_ip.as_deref().map(str::trim) {
        Some(a) => match a.parse::<Ipv4Addr>() {
            Ok(v) if !(v.is_unspecified() || v.is_loopback() || v.is_multicast() || v.is_broadcast()) => Some(v),
            _ => return Err(FederationError::Advertise(a.into())),
        },
        None => None,
    };
    for (port, flag) in [
        (d.federation_gateway_port, "--federation-gateway-port"),
        (d.federation_gateway_gossip_port, "--federation-gateway-gossip-port"),
    ] {
        if port == 0 {
            return Err(FederationError::PortZero(flag));
        }
    }
    if d.federation_gateway_gossip_port == d.gossip_port {
        return Err(FederationError::GossipPort(d.gossip_port));
    }
    let neighbors = ipv4_list(d.federation_gateway_neighbors.as_deref()).map_err(FederationError::Neighbor)?;
    Ok(Some(Federation {
        ip: ip.into(),
        advertise,
        port: d.federation_gateway_port,
        gossip_port: d.federation_gateway_gossip_port,
        neighbors,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    fn parse(args: &[&str]) -> Result<(Cli, ArgMatches), clap::Error> {
        let m = Cli::command().try_get_matches_from(args)?;
        let cli = Cli::from_arg_matches(&m)?;
        let sub = m.subcommand().map(|(_, s)| s.clone()).expect("a subcommand");
        Ok((cli, sub))
    }

    fn gateway(args: &[&str]) -> Result<Option<Federation>, String> {
        let (cli, m) = parse(args).map_err(|e| e.to_string())?;
        let Command::Daemon(d) = cli.command else { panic!("a daemon command") };
        federation(&d, &m).map_err(|e| e.to_string())
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn daemon_defaults_follow_the_manual() {
        let (cli, _) = parse(&["ax", "daemon"]).unwrap();
        let Command::Daemon(d) = cli.command else { panic!() };
        assert_eq!(d.ports, "40000-60000");
        assert_eq!(d.rest_port, 6664);
        assert_eq!(d.gossip_port, 7946);
        assert_eq!(d.federation_gateway_port, 6660);
        assert_eq!(d.federation_gateway_gossip_port, 7947);
        assert_eq!(d.dns_domain, "appswitch.local");
        assert_eq!(d.cluster, "appswitch");
        assert_eq!(d.dns, None);
        assert_eq!(gateway(&["ax", "daemon"]), Ok(None));
    }

    #[test]
    fn run_takes_the_command_after_its_options() {
        let (cli, _) = parse(&["ax", "run", "--ip", "1.1.1.1", "--", "curl", "-sI", "http://x/"]).unwrap();
        let Command::Run(r) = cli.command else { panic!() };
        assert_eq!(r.ip, Some("1.1.1.1".parse().unwrap()));
        assert_eq!(r.labels.to_string(), "zone=default");
        assert_eq!(r.command, vec![OsString::from("curl"), "-sI".into(), "http://x/".into()]);
        // As in the manual, without `--` too.
        let (cli, _) = parse(&["ax", "run", "--labels", "role=prod", "whoami"]).unwrap();
        let Command::Run(r) = cli.command else { panic!() };
        assert_eq!(r.command, vec![OsString::from("whoami")]);
        assert!(parse(&["ax", "run"]).is_err());
    }

    /// A mistyped flag before the program (or before `--`) is clap's error naming it,
    /// with its suggestion; after the program every word is the program's.
    #[test]
    fn unknown_flags_before_the_program_are_errors_with_a_suggestion() {
        for (args, flag, tip) in [
            (&["ax", "run", "--lables", "role=x", "--", "true"][..], "--lables", "--labels"),
            (&["ax", "run", "--ip", "198.18.0.1", "--expsoe", "80:8080", "true"], "--expsoe", "--expose"),
            (&["ax", "run", "--new-netns=false", "--usr", "nobody", "--", "id"], "--usr", "--user"),
            (&["ax", "tls-certs", "dir", "n1", "--clinet", "admin"], "--clinet", "--client"),
            (&["ax", "get", "apps", "--outptu", "json"], "--outptu", "--output"),
            (&["ax", "create", "vservice", "w", "--ip", "198.18.2.3", "--port", "80"], "--port", "--ports"),
            (&["ax", "delete", "vservice", "w", "--sever", "https://n1"], "--sever", "--server"),
            (&["ax", "daemon", "--node-nmae", "n1"], "--node-nmae", "--node-name"),
        ] {
            let e = refused(args);
            assert!(e.contains(&format!("unexpected argument '{flag}' found")), "{args:?}: {e}");
            assert!(e.contains(&format!("a similar argument exists: '{tip}'")), "{args:?}: {e}");
        }
        let e = refused(&["ax", "run", "-x", "true"]);
        assert!(e.contains("unexpected argument '-x' found"), "{e}");
        for (args, program) in [
            (&["ax", "run", "--", "ls", "-l"][..], &["ls", "-l"][..]),
            (&["ax", "run", "ls", "-l"], &["ls", "-l"]),
            (&["ax", "run", "--ip", "198.18.0.1", "env", "--lables", "-u", "X"], &["env", "--lables", "-u", "X"]),
            (&["ax", "run", "sh", "-c", "echo -- --labels"], &["sh", "-c", "echo -- --labels"]),
            (&["ax", "run", "--", "ls", "--", "-l"], &["ls", "--", "-l"]),
        ] {
            let (cli, _) = parse(args).unwrap();
            let Command::Run(r) = cli.command else { panic!() };
            assert_eq!(r.command, program.iter().map(OsString::from).collect::<Vec<_>>(), "{args:?}");
        }
    }

    #[test]
    fn a_gateway_takes_every_federation_flag() {
        let g = gateway(&[
            "ax",
            "daemon",
            "--cluster",
            "c0",
            "--federation-gateway-ip",
            "eth1",
            "--federation-gateway-advertise-ip",
            "203.0.113.7",
            "--federation-gateway-neighbors",
            "10.12.0.11, 10.12.0.12",
        ]);
        let want = Federation {
            ip: "eth1".into(),
            advertise: Some("203.0.113.7".parse().unwrap()),
            port: 6660,
            gossip_port: 7947,
            neighbors: vec!["10.12.0.11".parse().unwrap(), "10.12.0.12".parse().unwrap()],
        };
        assert_eq!(g, Ok(Some(want)));
        let g =
            gateway(&["ax", "daemon", "--cluster", "c1", "--federation-gateway-ip", "10.12.0.11"]).unwrap().unwrap();
        assert_eq!((g.ip.as_str(), g.advertise, g.neighbors.len()), ("10.12.0.11", None, 0));
        let ports = ["--federation-gateway-port", "7000", "--federation-gateway-gossip-port", "7001"];
        let args = [&["ax", "daemon", "--cluster", "c1", "--federation-gateway-ip", "10.12.0.11"][..], &ports].concat();
        let g = gateway(&args).unwrap().unwrap();
        assert_eq!((g.port, g.gossip_port), (7000, 7001));
    }

    #[test]
    fn bad_federation_flags_are_refused_by_name() {
        let gw = ["ax", "daemon", "--cluster", "c0", "--federation-gateway-ip", "10.12.0.10"];
        let with = |more: &[&str]| gateway(&[&gw[..], more].concat()).unwrap_err();
        for (args, says) in [
            (
                &["ax", "daemon", "--federation-gateway-neighbors", "10.12.0.11"][..],
                "--federation-gateway-neighbors is a federation gateway's: give --federation-gateway-ip",
            ),
            (
                &["ax", "daemon", "--federation-gateway-port", "6661"],
                "--federation-gateway-port is a federation gateway's",
            ),
            (&["ax", "daemon", "--federation-gateway-ip", "10.12.0.10"], "a federation gateway needs --cluster"),
            (
                &["ax", "daemon", "--cluster", "c_0", "--federation-gateway-ip", "10.12.0.10"],
                "--cluster 'c_0' is not a DNS label",
            ),
            (
                &["ax", "daemon", "--cluster", "c0", "--federation-gateway-ip", "2001:db8::1"],
                "--federation-gateway-ip 2001:db8::1: the address must be IPv4",
            ),
        ] {
            let e = gateway(args).unwrap_err();
            assert!(e.contains(says), "{args:?}: {e}");
        }
        for (more, says) in [
            (
                &["--federation-gateway-advertise-ip", "0.0.0.0"][..],
                "--federation-gateway-advertise-ip 0.0.0.0: not an IPv4 address",
            ),
            (&["--federation-gateway-advertise-ip", "gw.example"], "--federation-gateway-advertise-ip gw.example"),
            (
                &["--federation-gateway-neighbors", "10.12.0.11,nope"],
                "--federation-gateway-neighbors: 'nope' is not an IPv4 address",
            ),
            (&["--federation-gateway-port", "0"], "--federation-gateway-port 0: give a port number"),
            (
                &["--federation-gateway-gossip-port", "7946"],
                "--federation-gateway-gossip-port 7946 is also the cluster's --gossip-port",
            ),
        ] {
            let e = with(more);
            assert!(e.contains(says), "{more:?}: {e}");
        }
        assert!(parse(&[&gw[..], &["--federation-gateway-port", "70000"]].concat()).is_err(), "clap checks the range");
    }

    #[test]
    fn get_takes_a_resource_and_an_output() {
        let (cli, _) = parse(&["ax", "get", "servers", "-o", "json"]).unwrap();
        let Command::Get(g) = cli.command else { panic!() };
        assert_eq!((g.resource, g.output), (Resource::Servers, Output::Json));
        assert!(parse(&["ax", "get", "bogus"]).is_err());
    }

    /// `--server` and its files, wherever they are on get, create and delete: the
    /// server and the files, or the error.
    fn remote(args: &[&str]) -> Result<Option<(String, ax_tls::Files)>, String> {
        let (cli, m) = parse(args).map_err(|e| e.to_string())?;
        let server = match &cli.command {
            Command::Get(g) => &g.server,
            Command::Create(c) => &c.server,
            Command::Delete(d) => &d.server,
            other => panic!("{other:?}"),
        };
        server.remote(&m).map(|r| r.map(|(s, f)| (s.to_string(), f))).map_err(|e| e.to_string())
    }

    #[test]
    fn server_flags_go_together_before_or_after_the_resource() {
        let tls = ["--tls-ca-cert", "ca.pem", "--tls-cert", "admin.pem", "--tls-key", "admin.key"];
        let files = ax_tls::Files { ca: "ca.pem".into(), cert: "admin.pem".into(), key: "admin.key".into() };
        let want = Ok(Some(("https://n1:6664".to_string(), files)));
        let vservice = ["vservice", "w", "--ip", "198.18.2.3", "--ports", "80", "--backends", "198.18.1.1"];
        let server = ["--server", "https://n1"];
        let cases: [Vec<&str>; 6] = [
            [&["ax", "get", "apps"][..], &server, &tls].concat(),
            [&["ax", "get"][..], &server, &tls, &["nodes", "-o", "json"]].concat(),
            [&["ax", "create"][..], &server, &tls, &vservice].concat(),
            [&["ax", "create"][..], &vservice, &server, &tls].concat(),
            [&["ax", "delete", "vservice", "w"][..], &server, &tls].concat(),
            [&["ax", "del"][..], &server, &["vservice", "w"], &tls].concat(),
        ];
        for args in cases {
            assert_eq!(remote(&args), want, "{args:?}");
        }
        assert_eq!(remote(&["ax", "get", "apps"]), Ok(None), "the Unix socket");
        let e = remote(&["ax", "get", "apps", "--server", "https://n1", "--tls-cert", "a.pem"]).unwrap_err();
        assert!(e.starts_with("--server needs --tls-ca-cert, --tls-key: the daemon answers only clients"), "{e}");
        let e = remote(&["ax", "delete", "vservice", "w", "--tls-key", "a.key"]).unwrap_err();
        assert!(e.starts_with("--tls-key goes with --server: without it ax talks to this host's daemon"), "{e}");
        let e = remote(&["ax", "get", "apps", "--server", "http://n1:6664"]).unwrap_err();
        assert!(e.contains("ax talks to a remote daemon over HTTPS only"), "{e}");
    }

    /// The CLI's message for a bad value: clap's frame around the type's own message.
    fn refused(args: &[&str]) -> String {
        parse(args).map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn bad_flags_are_refused_before_any_request_with_the_apis_message() {
        // A good command with one flag's value replaced (or the flag added).
        let create = |[flag, value]: [&str; 2]| {
            let mut a = vec!["ax", "create", "vservice", "w", "--ip", "198.18.2.3", "--ports", "80", "--backends"];
            a.push("198.18.1.1");
            match a.iter().position(|x| *x == flag) {
                Some(i) => a[i + 1] = value,
                None => a.extend([flag, value]),
            }
            a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
        };
        let cases: [(Vec<String>, &str); 6] = [
            (create(["--ports", "80:x"]), "--ports: 'x' is not a port (1-65535)"),
            (create(["--backends", "web"]), "--backends: 'web' is not an IPv4 address or IP:port"),
            (create(["--lbtype", "LeastConn"]), "--lbtype 'LeastConn' is not one of Random, RoundRobin"),
            (create(["--ip", "300.1.1.1"]), "--ip 300.1.1.1 is not an IPv4 address"),
            (create(["--source-ip", "nope"]), "--source-ip nope is not an IPv4 address"),
            (create(["--ip", "127.0.0.1"]), "--ip 127.0.0.1 is a loopback address"),
        ];
        for (args, want) in cases {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let e = refused(&args);
            assert!(e.contains(want), "{args:?}: {e}");
        }
        for (args, want) in [
            (&["ax", "run", "--ip", "300.1.1.1", "--", "true"][..], "--ip 300.1.1.1 is not an IPv4 address"),
            (&["ax", "run", "--labels", "role", "--", "true"], "label 'role' is not of the form label=value"),
            (&["ax", "run", "--expose", "8000", "--", "true"], "--expose '8000' is not internal:host-port"),
        ] {
            let e = refused(args);
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn a_vservice_goes_from_flags_to_json_and_back_unchanged() {
        let (cli, _) = parse(&[
            "ax",
            "create",
            "vservice",
            "web",
            "--ip",
            "198.18.2.1",
            "--ports",
            "80:8000,443",
            "--backends",
            "198.18.1.1, 10.0.0.5:8080",
            "--lbtype",
            "roundrobin",
            "--source-ip",
            "10.0.0.1",
            "--external",
            "--allow-external-backends",
        ])
        .unwrap();
        let Command::Create(CreateArgs { resource: CreateResource::Vservice(v), .. }) = cli.command else { panic!() };
        let req = crate::request(v);
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "name": "web", "ip": "198.18.2.1", "ports": "80:8000,443:443",
                "backends": "198.18.1.1,10.0.0.5:8080", "lbtype": "RoundRobin",
                "source_ip": "10.0.0.1", "external": true, "allow_external_backends": true
            })
        );
        assert_eq!(serde_json::from_value::<ax_api::VserviceRequest>(json).unwrap(), req);
    }

    #[test]
    fn run_flags_parse_into_the_registrations_types() {
        let (cli, _) = parse(&[
            "ax",
            "run",
            "--ip",
            "198.18.0.1",
            "--labels",
            "role=prod,team=a",
            "--expose",
            "8000:9999",
            "--expose",
            "8000:0.0.0.0:9998",
            "--",
            "true",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else { panic!() };
        assert_eq!(serde_json::to_value(&r.labels).unwrap(), serde_json::json!({"role": "prod", "team": "a"}));
        let exposes: Vec<String> = r.expose.iter().map(ToString::to_string).collect();
        assert_eq!(exposes, ["8000:9999", "8000:0.0.0.0:9998"]);
        assert_eq!(r.ip.map(|ip| ip.get()), Some(Ipv4Addr::new(198, 18, 0, 1)));
    }
}
