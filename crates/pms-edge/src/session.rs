//! `SessionActor`: one per connection (TLS/TCP) or per UDP peer — a *flow* in RFC 5626 terms.
//!
//! Inbound: frames from the connection's reader task arrive as `Inbound` messages; requests go
//! to a per-session worker task that handles them one after another (so a device's pipelined
//! MESSAGEs are proposed in the order they were sent); responses are matched to outstanding
//! deliveries by their Via branch.
//! Outbound: bytes go to a bounded writer queue (streams) or straight to the UDP socket.
//!
//! Invariant: at most one delivery transaction is outstanding per flow (RFC 3428 §8); a second
//! `Deliver` while one is pending is refused with `DeliveryOutcome::Busy`.
//! Invariant: a full outbound queue means the peer stopped reading: the session stops, and its
//! flow leaves the registry, so nothing more is delivered through it.
//! Invariant: `FlowAuthentication` only ever goes from unauthenticated to authenticated; it is
//! set when a request on the flow passed digest authentication, and the listeners bound and
//! time out flows that are not authenticated (see `listeners.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use pms_sip::framing::Frame;
use pms_sip::message::{ParseError, Request, SipMessage, parse};
use pms_types::FlowId;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info_span, warn};

use crate::service::{Reply, SipService};
use crate::status::answer_raw_head;

/// RFC 3261 T1: first UDP retransmission interval.
const UDP_T1_MS: u64 = 500;
/// RFC 3261 T2: longest UDP retransmission interval for non-INVITE requests.
const UDP_T2_MS: u64 = 4_000;
/// Requests queued for the session's worker before the session pushes back on its reader.
const SESSION_REQUESTS_MAX: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tls,
    Tcp,
    Udp,
}

impl Transport {
    /// The Via transport token.
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Tls => "TLS",
            Transport::Tcp => "TCP",
            Transport::Udp => "UDP",
        }
    }

    /// OpenTelemetry's `network.transport` (TLS runs over TCP).
    pub fn network_transport(self) -> &'static str {
        match self {
            Transport::Tls | Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }

    /// The label used in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Tls => "tls",
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

/// Where a session's bytes go.
#[derive(Clone, Debug)]
pub enum Outbound {
    Stream(mpsc::Sender<Vec<u8>>),
    Datagram {
        socket: Arc<UdpSocket>,
        peer: SocketAddr,
    },
}

impl Outbound {
    /// Queues bytes for the peer. `false` when the peer cannot take them (queue full or closed).
    pub fn send(&self, bytes: Vec<u8>) -> bool {
        match self {
            Outbound::Stream(sender) => sender.try_send(bytes).is_ok(),
            // UDP is unreliable by contract: a datagram the kernel cannot take now is a lost
            // datagram, which retransmission covers.
            Outbound::Datagram { socket, peer } => {
                let _ = socket.try_send_to(&bytes, *peer);
                true
            }
        }
    }
}

/// What the request handlers know about the flow a request came on.
#[derive(Clone, Debug)]
pub struct FlowInfo {
    pub flow: FlowId,
    pub transport: Transport,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Whether a request on this flow passed digest authentication.
    pub authentication: FlowAuthentication,
}

/// Whether a request on a flow has passed digest authentication: set by `SipService`, watched
/// by the listener that holds the flow's connection (an unauthenticated flow is short-lived).
#[derive(Clone, Debug)]
pub struct FlowAuthentication(Arc<watch::Sender<bool>>);

impl Default for FlowAuthentication {
    fn default() -> Self {
        Self::new()
    }
}

impl FlowAuthentication {
    /// A flow nothing has authenticated on yet.
    pub fn new() -> Self {
        FlowAuthentication(Arc::new(watch::Sender::new(false)))
    }

    /// Records that a request on the flow authenticated (idempotent; never undone).
    pub fn mark_authenticated(&self) {
        self.0
            .send_if_modified(|authenticated| !std::mem::replace(authenticated, true));
    }

    pub fn is_authenticated(&self) -> bool {
        *self.0.borrow()
    }

    /// Follows the flag (for the listener that closes unauthenticated connections).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }
}

