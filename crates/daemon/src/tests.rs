//! The daemon in-process, without root: REST → command → state → view over TCP on
//! port 0 and over a Unix socket in a temporary directory, and the timers on paused
//! tokio time.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ax_api::{path, API_SOCKET};
use ax_core::table::{BoundSocket, NewApp};
use ax_core::{Family, Proto};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::*;
use crate::start::{drop_unattached_after, socket_name, REATTACH_GRACE};

/// A run directory of its own, removed when the test ends.
struct RunDir(PathBuf);

impl RunDir {
    fn new() -> RunDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ax-daemon-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        RunDir(dir)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A daemon serving REST on 127.0.0.1:0 and on `<run dir>/ax.sock`.
struct Served {
    daemon: Daemon,
    tcp: SocketAddr,
    unix: PathBuf,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<Result<(), Error>>,
    dir: RunDir,
}

fn daemon(dir: &Path) -> Daemon {
    Daemon::new(State::for_test(Ipv4Addr::LOCALHOST), dir, None)
}

fn served() -> Served {
    served_with(None)
}

/// As [`served`], with TCP on HTTPS when `tls` is given.
fn served_with(tls: Option<Arc<ax_tls::Reloadable>>) -> Served {
    let dir = RunDir::new();
    let daemon = daemon(&dir.0);
    let rest = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let tcp = rest.local_addr().unwrap();
    let unix = dir.0.join(socket_name(API_SOCKET));
    let api = std::os::unix::net::UnixListener::bind(&unix).unwrap();
    let listeners =
        Listeners { rest: vec![rest], api, run: None, dns: None, egress: None, gossip: None, federation: None, tls };
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let served = tokio::spawn(serve(daemon.clone(), listeners, async {
        let _ = stopped.await;
    }));
    Served { daemon, tcp, unix, stop, served, dir }
}

/// One HTTP/1.1 exchange: the status and the body as JSON (Null when empty, a string
/// when not JSON).
async fn exchange(
    mut conn: impl AsyncRead + AsyncWrite + Unpin,
    method: &str,
    at: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {at} HTTP/1.1\r\nHost: ax\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    // A body that is not JSON (the metrics' text) comes as a string.
    let body = match body {
        "" => Value::Null,
        text => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.into())),
    };
    (status, body)
}

/// One request; the status, or None when the connection ended without an answer.
async fn exchange_raw(mut conn: tokio::net::TcpStream, method: &str, at: &str) -> (Option<u16>, Vec<u8>) {
    let req = format!("{method} {at} HTTP/1.1\r\nHost: ax\r\nConnection: close\r\n\r\n");
    if conn.write_all(req.as_bytes()).await.is_err() {
        return (None, Vec::new());
    }
    let mut raw = Vec::new();
    let _ = conn.read_to_end(&mut raw).await;
    let status = std::str::from_utf8(&raw).ok().and_then(|t| t.split(' ').nth(1)).and_then(|c| c.parse().ok());
    (status, raw)
}

impl Served {
    async fn tcp(&self, method: &str, at: &str, body: Option<Value>) -> (u16, Value) {
        exchange(tokio::net::TcpStream::connect(self.tcp).await.unwrap(), method, at, body).await
    }

    async fn unix(&self, method: &str, at: &str, body: Option<Value>) -> (u16, Value) {
        exchange(tokio::net::UnixStream::connect(&self.unix).await.unwrap(), method, at, body).await
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.served.await.unwrap().unwrap();
    }
}

/// A test CA in `dir` with certificates for node `a` and client `admin`, and a CA of
/// its own (`dir/other`) with a certificate for `admin`.
fn pki(dir: &Path) -> (ax_tls::TestPki, ax_tls::TestPki) {
    let ours = ax_tls::write_test_pki(&dir.join("pki"), &["a".into(), "admin".into()]).unwrap();
    let other = ax_tls::write_test_pki(&dir.join("pki/other"), &["admin".into()]).unwrap();
    (ours, other)
}

