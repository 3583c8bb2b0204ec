//! The admin listener: how connections are taken, not what is answered (that is the router in
//! `admin`). hyper's HTTP/1 connection reads headers with a deadline ([`HEADER_READ_TIMEOUT`];
//! hyper also applies it to a kept-alive connection waiting for its next request, so an idle
//! connection closes too), tower-http's layer answers `408` to a request not done within
//! [`REQUEST_TIMEOUT`] (a body sent slowly included), and at most [`MAX_CONNECTIONS`] are open
//! at once: past that a new connection closes the oldest one. Found from outside: refusing the
//! new one instead let 140 connections that each sent part of a request line hold every slot,
//! renewed every few seconds, and every `/health` and `/ready` probe failed. The accept loop is
//! the one axum's own `serve` runs, with these settings, which `axum::serve` does not expose.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, warn};

/// Request headers must arrive within this (and an idle kept-alive connection closes after it).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole request must be handled within this: `408` after it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most admin connections open at once.
pub const MAX_CONNECTIONS: usize = 128;

/// Serves `router` on `listener` until `shutdown`, then lets open requests finish.
///
/// # Errors
/// Never today: accept errors (out of descriptors) are logged and waited out.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = router.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        REQUEST_TIMEOUT,
    ));
    // The open connections, oldest first, each with what closes it.
    let open: Arc<Mutex<VecDeque<(u64, CancellationToken)>>> = Arc::default();
    let mut next_id = 0u64;
    let tracker = TaskTracker::new();
    let accept_warnings = crema::consensus::WarnThrottle::default();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, addr) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                if let Some(count) = accept_warnings.note(std::time::Instant::now()) {
                    warn!(error = %e, count, "admin accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (id, evict) = (next_id, CancellationToken::new());
        next_id += 1;
        {
            let mut open = open.lock().expect("admin connections poisoned");
            if open.len() >= MAX_CONNECTIONS {
                if let Some((_, oldest)) = open.pop_front() {
                    debug!(%addr, "{MAX_CONNECTIONS} admin connections open: the oldest is closed");
                    oldest.cancel();
                }
            }
            open.push_back((id, evict.clone()));
        }
        let (router, open, shutdown) = (router.clone(), open.clone(), shutdown.clone());
        tracker.spawn(async move {
            // Evicted: dropped at once (its socket closes), not shut down gracefully.
            tokio::select! {
                _ = serve_connection(stream, addr, router, shutdown) => {}
                _ = evict.cancelled() => {}
            }
            open.lock().expect("admin connections poisoned").retain(|(open_id, _)| *open_id != id);
        });
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        // What `into_make_service_with_connect_info` would insert: the auth layer reads it.
        request.extensions_mut().insert(ConnectInfo(addr));
        let router = router.clone();
        async move { Ok::<_, Infallible>(router.oneshot(request).await.unwrap_or_else(|e| match e {})) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                debug!(%addr, error = %e, "admin connection ended");
            }
        }
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}
