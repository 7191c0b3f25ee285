//! The REST API: views of the node's state, and vservices created and deleted. A
//! request is turned into a [`Command`] and nothing more; the state decides. The same
//! router serves the Unix socket (root only, checked by peer credentials on every
//! connection) and TCP on 127.0.0.1.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

use ax_api::{path, ErrorBody, VserviceRequest};
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::serve::IncomingStream;
use axum::{Json, Router};
use tokio::net::{TcpListener, UnixListener};

use crate::state::{Answer, Command};
use crate::vservices::{self, Refusal};
use crate::{views, Daemon};

/// Who is on the other end of a Unix-socket connection.
#[derive(Clone, Debug)]
struct Peer {
    uid: Option<u32>,
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        Peer { uid: stream.io().peer_cred().ok().map(|c| c.uid()) }
    }
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ErrorBody { error: msg.into() })).into_response()
}

/// Root, or the daemon's own user (the same in production; a test's user in tests).
async fn root_only(ConnectInfo(peer): ConnectInfo<Peer>, req: Request, next: Next) -> Response {
    match peer.uid {
        Some(uid) if uid == 0 || uid == ax_sys::proc::effective_uid() => next.run(req).await,
        Some(uid) => error(StatusCode::FORBIDDEN, format!("the API socket is for root only (uid {uid} is not)")),
        None => error(StatusCode::FORBIDDEN, "cannot read the peer's credentials"),
    }
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
fn now_ms() -> u64 {
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
        .route(path::INFO, get(|State(d): State<Daemon>| async move { Json(d.read(|s| views::info(&s.table))) }))
        .route(
            path::VSERVICES,
            get(|State(d): State<Daemon>| async move { Json(d.read(|s| vservices::views(&s.table))) })
                .post(create_vservice),
        )
        .route(path::VSERVICE, delete(delete_vservice))
        .route(path::PROXIES, get(proxies))
        .route(path::NODES, get(|State(d): State<Daemon>| async move { Json(d.read(|s| views::nodes(&s.nodes))) }))
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

/// Serves the API on both listeners until `shutdown` completes.
pub async fn serve(
    tcp: TcpListener,
    unix: UnixListener,
    daemon: Daemon,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    let unix_app = router(daemon.clone()).layer(middleware::from_fn(root_only));
    let mut rx1 = stop_rx.clone();
    let mut rx2 = stop_rx;
    let unix_srv =
        axum::serve(unix, unix_app.into_make_service_with_connect_info::<Peer>()).with_graceful_shutdown(async move {
            let _ = rx1.changed().await;
        });
    let tcp_srv = axum::serve(tcp, router(daemon)).with_graceful_shutdown(async move {
        let _ = rx2.changed().await;
    });
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(());
    });
    let (a, b) = tokio::join!(unix_srv, tcp_srv);
    a?;
    b?;
    Ok(())
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
