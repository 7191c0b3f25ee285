//! The `ax` binary: parses the command line and hands each command to its crate.

use std::process::ExitCode;

use anyhow::{anyhow, Result};
use ax_cli::args::{self, Cli, Command, DaemonArgs, RunArgs, ServerArgs};
use ax_cli::client::Target;
use ax_cli::remote::Remote;
use ax_core::PortRanges;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

mod log;

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let sub = matches.subcommand().map(|(_, m)| m).expect("clap requires a subcommand");
    match dispatch(cli.command, sub) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ax: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `sub`: the subcommand's matches.
fn dispatch(command: Command, sub: &ArgMatches) -> Result<ExitCode> {
    match command {
        Command::Daemon(d) => {
            log::init(d.log_level.as_deref(), d.log_format)?;
            ax_daemon::run(daemon_config(*d, sub)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(r) => {
            let status = ax_run::run(run_options(r)?)?;
            Ok(ExitCode::from(status.clamp(0, 255) as u8))
        }
        Command::Get(g) => {
            print!("{}", ax_cli::get(&target(&g.server, sub)?, g.resource, g.output)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Version => {
            println!("ax {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Create(c) => {
            ax_cli::create(&target(&c.server, sub)?, c.resource)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Delete(d) => {
            ax_cli::delete(&target(&d.server, sub)?, d.resource)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::TlsCerts(t) => {
            if t.names.is_empty() && t.clients.is_empty() {
                return Err(anyhow!("ax tls-certs: name at least one node (NAME...) or client (--client NAME)"));
            }
            let pki = ax_tls::write_test_pki(&t.dir, &t.names)?;
            for client in &t.clients {
                pki.issue_as(client, 365, ax_tls::Usage::Client)?;
            }
            println!("CA: {}", pki.ca_file().display());
            for (name, kind) in t.names.iter().map(|n| (n, "node")).chain(t.clients.iter().map(|n| (n, "client"))) {
                let f = pki.files(name);
                println!("{name} ({kind}): --tls-cert {} --tls-key {}", f.cert.display(), f.key.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Where `get`, `create` and `delete` go: this host's daemon, or `--server`'s (its TLS
/// files read and checked before anything is sent).
fn target(args: &ServerArgs, sub: &ArgMatches) -> Result<Target> {
    Ok(match args.remote(sub)? {
        Some((server, files)) => Target::Remote(Remote::new(server, files)?),
        None => Target::Local,
    })
}

/// `sub`: the daemon's matches (which flags were given).
fn daemon_config(d: DaemonArgs, sub: &ArgMatches) -> Result<ax_daemon::Config> {
    let federation = args::federation(&d, sub)?;
    if let Some(f) = &federation {
        if f.ip.parse::<std::net::Ipv4Addr>().is_err() {
            ax_run::check_interface_name(&f.ip).map_err(|_| {
                anyhow!(
                    "--federation-gateway-ip '{}' is neither an IPv4 address nor an interface name (1-15 characters, no '/', ':' or spaces)",
                    f.ip
                )
            })?;
        }
    }
    let ports = PortRanges::parse(&d.ports).map_err(|e| anyhow!("--ports {}: {e}", d.ports))?;
    let neighbors =
        args::ipv4_list(d.neighbors.as_deref()).map_err(|s| anyhow!("--neighbors: '{s}' is not an IPv4 address"))?;
    let dns = match d.dns {
        Some(false) => None,
        _ => {
            let servers =
                d.dns_servers.as_deref().map(ax_dns::zone::parse_servers).transpose().map_err(|e| anyhow!(e))?;
            ax_dns::zone::Zone::new(&d.dns_domain).map_err(|e| anyhow!(e))?;
            Some(ax_daemon::DnsConfig { domain: d.dns_domain, servers })
        }
    };
    let driver =
        d.driver.as_deref().map(str::parse::<ax_api::Driver>).transpose().map_err(|e| anyhow!("--driver: {e}"))?;
    Ok(ax_daemon::Config {
        driver,
        node_interface: d.node_interface,
        node_name: d.node_name,
        cluster: d.cluster,
        ports,
        rest_port: d.rest_port,
        dns,
        gossip: ax_daemon::ClusterConfig {
            gossip_port: d.gossip_port,
            neighbors,
            auto_discover: d.gossip_auto_discover.then_some(32),
        },
        federation: federation.map(|f| ax_daemon::FederationSettings {
            ip: f.ip,
            advertise: f.advertise,
            port: f.port,
            gossip_port: f.gossip_port,
            neighbors: f.neighbors,
        }),
        egress_gateway: d.egress_gateway,
        clean: d.clean,
        cpu_profile: d.cpu_profile.map(std::path::PathBuf::from),
        mem_profile: d.mem_profile.map(std::path::PathBuf::from),
        run_dir: ax_api::RUN_DIR.into(),
        tls: tls_files(d.tls, d.tls_ca_cert, d.tls_cert, d.tls_key)?,
    })
}

/// `--tls` and its three files: all or nothing. Relative paths are taken from the
/// current directory (the manual asked for absolute ones).
fn tls_files(
    tls: bool,
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
) -> Result<Option<ax_tls::Files>> {
    let given = [("--tls-ca-cert", &ca), ("--tls-cert", &cert), ("--tls-key", &key)];
    if !tls {
        return match given.iter().find(|(_, v)| v.is_some()) {
            Some((flag, _)) => Err(anyhow!("{flag} is given without --tls: add --tls to use it")),
            None => Ok(None),
        };
    }
    let missing: Vec<&str> = given.iter().filter(|(_, v)| v.is_none()).map(|(f, _)| *f).collect();
    if !missing.is_empty() {
        return Err(anyhow!(
            "--tls needs {} (make a test CA and certificates with: ax tls-certs DIR NODE...)",
            missing.join(", ")
        ));
    }
    let cwd = std::env::current_dir().map_err(|e| anyhow!("cannot read the current directory: {e}"))?;
    let abs = |p: Option<String>| cwd.join(p.unwrap_or_default());
    Ok(Some(ax_tls::Files { ca: abs(ca), cert: abs(cert), key: abs(key) }))
}

/// Checks `ax run`'s flags before anything starts (those with a type were checked as
/// they were parsed); the daemon checks them again.
fn run_options(r: RunArgs) -> Result<ax_run::Options> {
    if let Some(name) = &r.name {
        ax_dns::wire::check_label(name).map_err(|e| anyhow!(e))?;
    }
    let new_netns = r.new_netns.unwrap_or(true);
    if let Some(name) = &r.interface {
        ax_run::check_interface_name(name).map_err(|e| anyhow!(e))?;
        if !new_netns {
            return Err(anyhow!(
                "--interface needs the app's own network namespace: it cannot go with --new-netns=false"
            ));
        }
    }
    let user = match &r.user {
        Some(who) => Some(
            ax_sys::proc::lookup_user(who)
                .map_err(|e| anyhow!("--user {who}: cannot read the user database: {e}"))?
                .ok_or_else(|| anyhow!("--user {who}: no such user"))?,
        ),
        None => None,
    };
    Ok(ax_run::Options {
        ip: r.ip,
        ip_overlap_ok: r.ip_overlap_ok,
        name: r.name,
        labels: r.labels,
        user,
        interface: r.interface,
        new_netns,
        dns_override: r.dns_override.unwrap_or(true),
        expose: r.expose,
        daemon_wait: std::time::Duration::from_secs(r.daemon_wait),
        command: r.command,
    })
}
