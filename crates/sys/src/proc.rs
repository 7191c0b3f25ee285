//! Process control: fork and exec for `ax run`, waiting, signals, and a few
//! process-wide facts (uid, randomness, interfaces).

use std::ffi::OsStr;
use std::io;
use std::net::IpAddr;
use std::os::unix::ffi::OsStrExt;

use crate::{c_string, cvt};

/// Which side of a fork this is.
pub enum Fork {
    Parent(i32),
    Child,
}

/// Forks the calling process. Sound only while the process has a single thread (the
/// `ax run` launcher never starts another), so the child inherits no held locks.
pub fn fork() -> io::Result<Fork> {
    // SAFETY: the caller is single-threaded (see above); the child only calls
    // async-signal-safe functions or execs, or uses this process's own allocator which
    // no other thread can have locked.
    let pid = cvt(unsafe { libc::fork() })?;
    Ok(if pid == 0 { Fork::Child } else { Fork::Parent(pid) })
}

/// Replaces the process image, searching PATH like a shell. Returns only on failure.
pub fn exec(program: &OsStr, args: &[&OsStr]) -> io::Error {
    let to_c = |s: &OsStr| c_string(s.as_bytes());
    let prog = match to_c(program) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let mut owned = Vec::with_capacity(args.len());
    for a in args {
        match to_c(a) {
            Ok(c) => owned.push(c),
            Err(e) => return e,
        }
    }
    let mut argv: Vec<*const libc::c_char> = owned.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: `prog` and every argv entry are valid C strings that outlive the call;
    // argv ends with a null pointer.
    unsafe { libc::execvp(prog.as_ptr(), argv.as_ptr()) };
    io::Error::last_os_error()
}

/// Ends the process at once, without running destructors or atexit handlers (for a
/// forked child that must not flush its parent's buffers).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no process state we rely on.
    unsafe { libc::_exit(code) }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// The status a shell would report: the code, or 128 + the signal number.
    pub fn shell_status(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

/// Reaps `pid` if it has ended (never blocks).
pub fn try_wait(pid: i32) -> io::Result<Option<Exit>> {
    let mut status = 0;
    // SAFETY: `status` is a valid out pointer.
    let r = cvt(unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) })?;
    if r == 0 {
        return Ok(None);
    }
    if libc::WIFEXITED(status) {
        Ok(Some(Exit::Code(libc::WEXITSTATUS(status))))
    } else if libc::WIFSIGNALED(status) {
        Ok(Some(Exit::Signal(libc::WTERMSIG(status))))
    } else {
        Ok(None)
    }
}

fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data and sigemptyset/sigaddset initialise it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks `signals` for the calling thread so they can be taken with [`wait_signal`].
pub fn block_signals(signals: &[i32]) -> io::Result<()> {
    let set = sigset(signals);
    // SAFETY: `set` is initialised; the old mask is not wanted.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Clears the signal mask (a forked child does this before exec).
pub fn unblock_all_signals() -> io::Result<()> {
    let set = sigset(&[]);
    // SAFETY: `set` is initialised and empty.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// A signal taken from the pending set.
#[derive(Debug, Clone, Copy)]
pub struct Signal {
    pub signo: i32,
    /// True when another process sent it (kill/sigqueue); false when the kernel did,
    /// as for signals from the terminal, which reach the whole process group anyway.
    pub from_process: bool,
}

/// Waits for one of the (blocked) `signals`.
pub fn wait_signal(signals: &[i32]) -> io::Result<Signal> {
    let set = sigset(signals);
    loop {
        // SAFETY: siginfo_t is plain data filled by the kernel.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is initialised and `info` is a valid out pointer.
        let r = unsafe { libc::sigwaitinfo(&set, &mut info) };
        if r >= 0 {
            return Ok(Signal {
                signo: r,
                // SI_USER, SI_QUEUE, SI_TKILL and the rest are <= 0; SI_KERNEL is not.
                from_process: info.si_code <= 0,
            });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill takes integers.
    cvt(unsafe { libc::kill(pid, sig) })?;
    Ok(())
}

/// Sets no_new_privs, which an unprivileged seccomp filter requires and which keeps
/// setuid programs from gaining privileges under the filter.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integers.
    cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
    Ok(())
}

pub fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

pub fn pid() -> i32 {
    std::process::id() as i32
}

/// Fills `buf` from the kernel's random source.
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// An address of a network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddr {
    pub name: String,
    pub addr: IpAddr,
    /// Length of the network prefix (from the netmask).
    pub prefix: u8,
    pub loopback: bool,
    pub up: bool,
}

/// Every inet address of every interface, in the kernel's order.
pub fn interface_addrs() -> io::Result<Vec<InterfaceAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is a valid out pointer; freed below with freeifaddrs.
    cvt(unsafe { libc::getifaddrs(&mut head) })?;
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr is non-null and points at a sockaddr of its family.
            let addr = unsafe { copy_sockaddr(ifa.ifa_addr) };
            // SAFETY: ifa_netmask is null or points at a sockaddr of the same family.
            let mask = unsafe { copy_sockaddr(ifa.ifa_netmask) };
            let prefix = match mask.map(|m| m.ip()) {
                Some(IpAddr::V4(m)) => u32::from(m).count_ones() as u8,
                Some(IpAddr::V6(m)) => u128::from(m).count_ones() as u8,
                None => 0,
            };
            if let Some(a) = addr {
                // SAFETY: ifa_name is a valid C string for the list's lifetime.
                let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy().into_owned();
                out.push(InterfaceAddr {
                    name,
                    addr: a.ip(),
                    prefix,
                    loopback: ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0,
                    up: ifa.ifa_flags & libc::IFF_UP as u32 != 0,
                });
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Copies an inet sockaddr the kernel handed us by pointer.
///
/// # Safety
/// `sa` must be null or point at a readable sockaddr whose family says its size.
unsafe fn copy_sockaddr(sa: *const libc::sockaddr) -> Option<std::net::SocketAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: the caller promises `sa` is readable; we copy only as many bytes as its
    // family's struct has, into storage large enough for any of them.
    unsafe {
        let len = match (*sa).sa_family as i32 {
            libc::AF_INET => std::mem::size_of::<libc::sockaddr_in>(),
            libc::AF_INET6 => std::mem::size_of::<libc::sockaddr_in6>(),
            _ => return None,
        };
        let mut ss: libc::sockaddr_storage = std::mem::zeroed();
        std::ptr::copy_nonoverlapping(sa.cast::<u8>(), (&mut ss as *mut libc::sockaddr_storage).cast::<u8>(), len);
        crate::sock::from_raw(&ss, len as libc::socklen_t)
    }
}

/// An account from the password database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    /// Every group the user is in, the primary one included.
    pub groups: Vec<u32>,
}

/// Looks a user up by name or, for a number, by uid (through NSS, like `id`).
pub fn lookup_user(who: &str) -> io::Result<Option<User>> {
    let mut pw: libc::passwd = {
        // SAFETY: passwd is plain data; all-zero is a valid value before the call fills it.
        unsafe { std::mem::zeroed() }
    };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let r = match who.parse::<u32>() {
        // SAFETY: all pointers are valid for the call; the strings written into `buf`
        // stay valid while `buf` lives.
        Ok(uid) => unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut found) },
        Err(_) => {
            let c = c_string(who)?;
            // SAFETY: as above; `c` is a valid C string.
            unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut found) }
        }
    };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    if found.is_null() {
        return Ok(None);
    }
    // SAFETY: on success pw_name and pw_dir point at C strings inside `buf`.
    let (name, home) = unsafe {
        (
            std::ffi::CStr::from_ptr(pw.pw_name).to_string_lossy().into_owned(),
            std::ffi::CStr::from_ptr(pw.pw_dir).to_string_lossy().into_owned(),
        )
    };
    let cname = c_string(name.clone())?;
    let mut groups = vec![0 as libc::gid_t; 64];
    loop {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: `groups` has room for `n` entries; `n` is updated with the count.
        let r = unsafe { libc::getgrouplist(cname.as_ptr(), pw.pw_gid, groups.as_mut_ptr(), &mut n) };
        if r >= 0 {
            groups.truncate(n as usize);
            break;
        }
        groups.resize(n.max(groups.len() as libc::c_int * 2) as usize, 0);
    }
    Ok(Some(User { name, uid: pw.pw_uid, gid: pw.pw_gid, home, groups }))
}

