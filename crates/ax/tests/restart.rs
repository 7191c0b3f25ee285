//! End-to-end tests of the daemon's restarts, as root: saved state, apps handed back
//! by their `ax run`, trapped calls that wait out the outage.

mod support;

use std::time::Duration;

use support::{Cluster, TestHost};

const PY: &str = "/usr/bin/python3";

#[test]
fn kill_9_under_load_loses_nothing_and_forgets_apps_that_died_meanwhile() {
    support::require_root_and(&[PY, "curl"]);
    let mut h = TestHost::new();
    h.start_daemon(&[]);
    h.python_backend("srv", "198.18.7.1", 8000);
    h.python_backend("doomed", "198.18.7.2", 8000);
    h.wait_for_rows("198.18.7.1:8000", 1);
    h.wait_for_rows("198.18.7.2:8000", 1);
    // Four clients making short connections, counting failures (each one printed, with
    // the call's errno), until each has made 20 more once the daemon is back.
    let back = h.dir.join("back");
    let client = format!(
        "import socket,time,os\nok=err=after=0\nwhile after<20:\n  try:\n    \
         c=socket.create_connection(('198.18.7.1',8000),timeout=30)\n    c.sendall(b'GET /who HTTP/1.0\\r\\n\\r\\n')\n    \
         good=c.recv(4096).startswith(b'HTTP/1.0 200')\n    c.close()\n    ok+=good\n    \
         after+=good and os.path.exists('{}')\n  except OSError as e:\n    err+=1\n    \
         print('error',repr(e),flush=True)\n  time.sleep(0.02)\nprint('ok=%d err=%d'%(ok,err),flush=True)",
        back.display()
    );
    for i in 0..4 {
        h.spawn_app(&format!("client{i}"), &["--", PY, "-c", &client]);
    }
    std::thread::sleep(Duration::from_secs(2));
    h.signal_daemon("KILL");
    // During the outage the doomed app and its ax run die (before the daemon is back:
    // gone, or at least zombies).
    let _ = h.cmd("pkill").args(["-KILL", "-f", "doomed"]).status();
    h.wait_until("the doomed app to die", Duration::from_secs(30), || {
        !h.cmd("pgrep").args(["-r", "RSDT", "-f", "doomed"]).status().unwrap().success()
    });
    std::thread::sleep(Duration::from_secs(1));
    h.start_daemon(&[]);
    std::fs::write(&back, "").unwrap();
    for i in 0..4 {
        let log = format!("client{i}");
        let done = h.wait_for_line(&log, "ok=");
        assert!(done.ends_with("err=0"), "client {i}: {}", h.app_log(&log));
    }
    assert_eq!(h.servers_at("198.18.7.1:8000").len(), 1, "the served row is back");
    assert!(h.servers_at("198.18.7.2:8000").is_empty(), "the dead app's row is gone");
    assert_eq!(h.run_ok(&["--", "curl", "-sf", "http://198.18.7.1:8000/who"]), "srv");
    // SIGTERM: the daemon stops and exits 0. A plain restart restores; --clean forgets.
    assert!(h.stop_daemon().success());
    h.start_daemon(&["--clean"]);
    assert!(h.get("apps").is_empty());
    assert!(h.get("servers").is_empty());
}

/// `ax run` started while no daemon listens (none started yet: no socket; killed: its
/// socket left) waits, says so once, and runs the app once a daemon answers.
#[test]
fn ax_run_waits_for_a_daemon_that_is_not_there_yet() {
    support::require_root_and(&[]);
    let mut h = TestHost::new();
    let waiting = "ax: waiting for the ax daemon at /var/run/appswitch/run.sock (";
    h.spawn_app("first", &["--daemon-wait", "600", "--", "echo", "first ran"]);
    h.wait_for_line("first", waiting);
    h.start_daemon(&[]);
    h.wait_for_line("first", "first ran");
    h.signal_daemon("KILL");
    h.spawn_app("second", &["--daemon-wait", "600", "--", "echo", "second ran"]);
    let said = h.wait_for_line("second", waiting);
    assert!(said.contains("Connection refused"), "the dead daemon's socket is left: {said}");
    h.start_daemon(&[]);
    h.wait_for_line("second", "second ran");
    for app in ["first", "second"] {
        assert_eq!(h.app_log(app).matches(waiting).count(), 1, "{}", h.app_log(app));
    }
}

