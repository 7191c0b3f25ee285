//! The REST API: read-only views of the tables for now. The same router serves the
//! Unix socket (root only, checked by peer credentials on every connection) and TCP on
//! 127.0.0.1.

use std::future::Future;

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

use crate::{views, vservices, Daemon};

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

async fn root_only(ConnectInfo(peer): ConnectInfo<Peer>, req: Request, next: Next) -> Response {
    match peer.uid {
        Some(0) => next.run(req).await,
        Some(uid) => error(StatusCode::FORBIDDEN, format!("the API socket is for root only (uid {uid} is not)")),
        None => error(StatusCode::FORBIDDEN, "cannot read the peer's credentials"),
    }
}

fn refusal(r: vservices::Refusal) -> Response {
    match r {
        vservices::Refusal::Bad(m) => error(StatusCode::BAD_REQUEST, m),
        vservices::Refusal::Conflict(m) => error(StatusCode::CONFLICT, m),
        vservices::Refusal::Missing(m) => error(StatusCode::NOT_FOUND, m),
    }
}

async fn create_vservice(State(d): State<Daemon>, body: Result<Json<VserviceRequest>, JsonRejection>) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed vservice request: {}", e.body_text())),
    };
    // Relays bind sockets: keep that off the async workers.
    match tokio::task::spawn_blocking(move || vservices::create(&d, &req)).await {
        Ok(Ok(())) => StatusCode::CREATED.into_response(),
        Ok(Err(r)) => refusal(r),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("vservice creation failed: {e}")),
    }
}

async fn delete_vservice(State(d): State<Daemon>, Path(name): Path<String>) -> Response {
    match vservices::delete(&d, &name) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => refusal(r),
    }
}

fn router(daemon: Daemon) -> Router {
    Router::new()
        .route(path::APPS, get(|State(d): State<Daemon>| async move { Json(views::apps(&d.table())) }))
        .route(path::SERVERS, get(|State(d): State<Daemon>| async move { Json(views::servers(&d.table())) }))
        .route(path::SOCKETS, get(|State(d): State<Daemon>| async move { Json(views::sockets(&d.table())) }))
        .route(path::INFO, get(|State(d): State<Daemon>| async move { Json(views::info(&d.table())) }))
        .route(
            path::VSERVICES,
            get(|State(d): State<Daemon>| async move { Json(vservices::views(&d.table())) }).post(create_vservice),
        )
        .route(&format!("{}/{{name}}", path::VSERVICES), delete(delete_vservice))
        .route(path::PROXIES, get(|State(d): State<Daemon>| async move { Json(d.relays().views()) }))
        .route(path::NODES, get(|State(d): State<Daemon>| async move { Json(views::nodes(&d)) }))
        .route(
            path::OPENAPI,
            get(|| async { ([(axum::http::header::CONTENT_TYPE, "application/json")], ax_api::OPENAPI_DOCUMENT) }),
        )
        .fallback(|req: Request| async move {
            error(StatusCode::NOT_FOUND, format!("no such resource: {} {}", req.method(), req.uri().path()))
        })
        .with_state(daemon)
}

/// Serves the API on both listeners until `shutdown` completes.
pub async fn serve(
    tcp: TcpListener,
    unix: UnixListener,
    daemon: Daemon,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
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