/// Drops to `user`: its groups, its gid, then its uid (for good: no way back).
pub fn become_user(user: &User) -> io::Result<()> {
    // SAFETY: `groups` holds `len` gids.
    cvt(unsafe { libc::setgroups(user.groups.len(), user.groups.as_ptr()) })?;
    // SAFETY: setresgid/setresuid take integers.
    cvt(unsafe { libc::setresgid(user.gid, user.gid, user.gid) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::setresuid(user.uid, user.uid, user.uid) })?;
    Ok(())
}

/// CAP_NET_BIND_SERVICE's bit in the capability sets.
const CAP_NET_BIND_SERVICE: u32 = 10;

/// Whether thread `tid` may bind ports below `ip_unprivileged_port_start` in a network
/// namespace of the caller's user namespace (the host's, and apps' own): it holds
/// CAP_NET_BIND_SERVICE in its effective set and lives in the caller's user namespace
/// (a thread in a user namespace of its own has every capability there and none
/// here). False when either cannot be read.
pub fn may_bind_privileged(tid: i32) -> bool {
    let ns = |path: &str| crate::ns::identity(path).ok();
    let same_userns = ns(&format!("/proc/{tid}/ns/user")).is_some_and(|t| ns("/proc/self/ns/user") == Some(t));
    same_userns
        && std::fs::read_to_string(format!("/proc/{tid}/status"))
            .ok()
            .and_then(|status| has_effective_cap(&status, CAP_NET_BIND_SERVICE))
            .unwrap_or(false)
}

/// Whether the `CapEff:` line of a /proc status file holds capability `cap`; None
/// when there is no such line.
fn has_effective_cap(status: &str, cap: u32) -> Option<bool> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok().map(|set| set >> cap & 1 == 1)
}

/// The host's `net.ipv4.ip_unprivileged_port_start` (read in the caller's network
/// namespace): ports below it need CAP_NET_BIND_SERVICE.
pub fn unprivileged_port_start() -> io::Result<u16> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")?;
    text.trim().parse().map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Raises the limit on open files as far as the kernel allows a privileged process
/// (`fs.nr_open`, at most 1 Mi: the daemon holds several descriptors per app and six
/// per relayed connection), or else the soft limit to the hard one; returns the limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    let (_, hard) = fd_limits()?;
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0)
        .min(1 << 20);
    if ceiling > hard {
        let wide = libc::rlimit { rlim_cur: ceiling, rlim_max: ceiling };
        // SAFETY: `wide` is a valid rlimit; EPERM (no CAP_SYS_RESOURCE) falls back below.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wide) } == 0 {
            return Ok(ceiling);
        }
    }
    set_soft_fd_limit(hard)?;
    Ok(hard)
}

/// This process's soft and hard limits on open files.
pub fn fd_limits() -> io::Result<(u64, u64)> {
    // SAFETY: rlimit is plain data filled by getrlimit.
    let mut r: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `r` is a valid out pointer.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) })?;
    Ok((r.rlim_cur, r.rlim_max))
}

/// Sets this process's soft limit on open files (at most its hard limit).
pub fn set_soft_fd_limit(soft: u64) -> io::Result<()> {
    let (_, hard) = fd_limits()?;
    let r = libc::rlimit { rlim_cur: soft, rlim_max: hard };
    // SAFETY: `r` is a valid rlimit.
    cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) })?;
    Ok(())
}

