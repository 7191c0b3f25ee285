//! `ax run`: makes sure the app may hold descriptors up to 1023 (the daemon puts its UDP
//! sockets there: `ax_trap::fds`), registers the app with the daemon (waiting, bounded,
//! for one that is restarting: `reach`), forks, puts the child in new network and mount
//! namespaces with only `lo` (and the `--interface` device), mounts its private
//! resolv.conf, installs the seccomp filter, hands the filter's listener to the daemon,
//! switches to `--user`, and execs the program. The parent forwards signals and exits
//! with the program's status.
//!
//! An app the daemon places in the host's namespace (`host_sockets`: an unprivileged
//! `--user` under the kernel driver) gets a new mount namespace only, and Landlock's
//! abstract-socket scope; the parent takes the new network namespace instead, as the
//! app's own, where the daemon puts the app's loopback sockets.
//!
//! Where the kernel refuses a namespace with EPERM (a container without CAP_SYS_ADMIN,
//! a Kubernetes pod's default), the app uses this one as its own, as with
//! `--new-netns=false`, and `ax run` says so on stderr. The daemon sees the app share
//! `ax run`'s namespace and rules it as it rules a `--new-netns=false` app.
//!
//! The launcher stays single-threaded so that the fork is sound.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use ax_api::{wire, Driver, Expose, Labels, Register, RunReply, RunRequest, VirtualIp, RUN_SOCKET};
use ax_sys::pidfd::Pidfd;
use ax_sys::proc::{self, Fork};
use ax_sys::{ns, seccomp};
use ax_trap::{fds, policy};

mod reach;

/// Why the app could not be started or handed to the daemon. Each step names what
/// failed and, where the system said why, ends with its words.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("nothing to run: give a command after the options, as in 'ax run -- curl http://web/'")]
    NoCommand,
    #[error("ax run must run as root: it creates a network namespace for the app (try: sudo ax run ...)")]
    NotRoot,
    #[error("{0}")]
    FdLimit(#[from] fds::FdLimitTooLow),
    #[error("cannot set the app's open-file limit: {0}")]
    SetFdLimit(io::Error),
    #[error("{}", ax_api::unreachable(RUN_SOCKET, .0))]
    Unreachable(io::Error),
    #[error("cannot talk to the ax daemon: {0}")]
    Send(io::Error),
    #[error("cannot read the ax daemon's answer: {0}")]
    Receive(io::Error),
    #[error("the ax daemon closed the connection")]
    Closed,
    /// The daemon refused the app, in its own words.
    #[error("{0}")]
    Refused(String),
    #[error("unexpected answer from the ax daemon: {0:?}")]
    Unexpected(Box<RunReply>),
    #[error("cannot make a socket pair: {0}")]
    SocketPair(io::Error),
    #[error("cannot block signals: {0}")]
    BlockSignals(io::Error),
    #[error("{0}")]
    UnblockSignals(io::Error),
    #[error("cannot fork: {0}")]
    Fork(io::Error),
    #[error("{0}")]
    Wait(io::Error),
    #[error("cannot take the seccomp listener from the app's process: {0}")]
    TakeListener(io::Error),
    #[error("cannot hand the app to the ax daemon: {0}")]
    Attach(io::Error),
    #[error("cannot start the app: {0}")]
    Start(io::Error),
    #[error("cannot create the app's namespaces: {0}")]
    Namespaces(io::Error),
    #[error("cannot make the app's mounts private: {0}")]
    PrivateMounts(io::Error),
    #[error("cannot bring up lo in the app's namespace: {0}")]
    Loopback(io::Error),
    #[error("cannot make the app's own network namespace (for its loopback) in ax run: {0}")]
    OwnNetns(io::Error),
    #[error("cannot keep the app from the host's abstract unix sockets (Landlock): {0}")]
    Scope(io::Error),
    #[error("cannot mount the app's resolv.conf over /etc/resolv.conf: {0}")]
    ResolvConf(io::Error),
    #[error("--interface needs the app's own network namespace, which the kernel refused here: {0}")]
    InterfaceWithoutNetns(io::Error),
    #[error("cannot return the app to ax run's network namespace: {0}")]
    ReturnHome(io::Error),
    #[error("cannot install the seccomp filter: {0}")]
    Filter(io::Error),
    #[error("cannot tell ax run where the seccomp listener is: {0}")]
    TellListener(io::Error),
    #[error("cannot switch to user {user}: {err}")]
    User { user: String, err: io::Error },
    #[error("cannot create interface {name} (tried link types {INTERFACE_KINDS:?}): {err}")]
    CreateInterface { name: String, err: io::Error },
    #[error("cannot give {name} the address {ip}/32: {err}")]
    InterfaceAddress { name: String, ip: Ipv4Addr, err: io::Error },
    #[error("cannot bring {name} up: {err}")]
    InterfaceUp { name: String, err: io::Error },
}