/// The daemon's TLS for node `a`, from `pki`.
fn node_tls(pki: &ax_tls::TestPki) -> Arc<ax_tls::Reloadable> {
    ax_tls::Reloadable::new(ax_tls::Tls::load(&pki.files("a"), Some("a")).unwrap(), Some("a".into()))
}

/// A TLS connection to node `a` at `at` as `client`; the handshake's error if it fails.
async fn https(
    at: SocketAddr,
    client: tokio_rustls::rustls::ClientConfig,
) -> std::io::Result<impl AsyncRead + AsyncWrite + Unpin> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(at).await?;
    connector.connect("a".try_into().expect("a DNS name"), tcp).await
}

/// With TLS, TCP is HTTPS: a client whose certificate is from the CA reads and changes.
#[tokio::test]
async fn over_https_a_client_with_a_certificate_from_the_ca_reads_and_changes() {
    let dir = RunDir::new();
    let (pki, _) = pki(&dir.0);
    let s = served_with(Some(node_tls(&pki)));
    let admin = || ax_tls::test_client(&pki.ca_file(), Some(&pki.files("admin"))).unwrap();
    let conn = || async { https(s.tcp, admin()).await.unwrap() };
    assert_eq!(exchange(conn().await, "GET", path::APPS, None).await, (200, json!([])));
    assert_eq!(exchange(conn().await, "POST", path::VSERVICES, Some(web("198.18.2.1"))).await, (201, Value::Null));
    let (status, list) = exchange(conn().await, "GET", path::VSERVICES, None).await;
    assert_eq!((status, list[0]["name"].as_str()), (200, Some("web")));
    assert_eq!(exchange(conn().await, "DELETE", &vservices_at("web"), None).await, (204, Value::Null));
    assert_eq!(s.unix("GET", path::VSERVICES, None).await, (200, json!([])), "the Unix socket serves as before");
    s.stop().await;
}

/// One GET over `conn`: what came back (an error, or the raw answer).
async fn get_tls(conn: std::io::Result<impl AsyncRead + AsyncWrite + Unpin>) -> Result<Vec<u8>, std::io::Error> {
    let mut conn = conn?;
    conn.write_all(format!("GET {} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", path::APPS).as_bytes()).await?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await?;
    Ok(raw)
}

/// Without a certificate from the CA nothing is answered, not even a read; nor is plain
/// HTTP on the HTTPS port; the daemon serves on.
#[tokio::test]
async fn over_https_no_answer_without_a_certificate_from_the_ca() {
    let dir = RunDir::new();
    let (pki, other) = pki(&dir.0);
    let s = served_with(Some(node_tls(&pki)));
    let expired = pki.issue("late", -1).unwrap();
    for (what, cert) in
        [("no certificate", None), ("another CA's", Some(other.files("admin"))), ("expired", Some(expired))]
    {
        let client = ax_tls::test_client(&pki.ca_file(), cert.as_ref()).unwrap();
        // In TLS 1.3 the server judges the client's certificate after the client is
        // done: the refusal shows on the first read.
        match get_tls(https(s.tcp, client).await).await {
            Err(e) => assert!(e.to_string().contains("alert"), "{what}: {e}"),
            Ok(raw) => panic!("{what}: answered {:?}", String::from_utf8_lossy(&raw)),
        }
    }
    let (status, raw) = exchange_raw(tokio::net::TcpStream::connect(s.tcp).await.unwrap(), "GET", path::APPS).await;
    assert_eq!(status, None, "plain HTTP answered: {:?}", String::from_utf8_lossy(&raw));
    let admin = ax_tls::test_client(&pki.ca_file(), Some(&pki.files("admin"))).unwrap();
    let raw = get_tls(https(s.tcp, admin).await).await.unwrap();
    assert!(raw.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&raw));
    s.stop().await;
}

