//! The SIP listeners: TLS and TCP accept loops and the UDP receive loop. Each connection (or UDP
//! peer) becomes a `SessionActor` started on the edge's arbiter; reading, TLS handshakes and
//! writing run as tokio tasks so the arbiter thread only runs actor code.
//!
//! Invariant: at most `CONNECTIONS_MAX` stream connections and UDP peers are open per listener;
//! beyond it new connections are closed at once (stream) or datagrams dropped (UDP).
//! Invariant: a stream that cannot be framed gets a 400 (when its head allows one) and is closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix::dev::ArbiterHandle;
use actix::prelude::*;
use pms_sip::framing::{DatagramFrame, Frame, FramingError, StreamFramer, datagram};
use pms_types::limits::{CONNECTIONS_MAX, SESSION_OUTBOUND_QUEUE_MAX, SIP_UDP_DATAGRAM_BYTES_MAX};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::service::SipService;
use crate::session::{FlowInfo, Inbound, Outbound, SessionActor, StreamClosed, Transport};
use crate::status::response_from_raw_head;

/// How long a TLS handshake may take before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from a stream per read call.
const STREAM_READ_BYTES: usize = 16 * 1024;

/// Where and how the edge listens.
pub struct EdgeListeners {
    pub tls: Option<(TcpListener, TlsAcceptor)>,
    pub tcp: Option<TcpListener>,
    pub udp: Option<UdpSocket>,
}

/// Starts every listener. Must be called inside the actix System: sessions start on the
/// current arbiter. The loops end when `shutdown` turns true.
pub fn start(listeners: EdgeListeners, service: Arc<SipService>, shutdown: watch::Receiver<bool>) {
    let arbiter = Arbiter::current();
    if let Some((listener, acceptor)) = listeners.tls {
        tokio::spawn(accept_loop(
            listener,
            Some(acceptor),
            service.clone(),
            arbiter.clone(),
            shutdown.clone(),
        ));
    }
    if let Some(listener) = listeners.tcp {
        tokio::spawn(accept_loop(
            listener,
            None,
            service.clone(),
            arbiter.clone(),
            shutdown.clone(),
        ));
    }
    if let Some(socket) = listeners.udp {
        tokio::spawn(udp_loop(Arc::new(socket), service, arbiter, shutdown));
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    service: Arc<SipService>,
    arbiter: ArbiterHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= CONNECTIONS_MAX {
            debug!(%peer, "connection limit reached; closing");
            continue;
        }
        let _ = stream.set_nodelay(true);
        let local = match stream.local_addr() {
            Ok(local) => local,
            Err(_) => continue,
        };
        open.fetch_add(1, Ordering::Relaxed);
        let (service, arbiter, tls, open) =
            (service.clone(), arbiter.clone(), tls.clone(), open.clone());
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(stream)) => {
                            run_stream(stream, Transport::Tls, peer, local, service, arbiter).await
                        }
                        Ok(Err(error)) => debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                }
                None => run_stream(stream, Transport::Tcp, peer, local, service, arbiter).await,
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Starts a session on the arbiter and returns its address.
async fn start_session(
    info: FlowInfo,
    outbound: Outbound,
    service: Arc<SipService>,
    arbiter: &ArbiterHandle,
) -> Option<Addr<SessionActor>> {
    let (address_sender, address) = oneshot::channel();
    let started = arbiter.spawn(async move {
        let _ = address_sender.send(SessionActor::new(info, outbound, service).start());
    });
    if !started {
        return None;
    }
    address.await.ok()
}