/// An `--interface` name the kernel would not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--interface '{0}' is not a valid interface name: 1-15 characters, no '/', ':' or spaces")]
pub struct BadInterfaceName(pub String);

type Result<T> = std::result::Result<T, RunError>;

/// What to run and as what.
#[derive(Debug, Clone)]
pub struct Options {
    pub ip: Option<VirtualIp>,
    /// `--ip` may hide a real host (`--ip-overlap-ok`).
    pub ip_overlap_ok: bool,
    pub name: Option<String>,
    pub labels: Labels,
    /// Who the program runs as (looked up before anything starts).
    pub user: Option<proc::User>,
    /// A non-loopback device to create in the app's namespace, with its address /32.
    pub interface: Option<String>,
    /// False: stay in the caller's network namespace (still trapped).
    pub new_netns: bool,
    pub dns_override: bool,
    /// `--expose` values (checked by the daemon against its node and pool).
    pub expose: Vec<Expose>,
    /// How long to wait for a daemon that is restarting (its socket missing or not
    /// listened on) before giving up.
    pub daemon_wait: std::time::Duration,
    pub command: Vec<OsString>,
}

/// Link types tried for `--interface`, in order: `ifb` looks like the manual's dummy
/// device (BROADCAST,NOARP,UP,LOWER_UP); a port-less bridge is the fallback. This
/// kernel has no `dummy` type.
const INTERFACE_KINDS: &[&str] = &["ifb", "bridge"];

/// What the child needs to know from the daemon's answer.
struct Setup<'a> {
    opts: &'a Options,
    app_id: String,
    ip: Ipv4Addr,
    resolv_conf: Option<String>,
    driver: Driver,
    guard: policy::SocketGuard,
    placement: policy::Placement,
    /// The caller's network namespace, where ax run took a new one for itself (the
    /// host-placement app's own): the app starts back there.
    home: Option<File>,
}

/// Signals the launcher passes on to the app; SIGCHLD tells it the app ended.
const FORWARDED: &[i32] =
    &[libc::SIGHUP, libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGUSR1, libc::SIGUSR2, libc::SIGWINCH];
/// How often a lost daemon is looked for again.
const REATTACH_EVERY: std::time::Duration = std::time::Duration::from_millis(200);
/// The child's byte that says "exec now".
const GO: u8 = b'G';