/// A vservice whose backends are outside hosts (no app has their addresses here).
fn web(ip: &str) -> Value {
    json!({ "name": "web", "ip": ip, "ports": "80:8000", "backends": "198.18.1.1,198.18.1.2", "lbtype": "RoundRobin",
            "allow_external_backends": true })
}

fn vservices_at(at: &str) -> String {
    format!("{}/{at}", path::VSERVICES)
}

#[tokio::test]
async fn a_vservice_is_created_shown_saved_and_deleted_over_rest() {
    let s = served();
    assert_eq!(s.unix("POST", path::VSERVICES, Some(web("198.18.2.1"))).await, (201, Value::Null));
    let (status, list) = s.tcp("GET", path::VSERVICES, None).await;
    assert_eq!(status, 200);
    assert_eq!(list[0]["name"], "web");
    assert_eq!(list[0]["ip"], "198.18.2.1");
    assert_eq!(list[0]["backends"], "198.18.1.1,198.18.1.2");
    let saved = fs::read_to_string(store::path(&s.dir.0)).unwrap();
    assert!(saved.contains("198.18.2.1"), "saved before the answer: {saved}");
    assert_eq!(s.unix("DELETE", &vservices_at("WEB"), None).await, (204, Value::Null));
    assert_eq!(s.tcp("GET", path::VSERVICES, None).await, (200, json!([])));
    s.stop().await;
}

/// Over TCP the API only reads, even for root: a change is refused with the Unix
/// socket to use, and nothing changes.
#[tokio::test]
async fn over_tcp_the_api_reads_and_refuses_every_change() {
    let s = served();
    let socket = s.unix.display().to_string();
    for (method, at) in
        [("POST", path::VSERVICES.to_string()), ("DELETE", vservices_at("web")), ("PUT", vservices_at("web"))]
    {
        let (status, body) = s.tcp(method, &at, Some(web("198.18.2.1"))).await;
        assert_eq!(status, 403, "{method}");
        let msg = body["error"].as_str().unwrap();
        assert!(msg.contains("over TCP the API is read-only") && msg.contains(&socket), "{method}: {msg}");
    }
    assert_eq!(s.unix("GET", path::VSERVICES, None).await, (200, json!([])), "nothing was created");
    assert_eq!(s.tcp("GET", path::APPS, None).await, (200, json!([])), "reads are served");
    s.stop().await;
}

#[tokio::test]
async fn a_body_over_the_bound_is_413_and_the_daemon_serves_on() {
    let s = served();
    let mut big = web("198.18.2.1");
    big["name"] = json!("x".repeat(rest::MAX_BODY));
    let (status, body) = s.unix("POST", path::VSERVICES, Some(big)).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].as_str().unwrap().contains("over 65536 bytes"), "{body}");
    assert_eq!(s.unix("POST", path::VSERVICES, Some(web("198.18.2.1"))).await.0, 201);
    s.stop().await;
}

/// A connection that never sends its request is closed (after the request timeout).
#[tokio::test]
async fn a_silent_connection_is_closed() {
    let s = served();
    let mut c = tokio::net::TcpStream::connect(s.tcp).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(60), c.read(&mut buf)).await.expect("still open after 60 s");
    assert!(matches!(n, Ok(0) | Err(_)), "an answer to no request: {n:?}");
    s.stop().await;
}