/// How a delivery attempt through this flow ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The device's final response.
    Final { status: u16, reason: String },
    /// No final response within the delivery timeout.
    TimedOut,
    /// The flow closed before a final response.
    FlowClosed,
    /// Another delivery is outstanding on this flow.
    Busy,
}

/// A frame read from the connection.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Inbound(pub Frame);

/// The reader saw the end of the stream or an error.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StreamClosed;

/// Close the session (shutdown drain or idle UDP peer).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close;

/// Send `request` to the device and report its final response.
#[derive(Message)]
#[rtype(result = "oneshot::Receiver<DeliveryOutcome>")]
pub struct Deliver {
    pub request: Request,
    pub timeout: Duration,
}

/// Most recent server transactions a session remembers for retransmissions.
const ANSWERED_MAX: usize = 32;

/// Where a server transaction of this session is (RFC 3261 §17.2.2).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Answer {
    /// Its final response waits for the synchronous window: a retransmission gets 100 Trying.
    Pending,
    /// Its final response, sent again for every retransmission.
    Final(Vec<u8>),
}

/// The last transactions of a session by key (Via branch + CSeq), bounded. Shared between the
/// session's request worker and the tasks that send answers after the synchronous window.
#[derive(Clone, Default)]
struct AnsweredCache {
    entries: Arc<std::sync::Mutex<std::collections::VecDeque<(String, Answer)>>>,
}

impl AnsweredCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<(String, Answer)>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, key: &str) -> Option<Answer> {
        self.lock()
            .iter()
            .find(|(known, _)| known == key)
            .map(|(_, answer)| answer.clone())
    }

    /// Records `answer` for `key`, replacing what was there.
    fn insert(&self, key: String, answer: Answer) {
        let mut entries = self.lock();
        if let Some(entry) = entries.iter_mut().find(|(known, _)| *known == key) {
            entry.1 = answer;
            return;
        }
        if entries.len() >= ANSWERED_MAX {
            entries.pop_front();
        }
        entries.push_back((key, answer));
    }
}

/// Identifies a server transaction (RFC 3261 §17.2.3): top Via branch and CSeq.
fn transaction_key(request: &Request) -> Option<String> {
    let branch = request.via_branch()?;
    let cseq = request.headers.get("CSeq")?;
    Some(format!("{branch} {cseq}"))
}

struct Pending {
    branch: String,
    reply: oneshot::Sender<DeliveryOutcome>,
    bytes: Vec<u8>,
    retransmit_ms: u64,
}

pub struct SessionActor {
    info: FlowInfo,
    outbound: Outbound,
    service: Arc<SipService>,
    requests: Option<mpsc::Sender<Request>>,
    pending: Option<Pending>,
    last_inbound: std::time::Instant,
}

impl SessionActor {
    pub fn new(info: FlowInfo, outbound: Outbound, service: Arc<SipService>) -> Self {
        SessionActor {
            info,
            outbound,
            service,
            requests: None,
            pending: None,
            last_inbound: std::time::Instant::now(),
        }
    }

    fn send_bytes(&mut self, bytes: Vec<u8>, ctx: &mut Context<Self>) {
        if !self.outbound.send(bytes) {
            warn!(peer = %self.info.peer, "outbound queue full or closed; closing flow");
            ctx.stop();
        }
    }

    fn on_message(&mut self, bytes: &[u8], ctx: &mut Context<Self>) {
        match parse(bytes) {
            Ok(SipMessage::Request(request)) => self.on_request(request, ctx),
            Ok(SipMessage::Response(response)) => {
                let branch = response.via_branch();
                let Some(pending) = self
                    .pending
                    .take_if(|pending| Some(&pending.branch) == branch.as_ref())
                else {
                    debug!(
                        status = response.status,
                        "response matches no outstanding delivery"
                    );
                    return;
                };
                if response.status < 200 {
                    self.pending = Some(pending);
                    return;
                }
                let _ = pending.reply.send(DeliveryOutcome::Final {
                    status: response.status,
                    reason: response.reason,
                });
            }
            Err(error) => {
                let (status, reason) = match &error {
                    ParseError::InvalidUri { detail, .. }
                        if *detail == pms_sip::message::NOT_SIP_URI =>
                    {
                        (416, "Unsupported URI Scheme".to_string())
                    }
                    ParseError::UnsupportedVersion { .. } => {
                        (505, "Version Not Supported".to_string())
                    }
                    _ => (400, error.reason()),
                };
                if let Some(response) =
                    answer_raw_head(self.service.metrics(), bytes, status, &reason)
                {
                    self.send_bytes(response, ctx);
                }
                debug!(peer = %self.info.peer, %error, "unparseable message");
            }
        }
    }