/// The soft limit on open files of the process that thread `tid` belongs to (no
/// descriptor at or past it can be installed there), from /proc: prlimit(2) would need
/// CAP_SYS_RESOURCE for another user's process.
pub fn fd_limit_of(tid: i32) -> io::Result<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{tid}/limits"))?;
    soft_open_files(&limits).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The soft limit of the `Max open files` line of a /proc limits file.
fn soft_open_files(limits: &str) -> Option<u64> {
    let soft = limits.lines().find_map(|l| l.strip_prefix("Max open files"))?.split_whitespace().next()?;
    if soft == "unlimited" {
        Some(u64::MAX)
    } else {
        soft.parse().ok()
    }
}

/// The flags of thread `tid`'s descriptor `fd` (O_CLOEXEC among them: a per-descriptor
/// flag that a duplicate does not share), from /proc; None if they cannot be read.
pub fn fd_flags(tid: i32, fd: i32) -> Option<i32> {
    let info = std::fs::read_to_string(format!("/proc/{tid}/fdinfo/{fd}")).ok()?;
    let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?.trim().to_string();
    i32::from_str_radix(&flags, 8).ok()
}

/// Whether process `pid` runs: it exists and is not a zombie (killed but not yet
/// reaped by its parent, which keeps its /proc entry).
pub fn is_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| running_state(&stat))
}

/// From /proc/<pid>/stat: the state follows the command name, which is in parentheses
/// and may hold anything, spaces and parentheses included.
fn running_state(stat: &str) -> bool {
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|s| s != "Z" && s != "X")
}

/// The descriptor of thread `tid` that holds the socket with inode `inode`, if any
/// (read from /proc: the lowest such number).
pub fn socket_fd(tid: i32, inode: u64) -> Option<i32> {
    socket_fds(tid).get(&inode).copied()
}

/// The sockets thread `tid` holds, by inode, each at its lowest descriptor (read from
/// /proc in one pass); none when the thread is gone.
pub fn socket_fds(tid: i32) -> std::collections::HashMap<u64, i32> {
    let mut found = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{tid}/fd")) else { return found };
    for e in dir.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(link) = std::fs::read_link(e.path()) else { continue };
        let inode = link.to_str().and_then(|l| l.strip_prefix("socket:[")?.strip_suffix(']')?.parse::<u64>().ok());
        if let Some(inode) = inode {
            found.entry(inode).and_modify(|at: &mut i32| *at = (*at).min(fd)).or_insert(fd);
        }
    }
    found
}

/// Copies `buf.len()` bytes of process `pid`'s memory at `addr` into `buf`, as the
/// process itself could read them (process_vm_readv honours page protections, unlike
/// /proc/<pid>/mem, which forces its way in). Returns how many bytes were copied: fewer
/// than asked when the range runs into memory the process cannot read.
pub fn read_memory(pid: i32, addr: u64, buf: &mut [u8]) -> io::Result<usize> {
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: `local` describes `buf`, which is ours and writable for its length; the
    // remote iovec is only an address in the other process, which the kernel checks.
    let n = cvt(unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) })?;
    Ok(n as usize)
}