/// Runs the app; returns the status to exit with.
pub fn run(opts: Options) -> Result<i32> {
    if opts.command.is_empty() {
        return Err(RunError::NoCommand);
    }
    if proc::effective_uid() != 0 {
        return Err(RunError::NotRoot);
    }
    // The daemon puts the app's UDP sockets at descriptor numbers up to 1023.
    let (soft, hard) = proc::fd_limits().map_err(RunError::SetFdLimit)?;
    if let Some(soft) = fds::soft_fd_limit(soft, hard)? {
        proc::set_soft_fd_limit(soft).map_err(RunError::SetFdLimit)?;
    }
    let daemon = reach::connect_waiting(
        || UnixStream::connect(RUN_SOCKET),
        opts.daemon_wait,
        &mut reach::Wall,
        |e| {
            eprintln!(
                "ax: waiting for the ax daemon at {RUN_SOCKET} ({e}), up to {}s (--daemon-wait)",
                opts.daemon_wait.as_secs()
            )
        },
    )
    .map_err(RunError::Unreachable)?;
    // The own namespace of an app the daemon may place in the host's is ax run's: made
    // now, so that where the kernel refuses it, the app is not offered for placement.
    let home = if may_live_in_the_host_namespace(&opts) { keep_own_netns()? } else { None };
    let register = RunRequest::Register(Register {
        ip: opts.ip,
        name: opts.name.clone(),
        labels: opts.labels.clone(),
        dns_override: opts.dns_override,
        expose: opts.expose.clone(),
        pid: proc::pid(),
        host_sockets: home.is_some(),
        ip_overlap_ok: opts.ip_overlap_ok,
    });
    wire::send(daemon.as_fd(), &register, None).map_err(RunError::Send)?;
    let setup = match answer(&daemon)? {
        RunReply::Registered { app_id, ip, resolv_conf, driver, socket_guard, host_sockets } => {
            let guard = if socket_guard { policy::SocketGuard::Installed } else { policy::SocketGuard::Absent };
            let placement = if host_sockets { policy::Placement::Host } else { policy::Placement::OwnNetns };
            Setup { opts: &opts, app_id, ip, resolv_conf, driver, guard, placement, home }
        }
        other => return Err(RunError::Unexpected(Box::new(other))),
    };

    let (parent_end, child_end) = UnixStream::pair().map_err(RunError::SocketPair)?;
    let mut all = FORWARDED.to_vec();
    all.push(libc::SIGCHLD);
    proc::block_signals(&all).map_err(RunError::BlockSignals)?;
    match proc::fork().map_err(RunError::Fork)? {
        Fork::Child => {
            drop(parent_end);
            drop(daemon);
            child(child_end, &setup)
        }
        Fork::Parent(pid) => {
            drop(child_end);
            parent(pid, parent_end, daemon, &all, &setup)
        }
    }
}

/// Whether the app may live in the host's network namespace (the daemon decides, for
/// the kernel driver): it will run as a user other than root (capabilities gone, and
/// no_new_privs keeps setuid programs and file capabilities from giving any back), asks
/// for a namespace of its own with nothing added to it, and Landlock can keep it from
/// the host's abstract unix sockets. Root in the host's namespace holds CAP_NET_ADMIN
/// over it, and could leave its cgroup.
fn may_live_in_the_host_namespace(opts: &Options) -> bool {
    opts.user.as_ref().is_some_and(|u| u.uid != 0)
        && opts.new_netns
        && opts.interface.is_none()
        && ax_sys::landlock::can_scope()
}

/// Moves ax run into a new network namespace with `lo` up; returns the one it left, or
/// None where the kernel refused (EPERM: no CAP_SYS_ADMIN, as in a container).
fn keep_own_netns() -> Result<Option<File>> {
    let home = ns::current_netns().map_err(RunError::OwnNetns)?;
    match ns::unshare(false, true) {
        Ok(()) => {
            ns::loopback_up().map_err(RunError::Loopback)?;
            Ok(Some(home))
        }
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(None),
        Err(e) => Err(RunError::OwnNetns(e)),
    }
}

/// The namespaces the child could make: the kernel's EPERM (no CAP_SYS_ADMIN, as in a
/// container) leaves the app in ours, as `--new-netns=false` does; any other failure
/// is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Made {
    mounts: bool,
    netns: bool,
}

fn make_namespaces(netns: bool, unshare: impl Fn(bool, bool) -> io::Result<()>) -> Result<(Made, Option<io::Error>)> {
    let refused = |e: &io::Error| e.raw_os_error() == Some(libc::EPERM);
    match unshare(true, netns) {
        Ok(()) => return Ok((Made { mounts: true, netns }, None)),
        Err(e) if !refused(&e) => return Err(RunError::Namespaces(e)),
        Err(e) if !netns => return Ok((Made { mounts: false, netns: false }, Some(e))),
        Err(_) => {}
    }
    // Without the network namespace, a mount namespace may still be allowed.
    match unshare(true, false) {
        Ok(()) => Ok((Made { mounts: true, netns: false }, Some(io::Error::from_raw_os_error(libc::EPERM)))),
        Err(e) if refused(&e) => Ok((Made { mounts: false, netns: false }, Some(e))),
        Err(e) => Err(RunError::Namespaces(e)),
    }
}