    fn on_request(&mut self, request: Request, ctx: &mut Context<Self>) {
        let Some(requests) = &self.requests else {
            return;
        };
        match requests.try_send(request) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(request)) => {
                // The device sends faster than it reads answers: tell it to slow down.
                let refusal = crate::status::Refusal::Unavailable {
                    retry_after_secs: 1,
                };
                let response = refusal.response(&request, &self.service.to_tag());
                self.send_bytes(response.to_bytes(), ctx);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => ctx.stop(),
        }
    }

    fn retransmit(&mut self, ctx: &mut Context<Self>) {
        let Some(pending) = &mut self.pending else {
            return;
        };
        let bytes = pending.bytes.clone();
        let branch = pending.branch.clone();
        pending.retransmit_ms = (pending.retransmit_ms * 2).min(UDP_T2_MS);
        let next = Duration::from_millis(pending.retransmit_ms);
        self.send_bytes(bytes, ctx);
        ctx.run_later(next, move |actor, ctx| {
            if actor
                .pending
                .as_ref()
                .is_some_and(|pending| pending.branch == branch)
            {
                actor.retransmit(ctx);
            }
        });
    }
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(64);
        let (sender, mut receiver) = mpsc::channel::<Request>(SESSION_REQUESTS_MAX);
        self.requests = Some(sender);
        let service = self.service.clone();
        let info = self.info.clone();
        let outbound = self.outbound.clone();
        // Invariant: one worker per session handles requests in arrival order.
        tokio::spawn(async move {
            let answered = AnsweredCache::default();
            while let Some(request) = receiver.recv().await {
                let key = transaction_key(&request);
                // A retransmission is absorbed (RFC 3261 §17.2.2), never run again: its digest
                // nonce count would look like a replay and get 403.
                match key.as_ref().and_then(|key| answered.get(key)) {
                    Some(Answer::Final(bytes)) => {
                        let _ = outbound.send(bytes);
                        continue;
                    }
                    Some(Answer::Pending) => {
                        let mut trying = pms_sip::message::response_to(&request, 100, "Trying", "");
                        crate::via::stamp_top_via(&mut trying, info.peer);
                        let _ = outbound.send(trying.to_bytes());
                        continue;
                    }
                    None => {}
                }
                let in_flight = service.begin();
                let span = info_span!("sip_transaction", method = %request.method.as_str(), peer = %info.peer, call_id = request.call_id().unwrap_or_default(),
                    otel.name = %format!("SIP {}", request.method.as_str()), otel.kind = "server", sip.method = %request.method.as_str(),
                    network.peer.address = %info.peer.ip(), network.peer.port = i64::from(info.peer.port()), network.transport = info.transport.network_transport(),
                    network.protocol.name = "sip", messaging.message.id = tracing::field::Empty);
                let mut reply =
                    tracing::Instrument::instrument(service.handle(request, &info), span.clone())
                        .await;
                reply.stamp_top_via(info.peer);
                let remember: crate::service::RememberAnswer = match key {
                    Some(key) => {
                        if matches!(reply, Reply::AfterWindow { .. }) {
                            answered.insert(key.clone(), Answer::Pending);
                        }
                        let answered = answered.clone();
                        Box::new(move |bytes: &[u8]| {
                            answered.insert(key, Answer::Final(bytes.to_vec()));
                        })
                    }
                    None => Box::new(|_: &[u8]| {}),
                };
                reply.send(
                    &outbound,
                    span,
                    in_flight,
                    service.metrics_handle(),
                    remember,
                );
            }
        });
        if self.info.transport == Transport::Udp {
            // The UDP listener closes an unauthenticated peer at its deadline; should its
            // `Close` not fit in this mailbox, the session stops itself a deadline later.
            let unauthenticated_timeout =
                Duration::from_secs(self.service.config().unauthenticated_timeout_secs);
            ctx.run_later(unauthenticated_timeout * 2, |actor, ctx| {
                if !actor.info.authentication.is_authenticated() {
                    ctx.stop();
                }
            });
            // A UDP "flow" has no close: it ends when the peer has been silent for longer than
            // any registration it could hold (its refreshes count as activity).
            let idle = Duration::from_secs(self.service.config().register_expires_max_secs + 60);
            ctx.run_interval(Duration::from_secs(30), move |actor, ctx| {
                if actor.last_inbound.elapsed() > idle && actor.pending.is_none() {
                    ctx.stop();
                }
            });
        }
        self.service.flows().insert(self.info.flow, ctx.address());
        self.service
            .metrics()
            .connections_open
            .inc(self.info.transport.label());
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.service.flows().remove(self.info.flow);
        SipService::flow_closed(&self.service, self.info.flow);
        self.service
            .metrics()
            .connections_open
            .dec(self.info.transport.label());
        if let Some(pending) = self.pending.take() {
            let _ = pending.reply.send(DeliveryOutcome::FlowClosed);
        }
    }
}

