//! The operations HTTP endpoint: `GET`/`HEAD` `/livez`, `/readyz` and `/metrics` (Prometheus
//! text format 0.0.4), routed by axum and served by hyper's HTTP/1.1 server, one task per
//! connection.
//!
//! One request per connection: keep-alive is off and every response says `Connection: close`.
//! An unknown path gets 404, a method other than GET/HEAD 405 with `Allow: GET, HEAD`, a request
//! target that is not a path 400; hyper itself answers a malformed request head with 400 and a
//! head over [`HTTP_REQUEST_HEAD_BYTES_MAX`] bytes or [`HTTP_REQUEST_HEADERS_MAX`] fields with 431.
//! Request bodies are never read.
//!
//! Invariant: idle connections cannot delay a probe. Each connection has its own task (there is
//! no small concurrency limit for idle sockets to use up); one that has not sent a complete
//! request head within [`HTTP_HEADER_READ_TIMEOUT`] is closed, and none lives longer than
//! [`HTTP_CONNECTION_DEADLINE`] (a client that never reads its response cannot hold one).
//! Invariant: at most [`HTTP_CONNECTIONS_MAX`] connections are open at once (file descriptors
//! are shared with SIP and RocksDB). Whenever that many are open, the oldest one that is not
//! being answered (still waiting for its request head, or lingering after its response) is
//! closed, so there is room for the next connection — a probe, which sends its request at once
//! and is answered before it could become the oldest; only while every open connection is being
//! answered does accepting wait (in the listen backlog).
//! Invariant: when `shutdown` completes, no new connection is accepted and `serve_http` returns
//! once the connections in flight are done (each bounded by the deadline above).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use futures::FutureExt as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use pms_types::limits::{
    HTTP_ACCEPT_ERROR_BACKOFF_MS, HTTP_CONNECTION_DEADLINE_MS, HTTP_CONNECTIONS_MAX,
    HTTP_HEADER_READ_TIMEOUT_MS, HTTP_LINGER_BYTES_MAX, HTTP_LINGER_TIMEOUT_MS,
    HTTP_REQUEST_HEAD_BYTES_MAX, HTTP_REQUEST_HEADERS_MAX,
};
use pms_types::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Duration;
use tower_service::Service as _;

/// Deadline for a complete request head ([`HTTP_HEADER_READ_TIMEOUT_MS`]).
pub const HTTP_HEADER_READ_TIMEOUT: Duration = Duration::from_millis(HTTP_HEADER_READ_TIMEOUT_MS);
/// Longest life of one connection ([`HTTP_CONNECTION_DEADLINE_MS`]).
pub const HTTP_CONNECTION_DEADLINE: Duration = Duration::from_millis(HTTP_CONNECTION_DEADLINE_MS);
const HTTP_LINGER_TIMEOUT: Duration = Duration::from_millis(HTTP_LINGER_TIMEOUT_MS);
const HTTP_ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(HTTP_ACCEPT_ERROR_BACKOFF_MS);

const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// A health probe: `true` when healthy.
pub type Probe = Box<dyn Fn() -> bool + Send + Sync>;

/// What the endpoints report.
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    /// `/readyz`: the node can serve SIP traffic (e.g. joined its groups, listeners bound).
    pub ready: Probe,
    /// `/livez`: the process is not wedged (a failing probe asks the supervisor to restart it).
    pub live: Probe,
}

/// Serves until `shutdown` completes, then waits for the connections in flight.
pub async fn serve_http(
    listener: TcpListener,
    state: Arc<HttpState>,
    shutdown: impl Future<Output = ()>,
) {
    serve_http_bounded(listener, state, shutdown, HTTP_CONNECTIONS_MAX).await;
}