/// What ax run says, once, when the app stays in this namespace: None when nothing the
/// user asked for was refused.
fn shared_notice(wanted: Made, made: Made, resolv_conf: Option<&str>, why: &io::Error) -> Option<String> {
    let netns = wanted.netns && !made.netns;
    // A container that mounted the daemon's resolv.conf over its own lost nothing.
    let asks_the_daemon = |path: &str| {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        first_nameserver(&read("/etc/resolv.conf")).is_some_and(|ns| first_nameserver(&read(path)) == Some(ns))
    };
    let resolv = resolv_conf.filter(|path| !made.mounts && !asks_the_daemon(path));
    let mut say = match (netns, resolv) {
        (false, None) => return None,
        (true, _) => format!(
            "ax: cannot make the app a network namespace of its own ({why}; a container without CAP_SYS_ADMIN): \
             it uses this one as its own, as with --new-netns=false"
        ),
        (false, Some(_)) => format!("ax: cannot make the app a mount namespace of its own ({why})"),
    };
    if let Some(path) = resolv {
        say.push_str(&format!(
            "; its /etc/resolv.conf stays this one's: app names resolve where it names the ax daemon's DNS \
             (mount {path} or {} over it)",
            ax_api::CONTAINER_RESOLV_CONF
        ));
    }
    Some(say)
}

/// The first server a resolv.conf names: the one a resolver asks first.
fn first_nameserver(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.trim().strip_prefix("nameserver")?.split_whitespace().next())
}

fn answer(daemon: &UnixStream) -> Result<RunReply> {
    match wire::recv::<RunReply>(daemon.as_fd()).map_err(RunError::Receive)? {
        Some((RunReply::Error { error }, _)) => Err(RunError::Refused(error)),
        Some((r, _)) => Ok(r),
        None => Err(RunError::Closed),
    }
}

fn parent(pid: i32, child: UnixStream, daemon: UnixStream, signals: &[i32], setup: &Setup) -> Result<i32> {
    // The child says which descriptor holds its listener; we take it with pidfd_getfd.
    // (Passing it with sendmsg would trap the child on its own filter.)
    let mut number = [0u8; 4];
    if (&child).read_exact(&mut number).is_err() {
        // The child failed to set up and said why on stderr; pass its status on.
        return wait_for(pid, signals);
    }
    // An app in the host's namespace keeps its own here, in ax run (made before it
    // registered): the daemon finds it by this process and moves the app's loopback
    // sockets in.
    let listener =
        Pidfd::open_thread(pid).and_then(|p| p.get_fd(i32::from_ne_bytes(number))).map_err(RunError::TakeListener);
    // We keep our copy of the listener for as long as the app runs (DESIGN: it is what
    // a restarted daemon would be handed).
    let listener = match listener.and_then(|l| attach(&daemon, pid, &l).map(|()| l)) {
        Ok(l) => l,
        Err(e) => {
            let _ = proc::kill(pid, libc::SIGKILL);
            let _ = wait_for(pid, &[libc::SIGCHLD]);
            return Err(e);
        }
    };
    (&child).write_all(&[GO]).map_err(RunError::Start)?;
    // The fork is behind us: a second thread is sound from here on.
    let (app_id, governed) = (setup.app_id.clone(), setup.driver == Driver::Kernel);
    let _ = std::thread::Builder::new()
        .name("keeper".into())
        .spawn(move || keep_attached(daemon, listener, app_id, pid, governed));
    wait_for(pid, signals)
}