/// Copies `data` into process `pid`'s memory at `addr`, as the process itself could
/// write it (a read-only or unmapped page stops the copy). Returns how many bytes were
/// written: fewer than given when the range runs into memory the process cannot write.
pub fn write_memory(pid: i32, addr: u64, data: &[u8]) -> io::Result<usize> {
    let local = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: `local` describes `data`, which the kernel only reads; the remote iovec
    // is only an address in the other process, which the kernel checks.
    let n = cvt(unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) })?;
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_set_is_read_bit_by_bit() {
        let root = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        let nobody = "CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n";
        let only_bind = "CapEff:\t0000000000000400\n";
        assert_eq!(has_effective_cap(root, CAP_NET_BIND_SERVICE), Some(true));
        assert_eq!(has_effective_cap(nobody, CAP_NET_BIND_SERVICE), Some(false));
        assert_eq!(has_effective_cap(only_bind, CAP_NET_BIND_SERVICE), Some(true));
        assert_eq!(has_effective_cap(only_bind, 9), Some(false));
        assert_eq!(has_effective_cap("Name:\tx\n", CAP_NET_BIND_SERVICE), None);
    }

    #[test]
    fn the_soft_open_file_limit_is_read_from_proc() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63711                63711                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(soft_open_files(limits), Some(1024));
        assert_eq!(
            soft_open_files("Max open files            unlimited            unlimited            files"),
            Some(u64::MAX)
        );
        assert_eq!(soft_open_files("Max processes             63711                63711"), None);
        // SAFETY: gettid takes no arguments.
        let tid = unsafe { libc::gettid() };
        assert_eq!(fd_limit_of(tid).unwrap(), fd_limits().unwrap().0);
    }

    #[test]
    fn this_thread_is_judged_by_its_own_capabilities() {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let holds = has_effective_cap(&status, CAP_NET_BIND_SERVICE).unwrap();
        // SAFETY: gettid takes no arguments.
        let tid = unsafe { libc::gettid() };
        assert_eq!(may_bind_privileged(tid), holds);
        assert!(!may_bind_privileged(i32::MAX), "no such thread: no privilege");
    }

    #[test]
    fn a_zombie_does_not_run() {
        assert!(running_state("12 (a) b) c) S 1 12"));
        assert!(!running_state("12 (a) Z) Z 1 12"));
        assert!(!running_state("12 (x) X 1"));
        assert!(!running_state("garbage"));
        assert!(is_running(pid()));
        let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let id = child.id() as i32;
        assert!(is_running(id));
        child.kill().unwrap();
        // Killed, not yet reaped: a zombie, whose /proc entry stays.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while is_running(id) {
            assert!(std::time::Instant::now() < deadline, "the killed child never became a zombie");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(std::path::Path::new(&format!("/proc/{id}")).exists());
        child.wait().unwrap();
        assert!(!is_running(id));
    }

    /// One page of our own memory, readable, writable or neither.
    struct Page(*mut libc::c_void);

    impl Page {
        fn new(prot: i32) -> Page {
            // SAFETY: a fresh anonymous private mapping; no existing memory is touched.
            let p =
                unsafe { libc::mmap(std::ptr::null_mut(), 4096, prot, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
            assert_ne!(p, libc::MAP_FAILED);
            Page(p)
        }

        fn addr(&self) -> u64 {
            self.0 as u64
        }
    }

    impl Drop for Page {
        fn drop(&mut self) {
            // SAFETY: the mapping is ours and nothing refers to it any more.
            unsafe { libc::munmap(self.0, 4096) };
        }
    }

    #[test]
    fn process_memory_is_copied_as_the_process_could_itself() {
        let me = pid();
        let rw = Page::new(libc::PROT_READ | libc::PROT_WRITE);
        assert_eq!(write_memory(me, rw.addr(), b"hello").unwrap(), 5);
        let mut back = [0u8; 5];
        assert_eq!(read_memory(me, rw.addr(), &mut back).unwrap(), 5);
        assert_eq!(&back, b"hello");

        // A read-only page is not written, unlike through /proc/self/mem.
        let ro = Page::new(libc::PROT_READ);
        assert_eq!(write_memory(me, ro.addr(), b"x").map_err(|e| e.raw_os_error()), Err(Some(libc::EFAULT)));
        assert_eq!(read_memory(me, ro.addr(), &mut back).unwrap(), 5);
        assert_eq!(back, [0; 5]);

        // An unreadable page is not read.
        let none = Page::new(libc::PROT_NONE);
        assert_eq!(read_memory(me, none.addr(), &mut back).map_err(|e| e.raw_os_error()), Err(Some(libc::EFAULT)));
    }
}