async fn run_stream<S>(
    stream: S,
    transport: Transport,
    peer: SocketAddr,
    local: SocketAddr,
    service: Arc<SipService>,
    arbiter: ArbiterHandle,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (outbound, mut queued) = mpsc::channel::<Vec<u8>>(SESSION_OUTBOUND_QUEUE_MAX);
    tokio::spawn(async move {
        while let Some(bytes) = queued.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
    let flow = service.flows().allocate();
    let info = FlowInfo {
        flow,
        transport,
        peer,
        local,
    };
    let config = service.config().clone();
    let Some(session) =
        start_session(info, Outbound::Stream(outbound.clone()), service, &arbiter).await
    else {
        return;
    };
    let mut framer = StreamFramer::new(config.header_bytes_max, config.body_bytes_max);
    let mut buffer = vec![0u8; STREAM_READ_BYTES];
    'read: loop {
        let read = match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        framer.push(buffer.get(..read).unwrap_or_default());
        while let Some(frame) = framer.next_frame() {
            match frame {
                Ok(frame) => {
                    if session.send(Inbound(frame)).await.is_err() {
                        break 'read;
                    }
                }
                Err(error) => {
                    debug!(%peer, %error, "stream cannot be framed; closing");
                    let reason = match &error {
                        pms_sip::framing::FramingError::HeaderTooLarge { .. } => {
                            "Header Block Too Large"
                        }
                        pms_sip::framing::FramingError::MissingContentLength { .. } => {
                            "Missing Content-Length"
                        }
                        pms_sip::framing::FramingError::BodyHardLimit { .. } => {
                            "Content-Length Too Large"
                        }
                        _ => "Invalid Content-Length",
                    };
                    if let Some(response) = error
                        .head()
                        .and_then(|head| response_from_raw_head(head, 400, reason))
                    {
                        let _ = outbound.try_send(response);
                    }
                    break 'read;
                }
            }
        }
    }
    session.do_send(StreamClosed);
}

async fn udp_loop(
    socket: Arc<UdpSocket>,
    service: Arc<SipService>,
    arbiter: ArbiterHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    let local = match socket.local_addr() {
        Ok(local) => local,
        Err(error) => {
            warn!(%error, "UDP socket has no local address");
            return;
        }
    };
    let mut peers: HashMap<SocketAddr, Addr<SessionActor>> = HashMap::new();
    let mut buffer = vec![0u8; SIP_UDP_DATAGRAM_BYTES_MAX + 1];
    let body_bytes_max = service.config().body_bytes_max;
    loop {
        let received = tokio::select! {
            received = socket.recv_from(&mut buffer) => received,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (length, peer) = match received {
            Ok(received) => received,
            Err(error) => {
                debug!(%error, "UDP receive failed");
                continue;
            }
        };
        let bytes = buffer.get(..length).unwrap_or_default();
        let frame = match datagram(bytes, body_bytes_max) {
            Ok(DatagramFrame::Message(bytes)) => Frame::Message(bytes),
            Ok(DatagramFrame::KeepAlive) => continue,
            Ok(DatagramFrame::Oversized {
                head,
                declared_body_len,
            }) => Frame::Oversized {
                head,
                declared_body_len,
            },
            Err(error) => {
                debug!(%peer, %error, "datagram refused");
                // RFC 3261 §18.3: a datagram shorter than its Content-Length is answered 400.
                let (head, reason) = match &error {
                    FramingError::ContentLengthBeyondDatagram { .. } => (
                        head_of_datagram(bytes),
                        "Content-Length exceeds the datagram",
                    ),
                    _ => (error.head(), "Invalid Content-Length"),
                };
                if let Some(response) =
                    head.and_then(|head| response_from_raw_head(head, 400, reason))
                {
                    service.metrics().sip_requests_total.inc("400");
                    let _ = socket.try_send_to(&response, peer);
                }
                continue;
            }
        };
        let session = match peers.get(&peer).filter(|session| session.connected()) {
            Some(session) => session.clone(),
            None => {
                if peers.len() >= CONNECTIONS_MAX {
                    peers.retain(|_, session| session.connected());
                    if peers.len() >= CONNECTIONS_MAX {
                        debug!(%peer, "UDP peer limit reached; datagram dropped");
                        continue;
                    }
                }
                let flow = service.flows().allocate();
                let info = FlowInfo {
                    flow,
                    transport: Transport::Udp,
                    peer,
                    local,
                };
                let outbound = Outbound::Datagram {
                    socket: socket.clone(),
                    peer,
                };
                let Some(session) = start_session(info, outbound, service.clone(), &arbiter).await
                else {
                    return;
                };
                peers.insert(peer, session.clone());
                session
            }
        };
        // UDP has no backpressure: a datagram a busy session cannot take is dropped, and the
        // peer retransmits.
        let _ = session.try_send(Inbound(frame));
    }
}

/// The head of a datagram (through its blank line), when it has one.
fn head_of_datagram(bytes: &[u8]) -> Option<&[u8]> {
    bytes
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .and_then(|end| bytes.get(..end + 4))
}