/// Stays with the daemon. When its connection ends (the daemon stopped or died), waits
/// for a new one and hands the listener over again; meanwhile the app's trapped calls
/// wait in the kernel (the filter's listener stays open here), so they complete once a
/// daemon is back. A daemon that goes away again before it answered is waited for like
/// the first. A daemon that no longer knows the app (started with --clean) ends the
/// wait: the listener is closed, and trapped calls then fail instead of hanging. An
/// app the kernel driver `governed` is killed then: its untrapped calls on the host
/// sockets it holds would be ruled by no one (a new daemon that did not take the
/// driver's maps over holds no state of them).
fn keep_attached(mut daemon: UnixStream, listener: OwnedFd, app_id: String, pid: i32, governed: bool) {
    loop {
        // Nothing more comes on this connection: it returns when the daemon goes.
        let _ = wire::recv::<RunReply>(daemon.as_fd());
        loop {
            std::thread::sleep(REATTACH_EVERY);
            let Ok(conn) = UnixStream::connect(RUN_SOCKET) else { continue };
            let again = RunRequest::Reattach { app_id: app_id.clone(), pid };
            if wire::send(conn.as_fd(), &again, Some(listener.as_fd())).is_err() {
                continue;
            }
            match answer(&conn) {
                Ok(RunReply::Attached) => {
                    daemon = conn;
                    break;
                }
                // Killed or stopped while it took the app back: wait for the next one.
                Err(RunError::Receive(_) | RunError::Closed) => continue,
                Ok(other) => {
                    eprintln!("ax: unexpected answer from the new ax daemon: {other:?}");
                    return;
                }
                Err(e) => {
                    eprintln!("ax: the new ax daemon did not take app {app_id} back: {e}");
                    if governed {
                        eprintln!("ax: app {app_id} is stopped: the kernel driver no longer rules its sockets");
                        let _ = proc::kill(pid, libc::SIGKILL);
                    }
                    return;
                }
            }
        }
    }
}

fn attach(daemon: &UnixStream, pid: i32, listener: &OwnedFd) -> Result<()> {
    wire::send(daemon.as_fd(), &RunRequest::Attach { pid }, Some(listener.as_fd())).map_err(RunError::Attach)?;
    match answer(daemon)? {
        RunReply::Attached => Ok(()),
        other => Err(RunError::Unexpected(Box::new(other))),
    }
}

/// Waits for the app to end, passing on signals other processes send us.
fn wait_for(pid: i32, signals: &[i32]) -> Result<i32> {
    loop {
        if let Some(exit) = proc::try_wait(pid).map_err(RunError::Wait)? {
            return Ok(exit.shell_status());
        }
        let sig = proc::wait_signal(signals).map_err(RunError::Wait)?;
        // Terminal signals reach the app's process group directly.
        if sig.signo != libc::SIGCHLD && sig.from_process {
            let _ = proc::kill(pid, sig.signo);
        }
    }
}