/// [`serve_http`] with at most `connections_max` open connections.
async fn serve_http_bounded(
    listener: TcpListener,
    state: Arc<HttpState>,
    shutdown: impl Future<Output = ()>,
    connections_max: usize,
) {
    let router = router(state);
    let builder = Arc::new(connection_builder());
    let mut connections = JoinSet::new();
    // Open connections by accept order (oldest first), each with the key its task returns.
    let mut open: BTreeMap<u64, Arc<Slot>> = BTreeMap::new();
    let mut next_key = 0u64;
    let mut evictions_pending = 0usize;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        if open.len() >= connections_max
            && evictions_pending == 0
            && open.values().any(|slot| slot.try_evict())
        {
            evictions_pending += 1;
        }
        tokio::select! {
            () = &mut shutdown => break,
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                // A task returns its key even when serving panicked (it catches the unwind).
                let Ok(key) = joined else { continue };
                if open.remove(&key).is_some_and(|slot| slot.is_evicted()) {
                    evictions_pending = evictions_pending.saturating_sub(1);
                }
            }
            accepted = listener.accept(), if open.len() < connections_max => match accepted {
                Ok((stream, peer)) => {
                    let key = next_key;
                    next_key += 1;
                    let slot = Arc::new(Slot::default());
                    open.insert(key, Arc::clone(&slot));
                    let builder = Arc::clone(&builder);
                    let router = router.clone();
                    connections.spawn(async move {
                        let serving = serve_connection(stream, &builder, router, slot);
                        if AssertUnwindSafe(serving).catch_unwind().await.is_err() {
                            tracing::error!(%peer, "http connection task panicked");
                        }
                        key
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "http accept failed");
                    tokio::time::sleep(HTTP_ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// hyper's HTTP/1.1 settings, shared by every connection.
fn connection_builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HTTP_HEADER_READ_TIMEOUT)
        .max_header_size(HTTP_REQUEST_HEAD_BYTES_MAX)
        .max_headers(HTTP_REQUEST_HEADERS_MAX)
        .keep_alive(false)
        // A client may send its request and shut down its side before reading the answer.
        .half_close(true)
        .title_case_headers(true);
    builder
}

/// Where a connection is; only the accept loop evicts, only the connection's task serves.
#[derive(Default)]
struct Slot {
    state: AtomicU8,
    evict: Notify,
}

/// No request head yet.
const SLOT_WAITING: u8 = 0;
/// The router is answering its request.
const SLOT_SERVING: u8 = 1;
/// Answered; unread request bytes are being drained before closing.
const SLOT_LINGERING: u8 = 2;
/// Told to close to make room for a new connection.
const SLOT_EVICTED: u8 = 3;

impl Slot {
    fn advance(&self, from: u8, to: u8) -> bool {
        self.state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Evicts the connection unless it is being answered.
    fn try_evict(&self) -> bool {
        let evicted =
            self.advance(SLOT_WAITING, SLOT_EVICTED) || self.advance(SLOT_LINGERING, SLOT_EVICTED);
        if evicted {
            // Stores a permit if the task is not waiting yet.
            self.evict.notify_one();
        }
        evicted
    }

    fn is_evicted(&self) -> bool {
        self.state.load(Ordering::Acquire) == SLOT_EVICTED
    }
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// Serves one request on `stream`, then lingers (see [`linger`]); returns early when evicted or
/// at [`HTTP_CONNECTION_DEADLINE`], dropping (closing) the connection.
async fn serve_connection(
    stream: TcpStream,
    builder: &http1::Builder,
    router: Router,
    slot: Arc<Slot>,
) {
    let deadline = tokio::time::sleep(HTTP_CONNECTION_DEADLINE);
    let evicted = slot.evict.notified();
    tokio::pin!(deadline, evicted);
    let service = hyper::service::service_fn({
        let slot = Arc::clone(&slot);
        move |request: Request<Incoming>| -> ResponseFuture {
            // Once serving, the accept loop no longer evicts this connection; if it already
            // did, the task is closing and this answer is dropped with it.
            slot.advance(SLOT_WAITING, SLOT_SERVING);
            let mut router = router.clone();
            Box::pin(async move {
                let mut response = router.call(request).await?;
                let headers = response.headers_mut();
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                Ok(response)
            })
        }
    });
    let mut connection = builder.serve_connection(TokioIo::new(stream), service);
    let served = tokio::select! {
        served = poll_fn(|context| connection.poll_without_shutdown(context)) => served,
        () = &mut evicted => return,
        () = &mut deadline => return,
    };
    if let Err(error) = served {
        tracing::debug!(%error, "http connection failed");
        if error.is_timeout() {
            // Nothing was answered; no need to linger.
            return;
        }
    }
    let mut stream = connection.into_parts().io.into_inner();
    if !(slot.advance(SLOT_SERVING, SLOT_LINGERING) || slot.advance(SLOT_WAITING, SLOT_LINGERING)) {
        return;
    }
    tokio::select! {
        () = linger(&mut stream) => {}
        () = &mut evicted => {}
        () = &mut deadline => {}
    }
}

/// Sends end of stream, then reads and discards what the client still sends (an oversized head,
/// a body) until it closes, for at most [`HTTP_LINGER_TIMEOUT`] and [`HTTP_LINGER_BYTES_MAX`]
/// bytes: closing with unread input would reset the connection and could destroy the response
/// in flight.
async fn linger(stream: &mut TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut chunk = [0u8; 4096];
        let mut drained = 0usize;
        while drained < HTTP_LINGER_BYTES_MAX {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => drained += read,
            }
        }
    };
    let _ = tokio::time::timeout(HTTP_LINGER_TIMEOUT, drain).await;
}

type SharedState = State<Arc<HttpState>>;

fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(fallback)
        .with_state(state)
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)], body).into_response()
}