/// The daemon killed while it carries out a trapped call: the next one finishes it
/// (socket() and connect() are made again, or answered with what the dead daemon
/// already did), never EINTR where the app could not retry, never a descriptor the app
/// did not get (a socket() answered 0 would make the app's stdin its socket).
#[test]
fn calls_in_flight_when_the_daemon_is_killed_are_finished_by_the_next_one() {
    support::require_root_and(&[PY]);
    let mut h = TestHost::new();
    h.start_daemon(&[]);
    h.python_backend("srv", "198.18.7.40", 8000);
    h.wait_for_rows("198.18.7.40:8000", 1);
    // Three threads making sockets (one connecting too) as fast as they can until told
    // to stop; every failure and every socket at descriptor 0 is printed.
    let stop = h.dir.join("stop");
    let app = format!(
        "import socket,threading,os\nn=[0,0,0]\ndef go(i):\n  while not os.path.exists('{}'):\n    try:\n      \
         s=socket.socket()\n      if s.fileno()==0:print('error fd 0',flush=True)\n      \
         if i==0:s.settimeout(30);s.connect(('198.18.7.40',8000))\n      s.close();n[i]+=1\n    \
         except OSError as e:print('error',i,repr(e),flush=True)\n\
         t=[threading.Thread(target=go,args=(i,)) for i in range(3)]\n[x.start() for x in t]\n[x.join() for x in t]\n\
         print('done',*n,flush=True)",
        stop.display()
    );
    h.spawn_app("busy", &["--", PY, "-c", &app]);
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..4 {
        h.signal_daemon("KILL");
        h.start_daemon(&[]);
        std::thread::sleep(Duration::from_millis(700));
    }
    std::fs::write(&stop, "").unwrap();
    let done = h.wait_for_line("busy", "done");
    let log = h.app_log("busy");
    assert!(!log.contains("error"), "{log}");
    let counts: Vec<u32> = done.split_whitespace().skip(1).map(|c| c.parse().unwrap()).collect();
    assert!(counts.iter().all(|&c| c > 0), "{done}");
    let finished = h.daemon_log().matches("finishing the call the previous daemon had in hand").count();
    eprintln!("{done}; calls finished by a next daemon: {finished}");
}

/// The daemon killed while a helper thread holds an app's egress handshake, and the
/// app's other thread goes on making calls (so the call is no longer the engine's last
/// one): the next daemon resets the socket and makes the handshake again. The app's
/// blocking connect returns connected to its destination, its socket blocking as
/// before; not EINTR on a socket connected to the gateway, the gateway's answer unread
/// and O_NONBLOCK left set. (The user driver's egress; the kernel driver's goes through
/// the daemon's broker.)
#[test]
fn an_egress_handshake_a_helper_held_is_made_again_by_the_next_daemon() {
    support::require_root_and(&[PY]);
    let all = (0..3).map(Cluster::ip).collect::<Vec<_>>().join(",");
    let flags = ["--driver", "user", "--node-name", "a", "--neighbors", &all];
    let mut c = Cluster::with_egress_gateway(&flags[..2]);
    // The gateway's packets to the outside server go nowhere: its handshake waits.
    let gw = &c.hosts[2];
    let bogus = ["neigh", "replace", &Cluster::ip(1), "lladdr", "02:00:00:00:00:04", "dev", "ax0", "nud", "permanent"];
    gw.stdout_of("ip", &bogus);
    let app = format!(
        "import socket,threading,os,fcntl,time\nstop=False\ndef busy():\n  while not stop:\n    \
         socket.socket().close();time.sleep(0.005)\nt=threading.Thread(target=busy);t.start()\ntry:\n  \
         c=socket.socket();c.connect(('{}',9300))\n  \
         print('nonblock',fcntl.fcntl(c.fileno(),fcntl.F_GETFL)&os.O_NONBLOCK,flush=True)\n  \
         c.sendall(b'GET /who HTTP/1.0\\r\\n\\r\\n')\n  print('reply',c.recv(12),flush=True)\n\
         except OSError as e:print('error',repr(e),flush=True)\nstop=True;t.join();print('done',flush=True)",
        Cluster::ip(1)
    );
    c.hosts[0].spawn_app("client", &["--", PY, "-c", &app]);
    let (a, gw) = (&c.hosts[0], &c.hosts[2]);
    gw.wait_until("the gateway's handshake with the outside", Duration::from_secs(30), || {
        gw.inet_sockets("-tuan").iter().any(|s| s[1] == "SYN-SENT" && s[3].ends_with(":9300"))
    });
    assert!(!a.app_log("client").contains("done"), "{}", a.app_log("client"));
    // The app's other thread has made calls since.
    std::thread::sleep(Duration::from_millis(500));
    c.hosts[0].signal_daemon("KILL");
    c.hosts[0].start_daemon(&flags);
    c.hosts[2].stdout_of("ip", &["neigh", "del", &Cluster::ip(1), "dev", "ax0"]);
    let a = &c.hosts[0];
    a.wait_for_line("client", "done");
    let log = a.app_log("client");
    assert!(log.contains("nonblock 0\n") && log.contains("reply b'HTTP/1.0 200'"), "{log}");
    assert!(a.daemon_log().contains("finishing the call the previous daemon had in hand"), "{}", a.daemon_log());
}

