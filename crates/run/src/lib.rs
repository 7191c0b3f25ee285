//! `ax run`: registers the app with the daemon, forks, puts the child in new network
//! and mount namespaces with only `lo`, installs the seccomp filter, hands the filter's
//! listener to the daemon, and execs the program. The parent forwards signals and
//! exits with the program's status.
//!
//! The launcher stays single-threaded so that the fork is sound.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use anyhow::{anyhow, bail, Context, Result};
use ax_api::{wire, Register, RunReply, RunRequest, RUN_SOCKET};
use ax_sys::proc::{self, Fork};
use ax_sys::{ns, scm, seccomp};
use ax_trap::policy;

/// What to run and as what.
#[derive(Debug, Clone)]
pub struct Options {
    pub ip: Option<String>,
    pub labels: String,
    pub command: Vec<OsString>,
}

/// Signals the launcher passes on to the app; SIGCHLD tells it the app ended.
const FORWARDED: &[i32] =
    &[libc::SIGHUP, libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGUSR1, libc::SIGUSR2, libc::SIGWINCH];
/// The child's byte that says "exec now".
const GO: u8 = b'G';

/// Runs the app; returns the status to exit with.
pub fn run(opts: Options) -> Result<i32> {
    if opts.command.is_empty() {
        bail!("nothing to run: give a command after the options, as in 'ax run -- curl http://web/'");
    }
    if proc::effective_uid() != 0 {
        bail!("ax run must run as root: it creates a network namespace for the app (try: sudo ax run ...)");
    }
    let daemon = UnixStream::connect(RUN_SOCKET).map_err(|e| anyhow!(ax_api::unreachable(RUN_SOCKET, &e)))?;
    let register =
        RunRequest::Register(Register { ip: opts.ip.clone(), labels: opts.labels.clone(), pid: proc::pid() });
    wire::send(daemon.as_fd(), &register, None).context("cannot talk to the ax daemon")?;
    match answer(&daemon)? {
        RunReply::Registered { .. } => {}
        other => bail!("unexpected answer from the ax daemon: {other:?}"),
    }

    let (parent_end, child_end) = UnixStream::pair().context("cannot make a socket pair")?;
    let mut all = FORWARDED.to_vec();
    all.push(libc::SIGCHLD);
    proc::block_signals(&all).context("cannot block signals")?;
    match proc::fork().context("cannot fork")? {
        Fork::Child => {
            drop(parent_end);
            drop(daemon);
            child(child_end, &opts.command)
        }
        Fork::Parent(pid) => {
            drop(child_end);
            parent(pid, parent_end, daemon, &all)
        }
    }
}

fn answer(daemon: &UnixStream) -> Result<RunReply> {
    match wire::recv::<RunReply>(daemon.as_fd()).context("cannot read the ax daemon's answer")? {
        Some((RunReply::Error { error }, _)) => Err(anyhow!("{error}")),
        Some((r, _)) => Ok(r),
        None => bail!("the ax daemon closed the connection"),
    }
}

fn parent(pid: i32, child: UnixStream, daemon: UnixStream, signals: &[i32]) -> Result<i32> {
    let mut byte = [0u8; 1];
    let (n, listener) = scm::recv(child.as_fd(), &mut byte).context("cannot hear from the app's process")?;
    let Some(listener) = listener.filter(|_| n == 1) else {
        // The child failed to set up and said why on stderr; pass its status on.
        return wait_for(pid, signals);
    };
    if let Err(e) = attach(&daemon, pid, listener) {
        let _ = proc::kill(pid, libc::SIGKILL);
        let _ = wait_for(pid, &[libc::SIGCHLD]);
        return Err(e);
    }
    (&child).write_all(&[GO]).context("cannot start the app")?;
    let status = wait_for(pid, signals);
    drop(daemon);
    status
}

fn attach(daemon: &UnixStream, pid: i32, listener: OwnedFd) -> Result<()> {
    wire::send(daemon.as_fd(), &RunRequest::Attach { pid }, Some(listener.as_fd()))
        .context("cannot hand the app to the ax daemon")?;
    match answer(daemon)? {
        RunReply::Attached => Ok(()),
        other => bail!("unexpected answer from the ax daemon: {other:?}"),
    }
}

/// Waits for the app to end, passing on signals other processes send us.
fn wait_for(pid: i32, signals: &[i32]) -> Result<i32> {
    loop {
        if let Some(exit) = proc::try_wait(pid)? {
            return Ok(exit.shell_status());
        }
        let sig = proc::wait_signal(signals)?;
        // Terminal signals reach the app's process group directly.
        if sig.signo != libc::SIGCHLD && sig.from_process {
            let _ = proc::kill(pid, sig.signo);
        }
    }
}

/// The forked child: never returns.
fn child(parent: UnixStream, command: &[OsString]) -> ! {
    match setup(&parent) {
        Ok(true) => {}
        Ok(false) => proc::exit_now(1),
        Err(e) => {
            eprintln!("ax: cannot set up the app: {e:#}");
            proc::exit_now(125);
        }
    }
    let args: Vec<&std::ffi::OsStr> = command.iter().map(|a| a.as_os_str()).collect();
    let err = proc::exec(args[0], &args);
    let name = command[0].to_string_lossy();
    if err.raw_os_error() == Some(libc::ENOENT) {
        eprintln!("ax: {name}: command not found");
        proc::exit_now(127);
    }
    eprintln!("ax: {name}: {err}");
    proc::exit_now(126);
}

/// Namespaces, filter, hand-over; true once the parent says go.
fn setup(parent: &UnixStream) -> Result<bool> {
    proc::unblock_all_signals()?;
    ns::unshare_net_and_mount().context("cannot create the app's namespaces")?;
    ns::make_mounts_private().context("cannot make the app's mounts private")?;
    ns::loopback_up().context("cannot bring up lo in the app's namespace")?;
    let listener =
        seccomp::install_filter(&policy::compile(policy::RULES)).context("cannot install the seccomp filter")?;
    scm::send(parent.as_fd(), b"L", Some(listener.as_fd())).context("cannot pass the seccomp listener to ax run")?;
    drop(listener);
    let mut go = [0u8; 1];
    let (n, _) = scm::recv(parent.as_fd(), &mut go)?;
    Ok(n == 1 && go[0] == GO)
}