async fn livez(State(state): SharedState) -> Response {
    if (state.live)() {
        text(StatusCode::OK, "ok\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "not live\n")
    }
}

async fn readyz(State(state): SharedState) -> Response {
    if (state.ready)() {
        text(StatusCode::OK, "ready\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// OpenMetrics for a scraper that asks for it (Prometheus does, in `Accept`), the Prometheus
/// text format 0.0.4 for everyone else (curl, `promtool check metrics`), as the Go client does.
async fn metrics(State(state): SharedState, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|accept| accept.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
            state.metrics.render(),
        )
            .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE)],
            state.metrics.render_prometheus_text(),
        )
            .into_response()
    }
}

async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [
            (header::CONTENT_TYPE, TEXT_CONTENT_TYPE),
            (header::ALLOW, "GET, HEAD"),
        ],
        "method not allowed\n",
    )
        .into_response()
}

/// No route matched: a target that is not a path is malformed, a method other than GET/HEAD is
/// refused before the path is looked at (as for the routes), anything else is unknown.
async fn fallback(method: Method, uri: Uri) -> Response {
    if !uri.path().starts_with('/') {
        text(StatusCode::BAD_REQUEST, "bad request\n")
    } else if method != Method::GET && method != Method::HEAD {
        method_not_allowed().await
    } else {
        text(StatusCode::NOT_FOUND, "not found\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicBool;
    use tokio::sync::oneshot;

    struct Server {
        address: SocketAddr,
        ready: Arc<AtomicBool>,
        metrics: Arc<Metrics>,
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start() -> Server {
        start_bounded(HTTP_CONNECTIONS_MAX).await
    }

    async fn start_bounded(connections_max: usize) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("local addr");
        let ready = Arc::new(AtomicBool::new(false));
        let metrics = Arc::new(Metrics::new());
        let ready_probe = Arc::clone(&ready);
        let state = Arc::new(HttpState {
            metrics: Arc::clone(&metrics),
            ready: Box::new(move || ready_probe.load(Ordering::SeqCst)),
            live: Box::new(|| true),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(serve_http_bounded(
            listener,
            state,
            shutdown,
            connections_max,
        ));
        Server {
            address,
            ready,
            metrics,
            stop: Some(stop),
            task,
        }
    }

    /// Sends raw bytes and half-closes, reads until the server closes, returns
    /// (status, head, body).
    async fn exchange(address: SocketAddr, request: &[u8]) -> (u16, String, String) {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        stream.write_all(request).await.expect("send");
        stream.shutdown().await.expect("half-close");
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .expect("read until close");
        let text = String::from_utf8(response).expect("utf-8 response");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("status code");
        (status, head.to_owned(), body.to_owned())
    }

    async fn get(address: SocketAddr, path: &str) -> (u16, String, String) {
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        exchange(address, request.as_bytes()).await
    }

    #[tokio::test]
    async fn health_endpoints_report_the_probes() {
        let server = start().await;
        let (status, head, body) = get(server.address, "/livez").await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        assert!(head.contains("Connection: close"), "{head}");
        assert!(head.contains("Content-Length: 3"), "{head}");

        assert_eq!(get(server.address, "/readyz").await.0, 503);
        assert_eq!(get(server.address, "/readyz").await.2, "not ready\n");
        server.ready.store(true, Ordering::SeqCst);
        let (status, _, body) = get(server.address, "/readyz?verbose=1").await;
        assert_eq!((status, body.as_str()), (200, "ready\n"));
    }

    #[tokio::test]
    async fn metrics_are_served_in_the_prometheus_format() {
        let server = start().await;
        server.metrics.messages_accepted_total.inc_by(3);
        let (status, head, body) = get(server.address, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(
            body.lines()
                .any(|line| line == "pms_messages_accepted_total 3"),
            "{body}"
        );
        assert_eq!(body, server.metrics.render_prometheus_text());
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );

        // What Prometheus sends: OpenMetrics first.
        let (status, head, body) = exchange(
            server.address,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n\r\n",
        )
        .await;
        assert_eq!(status, 200);
        assert!(
            head.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
            "{head}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
        assert!(body.contains("# TYPE pms_messages_accepted counter\n"));
    }

    #[tokio::test]
    async fn unknown_paths_methods_and_malformed_requests_are_refused() {
        let server = start().await;
        assert_eq!(get(server.address, "/").await.0, 404);
        assert_eq!(get(server.address, "/metricsx").await.0, 404);
        let (status, head, _) = exchange(
            server.address,
            b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert_eq!(status, 405);
        assert!(head.contains("Allow: GET, HEAD"), "{head}");
        let (status, head, body) = exchange(server.address, b"HEAD /livez HTTP/1.1\r\n\r\n").await;
        assert_eq!((status, body.as_str()), (200, ""));
        assert!(head.contains("Content-Length: 3"), "{head}");
        assert_eq!(exchange(server.address, b"GARBAGE\r\n\r\n").await.0, 400);
        assert_eq!(
            exchange(server.address, b"GET livez HTTP/1.1\r\n\r\n")
                .await
                .0,
            400
        );
        assert_eq!(
            exchange(server.address, b"GET /livez SPDY/3\r\n\r\n")
                .await
                .0,
            400
        );
        assert_eq!(
            exchange(server.address, b"GET /\xff HTTP/1.1\r\n\r\n")
                .await
                .0,
            400
        );
    }

    #[tokio::test]
    async fn oversized_request_heads_get_431() {
        let server = start().await;
        let mut request = b"GET /livez HTTP/1.1\r\nX-Padding: ".to_vec();
        request.extend(std::iter::repeat_n(b'a', HTTP_REQUEST_HEAD_BYTES_MAX));
        request.extend_from_slice(b"\r\n\r\n");
        assert_eq!(exchange(server.address, &request).await.0, 431);
        // A head split across many small writes still parses.
        let mut stream = TcpStream::connect(server.address).await.expect("connect");
        for piece in [&b"GET /li"[..], b"vez HTTP/1.1\r", b"\n\r", b"\n"] {
            stream.write_all(piece).await.expect("send piece");
            stream.flush().await.expect("flush");
        }
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    }

    #[tokio::test]
    async fn shutdown_stops_accepting_and_returns() {
        let mut server = start().await;
        assert_eq!(get(server.address, "/livez").await.0, 200);
        // A connection in flight (head not yet complete) is still answered after shutdown.
        let mut in_flight = TcpStream::connect(server.address).await.expect("connect");
        in_flight
            .write_all(b"GET /livez HTTP/1.1\r\n")
            .await
            .expect("send part");
        // Round-trip another request so the in-flight connection has surely been accepted.
        assert_eq!(get(server.address, "/livez").await.0, 200);

        server
            .stop
            .take()
            .expect("stop sender")
            .send(())
            .expect("server running");
        in_flight.write_all(b"\r\n").await.expect("send rest");
        let mut response = String::new();
        in_flight.read_to_string(&mut response).await.expect("read");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");

        tokio::time::timeout(Duration::from_secs(10), server.task)
            .await
            .expect("serve_http returns after shutdown")
            .expect("server task");
        assert!(
            TcpStream::connect(server.address).await.is_err(),
            "listener closed"
        );
    }

    /// Issue 8 item 7: a kubelet probes with a short timeout and restarts the node when it gets
    /// no answer, so connections that send nothing (or half a request head) must not delay a
    /// probe.
    #[tokio::test]
    async fn health_probes_answer_while_300_idle_connections_are_held() {
        const IDLE_CONNECTIONS: usize = 300;
        /// Kubernetes' default probe timeout is 1 s; allow a loaded test machine twice that.
        const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
        let server = start().await;
        server.ready.store(true, Ordering::SeqCst);
        let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
        for index in 0..IDLE_CONNECTIONS {
            let mut stream = TcpStream::connect(server.address)
                .await
                .expect("connect an idle connection");
            if index % 3 == 0 {
                stream
                    .write_all(b"GET /livez HTTP/1.1\r\nHost: idle\r\n")
                    .await
                    .expect("send half a request head");
            }
            idle.push(stream);
        }
        for (path, expected_body) in [("/livez", "ok\n"), ("/readyz", "ready\n")] {
            let (status, _, body) = tokio::time::timeout(PROBE_TIMEOUT, get(server.address, path))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{path}: no full response within {PROBE_TIMEOUT:?} while \
                         {IDLE_CONNECTIONS} idle connections are held"
                    )
                });
            assert_eq!((status, body.as_str()), (200, expected_body), "{path}");
        }
        drop(idle);
    }

    /// At the connection limit a new connection is still answered: the oldest connection that
    /// is not being answered makes room.
    #[tokio::test]
    async fn at_the_connection_limit_the_oldest_idle_connection_makes_room() {
        const CONNECTIONS_MAX: usize = 4;
        const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
        let server = start_bounded(CONNECTIONS_MAX).await;
        let mut idle = Vec::with_capacity(CONNECTIONS_MAX);
        for index in 0..CONNECTIONS_MAX {
            let mut stream = TcpStream::connect(server.address)
                .await
                .expect("connect an idle connection");
            if index % 2 == 1 {
                stream
                    .write_all(b"GET /livez HTTP/1.1\r\n")
                    .await
                    .expect("send half a request head");
            }
            idle.push(stream);
        }
        for _ in 0..3 {
            let (status, _, body) =
                tokio::time::timeout(PROBE_TIMEOUT, get(server.address, "/livez"))
                    .await
                    .expect("/livez answered at the connection limit");
            assert_eq!((status, body.as_str()), (200, "ok\n"));
        }
        // The oldest idle connection was closed (end of stream or reset), without an answer.
        let mut oldest = idle.remove(0);
        let mut received = Vec::new();
        let closed = tokio::time::timeout(PROBE_TIMEOUT, oldest.read_to_end(&mut received))
            .await
            .expect("the oldest idle connection is closed");
        assert!(closed.is_err() || received.is_empty(), "{received:?}");
        // The newest one is still held: finishing its head gets it answered.
        let mut newest = idle.pop().expect("newest idle connection");
        newest.write_all(b"\r\n").await.expect("finish the head");
        let mut response = String::new();
        tokio::time::timeout(PROBE_TIMEOUT, newest.read_to_string(&mut response))
            .await
            .expect("the newest idle connection is answered")
            .expect("read the answer");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    }

    /// A connection that never completes its request head is closed after the header read
    /// timeout, without an answer, so idle sockets do not pile up.
    #[tokio::test]
    async fn idle_connections_are_closed_after_the_header_read_timeout() {
        let server = start().await;
        let started = tokio::time::Instant::now();
        let mut silent = TcpStream::connect(server.address).await.expect("connect");
        let mut partial = TcpStream::connect(server.address).await.expect("connect");
        partial
            .write_all(b"GET /livez HTTP/1.1\r\nHost: idle\r\n")
            .await
            .expect("send half a request head");
        for stream in [&mut silent, &mut partial] {
            let mut received = Vec::new();
            let closed = tokio::time::timeout(
                HTTP_HEADER_READ_TIMEOUT + Duration::from_secs(5),
                stream.read_to_end(&mut received),
            )
            .await
            .expect("the idle connection is closed");
            assert!(closed.is_err() || received.is_empty(), "{received:?}");
        }
        assert!(
            started.elapsed() >= HTTP_HEADER_READ_TIMEOUT,
            "closed after {:?}, before the header read timeout",
            started.elapsed()
        );
    }
}
