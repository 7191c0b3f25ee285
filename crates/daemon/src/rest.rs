//! The REST API: views of the node's state, and vservices created and deleted. A
//! request is turned into a [`Command`] and nothing more; the state decides. The same
//! router serves the Unix socket and TCP, behind one gatekeeper:
//! - the Unix socket: root or the daemon's own user (peer credentials), reads and changes;
//! - without `--tls`, plain TCP on 127.0.0.1: reads only, and only for root or the
//!   daemon's own user (the owner of the client's socket in the kernel's table);
//! - with `--tls`, HTTPS on 127.0.0.1 and on the node's address: reads and changes for
//!   any client whose certificate is from the CA (the handshake requires one; nothing
//!   is answered before it).
//!
//! Every connection is bounded (see [`crate::bounds`]): a cap per listener, the TLS
//! handshake, then the request's head and body, each within [`REQUEST_TIMEOUT`], a body
//! of at most [`MAX_BODY`] bytes, and no connection idle for longer than [`IDLE_TIMEOUT`].

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ax_api::{path, ErrorBody, VserviceRequest, API_SOCKET};
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::bounds::{Gate, Idle, Permit};
use crate::state::{Answer, Command};
use crate::vservices::{self, Refusal};
use crate::{peer, views, Daemon};

/// The TLS handshake, the request's head, and then its body, must each complete within
/// this; so must the next request on a kept-alive connection.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection on which no byte moves either way for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest request body (a vservice at its size bounds is a few KiB).
pub const MAX_BODY: usize = 64 * 1024;
/// Connections each listener holds at once; new ones beyond are closed at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections at once from one address over HTTPS.
pub const MAX_CONNECTIONS_PER_PEER: usize = 16;
/// The largest request head.
const MAX_HEAD: usize = 16 * 1024;

/// How a caller reached the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Unix,
    Tcp,
    /// TCP under TLS, after a handshake that verified the client's certificate
    /// against the CA.
    Https,
}

/// Who is calling: how, and the uid owning the other end (None: cannot be told).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Caller {
    transport: Transport,
    uid: Option<u32>,
}

/// Who may do what: a client holding a certificate from the CA (HTTPS) may read and
/// change; otherwise root and the daemon's own user (`euid`; the same in production, a
/// test's user in tests) may read over either transport and change only over the Unix
/// socket; nobody else learns anything. The error is the 403's message.
fn authorise(caller: Caller, method: &Method, euid: u32, api_socket: &FsPath) -> Result<(), String> {
    if caller.transport == Transport::Https {
        // The certificate is the credential, whoever owns the socket (a remote host).
        return Ok(());
    }
    let Some(uid) = caller.uid else {
        return Err("cannot tell which user is calling: the API answers root only".into());
    };
    if uid != 0 && uid != euid {
        return Err(match caller.transport {
            Transport::Unix => format!("the API socket is for root only (uid {uid} is not)"),
            Transport::Tcp | Transport::Https => format!("the API answers root only (uid {uid} is not)"),
        });
    }
    let read = method == Method::GET || method == Method::HEAD;
    if caller.transport == Transport::Tcp && !read {
        return Err(format!(
            "over TCP the API is read-only: make changes as root over the Unix socket {} (the ax command does)",
            api_socket.display()
        ));
    }
    Ok(())
}

/// What the gatekeeper needs to know of the daemon.
struct Access {
    euid: u32,
    api_socket: PathBuf,
}

async fn gatekeeper(State(access): State<Arc<Access>>, req: Request, next: Next) -> Response {
    let Some(caller) = req.extensions().get::<Caller>().copied() else {
        return error(StatusCode::FORBIDDEN, "cannot tell which user is calling: the API answers root only");
    };
    match authorise(caller, req.method(), access.euid, &access.api_socket) {
        Ok(()) => next.run(req).await,
        Err(why) => error(StatusCode::FORBIDDEN, why),
    }
}

