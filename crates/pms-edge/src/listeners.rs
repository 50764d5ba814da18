//! The SIP listeners: TLS and TCP accept loops and the UDP receive loop. Each connection (or UDP
//! peer) becomes a `SessionActor` started on the edge's arbiter; reading, TLS handshakes and
//! writing run as tokio tasks so the arbiter thread only runs actor code.
//!
//! A flow is *unauthenticated* until a request on it passes digest authentication
//! (`FlowAuthentication`, set by `SipService`). Unauthenticated flows are cheap and short-lived,
//! so that idle or spoofed sources cannot lock registered devices (or new ones) out; once
//! authenticated, a flow is served for as long as its peer keeps it.
//!
//! Invariant: per stream listener at most `unauthenticated_max` unauthenticated connections are
//! open (TLS handshakes included); a new connection when the pool is full closes the *oldest*
//! unauthenticated one, so a reconnecting device always gets a turn.
//! Invariant: per stream listener at most `unauthenticated_per_source_max` unauthenticated
//! connections come from one source (IPv4 address, IPv6 /64); a connection beyond it is closed
//! at once.
//! Invariant: a connection or UDP peer that has not authenticated `unauthenticated_timeout_secs`
//! after it was accepted (first datagram for UDP) is closed.
//! Invariant: at most `CONNECTIONS_MAX` authenticated connections per stream listener, and
//! `CONNECTIONS_MAX` authenticated UDP peers; unauthenticated UDP peers are at most
//! `unauthenticated_max`, the oldest evicted first (no per-source cap: UDP sources are
//! spoofable). A datagram from a new address therefore always gets a session.
//! Invariant: a stream that cannot be framed gets a 400 (when its head allows one) and is closed.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix::dev::ArbiterHandle;
use actix::prelude::*;
use pms_sip::framing::{DatagramFrame, Frame, FramingError, StreamFramer, datagram};
use pms_types::limits::{CONNECTIONS_MAX, SESSION_OUTBOUND_QUEUE_MAX, SIP_UDP_DATAGRAM_BYTES_MAX};
use pms_types::metrics::Metrics;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::service::SipService;
use crate::session::{
    Close, FlowAuthentication, FlowInfo, Inbound, Outbound, SessionActor, StreamClosed, Transport,
};
use crate::status::answer_raw_head;

/// How long a TLS handshake may take before the connection is dropped (the unauthenticated
/// deadline, counted from accept, may end it sooner).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from a stream per read call.
const STREAM_READ_BYTES: usize = 16 * 1024;
/// How often the UDP loop closes unauthenticated peers past their deadline.
const UDP_SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// `reason` labels of `pms_connections_refused_total`.
const REFUSED_PER_SOURCE: &str = "per_source";
const REFUSED_UNAUTHENTICATED_MAX: &str = "unauthenticated_max";
const REFUSED_UNAUTHENTICATED_TIMEOUT: &str = "unauthenticated_timeout";
const REFUSED_CONNECTIONS_MAX: &str = "connections_max";

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

/// Who a per-source cap counts together: one IPv4 address, or one IPv6 /64 (a host usually
/// holds a whole /64, so counting single IPv6 addresses would not limit anyone).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Source {
    V4(Ipv4Addr),
    V6Prefix(u64),
}

impl Source {
    fn of(address: IpAddr) -> Source {
        match address {
            IpAddr::V4(v4) => Source::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4),
                None => Source::V6Prefix(u64::try_from(u128::from(v6) >> 64).unwrap_or(u64::MAX)),
            },
        }
    }
}

/// The unauthenticated connections of one stream listener, oldest first.
struct UnauthenticatedPool {
    max: usize,
    per_source_max: usize,
    transport: Transport,
    metrics: Arc<Metrics>,
    state: Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    next_id: u64,
    /// By admission order (ids only grow), so the first entry is the oldest.
    by_age: BTreeMap<u64, PoolEntry>,
    per_source: HashMap<Source, usize>,
}

