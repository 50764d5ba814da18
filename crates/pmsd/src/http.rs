// Lead: register with `mod http;` in crates/pmsd/src/main.rs (or `pub mod http;` in a lib.rs).
//! The operations HTTP endpoint: `GET /livez`, `GET /readyz` and `GET /metrics` (Prometheus text
//! format 0.0.4), served by a small hand-written HTTP/1.1 server on tokio.
//!
//! One request per connection, answered with `Connection: close`. Anything else is 404 (unknown
//! path) or 405 (method other than GET/HEAD).
//!
//! Invariant: a request head is at most [`HTTP_REQUEST_HEAD_BYTES_MAX`] bytes (else 431) and must
//! arrive within [`HTTP_REQUEST_READ_TIMEOUT`]; request bodies are never read.
//! Invariant: at most [`HTTP_CONNECTIONS_MAX`] connections are served at once; further ones wait
//! in the listen backlog (backpressure, no unbounded task growth).
//! Invariant: when `shutdown` completes, no new connection is accepted and `serve_http` returns
//! once the connections in flight are answered (each bounded by the timeouts above).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use pms_types::metrics::Metrics;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Largest request line plus headers read.
pub const HTTP_REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// Most connections served concurrently.
pub const HTTP_CONNECTIONS_MAX: usize = 64;
/// Deadline for a complete request head.
pub const HTTP_REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline for writing the response.
pub const HTTP_RESPONSE_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After an error response, how long unread request bytes are drained before closing (closing
/// with unread input would reset the connection and could destroy the response in flight).
pub const HTTP_LINGER_TIMEOUT: Duration = Duration::from_secs(1);
/// Most request bytes drained while lingering.
pub const HTTP_LINGER_BYTES_MAX: usize = 64 * 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
pub const HTTP_ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// The Prometheus text format content type.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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
    let permits = Arc::new(Semaphore::new(HTTP_CONNECTIONS_MAX));
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            permit = Arc::clone(&permits).acquire_owned() => {
                let Ok(permit) = permit else { break };
                tokio::select! {
                    () = &mut shutdown => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => {
                            let state = Arc::clone(&state);
                            connections.spawn(async move {
                                if let Err(error) = serve_connection(stream, &state).await {
                                    tracing::debug!(%peer, %error, "http connection failed");
                                }
                                drop(permit);
                            });
                        }
                        Err(error) => {
                            tracing::warn!(%error, "http accept failed");
                            tokio::time::sleep(HTTP_ACCEPT_ERROR_BACKOFF).await;
                        }
                    },
                }
            }
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// A response before serialisation.
#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
    /// Extra header lines, each without CRLF.
    extra_headers: Vec<String>,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: &str) -> Self {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
            extra_headers: Vec::new(),
        }
    }

    fn to_bytes(&self, include_body: bool) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
             Cache-Control: no-store\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        for header in &self.extra_headers {
            head.push_str(header);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if include_body {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

async fn serve_connection(mut stream: TcpStream, state: &HttpState) -> std::io::Result<()> {
    let head = tokio::time::timeout(HTTP_REQUEST_READ_TIMEOUT, read_request_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request head timeout"))??;
    let (response, include_body) = match head {
        RequestHead::Complete(bytes) => respond(&bytes, state),
        RequestHead::TooLarge => (
            Response::text(431, "Request Header Fields Too Large", "request too large"),
            true,
        ),
        RequestHead::Closed => return Ok(()),
    };
    let bytes = response.to_bytes(include_body);
    tokio::time::timeout(HTTP_RESPONSE_WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "response write timeout"))??;
    // Error responses may leave request bytes unread (an oversized head, a body).
    if matches!(response.status, 400 | 405 | 431) {
        let _ = tokio::time::timeout(HTTP_LINGER_TIMEOUT, drain(&mut stream)).await;
    }
    Ok(())
}

/// Reads and discards input until end of stream or [`HTTP_LINGER_BYTES_MAX`] bytes.
async fn drain(stream: &mut TcpStream) {
    let mut chunk = [0u8; 4096];
    let mut drained = 0usize;
    while drained < HTTP_LINGER_BYTES_MAX {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(read) => drained += read,
        }
    }
}

enum RequestHead {
    /// Everything up to and including the blank line.
    Complete(Vec<u8>),
    TooLarge,
    /// The client closed before sending a full head.
    Closed,
}

async fn read_request_head(stream: &mut TcpStream) -> std::io::Result<RequestHead> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(RequestHead::Closed);
        }
        let search_from = buffer.len().saturating_sub(3);
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(end) = find(&buffer[search_from..], b"\r\n\r\n") {
            let end = search_from + end + 4;
            if end > HTTP_REQUEST_HEAD_BYTES_MAX {
                return Ok(RequestHead::TooLarge);
            }
            buffer.truncate(end);
            return Ok(RequestHead::Complete(buffer));
        }
        if buffer.len() >= HTTP_REQUEST_HEAD_BYTES_MAX {
            return Ok(RequestHead::TooLarge);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Routes one request head. Returns the response and whether to send its body (not for HEAD).
fn respond(head: &[u8], state: &HttpState) -> (Response, bool) {
    let bad_request = || (Response::text(400, "Bad Request", "bad request"), true);
    let Ok(head) = std::str::from_utf8(head) else {
        return bad_request();
    };
    let request_line = head.split("\r\n").next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return bad_request();
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return bad_request();
    }
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let include_body = method != "HEAD";
    if method != "GET" && method != "HEAD" {
        let mut response = Response::text(405, "Method Not Allowed", "method not allowed");
        response.extra_headers.push("Allow: GET, HEAD".to_owned());
        return (response, true);
    }
    let response = match path {
        "/livez" if (state.live)() => Response::text(200, "OK", "ok"),
        "/livez" => Response::text(503, "Service Unavailable", "not live"),
        "/readyz" if (state.ready)() => Response::text(200, "OK", "ready"),
        "/readyz" => Response::text(503, "Service Unavailable", "not ready"),
        "/metrics" => Response {
            status: 200,
            reason: "OK",
            content_type: METRICS_CONTENT_TYPE,
            body: state.metrics.render(),
            extra_headers: Vec::new(),
        },
        _ => Response::text(404, "Not Found", "not found"),
    };
    (response, include_body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::sync::oneshot;

    struct Server {
        address: SocketAddr,
        ready: Arc<AtomicBool>,
        metrics: Arc<Metrics>,
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start() -> Server {
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
        let task = tokio::spawn(serve_http(listener, state, async move {
            let _ = stopped.await;
        }));
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
        server.metrics.messages_accepted_total.add(3);
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
        assert_eq!(body, server.metrics.render());
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
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
}