/// Beyond the cap, a new connection is closed at once, unanswered; a place freed is
/// taken again.
#[tokio::test]
async fn connections_beyond_the_cap_are_closed_unanswered() {
    let s = served();
    // Measured while all the held connections are still open (they are closed after the
    // request timeout): tried again if the machine was too slow for that.
    let mut tries = 0;
    loop {
        tries += 1;
        let mut held = Vec::new();
        for _ in 0..rest::MAX_CONNECTIONS {
            held.push(tokio::net::TcpStream::connect(s.tcp).await.unwrap());
        }
        let extra = tokio::net::TcpStream::connect(s.tcp).await.unwrap();
        let (status, _) = exchange_raw(extra, "GET", path::APPS).await;
        let mut all_open = true;
        for h in &held {
            let mut b = [0u8; 1];
            all_open &= matches!(h.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        }
        if all_open {
            assert_eq!(status, None, "a connection beyond the cap was served");
            break;
        }
        assert!(tries < 10, "the held connections never stayed open long enough to measure");
    }
    // Once they are gone, connections are served again.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while exchange_raw(tokio::net::TcpStream::connect(s.tcp).await.unwrap(), "GET", path::APPS).await.0 != Some(200) {
        assert!(std::time::Instant::now() < deadline, "the listener did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await;
}

#[tokio::test]
async fn bad_requests_are_400_and_name_the_field() {
    let s = served();
    let (status, body) = s.unix("POST", path::VSERVICES, Some(web("300.1.1.1"))).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("--ip 300.1.1.1"), "{body}");
    let mut bad_ports = web("198.18.2.1");
    bad_ports["ports"] = json!("80:0");
    let (status, body) = s.unix("POST", path::VSERVICES, Some(bad_ports)).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("--ports"), "{body}");
    let (status, body) = s.unix("POST", path::VSERVICES, Some(json!({ "name": "web" }))).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().starts_with("malformed vservice request"), "{body}");
    assert_eq!(s.tcp("GET", path::VSERVICES, None).await, (200, json!([])), "nothing changed");
    s.stop().await;
}

/// `/metrics` answers on both transports, in the text format, with the table's counts.
#[tokio::test]
async fn metrics_are_served_on_both_transports_from_the_tables() {
    let s = served();
    let new = ax_core::table::NewApp {
        name: Some("web".into()),
        ip: Some("198.18.0.1".parse().unwrap()),
        ..Default::default()
    };
    let Answer::Registered(_) = s.daemon.submit(Command::Register(new)) else { panic!("not registered") };
    for (status, body) in [s.unix("GET", path::METRICS, None).await, s.tcp("GET", path::METRICS, None).await] {
        assert_eq!(status, 200);
        let text = body.as_str().unwrap_or_else(|| panic!("text, not {body}"));
        assert!(text.lines().any(|l| l == "ax_apps{driver=\"user\"} 1"), "{text}");
        assert!(text.lines().any(|l| l == "ax_service_rows{origin=\"local\"} 0"), "{text}");
        assert!(text.contains("# TYPE ax_trapped_call_duration_seconds histogram"), "{text}");
    }
    s.stop().await;
}

/// The router serves each route of [`path::ROUTES`] (the ones the OpenAPI document is
/// checked against), and no other method on those paths.
#[tokio::test]
async fn the_router_serves_exactly_the_documented_routes() {
    let s = served();
    let unrouted = |body: &Value| body["error"].as_str().is_some_and(|e| e.starts_with("no such resource"));
    for (method, p) in path::ROUTES {
        let at = p.replace("{name}", "nope");
        let (status, body) = s.unix(&method.to_uppercase(), &at, None).await;
        assert!(status != 405 && !unrouted(&body), "{method} {p} is not served: {status} {body}");
        for other in ["get", "post", "delete", "put", "patch"] {
            if !path::ROUTES.contains(&(other, p)) {
                let (status, _) = s.unix(&other.to_uppercase(), &at, None).await;
                assert_eq!(status, 405, "{other} {p} is served but not documented");
            }
        }
    }
    assert!(unrouted(&s.unix("GET", "/v1/nope", None).await.1));
    s.stop().await;
}