impl Handler<Inbound> for SessionActor {
    type Result = ();

    fn handle(&mut self, Inbound(frame): Inbound, ctx: &mut Self::Context) {
        self.last_inbound = std::time::Instant::now();
        match frame {
            Frame::Message(bytes) => self.on_message(&bytes, ctx),
            Frame::KeepAlivePing => {
                self.service
                    .metrics()
                    .sip_keepalives_total
                    .inc(self.info.transport.label());
                self.send_bytes(b"\r\n".to_vec(), ctx);
            }
            Frame::KeepAlivePong => {}
            Frame::Oversized {
                head,
                declared_body_len,
            } => {
                debug!(peer = %self.info.peer, declared_body_len, "oversized body refused");
                if let Some(response) = answer_raw_head(
                    self.service.metrics(),
                    &head,
                    413,
                    "Request Entity Too Large",
                ) {
                    self.send_bytes(response, ctx);
                }
            }
        }
    }
}

impl Handler<StreamClosed> for SessionActor {
    type Result = ();

    fn handle(&mut self, _: StreamClosed, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<Close> for SessionActor {
    type Result = ();

    fn handle(&mut self, _: Close, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<Deliver> for SessionActor {
    type Result = MessageResult<Deliver>;

    fn handle(
        &mut self,
        Deliver {
            mut request,
            timeout,
        }: Deliver,
        ctx: &mut Self::Context,
    ) -> Self::Result {
        let (reply, receiver) = oneshot::channel();
        if self.pending.is_some() {
            let _ = reply.send(DeliveryOutcome::Busy);
            return MessageResult(receiver);
        }
        let branch = format!("z9hG4bK{}", hex::encode(rand::random::<[u8; 12]>()));
        request.headers.set(
            "Via",
            format!(
                "SIP/2.0/{} {};branch={branch}",
                self.info.transport.via_token(),
                self.info.local
            ),
        );
        let bytes = request.to_bytes();
        self.pending = Some(Pending {
            branch: branch.clone(),
            reply,
            bytes: bytes.clone(),
            retransmit_ms: UDP_T1_MS,
        });
        self.send_bytes(bytes, ctx);
        if self.info.transport == Transport::Udp {
            let retransmit_branch = branch.clone();
            ctx.run_later(Duration::from_millis(UDP_T1_MS), move |actor, ctx| {
                if actor
                    .pending
                    .as_ref()
                    .is_some_and(|pending| pending.branch == retransmit_branch)
                {
                    actor.retransmit(ctx);
                }
            });
        }
        ctx.run_later(timeout, move |actor, _| {
            if let Some(pending) = actor.pending.take_if(|pending| pending.branch == branch) {
                let _ = pending.reply.send(DeliveryOutcome::TimedOut);
            }
        });
        MessageResult(receiver)
    }
}
