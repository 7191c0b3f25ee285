//! The `ax` binary: parses the command line and hands each command to its crate.

use std::process::ExitCode;

use anyhow::{anyhow, Result};
use ax_cli::args::{self, Cli, Command, DaemonArgs, RunArgs};
use ax_core::PortRanges;
use clap::{CommandFactory, FromArgMatches};

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let sub = matches.subcommand().map(|(_, m)| m).expect("clap requires a subcommand");
    let result = args::unsupported(&cli.command, sub).and_then(|()| dispatch(cli.command));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ax: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Daemon(d) => {
            init_logging();
            ax_daemon::run(daemon_config(*d)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(r) => {
            let status = ax_run::run(run_options(r)?)?;
            Ok(ExitCode::from(status.clamp(0, 255) as u8))
        }
        Command::Get(g) => {
            print!("{}", ax_cli::get(g.resource, g.output)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Create(_) | Command::Delete(_) => unreachable!("refused by args::unsupported"),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn daemon_config(d: DaemonArgs) -> Result<ax_daemon::Config> {
    let ports = PortRanges::parse(&d.ports).map_err(|e| anyhow!("--ports {}: {e}", d.ports))?;
    Ok(ax_daemon::Config {
        node_interface: d.node_interface,
        node_name: d.node_name,
        cluster: d.cluster,
        ports,
        rest_port: d.rest_port,
    })
}

/// Checks `ax run`'s flags before anything starts; the daemon checks them again.
fn run_options(r: RunArgs) -> Result<ax_run::Options> {
    if let Some(ip) = &r.ip {
        let parsed = ip.parse().map_err(|_| anyhow!("--ip {ip} is not an IPv4 address"))?;
        ax_core::addr::check_app_ip(parsed).map_err(|e| anyhow!(e))?;
    }
    ax_core::Labels::parse(&r.labels).map_err(|e| anyhow!("--labels {}: {e}", r.labels))?;
    Ok(ax_run::Options { ip: r.ip, labels: r.labels, command: r.command })
}