#[tokio::test]
async fn backends_no_vservice_may_have_are_400_with_the_reason() {
    let s = served();
    let cases = [
        ("127.0.0.1:6664", true, "backend 127.0.0.1:6664 is a loopback address"),
        ("0.0.0.0:6664", true, "backend 0.0.0.0:6664 is the unspecified address"),
    ];
    for (backend, allow, want) in cases {
        let mut req = web("198.18.2.1");
        req["backends"] = json!(backend);
        req["allow_external_backends"] = json!(allow);
        let (status, body) = s.unix("POST", path::VSERVICES, Some(req)).await;
        assert_eq!(status, 400, "{backend}: {body}");
        assert!(body["error"].as_str().unwrap().starts_with(want), "{body}");
    }
    let mut req = web("127.0.0.9");
    req["backends"] = json!("198.18.1.1");
    let (status, body) = s.unix("POST", path::VSERVICES, Some(req)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(s.tcp("GET", path::VSERVICES, None).await.1, json!([]));
    s.stop().await;
}

#[tokio::test]
async fn conflicts_are_409_and_missing_things_404() {
    let s = served();
    assert_eq!(s.unix("POST", path::VSERVICES, Some(web("198.18.2.1"))).await.0, 201);
    let (status, body) = s.unix("POST", path::VSERVICES, Some(web("198.18.2.2"))).await;
    assert_eq!((status, body["error"].as_str().unwrap()), (409, "a vservice named 'web' already exists"));
    let (status, body) = s.unix("DELETE", &vservices_at("nope"), None).await;
    assert_eq!((status, body["error"].as_str().unwrap()), (404, "no vservice named 'nope'"));
    let (status, body) = s.tcp("GET", "/v1/nothing", None).await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("no such resource"), "{body}");
    s.stop().await;
}

#[tokio::test]
async fn an_external_vservice_relays_on_its_port_or_is_409_when_the_port_is_busy() {
    let s = served();
    let busy = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = busy.local_addr().unwrap().port();
    let mut req = web("198.18.2.1");
    req["ports"] = json!(port.to_string());
    req["external"] = json!(true);
    let (status, body) = s.unix("POST", path::VSERVICES, Some(req.clone())).await;
    assert_eq!(status, 409);
    assert!(body["error"].as_str().unwrap().contains(&format!("cannot listen on port {port}")), "{body}");
    assert_eq!(s.tcp("GET", path::VSERVICES, None).await.1, json!([]));
    drop(busy);
    assert_eq!(s.unix("POST", path::VSERVICES, Some(req)).await.0, 201);
    let (_, proxies) = s.tcp("GET", path::PROXIES, None).await;
    assert_eq!(proxies[0]["listener"], format!("127.0.0.1:{port}"));
    assert_eq!(s.unix("DELETE", &vservices_at("web"), None).await.0, 204);
    assert_eq!(s.tcp("GET", path::PROXIES, None).await.1, json!([]));
    s.stop().await;
}

#[tokio::test]
async fn apps_are_listed_over_the_unix_socket() {
    let s = served();
    let new =
        NewApp { ip: Some("198.18.0.9".parse().unwrap()), pid: 1, driver: ax_core::Driver::User, ..Default::default() };
    let Answer::Registered(app) = s.daemon.submit(Command::Register(new)) else { panic!("not registered") };
    let (status, apps) = s.unix("GET", path::APPS, None).await;
    assert_eq!(status, 200);
    assert_eq!(apps.as_array().unwrap().len(), 1);
    assert_eq!(apps[0]["app_id"], app.id.to_string());
    assert_eq!(apps[0]["app_ip"], "198.18.0.9");
    let (status, info) = s.unix("GET", path::INFO, None).await;
    assert_eq!((status, info["node_ip"].as_str()), (200, Some("127.0.0.1")));
    s.stop().await;
}

#[tokio::test(start_paused = true)]
async fn restored_apps_not_taken_back_within_the_grace_are_dropped() {
    let dir = RunDir::new();
    let d = daemon(&dir.0);
    let register = |ip: &str| {
        let new = NewApp { ip: Some(ip.parse().unwrap()), pid: 1, ..Default::default() };
        let Answer::Registered(app) = d.submit(Command::Register(new)) else { panic!("not registered") };
        app.id
    };
    let (back, lost) = (register("198.18.0.1"), register("198.18.0.2"));
    let timer = drop_unattached_after(d.clone(), vec![back, lost], REATTACH_GRACE);
    d.submit(Command::Attach(back));
    tokio::time::sleep(REATTACH_GRACE - Duration::from_millis(1)).await;
    assert!(d.read(|s| s.table.app(lost).is_some()), "still within the grace");
    timer.await.unwrap();
    assert!(d.read(|s| s.table.app(back).is_some()));
    assert!(d.read(|s| s.table.app(lost).is_none()));
}