/// A new daemon that goes away before it answered `ax run`'s reattach (killed while it
/// starts, say) is one more outage: `ax run` waits for the next daemon, it does not let
/// its app go (its listener closed, every trapped call would fail with ENOSYS).
#[test]
fn a_daemon_gone_before_it_took_an_app_back_is_waited_out() {
    support::require_root_and(&[PY]);
    let mut h = TestHost::new();
    h.start_daemon(&[]);
    h.python_backend("srv", "198.18.7.50", 8000);
    h.wait_for_rows("198.18.7.50:8000", 1);
    let back = h.dir.join("back");
    let client = format!(
        "import socket,time,os\nafter=0\nwhile after<3:\n  try:\n    \
         c=socket.create_connection(('198.18.7.50',8000),timeout=30)\n    c.close()\n    \
         after+=os.path.exists('{}')\n  except OSError as e:\n    print('error',repr(e),flush=True)\n  \
         time.sleep(0.05)\nprint('done',flush=True)",
        back.display()
    );
    h.spawn_app("client", &["--", PY, "-c", &client]);
    std::thread::sleep(Duration::from_secs(1));
    h.signal_daemon("KILL");
    // For two seconds the run socket takes every reattach and hangs up unanswered.
    let hang_up = format!(
        "import socket,os,time\np='{}'\ntry:\n  os.unlink(p)\nexcept OSError:\n  pass\n\
         s=socket.socket(socket.AF_UNIX)\ns.bind(p)\ns.listen()\ns.settimeout(0.1)\nn=0\nend=time.time()+2\n\
         while time.time()<end:\n  try:\n    c,_=s.accept();c.recv(100);c.close();n+=1\n  except socket.timeout:\n    pass\n\
         os.unlink(p)\nprint(n)",
        ax_api::RUN_SOCKET
    );
    let out = h.cmd(PY).args(["-c", &hang_up]).output().unwrap();
    let hung_up: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(hung_up >= 2, "both ax runs tried while the socket hung up: {hung_up}");
    h.start_daemon(&[]);
    h.wait_until("both apps taken back", Duration::from_secs(30), || {
        h.daemon_log().matches("app taken back after a restart").count() == 2
    });
    std::fs::write(&back, "").unwrap();
    h.wait_for_line("client", "done");
    assert!(!h.app_log("client").contains("error"), "{}", h.app_log("client"));
}

#[test]
fn the_api_fuzzed_from_its_openapi_document_never_answers_5xx() {
    support::require_root_and(&[PY]);
    let mut h = TestHost::new();
    h.start_daemon(&[]);
    let fuzz = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/api_fuzz.py");
    // Over TCP (read-only) and over the Unix socket (where changes are made).
    for at in ["6664", ax_api::API_SOCKET] {
        let out = h.cmd(PY).args([fuzz, at, "600", "7"]).output().unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{at}: {said}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "600 requests, no 5xx", "{at}");
    }
}

/// Walks the top-level fields of a protobuf message; returns the field numbers seen.
fn protobuf_fields(mut b: &[u8]) -> Option<Vec<u64>> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let (byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut fields = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        match key & 7 {
            0 => {
                varint(&mut b)?;
            }
            1 => b = b.get(8..)?,
            2 => {
                let len = varint(&mut b)? as usize;
                b = b.get(len..)?;
            }
            5 => b = b.get(4..)?,
            _ => return None,
        }
        fields.push(key >> 3);
    }
    Some(fields)
}