/// Reads the whole body first, within [`REQUEST_TIMEOUT`] and [`MAX_BODY`].
async fn bounded_body(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(REQUEST_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Ok(Err(_)) => error(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is over {MAX_BODY} bytes")),
        Err(_) => error(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {} s", REQUEST_TIMEOUT.as_secs()),
        ),
    }
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ErrorBody { error: msg.into() })).into_response()
}

fn answer(a: Answer, done: StatusCode) -> Response {
    match a {
        Answer::Refused(r @ Refusal::Bad(_)) => error(StatusCode::BAD_REQUEST, r.to_string()),
        Answer::Refused(r @ Refusal::Conflict(_)) => error(StatusCode::CONFLICT, r.to_string()),
        Answer::Refused(r @ Refusal::Missing(_)) => error(StatusCode::NOT_FOUND, r.to_string()),
        _ => done.into_response(),
    }
}

/// Now on the wall clock, in ms: a vservice record's version.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Listens on the ports an external vservice relays, ahead of the command, so a busy
/// port is refused like any conflict: the listeners by port, or the first port and why.
fn bind_relays(d: &Daemon, req: &VserviceRequest) -> Result<BTreeMap<u16, std::net::TcpListener>, (u16, String)> {
    let mut bound = BTreeMap::new();
    for m in req.ports.0.iter().filter(|_| req.external) {
        let l = std::net::TcpListener::bind((d.node_ip(), m.vport)).map_err(|e| (m.vport, e.to_string()))?;
        bound.insert(m.vport, l);
    }
    Ok(bound)
}

/// A request that did not read: a 400 whose message names the field (the types check
/// every value as it is read).
struct Malformed(String);

impl IntoResponse for Malformed {
    fn into_response(self) -> Response {
        error(StatusCode::BAD_REQUEST, format!("malformed vservice request: {}", self.0))
    }
}

fn read_request(body: Result<Json<VserviceRequest>, JsonRejection>) -> Result<VserviceRequest, Malformed> {
    body.map(|Json(req)| req).map_err(|e| Malformed(e.body_text()))
}

async fn create_vservice(State(d): State<Daemon>, body: Result<Json<VserviceRequest>, JsonRejection>) -> Response {
    let req = match read_request(body) {
        Ok(req) => req,
        Err(m) => return m.into_response(),
    };
    let vservice = match vservices::parse(&req) {
        Ok(v) => v,
        Err(r) => return answer(Answer::Refused(r), StatusCode::CREATED),
    };
    let spec = req.clone();
    // Binding and starting relays: off the async workers.
    let done = tokio::task::spawn_blocking(move || {
        let (bound, unbindable) = match bind_relays(&d, &req) {
            Ok(bound) => (bound, None),
            Err(why) => (BTreeMap::new(), Some(why)),
        };
        d.submit_with(Command::CreateVservice { vservice, spec, at_ms: now_ms(), unbindable }, bound)
    })
    .await;
    match done {
        Ok(a) => answer(a, StatusCode::CREATED),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("vservice creation failed: {e}")),
    }
}

async fn delete_vservice(State(d): State<Daemon>, Path(name): Path<String>) -> Response {
    let done = tokio::task::spawn_blocking(move || d.submit(Command::DeleteVservice { name, at_ms: now_ms() })).await;
    match done {
        Ok(a) => answer(a, StatusCode::NO_CONTENT),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("vservice deletion failed: {e}")),
    }
}