struct PoolEntry {
    source: Source,
    /// Fired when a newer connection takes this one's place.
    evict: oneshot::Sender<()>,
}

impl PoolState {
    fn forget_source(&mut self, source: Source) {
        if let Some(count) = self.per_source.get_mut(&source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_source.remove(&source);
            }
        }
    }
}

/// A connection's place in the pool; dropping it (authenticated, or closed) gives the place up.
struct PoolTicket {
    pool: Arc<UnauthenticatedPool>,
    id: u64,
}

impl Drop for PoolTicket {
    fn drop(&mut self) {
        self.pool.leave(self.id);
    }
}

impl UnauthenticatedPool {
    fn new(transport: Transport, service: &SipService) -> Arc<Self> {
        let config = service.config();
        Arc::new(UnauthenticatedPool {
            max: config.unauthenticated_max.max(1),
            per_source_max: config.unauthenticated_per_source_max.max(1),
            transport,
            metrics: service.metrics_handle(),
            state: Mutex::new(PoolState::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // Every critical section leaves the maps consistent before anything can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a new connection from `source`, closing the oldest unauthenticated one when the
    /// pool is full; `None` when `source` already has its share (the caller closes it).
    fn admit(self: &Arc<Self>, source: Source) -> Option<(PoolTicket, oneshot::Receiver<()>)> {
        let mut state = self.lock();
        if state.per_source.get(&source).copied().unwrap_or(0) >= self.per_source_max {
            self.metrics
                .connections_refused_total
                .inc(REFUSED_PER_SOURCE);
            return None;
        }
        while state.by_age.len() >= self.max {
            let Some((_, oldest)) = state.by_age.pop_first() else {
                break;
            };
            state.forget_source(oldest.source);
            let _ = oldest.evict.send(());
            self.metrics
                .connections_refused_total
                .inc(REFUSED_UNAUTHENTICATED_MAX);
            self.metrics
                .connections_unauthenticated
                .dec(self.transport.label());
        }
        let id = state.next_id;
        state.next_id += 1;
        let (evict, evicted) = oneshot::channel();
        state.by_age.insert(id, PoolEntry { source, evict });
        *state.per_source.entry(source).or_insert(0) += 1;
        self.metrics
            .connections_unauthenticated
            .inc(self.transport.label());
        Some((
            PoolTicket {
                pool: self.clone(),
                id,
            },
            evicted,
        ))
    }

    fn leave(&self, id: u64) {
        let mut state = self.lock();
        if let Some(entry) = state.by_age.remove(&id) {
            state.forget_source(entry.source);
            self.metrics
                .connections_unauthenticated
                .dec(self.transport.label());
        }
    }
}

/// The authenticated connections of one stream listener, bounded by `CONNECTIONS_MAX`.
struct AuthenticatedSlots(AtomicUsize);

/// One authenticated connection's slot, given back when dropped.
struct AuthenticatedSlot(Arc<AuthenticatedSlots>);

impl AuthenticatedSlots {
    fn is_full(&self) -> bool {
        self.0.load(Ordering::Relaxed) >= CONNECTIONS_MAX
    }

    fn take(self: &Arc<Self>) -> Option<AuthenticatedSlot> {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |taken| {
                (taken < CONNECTIONS_MAX).then_some(taken + 1)
            })
            .ok()
            .map(|_| AuthenticatedSlot(self.clone()))
    }
}

impl Drop for AuthenticatedSlot {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Completes when the connection must be closed: its deadline passed or a newer connection
/// evicted it while it was unauthenticated, or it authenticated while the listener's
/// authenticated connections were full. Once authenticated it never completes; it holds the
/// connection's pool place, then its authenticated slot, until dropped with the connection.
async fn close_unless_authenticated(
    ticket: PoolTicket,
    evicted: oneshot::Receiver<()>,
    mut authenticated: watch::Receiver<bool>,
    deadline: Instant,
    slots: Arc<AuthenticatedSlots>,
    metrics: Arc<Metrics>,
) {
    let became_authenticated = async {
        // The sender lives as long as the session; if it is gone the connection is ending.
        if authenticated.wait_for(|done| *done).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let evicted = async {
        // A dropped sender means the entry left the pool some other way: not an eviction.
        if evicted.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let refused = tokio::select! {
        () = tokio::time::sleep_until(deadline) => Some(REFUSED_UNAUTHENTICATED_TIMEOUT),
        () = evicted => Some(REFUSED_UNAUTHENTICATED_MAX),
        () = became_authenticated => None,
    };
    if let Some(reason) = refused {
        // An evicted connection's ticket is already out of the pool (and was counted there).
        if reason != REFUSED_UNAUTHENTICATED_MAX {
            metrics.connections_refused_total.inc(reason);
        }
        return;
    }
    drop(ticket);
    let Some(_slot) = slots.take() else {
        metrics
            .connections_refused_total
            .inc(REFUSED_CONNECTIONS_MAX);
        return;
    };
    std::future::pending::<()>().await;
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    service: Arc<SipService>,
    arbiter: ArbiterHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    let transport = if tls.is_some() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    let pool = UnauthenticatedPool::new(transport, &service);
    let slots = Arc::new(AuthenticatedSlots(AtomicUsize::new(0)));
    let unauthenticated_timeout =
        Duration::from_secs(service.config().unauthenticated_timeout_secs);
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
        let accepted_at = Instant::now();
        if slots.is_full() {
            // No connection could be served past its first authenticated request.
            debug!(%peer, "authenticated connection limit reached; closing");
            service
                .metrics()
                .connections_refused_total
                .inc(REFUSED_CONNECTIONS_MAX);
            continue;
        }
        let Some((ticket, evicted)) = pool.admit(Source::of(peer.ip())) else {
            debug!(%peer, "too many unauthenticated connections from this source; closing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let authentication = FlowAuthentication::new();
        let closer = close_unless_authenticated(
            ticket,
            evicted,
            authentication.subscribe(),
            accepted_at + unauthenticated_timeout,
            slots.clone(),
            service.metrics_handle(),
        );
        let (service, arbiter, tls) = (service.clone(), arbiter.clone(), tls.clone());
        tokio::spawn(async move {
            let metrics = service.metrics_handle();
            let mut closer = std::pin::pin!(closer);
            let connection = Connection {
                peer,
                local,
                service,
                arbiter,
                authentication,
            };
            match tls {
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                    let handshake = tokio::select! {
                        handshake = handshake => handshake,
                        () = &mut closer => {
                            debug!(%peer, "TLS handshake not finished in time; closing");
                            return;
                        }
                    };
                    let result = match &handshake {
                        Ok(Ok(_)) => "ok",
                        Ok(Err(_)) => "failed",
                        Err(_) => "timeout",
                    };
                    metrics.tls_handshakes_total.with(["sip", result]).inc();
                    match handshake {
                        Ok(Ok(stream)) => {
                            run_stream(stream, Transport::Tls, connection, closer).await;
                        }
                        Ok(Err(error)) => debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                }
                None => run_stream(stream, Transport::Tcp, connection, closer).await,
            }
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

/// What a stream's reader needs besides the stream.
struct Connection {
    peer: SocketAddr,
    local: SocketAddr,
    service: Arc<SipService>,
    arbiter: ArbiterHandle,
    authentication: FlowAuthentication,
}

/// Reads and frames the stream into its session until the peer closes, the stream cannot be
/// framed, or `closer` completes (a limit closed the connection).
async fn run_stream<S>(
    stream: S,
    transport: Transport,
    connection: Connection,
    closer: impl Future<Output = ()>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let Connection {
        peer,
        local,
        service,
        arbiter,
        authentication,
    } = connection;
    let mut closer = std::pin::pin!(closer);
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
        authentication,
    };
    let config = service.config().clone();
    let metrics = service.metrics_handle();
    let Some(session) =
        start_session(info, Outbound::Stream(outbound.clone()), service, &arbiter).await
    else {
        return;
    };
    let mut framer = StreamFramer::new(config.header_bytes_max, config.body_bytes_max);
    let mut buffer = vec![0u8; STREAM_READ_BYTES];
    'read: loop {
        let read = tokio::select! {
            read = reader.read(&mut buffer) => read,
            () = &mut closer => {
                debug!(%peer, "connection closed by a connection limit");
                break 'read;
            }
        };
        let read = match read {
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
                        .and_then(|head| answer_raw_head(&metrics, head, 400, reason))
                    {
                        let _ = outbound.try_send(response);
                    }
                    break 'read;
                }
            }
        }
    }
    // Invariant kept: the session's mailbox is bounded; this is its one message from the reader
    // after the last frame, so it cannot pile up.
    session.do_send(StreamClosed);
}

/// A UDP peer that no request has authenticated yet.
struct UnauthenticatedPeer {
    session: Addr<SessionActor>,
    authentication: FlowAuthentication,
    /// Its key in `UdpPeers::by_age`.
    id: u64,
    deadline: Instant,
}

/// The UDP listener's peers: a small pool of unauthenticated ones (oldest evicted, each closed
/// at its deadline) and the authenticated ones, bounded by `CONNECTIONS_MAX`.
struct UdpPeers {
    unauthenticated: HashMap<SocketAddr, UnauthenticatedPeer>,
    /// Unauthenticated peers by admission order (ids only grow): the first is the oldest.
    by_age: BTreeMap<u64, SocketAddr>,
    next_id: u64,
    authenticated: HashMap<SocketAddr, Addr<SessionActor>>,
    unauthenticated_max: usize,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl UdpPeers {
    fn new(service: &SipService) -> Self {
        let config = service.config();
        UdpPeers {
            unauthenticated: HashMap::new(),
            by_age: BTreeMap::new(),
            next_id: 0,
            authenticated: HashMap::new(),
            unauthenticated_max: config.unauthenticated_max.max(1),
            timeout: Duration::from_secs(config.unauthenticated_timeout_secs),
            metrics: service.metrics_handle(),
        }
    }

    /// The live session of `peer`, moving it to the authenticated peers once a request on it
    /// authenticated.
    fn session(&mut self, peer: SocketAddr) -> Option<Addr<SessionActor>> {
        if let Some(session) = self.authenticated.get(&peer) {
            if session.connected() {
                return Some(session.clone());
            }
            self.authenticated.remove(&peer);
        }
        let entry = self.unauthenticated.get(&peer)?;
        let (session, id, authenticated) = (
            entry.session.clone(),
            entry.id,
            entry.authentication.is_authenticated(),
        );
        if !session.connected() {
            self.forget(peer, id);
            return None;
        }
        if authenticated {
            self.forget(peer, id);
            return self.promote(peer, session);
        }
        Some(session)
    }

    fn forget(&mut self, peer: SocketAddr, id: u64) {
        self.unauthenticated.remove(&peer);
        self.by_age.remove(&id);
        self.publish();
    }

    /// Moves an authenticated session to the long-lived peers, or closes it when they are full.
    fn promote(
        &mut self,
        peer: SocketAddr,
        session: Addr<SessionActor>,
    ) -> Option<Addr<SessionActor>> {
        if self.authenticated.len() >= CONNECTIONS_MAX {
            self.authenticated.retain(|_, session| session.connected());
        }
        if self.authenticated.len() >= CONNECTIONS_MAX {
            debug!(%peer, "UDP peer limit reached; authenticated peer closed");
            self.metrics
                .connections_refused_total
                .inc(REFUSED_CONNECTIONS_MAX);
            let _ = session.try_send(Close);
            return None;
        }
        self.authenticated.insert(peer, session.clone());
        Some(session)
    }

    /// Takes the oldest unauthenticated peer out of the pool: promoted if it authenticated,
    /// else closed (counted under `reason` if it was still open).
    fn retire_oldest(&mut self, reason: &str) {
        let Some((id, peer)) = self.by_age.pop_first() else {
            return;
        };
        let Some(entry) = self.unauthenticated.remove(&peer) else {
            return;
        };
        debug_assert_eq!(entry.id, id);
        if !entry.session.connected() {
            return;
        }
        if entry.authentication.is_authenticated() {
            let _ = self.promote(peer, entry.session);
            return;
        }
        self.metrics.connections_refused_total.inc(reason);
        // A session whose mailbox is full stops itself a little later (see `SessionActor`).
        let _ = entry.session.try_send(Close);
    }

    /// Makes room for one more unauthenticated peer.
    fn make_room(&mut self) {
        while self.unauthenticated.len() >= self.unauthenticated_max && !self.by_age.is_empty() {
            self.retire_oldest(REFUSED_UNAUTHENTICATED_MAX);
        }
    }

    fn insert(
        &mut self,
        peer: SocketAddr,
        session: Addr<SessionActor>,
        authentication: FlowAuthentication,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        self.by_age.insert(id, peer);
        self.unauthenticated.insert(
            peer,
            UnauthenticatedPeer {
                session,
                authentication,
                id,
                deadline: Instant::now() + self.timeout,
            },
        );
        self.publish();
    }

    /// Closes (or promotes) the unauthenticated peers whose deadline passed.
    fn sweep(&mut self, now: Instant) {
        while let Some(peer) = self.by_age.first_key_value().map(|(_, peer)| *peer) {
            let expired = self
                .unauthenticated
                .get(&peer)
                .is_none_or(|entry| entry.deadline <= now);
            if !expired {
                break;
            }
            self.retire_oldest(REFUSED_UNAUTHENTICATED_TIMEOUT);
        }
        self.publish();
    }

    fn publish(&self) {
        self.metrics.connections_unauthenticated.set(
            Transport::Udp.label(),
            i64::try_from(self.unauthenticated.len()).unwrap_or(i64::MAX),
        );
    }
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
    let mut peers = UdpPeers::new(&service);
    let mut sweep = tokio::time::interval(UDP_SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buffer = vec![0u8; SIP_UDP_DATAGRAM_BYTES_MAX + 1];
    let body_bytes_max = service.config().body_bytes_max;
    loop {
        let received = tokio::select! {
            received = socket.recv_from(&mut buffer) => received,
            now = sweep.tick() => {
                peers.sweep(now);
                continue;
            }
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
                    head.and_then(|head| answer_raw_head(service.metrics(), head, 400, reason))
                {
                    let _ = socket.try_send_to(&response, peer);
                }
                continue;
            }
        };
        let session = match peers.session(peer) {
            Some(session) => session,
            None => {
                peers.make_room();
                let authentication = FlowAuthentication::new();
                let info = FlowInfo {
                    flow: service.flows().allocate(),
                    transport: Transport::Udp,
                    peer,
                    local,
                    authentication: authentication.clone(),
                };
                let outbound = Outbound::Datagram {
                    socket: socket.clone(),
                    peer,
                };
                let Some(session) = start_session(info, outbound, service.clone(), &arbiter).await
                else {
                    return;
                };
                peers.insert(peer, session.clone(), authentication);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_group_ipv4_addresses_and_ipv6_slash_64s() {
        let v4 = |text: &str| Source::of(text.parse().expect("address"));
        assert_eq!(v4("127.0.0.1"), v4("127.0.0.1"));
        assert_ne!(v4("127.0.0.1"), v4("127.0.0.2"));
        assert_eq!(v4("2001:db8:1:2::1"), v4("2001:db8:1:2:ffff::9"));
        assert_ne!(v4("2001:db8:1:2::1"), v4("2001:db8:1:3::1"));
        assert_eq!(v4("::ffff:10.0.0.1"), v4("10.0.0.1"));
    }
}