#[test]
fn cpu_and_heap_profiles_are_written_when_the_daemon_stops() {
    support::require_root_and(&[PY, "curl"]);
    let mut h = TestHost::new();
    let (cpu, heap) = (h.dir.join("cpu.prof"), h.dir.join("heap.prof"));
    h.start_daemon(&["--cpu-profile", cpu.to_str().unwrap(), "--mem-profile", heap.to_str().unwrap()]);
    h.python_backend("p", "198.18.7.9", 8000);
    h.wait_for_rows("198.18.7.9:8000", 1);
    for _ in 0..20 {
        h.run_ok(&["--", "curl", "-sf", "http://198.18.7.9:8000/who"]);
    }
    assert!(h.stop_daemon().success());
    let cpu = std::fs::read(&cpu).expect("the CPU profile");
    // The heap profile is gzipped, as pprof files usually are.
    let inflate = "import gzip,sys; sys.stdout.buffer.write(gzip.decompress(open(sys.argv[1],'rb').read()))";
    let heap = std::process::Command::new(PY).args(["-c", inflate, heap.to_str().unwrap()]).output().unwrap();
    assert!(heap.status.success(), "the heap profile is not gzip: {heap:?}");
    for (what, bytes) in [("cpu", cpu), ("heap", heap.stdout)] {
        let fields = protobuf_fields(&bytes).unwrap_or_else(|| panic!("{what}: not a well-formed protobuf"));
        // pprof's Profile: sample_type (1) and string_table (6) are always there.
        assert!(fields.contains(&1) && fields.contains(&6), "{what}: {fields:?}");
    }
}

#[test]
fn a_flood_of_trapped_calls_from_one_app_starves_no_other() {
    support::require_root_and(&[PY, "curl"]);
    let mut h = TestHost::new();
    h.start_daemon(&[]);
    h.python_backend("s", "198.18.7.20", 8000);
    h.wait_for_rows("198.18.7.20:8000", 1);
    // Two apps each trapping calls as fast as they can (getsockname on a bound socket,
    // socket/close) until told to stop; each says when it has made 1,000, and its count
    // at the end.
    let stop = h.dir.join("stop");
    let flood = format!(
        "import socket,os\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('',0))\nn=0\n\
         while not os.path.exists('{}'):\n  s.getsockname();socket.socket().close();n+=2\n  \
         if n==1000:print('going',flush=True)\nprint('done',n,flush=True)",
        stop.display()
    );
    h.spawn_app("flood1", &["--ip", "198.18.7.21", "--", PY, "-c", &flood]);
    h.spawn_app("flood2", &["--ip", "198.18.7.22", "--", PY, "-c", &flood]);
    h.wait_for_line("flood1", "going");
    h.wait_for_line("flood2", "going");
    for _ in 0..10 {
        assert_eq!(h.run_ok(&["--", "curl", "-sf", "--max-time", "5", "http://198.18.7.20:8000/who"]), "s");
    }
    // Both floods went on throughout.
    for flood in ["flood1", "flood2"] {
        assert!(!h.app_log(flood).contains("done"), "{flood} stopped early: {}", h.app_log(flood));
    }
    std::fs::write(&stop, "").unwrap();
    let done = h.wait_for_line("flood1", "done");
    let calls: u64 = done.trim_start_matches("done ").parse().unwrap();
    assert!(calls > 1_000, "{done}");
}

#[test]
fn a_soak_of_short_connections_leaks_no_fd_and_no_memory() {
    support::require_root_and(&[PY]);
    let mut h = TestHost::new();
    h.start_daemon(&[]);
    h.python_backend("s", "198.18.7.30", 8000);
    h.wait_for_rows("198.18.7.30:8000", 1);
    // The daemon's open fds and RSS (KB), read inside the test host.
    let usage = || {
        let probe =
            "p=$(pgrep -f 'ax daemon' | head -1); ls /proc/$p/fd | wc -l; awk '/VmRSS/ {print $2}' /proc/$p/status";
        let out = String::from_utf8(h.cmd("sh").args(["-c", probe]).output().unwrap().stdout).unwrap();
        let v: Vec<u64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
        (v[0], v[1])
    };
    let load = |secs: u32| {
        let script = format!(
            "import socket,time\nend=time.time()+{secs}\nn=0\nwhile time.time()<end:\n  c=socket.create_connection(('198.18.7.30',8000))\n  \
             c.sendall(b'GET /who HTTP/1.0\\r\\n\\r\\n')\n  c.recv(4096)\n  c.close()\n  n+=1\nprint(n)"
        );
        h.run_ok(&["--", PY, "-c", &script])
    };
    load(3);
    let warm = usage();
    let n = load(15);
    let end = usage();
    eprintln!("soak: {} connections; daemon fds {} -> {}, RSS {} KB -> {} KB", n.trim(), warm.0, end.0, warm.1, end.1);
    assert_eq!(warm.0, end.0, "the daemon's fd count changed");
    assert!(end.1 < warm.1 + 2048, "the daemon's RSS grew from {} KB to {} KB", warm.1, end.1);
}