/// A kernel that lists no socket at all.
struct NoSockets;

impl watch::Sockets for NoSockets {
    fn tcp_listening(&self) -> std::io::Result<HashSet<u64>> {
        Ok(HashSet::new())
    }
    fn tcp_all(&self) -> Option<std::io::Result<HashSet<u64>>> {
        None
    }
    fn udp(&self) -> std::io::Result<HashSet<u64>> {
        Ok(HashSet::new())
    }
}

#[tokio::test(start_paused = true)]
async fn the_watcher_drops_a_closed_listener_on_its_second_sweep() {
    let dir = RunDir::new();
    let d = daemon(&dir.0);
    let new = NewApp { ip: Some("198.18.0.1".parse().unwrap()), pid: 1, ..Default::default() };
    let Answer::Registered(app) = d.submit(Command::Register(new)) else { panic!("not registered") };
    ax_trap::Node::with_table(&d, |t| {
        let port = t.take_port().unwrap();
        let socket = BoundSocket {
            inode: 7,
            proto: Proto::Tcp,
            family: Family::V4,
            requested: "0.0.0.0:80".parse().unwrap(),
            flags: 0,
        };
        t.add_binding(app.id, socket, "198.18.0.1:80".parse().unwrap(), port);
        t.set_listening(Proto::Tcp, port, 7, 16);
    });
    let rows = || d.read(|s| s.table.services().count());
    let watcher = watch::spawn(d.clone(), NoSockets);
    tokio::time::sleep(watch::PERIOD * 2 - Duration::from_millis(1)).await;
    assert_eq!(rows(), 1, "one sweep has missed it: not enough");
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert_eq!(rows(), 0);
    watcher.abort();
}

#[test]
fn a_slow_state_write_holds_up_no_engine_and_later_changes_ride_on_it() {
    let dir = RunDir::new();
    let d = daemon(&dir.0);
    // The next write blocks until someone reads: a fifo where the temporary file goes.
    let tmp = store::path(&dir.0).with_extension("json.tmp");
    assert!(std::process::Command::new("mkfifo").arg(&tmp).status().unwrap().success());
    let submit = |d: &Daemon| {
        let d = d.clone();
        std::thread::spawn(move || d.submit(Command::TableChanged))
    };
    let a = submit(&d);
    // A is in its turn (it holds the outbox), blocked in the write.
    while d.0.issued.load(Ordering::SeqCst) < 1 || d.0.outbox.try_lock().is_ok() {
        std::thread::yield_now();
    }
    // C is applied and waits for its turn behind A's write.
    let c = submit(&d);
    while d.0.issued.load(Ordering::SeqCst) < 2 {
        std::thread::yield_now();
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let engine = d.clone();
    std::thread::spawn(move || tx.send(ax_trap::Node::with_table(&engine, |t| t.node().ip)).unwrap());
    let seen = rx.recv_timeout(std::time::Duration::from_secs(60));
    assert_eq!(seen, Ok(Ipv4Addr::LOCALHOST), "an engine's lookup waited on a file write");
    assert!(!a.is_finished() && !c.is_finished(), "both wait for the write");
    assert!(!fs::read(&tmp).unwrap().is_empty(), "A's snapshot, through the fifo");
    assert_eq!(a.join().unwrap(), Answer::Done);
    assert_eq!(c.join().unwrap(), Answer::Done);
    // C's own write followed, over the fifo A renamed into place: a whole file.
    assert!(matches!(store::load(&store::path(&dir.0)).unwrap(), store::Loaded::State(..)));
}