/// The forked child: never returns.
fn child(parent: UnixStream, setup: &Setup) -> ! {
    let command = &setup.opts.command;
    match prepare(&parent, setup) {
        Ok(true) => {}
        Ok(false) => proc::exit_now(1),
        Err(e) => {
            eprintln!("ax: cannot set up the app: {e}");
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

/// Namespaces, resolv.conf, filter, hand-over, user; true once the parent says go.
fn prepare(parent: &UnixStream, setup: &Setup) -> Result<bool> {
    let opts = setup.opts;
    proc::unblock_all_signals().map_err(RunError::UnblockSignals)?;
    if let Some(home) = &setup.home {
        ns::enter_netns(home.as_fd()).map_err(RunError::ReturnHome)?;
    }
    let wanted = Made { mounts: true, netns: opts.new_netns && setup.placement == policy::Placement::OwnNetns };
    let (made, refused) = make_namespaces(wanted.netns, ns::unshare)?;
    if let Some(why) = &refused {
        if let Some(say) = shared_notice(wanted, made, setup.resolv_conf.as_deref(), why) {
            eprintln!("{say}");
        }
    }
    if made.mounts {
        ns::make_mounts_private().map_err(RunError::PrivateMounts)?;
    }
    if made.netns {
        ns::loopback_up().map_err(RunError::Loopback)?;
    }
    if setup.placement == policy::Placement::Host {
        // The host's abstract unix sockets (and other apps') are out of reach; its own
        // processes' stay in reach of each other.
        ax_sys::landlock::scope_abstract_unix_sockets().map_err(RunError::Scope)?;
    }
    if let Some(name) = &opts.interface {
        if let (false, Some(why)) = (made.netns, refused) {
            return Err(RunError::InterfaceWithoutNetns(why));
        }
        add_interface(name, setup.ip)?;
    }
    if let (Some(path), true) = (&setup.resolv_conf, made.mounts) {
        ns::bind_mount(path, "/etc/resolv.conf").map_err(RunError::ResolvConf)?;
    }
    if setup.guard == policy::SocketGuard::Absent {
        // No socket guard refuses a bind or connect the kernel runs on a host socket
        // behind the daemon's back (a call on another descriptor let continue while a
        // racing thread dup2()s a host socket onto its number): Landlock does, for TCP.
        if let Err(e) = ax_sys::landlock::deny_tcp_bind_and_connect() {
            eprintln!(
                "ax: warning: the daemon runs without BPF and Landlock cannot deny this app's own TCP binds and \
                 connects ({e}): a racing app may connect a host socket behind the daemon's back"
            );
        }
    }
    let listener =
        seccomp::install_filter(&policy::compile(&policy::rules(setup.driver, setup.guard, setup.placement)))
            .map_err(RunError::Filter)?;
    // From here on only calls the filter lets through: read and write.
    let mut io = parent;
    io.write_all(&listener.as_raw_fd().to_ne_bytes()).map_err(RunError::TellListener)?;
    let mut go = [0u8; 1];
    if io.read_exact(&mut go).is_err() || go[0] != GO {
        return Ok(false);
    }
    drop(listener);
    if let Some(user) = &opts.user {
        std::env::set_var("HOME", &user.home);
        std::env::set_var("USER", &user.name);
        std::env::set_var("LOGNAME", &user.name);
        proc::become_user(user).map_err(|err| RunError::User { user: user.name.clone(), err })?;
    }
    Ok(true)
}

/// Creates `--interface` in the app's namespace with the app's address /32, up.
fn add_interface(name: &str, ip: Ipv4Addr) -> Result<()> {
    let mut last = None;
    for kind in INTERFACE_KINDS {
        match ns::create_link(name, kind) {
            Ok(()) => {
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    if let Some(err) = last {
        return Err(RunError::CreateInterface { name: name.into(), err });
    }
    ns::set_host_address(name, ip).map_err(|err| RunError::InterfaceAddress { name: name.into(), ip, err })?;
    ns::link_up(name).map_err(|err| RunError::InterfaceUp { name: name.into(), err })
}

/// Checks an interface name as the kernel would: 1-15 bytes, not `.` or `..`, no `/`,
/// `:` or white space.
pub fn check_interface_name(name: &str) -> std::result::Result<(), BadInterfaceName> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(BadInterfaceName(name.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        assert!(check_interface_name("eth0").is_ok());
        assert!(check_interface_name("a-very-long-nm").is_ok());
        for bad in ["", ".", "..", "eth/0", "eth:0", "eth 0", "eth\t0", "sixteen-chars-xx"] {
            assert_eq!(check_interface_name(bad), Err(BadInterfaceName(bad.into())), "{bad}");
        }
        assert_eq!(
            check_interface_name("eth:0").unwrap_err().to_string(),
            "--interface 'eth:0' is not a valid interface name: 1-15 characters, no '/', ':' or spaces"
        );
    }

    fn errno(e: i32) -> io::Error {
        io::Error::from_raw_os_error(e)
    }

    #[test]
    fn a_refused_namespace_leaves_the_app_in_ours_and_other_failures_stop_it() {
        let both = Made { mounts: true, netns: true };
        let (made, why) = make_namespaces(true, |_, _| Ok(())).unwrap();
        assert_eq!((made, why.is_none()), (both, true));
        // A pod: no CAP_SYS_ADMIN, neither namespace.
        let (made, why) = make_namespaces(true, |_, _| Err(errno(libc::EPERM))).unwrap();
        assert_eq!((made, why.unwrap().raw_os_error()), (Made { mounts: false, netns: false }, Some(libc::EPERM)));
        // Only the network namespace refused: the mount namespace is still made.
        let (made, _) = make_namespaces(true, |_, net| if net { Err(errno(libc::EPERM)) } else { Ok(()) }).unwrap();
        assert_eq!(made, Made { mounts: true, netns: false });
        // --new-netns=false asks for mounts only.
        let (made, _) = make_namespaces(false, |_, net| {
            assert!(!net);
            Err(errno(libc::EPERM))
        })
        .unwrap();
        assert_eq!(made, Made { mounts: false, netns: false });
        // Anything but EPERM is an error, not a fallback.
        for netns in [true, false] {
            let e = make_namespaces(netns, |_, _| Err(errno(libc::ENOMEM))).unwrap_err();
            assert!(matches!(e, RunError::Namespaces(ref e) if e.raw_os_error() == Some(libc::ENOMEM)), "{e}");
        }
        let second = make_namespaces(true, |_, net| Err(errno(if net { libc::EPERM } else { libc::ENOSPC })));
        assert!(matches!(second, Err(RunError::Namespaces(_))));
    }

    #[test]
    fn the_notice_says_what_the_app_lost_once() {
        let why = errno(libc::EPERM);
        let (all, none) = (Made { mounts: true, netns: true }, Made { mounts: false, netns: false });
        let pod = shared_notice(all, none, Some("/var/run/appswitch/resolv/1.conf"), &why).unwrap();
        assert!(pod.starts_with("ax: cannot make the app a network namespace of its own ("), "{pod}");
        assert!(pod.contains("it uses this one as its own, as with --new-netns=false"), "{pod}");
        assert!(pod.contains(ax_api::CONTAINER_RESOLV_CONF), "{pod}");
        assert_eq!(pod.lines().count(), 1);
        let no_dns = shared_notice(all, none, None, &why).unwrap();
        assert!(!no_dns.contains("resolv.conf"), "{no_dns}");
        // --new-netns=false in a container: only the resolv.conf is lost.
        let mounts_only = Made { mounts: true, netns: false };
        let m = shared_notice(mounts_only, none, Some("/x.conf"), &why).unwrap();
        assert!(m.starts_with("ax: cannot make the app a mount namespace of its own") && m.contains("/x.conf"), "{m}");
        // Nothing asked for was refused: nothing to say.
        assert_eq!(shared_notice(mounts_only, none, None, &why), None);
        assert_eq!(shared_notice(mounts_only, mounts_only, Some("/x.conf"), &why), None);
    }

    #[test]
    fn the_first_nameserver_is_the_one_asked() {
        let daemons = "# written by ax\nnameserver 10.251.0.1\nsearch appswitch.local\n";
        assert_eq!(first_nameserver(daemons), Some("10.251.0.1"));
        assert_eq!(first_nameserver("search x\n  nameserver 10.96.0.10\nnameserver 10.251.0.1\n"), Some("10.96.0.10"));
        assert_eq!(first_nameserver("# nameserver 1.2.3.4\noptions ndots:5\n"), None);
    }

    #[test]
    fn errors_read_as_context_then_the_systems_words() {
        let e = || io::Error::from_raw_os_error(libc::EPERM);
        assert_eq!(RunError::Fork(e()).to_string(), format!("cannot fork: {}", e()));
        let unreachable = RunError::Unreachable(io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(
            unreachable.to_string(),
            ax_api::unreachable(RUN_SOCKET, &io::Error::from_raw_os_error(libc::ENOENT))
        );
        assert!(unreachable.to_string().contains("start it first with 'ax daemon'"));
        // The daemon's refusal is passed on in its own words.
        assert_eq!(RunError::Refused("--ip 1.2.3.4 is taken".into()).to_string(), "--ip 1.2.3.4 is taken");
        let e = RunError::CreateInterface { name: "eth1".into(), err: e() };
        assert!(
            e.to_string().starts_with(r#"cannot create interface eth1 (tried link types ["ifb", "bridge"]): "#),
            "{e}"
        );
    }
}