fn router(daemon: Daemon) -> Router {
    Router::new()
        .route(path::APPS, get(|State(d): State<Daemon>| async move { Json(d.read(|s| views::apps(&s.table))) }))
        .route(path::SERVERS, get(|State(d): State<Daemon>| async move { Json(d.read(|s| views::servers(&s.table))) }))
        .route(path::SOCKETS, get(|State(d): State<Daemon>| async move { Json(d.read(|s| views::sockets(&s.table))) }))
        .route(
            path::INFO,
            get(|State(d): State<Daemon>| async move { Json(d.read(|s| views::info(&s.table, s.driver))) }),
        )
        .route(
            path::VSERVICES,
            get(|State(d): State<Daemon>| async move { Json(d.read(|s| vservices::views(&s.table))) })
                .post(create_vservice),
        )
        .route(path::VSERVICE, delete(delete_vservice))
        .route(path::PROXIES, get(proxies))
        .route(path::METRICS, get(metrics))
        .route(
            path::NODES,
            get(|State(d): State<Daemon>| async move {
                Json(d.read(|s| views::nodes(&s.nodes, s.gateway.as_ref().map_or(&[], |g| &g.wan_nodes))))
            }),
        )
        .route(
            path::OPENAPI,
            get(|| async { ([(axum::http::header::CONTENT_TYPE, "application/json")], ax_api::OPENAPI_DOCUMENT) }),
        )
        .fallback(|req: Request| async move {
            error(StatusCode::NOT_FOUND, format!("no such resource: {} {}", req.method(), req.uri().path()))
        })
        .with_state(daemon)
}

/// The relays are read where effects are carried out, which may be busy writing the
/// state: off the async workers.
async fn proxies(State(d): State<Daemon>) -> Response {
    match tokio::task::spawn_blocking(move || d.proxies()).await {
        Ok(views) => Json(views).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot list the relays: {e}")),
    }
}

/// The kernel driver's counts are read from its maps and the relays' where effects are
/// carried out: off the async workers.
async fn metrics(State(d): State<Daemon>) -> Response {
    match tokio::task::spawn_blocking(move || crate::metrics::render(&crate::metrics::gather(&d))).await {
        Ok(text) => ([(axum::http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot gather the metrics: {e}")),
    }
}

/// Serves one connection with HTTP/1.1 until it ends, or ends it gracefully when
/// `closing` says so.
async fn connection<Io>(io: Io, caller: Caller, router: Router, mut closing: watch::Receiver<()>, _permit: Permit)
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(caller);
        tower_service::Service::call(&mut router.clone(), req)
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(REQUEST_TIMEOUT).max_buf_size(MAX_HEAD);
    let conn = http.serve_connection(TokioIo::new(Idle::new(io, IDLE_TIMEOUT)), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = closing.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// The caller on the Unix socket: its peer credentials.
fn unix_caller(conn: &UnixStream) -> Caller {
    Caller { transport: Transport::Unix, uid: conn.peer_cred().ok().map(|c| c.uid()) }
}

/// The caller over TCP: the owner of the client's socket (a read of the kernel's
/// table: off the async workers).
async fn tcp_caller(conn: &TcpStream) -> Caller {
    let uid = match (conn.peer_addr(), conn.local_addr()) {
        (Ok(peer), Ok(us)) => tokio::task::spawn_blocking(move || peer::owner(peer, us)).await.ok().flatten(),
        _ => None,
    };
    Caller { transport: Transport::Tcp, uid }
}

/// How the TCP listeners serve.
#[derive(Clone)]
enum Tcp {
    /// Plain HTTP, for root-owned local callers (without `--tls`).
    Plain,
    /// HTTPS, for clients holding a certificate from the CA (`--tls`).
    Https(TlsAcceptor),
}

impl Tcp {
    /// Serves one accepted connection until it ends.
    async fn serve(
        &self,
        conn: TcpStream,
        router: Router,
        mut closing: watch::Receiver<()>,
        permit: Permit,
        gate: &Gate,
    ) {
        match self {
            Tcp::Plain => {
                let caller = tcp_caller(&conn).await;
                connection(conn, caller, router, closing, permit).await;
            }
            Tcp::Https(acceptor) => {
                let peer = conn.peer_addr().ok();
                let handshake = tokio::time::timeout(REQUEST_TIMEOUT, acceptor.accept(conn));
                let done = tokio::select! {
                    done = handshake => done,
                    _ = closing.changed() => return,
                };
                match done {
                    Ok(Ok(tls)) => {
                        let caller = Caller { transport: Transport::Https, uid: None };
                        connection(tls, caller, router, closing, permit).await;
                    }
                    Ok(Err(e)) => gate.handshake_failed(peer, &e),
                    Err(_) => gate.handshake_failed(
                        peer,
                        &format!("the TLS handshake did not complete within {} s", REQUEST_TIMEOUT.as_secs()),
                    ),
                }
            }
        }
    }
}

/// Serves the API on the Unix socket and the TCP listeners (127.0.0.1, and with TLS
/// also the node's address) until `shutdown` completes, then lets the open connections
/// finish their requests. With `tls`, TCP is HTTPS and requires a client certificate
/// from the CA.
pub async fn serve(
    tcp: Vec<TcpListener>,
    unix: UnixListener,
    tls: Option<Arc<ax_tls::Reloadable>>,
    daemon: Daemon,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let access = Arc::new(Access {
        euid: ax_sys::proc::effective_uid(),
        api_socket: daemon.run_dir().join(crate::start::socket_name(API_SOCKET)),
    });
    let app = router(daemon)
        .layer(middleware::from_fn(bounded_body))
        .layer(middleware::from_fn_with_state(access, gatekeeper));
    let (stop_tx, stop_rx) = watch::channel(());
    let stopped = |mut rx: watch::Receiver<()>| async move {
        let _ = rx.changed().await;
    };
    let (mode, tcp_name) = match tls {
        Some(tls) => (Tcp::Https(TlsAcceptor::from(Arc::new(tls.server_config(&[b"http/1.1"])))), "REST (HTTPS)"),
        None => (Tcp::Plain, "REST (TCP)"),
    };
    let mut listeners = tokio::task::JoinSet::new();
    for listener in tcp {
        let (app, stop_rx, mode) = (app.clone(), stop_rx.clone(), mode.clone());
        let gate = match mode {
            // Anyone on the network reaches HTTPS on the node's address: one host's
            // unfinished handshakes must not keep the admins out.
            Tcp::Https(_) => Gate::new(tcp_name, MAX_CONNECTIONS).per_peer(MAX_CONNECTIONS_PER_PEER),
            Tcp::Plain => Gate::new(tcp_name, MAX_CONNECTIONS),
        };
        let gate = Arc::new(gate);
        listeners.spawn(async move {
            gate.serve_async(&listener, stopped(stop_rx.clone()), |conn, permit| {
                let (app, closing, mode, gate) = (app.clone(), stop_rx.clone(), mode.clone(), gate.clone());
                tokio::spawn(async move { mode.serve(conn, app, closing, permit, &gate).await });
            })
            .await
        });
    }
    let unix_gate = Gate::new("REST (Unix)", MAX_CONNECTIONS);
    let unix_srv = unix_gate.serve_async(&unix, stopped(stop_rx.clone()), |conn, permit| {
        let (app, closing) = (app.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let caller = unix_caller(&conn);
            connection(conn, caller, app, closing, permit).await;
        });
    });
    let tcp_srv = async {
        let mut first_error = Ok(());
        while let Some(done) = listeners.join_next().await {
            let done = done.unwrap_or_else(|e| Err(std::io::Error::other(e)));
            first_error = first_error.and(done);
        }
        first_error
    };
    let signal = async {
        shutdown.await;
        let _ = stop_tx.send(());
    };
    let ((a, b), ()) = tokio::join!(async { tokio::join!(unix_srv, tcp_srv) }, signal);
    drop(stop_rx);
    // Every connection holds a receiver until it is done.
    stop_tx.closed().await;
    a?;
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{to_bytes, Body};
    use axum::extract::FromRequest;

    async fn answer(body: &str) -> Result<VserviceRequest, (StatusCode, String)> {
        let req = Request::post(path::VSERVICES)
            .header(axum::http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        match read_request(Json::<VserviceRequest>::from_request(req, &()).await) {
            Ok(v) => Ok(v),
            Err(m) => {
                let r = m.into_response();
                let status = r.status();
                let bytes = to_bytes(r.into_body(), 1 << 16).await.unwrap();
                let body: ErrorBody = serde_json::from_slice(&bytes).unwrap();
                Err((status, body.error))
            }
        }
    }

    #[test]
    fn who_may_do_what_by_transport_method_and_user() {
        const EUID: u32 = 1000;
        let socket = FsPath::new("/var/run/appswitch/ax.sock");
        let (get, head, post, delete, put) = (Method::GET, Method::HEAD, Method::POST, Method::DELETE, Method::PUT);
        let read_only =
            "over TCP the API is read-only: make changes as root over the Unix socket /var/run/appswitch/ax.sock";
        type Case<'a> = (Transport, Option<u32>, &'a Method, Result<(), &'a str>);
        let cases: &[Case] = &[
            (Transport::Unix, Some(0), &get, Ok(())),
            (Transport::Unix, Some(0), &post, Ok(())),
            (Transport::Unix, Some(0), &delete, Ok(())),
            (Transport::Unix, Some(EUID), &post, Ok(())),
            (Transport::Unix, Some(65534), &get, Err("the API socket is for root only (uid 65534 is not)")),
            (Transport::Unix, Some(65534), &post, Err("the API socket is for root only (uid 65534 is not)")),
            (Transport::Unix, None, &get, Err("cannot tell which user is calling")),
            (Transport::Tcp, Some(0), &get, Ok(())),
            (Transport::Tcp, Some(0), &head, Ok(())),
            (Transport::Tcp, Some(EUID), &get, Ok(())),
            (Transport::Tcp, Some(0), &post, Err(read_only)),
            (Transport::Tcp, Some(0), &delete, Err(read_only)),
            (Transport::Tcp, Some(EUID), &put, Err(read_only)),
            (Transport::Tcp, Some(65534), &get, Err("the API answers root only (uid 65534 is not)")),
            (Transport::Tcp, Some(65534), &post, Err("the API answers root only (uid 65534 is not)")),
            (Transport::Tcp, Some(1001), &head, Err("the API answers root only (uid 1001 is not)")),
            (Transport::Tcp, None, &get, Err("cannot tell which user is calling")),
            // Over HTTPS the handshake checked the client's certificate: that is the
            // credential, for changes too.
            (Transport::Https, None, &get, Ok(())),
            (Transport::Https, None, &post, Ok(())),
            (Transport::Https, None, &delete, Ok(())),
        ];
        for (transport, uid, method, want) in cases {
            let got = authorise(Caller { transport: *transport, uid: *uid }, method, EUID, socket);
            match (want, &got) {
                (Ok(()), Ok(())) => {}
                (Err(w), Err(g)) if g.starts_with(w) => {}
                _ => panic!("{transport:?} uid {uid:?} {method}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_request_with_a_bad_field_is_a_400_naming_it() {
        let good = serde_json::json!({"name": "web", "ip": "198.18.2.1", "ports": "80:8000", "backends": "198.18.1.1"});
        let req = answer(&good.to_string()).await.unwrap();
        assert_eq!(req.ports.to_string(), "80:8000");
        let cases = [
            ("ports", serde_json::json!("80:x"), "--ports: 'x' is not a port (1-65535)"),
            ("backends", serde_json::json!("web"), "--backends: 'web' is not an IPv4 address or IP:port"),
            ("lbtype", serde_json::json!("LeastConn"), "--lbtype 'LeastConn' is not one of Random, RoundRobin"),
            ("ip", serde_json::json!("300.1.1.1"), "--ip 300.1.1.1 is not an IPv4 address"),
            ("source_ip", serde_json::json!("x"), "invalid IPv4 address syntax"),
            ("name", serde_json::json!(1), "invalid type"),
        ];
        for (field, value, want) in cases {
            let mut body = good.clone();
            body[field] = value;
            let (status, msg) = answer(&body.to_string()).await.unwrap_err();
            assert_eq!(status, StatusCode::BAD_REQUEST, "{field}");
            assert!(msg.starts_with("malformed vservice request: "), "{msg}");
            assert!(msg.contains(&format!("{field}: ")) && msg.contains(want), "{field}: {msg}");
        }
        let (status, msg) = answer(r#"{"ip": "198.18.2.1"}"#).await.unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(msg.contains("missing field `name`"), "{msg}");
    }
}
