//! `SipService`: what the edge does with each request — the registrar (REGISTER), MESSAGE
//! admission (authenticate, check, seal, commit, answer), OPTIONS, and refusals.
//!
//! Invariant: nothing is proposed for a request that failed authentication or admission checks
//! (guarantee 7: refused before anything is stored).
//! Invariant: credentials from a source that failed authentication too often (on any account,
//! or on the account they name) are refused before they are checked (`auth_throttle`).
//! Invariant: a sender over its rate or its queued quota for one recipient is refused alone;
//! other senders still reach that recipient (`sender_rate`, `SenderQuota`).
//! Invariant: a MESSAGE is answered 200/202 only after `propose(Enqueue)` returned `Enqueued`;
//! 200 only when the recipient's device acknowledged it within the synchronous window.
//! Invariant: plaintext body, content type and sender exist only in memory; the proposed command
//! carries them sealed under the recipient's data key.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Addr;
use pms_mailbox::{
    Binding, BindingChange, CatchUp, Command, CommandResponse, DedupKey, MailboxService,
    MessagePayload, MessageState, NewMessage, ProposeError, SenderKey, SenderQuota, UserRecord,
    query,
};
use pms_sip::digest::{Algorithm, DigestError, DigestServer};
use pms_sip::encoding::parse_content_encoding;
use pms_sip::imdn::{ImdnError, imdn_fields};
use pms_sip::message::{Contact, Method, NOT_SIP_URI, ParseError, Request, Response, response_to};
use pms_types::metrics::Metrics;
use pms_types::{Clock, FlowId, GroupId, MessageId, UnixMillis, UserId};
use tokio::sync::oneshot;
use tracing::{Span, debug, warn};

use crate::auth_throttle::{AuthThrottle, SourceKey};
use crate::config::EdgeConfig;
use crate::flows::FlowRegistry;
use crate::keyring::Keyring;
use crate::mailbox::{DeliveryWaiters, MailboxSupervisorActor, Wake};
use crate::sender_rate::SenderRateLimiter;
use crate::session::{Deliver, DeliveryOutcome, FlowInfo, Outbound, Transport};
use crate::status::{ALLOW, Refusal, count_answer};
use pms_types::time::rfc1123;

/// Option tags PMS supports (`Supported` of OPTIONS and REGISTER answers; a `Require` naming
/// anything else gets 420).
pub const SUPPORTED: &str = "outbound";

/// Body types PMS stores (lower-case `type/subtype`).
const ACCEPTED_MIME_TYPES: [&str; 3] = ["text/plain", "message/cpim", "message/imdn+xml"];

/// The answer to one request: now, or after the synchronous delivery window.
pub enum Reply {
    /// No response (ACK).
    Nothing,
    Now(Response),
    /// `accepted` (202) unless `delivered` fires within `window`, then `promoted` (200).
    AfterWindow {
        accepted: Response,
        promoted: Response,
        delivered: oneshot::Receiver<()>,
        window: Duration,
    },
}

/// Counts a final answer under its CSeq's method (every response PMS builds copies the CSeq).
fn count_answered(metrics: &Metrics, response: &Response) {
    let method = response.headers.cseq().map(|(_, method)| method);
    let method = method.as_ref().map_or("", Method::as_str);
    count_answer(metrics, method, response.status);
}

impl Reply {
    /// Adds `received`/`rport` to the top Via of every response in the reply.
    pub fn stamp_top_via(&mut self, peer: std::net::SocketAddr) {
        match self {
            Reply::Nothing => {}
            Reply::Now(response) => crate::via::stamp_top_via(response, peer),
            Reply::AfterWindow {
                accepted, promoted, ..
            } => {
                crate::via::stamp_top_via(accepted, peer);
                crate::via::stamp_top_via(promoted, peer);
            }
        }
    }

    /// Sends the reply through `outbound`, waiting for the window in a task of its own so that
    /// the session's next request is not held up; `remember` gets the final response's bytes
    /// as they are sent (the session replays them to retransmissions).
    /// Every final response of a transaction is counted here, once, when it is sent.
    pub fn send(
        self,
        outbound: &Outbound,
        span: Span,
        in_flight: InFlight,
        metrics: Arc<Metrics>,
        remember: RememberAnswer,
    ) {
        match self {
            Reply::Nothing => drop(in_flight),
            Reply::Now(response) => {
                count_answered(&metrics, &response);
                let bytes = response.to_bytes();
                remember(&bytes);
                let _ = outbound.send(bytes);
                drop(in_flight);
            }
            Reply::AfterWindow {
                accepted,
                promoted,
                delivered,
                window,
            } => {
                let outbound = outbound.clone();
                tokio::spawn(tracing::Instrument::instrument(
                    async move {
                        let response = match tokio::time::timeout(window, delivered).await {
                            Ok(Ok(())) => promoted,
                            _ => accepted,
                        };
                        count_answered(&metrics, &response);
                        let bytes = response.to_bytes();
                        remember(&bytes);
                        let _ = outbound.send(bytes);
                        drop(in_flight);
                    },
                    span,
                ));
            }
        }
    }
}

/// Called with a final response's bytes as they are sent (the session keeps them for
/// retransmissions).
pub type RememberAnswer = Box<dyn FnOnce(&[u8]) + Send>;

/// Counts a transaction as in flight until dropped (after its final response is queued).
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Shared state of the edge, used from session workers and mailbox actors alike.
pub struct SipService {
    config: EdgeConfig,
    mailboxes: Arc<dyn MailboxService>,
    keyring: Arc<Keyring>,
    digest: Mutex<DigestServer>,
    /// Failed authentications per source and account (brute-force throttle).
    auth_throttle: Mutex<AuthThrottle>,
    /// MESSAGE rate per (sender, recipient).
    sender_rate: Mutex<SenderRateLimiter>,
    /// Keys the hash that stands for a sender in its recipient's mailbox ([`SenderKey`]).
    sender_key_secret: [u8; 32],
    metrics: Arc<Metrics>,
    flows: Arc<FlowRegistry>,
    clock: Arc<dyn Clock>,
    waiters: Arc<DeliveryWaiters>,
    supervisor: Mutex<Option<Addr<MailboxSupervisorActor>>>,
    in_flight: Arc<AtomicUsize>,
    remote_flows: Mutex<Option<Arc<dyn RemoteFlows>>>,
    /// Set when the node stops: closing flows are not unbound one by one.
    draining: std::sync::atomic::AtomicBool,
}

/// Delivery through flows that other nodes hold (a device registered through another node of
/// the cluster). `pmsd` implements it over gRPC; a single node needs none.
pub trait RemoteFlows: Send + Sync + 'static {
    /// Sends `request` through `flow` on the node that holds it and waits up to `timeout` for
    /// the device's final response. An unreachable node holds no usable flow: `FlowClosed`.
    fn deliver(
        &self,
        flow: FlowId,
        request: Request,
        timeout: Duration,
    ) -> pms_mailbox::BoxFuture<'_, DeliveryOutcome>;
}

impl std::fmt::Debug for SipService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipService")
            .field("domain", &self.config.domain)
            .finish_non_exhaustive()
    }
}

impl SipService {
    pub fn new(
        config: EdgeConfig,
        mailboxes: Arc<dyn MailboxService>,
        keyring: Arc<Keyring>,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let digest = DigestServer::new(
            config.domain.clone(),
            config.digest_secret.unwrap_or_else(rand::random),
            config.digest_algorithms.clone(),
        );
        let flows = Arc::new(FlowRegistry::new(config.node, config.incarnation));
        let auth_throttle = Mutex::new(AuthThrottle::new(config.auth_throttle));
        let sender_rate = Mutex::new(SenderRateLimiter::new(config.sender_rate));
        let sender_key_secret = keyring.master().derive_secret("mailbox-sender-key");
        SipService {
            config,
            mailboxes,
            keyring,
            digest: Mutex::new(digest),
            auth_throttle,
            sender_rate,
            sender_key_secret,
            metrics,
            flows,
            clock,
            waiters: Arc::new(DeliveryWaiters::default()),
            supervisor: Mutex::new(None),
            in_flight: Arc::new(AtomicUsize::new(0)),
            remote_flows: Mutex::new(None),
            draining: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn config(&self) -> &EdgeConfig {
        &self.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A shared handle on the metrics, for work that outlives a borrow of the service.
    pub fn metrics_handle(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    pub fn flows(&self) -> &FlowRegistry {
        &self.flows
    }

    pub fn mailboxes(&self) -> &Arc<dyn MailboxService> {
        &self.mailboxes
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    pub fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    pub fn waiters(&self) -> &DeliveryWaiters {
        &self.waiters
    }

    /// Connects delivery through flows held by other nodes.
    pub fn set_remote_flows(&self, remote: Arc<dyn RemoteFlows>) {
        *self
            .remote_flows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(remote);
    }

    pub fn remote_flows(&self) -> Option<Arc<dyn RemoteFlows>> {
        self.remote_flows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Sends `request` to the device on `flow`, one of this node's flows, and waits up to
    /// `timeout` for its final response (the far end of [`RemoteFlows::deliver`]).
    pub async fn deliver_local(
        &self,
        flow: FlowId,
        request: Request,
        timeout: Duration,
    ) -> DeliveryOutcome {
        let span = tracing::info_span!(
            "sip_push",
            otel.name = %format!("SIP {} push", request.method.as_str()),
            otel.kind = "client",
            sip.method = %request.method.as_str(),
            network.protocol.name = "sip",
            pms.flow = ?flow,
            sip.status_code = tracing::field::Empty,
            pms.outcome = tracing::field::Empty,
        );
        let outcome = tracing::Instrument::instrument(
            async {
                let Some(session) = self.flows.session(flow) else {
                    return DeliveryOutcome::FlowClosed;
                };
                match session.send(Deliver { request, timeout }).await {
                    Ok(receiver) => receiver.await.unwrap_or(DeliveryOutcome::FlowClosed),
                    Err(_) => DeliveryOutcome::FlowClosed,
                }
            },
            span.clone(),
        )
        .await;
        match &outcome {
            DeliveryOutcome::Final { status, .. } => {
                span.record("sip.status_code", i64::from(*status));
            }
            other => {
                span.record("pms.outcome", tracing::field::debug(other));
            }
        }
        outcome
    }

    /// Connects the mailbox supervisor (started after the service, inside the actix System).
    pub fn set_supervisor(&self, supervisor: Addr<MailboxSupervisorActor>) {
        *self
            .supervisor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(supervisor);
    }

    /// Asks the user's mailbox actor to look at its queue and devices.
    pub fn wake(&self, user: &UserId) {
        self.send_wake(user, false);
    }

    /// Starts the user's mailbox actor unless one runs (the leader's resume sweep).
    pub fn wake_for_resume(&self, user: &UserId) {
        self.send_wake(user, true);
    }

    fn send_wake(&self, user: &UserId, resume: bool) {
        let supervisor = self
            .supervisor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(supervisor) = supervisor {
            // The supervisor's mailbox is large; a full one means it is already busy waking
            // actors, and every actor re-reads its queue when it runs, so a lost wake-up is
            // only delay (the retry timers and the next REGISTER wake it again).
            let wake = Wake {
                user: user.clone(),
                resume,
            };
            if supervisor.try_send(wake).is_err() {
                debug!(%user, "mailbox supervisor busy; wake-up dropped");
            }
        }
    }

    /// A flow closed: its bindings are no longer usable (RFC 5626), so they are unbound (each
    /// only if still on this flow), and other nodes stop counting the device as reachable.
    /// Not during a shutdown drain: the node's restart unbinds its earlier flows as a whole.
    pub fn flow_closed(service: &Arc<SipService>, flow: FlowId) {
        let bindings = service.flows.take_bindings(flow);
        if bindings.is_empty() || service.draining.load(Ordering::SeqCst) {
            return;
        }
        let service = service.clone();
        tokio::spawn(async move {
            for (user, key) in bindings {
                let group = service.config.mailbox_group(&user);
                let command = Command::UnbindFlow { user, key, flow };
                if let Err(error) = service.mailboxes.propose(group, command).await {
                    debug!(
                        ?error,
                        "unbinding a closed flow failed; the binding expires"
                    );
                }
            }
        });
    }

    /// Marks a transaction in flight (shutdown waits for it).
    pub fn begin(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.in_flight.clone())
    }

    /// Waits until no transaction is in flight (or `timeout` passed), then closes every flow.
    /// Called after the listeners stopped accepting.
    pub async fn drain(&self, timeout: Duration) {
        self.draining.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + timeout;
        while self.in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for session in self.flows.sessions() {
            let _ = session.send(crate::session::Close).await;
        }
    }

    /// A random To tag for responses this node creates.
    pub fn to_tag(&self) -> String {
        hex::encode(rand::random::<[u8; 6]>())
    }

    /// Handles one request from a flow.
    pub async fn handle(&self, request: Request, flow: &FlowInfo) -> Reply {
        let to_tag = self.to_tag();
        // ACK has no response; nothing PMS sends creates a dialog to ACK.
        if request.method == Method::Ack {
            return Reply::Nothing;
        }
        let reply = match Self::check_common(&request) {
            Err(refusal) => Err(refusal),
            Ok(()) => match request.method {
                Method::Register => self.register(&request, flow, &to_tag).await.map(Reply::Now),
                Method::Message => self.message(&request, flow, &to_tag).await,
                Method::Options => {
                    let mut response = response_to(&request, 200, "OK", &to_tag);
                    response.headers.push("Allow", ALLOW);
                    response.headers.push("Accept", crate::status::ACCEPT);
                    response
                        .headers
                        .push("Accept-Encoding", pms_sip::encoding::ACCEPT_ENCODING);
                    response.headers.push("Supported", SUPPORTED);
                    Ok(Reply::Now(response))
                }
                _ => Err(Refusal::MethodNotAllowed),
            },
        };
        match reply {
            Ok(reply) => reply,
            Err(refusal) => {
                let response = refusal.response(&request, &to_tag);
                if let Refusal::Internal(detail) = &refusal {
                    warn!(%detail, "request failed inside PMS");
                }
                Reply::Now(response)
            }
        }
    }

    /// Checks every request PMS answers must pass, whatever its method: a From tag (RFC 3261
    /// §8.1.1.3) and no `Require` option tag PMS does not support (§8.2.2.3: 420).
    fn check_common(request: &Request) -> Result<(), Refusal> {
        let from = request
            .from()
            .map_err(|error| Refusal::Malformed(error.reason()))?;
        if from.tag().is_none_or(str::is_empty) {
            return Err(Refusal::Malformed("From header has no tag".into()));
        }
        let unsupported: Vec<String> = request
            .headers
            .get_list("Require")
            .into_iter()
            .map(str::trim)
            .filter(|tag| !tag.is_empty())
            .filter(|tag| {
                !SUPPORTED
                    .split(',')
                    .any(|known| known.trim().eq_ignore_ascii_case(tag))
            })
            .map(truncate)
            .collect();
        if !unsupported.is_empty() {
            return Err(Refusal::BadExtension {
                unsupported: unsupported.join(", "),
            });
        }
        Ok(())
    }

    /// The Request-URI, or the refusal a bad one gets (416 for another scheme, else 400).
    fn request_uri(request: &Request) -> Result<pms_sip::message::SipUri, Refusal> {
        request.request_uri().map_err(|error| match error {
            ParseError::InvalidUri { detail, .. } if detail == NOT_SIP_URI => {
                Refusal::UnsupportedUriScheme
            }
            error => Refusal::Malformed(error.reason()),
        })
    }

    fn check_max_forwards(request: &Request) -> Result<(), Refusal> {
        if request.max_forwards() == Some(0) {
            return Err(Refusal::TooManyHops);
        }
        Ok(())
    }

    /// The local user addressed by `uri`'s user part, when `uri` is in our domain.
    fn local_user(&self, uri: &pms_sip::message::SipUri) -> Result<UserId, Refusal> {
        if !uri.scheme.eq_ignore_ascii_case("sip") && !uri.scheme.eq_ignore_ascii_case("sips") {
            return Err(Refusal::UnsupportedUriScheme);
        }
        if !uri.host.eq_ignore_ascii_case(&self.config.domain) {
            return Err(Refusal::NotFound(format!(
                "Domain {} is not served here",
                truncate(&uri.host)
            )));
        }
        let name = uri.user.as_deref().unwrap_or_default();
        UserId::parse(name)
            .map_err(|_| Refusal::NotFound(format!("User {} not found", truncate(name))))
    }

    fn user_record(&self, user: &UserId) -> Result<Option<UserRecord>, Refusal> {
        let state = self.mailboxes.state(GroupId::DIRECTORY);
        query::user(&*state, GroupId::DIRECTORY, user)
            .map_err(|error| Refusal::Internal(error.to_string()))
    }

    /// The digest policy of `record`'s account (empty: the node's policy), in challenge order.
    fn digest_policy(record: Option<&UserRecord>) -> Vec<Algorithm> {
        record
            .map(|record| {
                record
                    .digest_algorithms
                    .iter()
                    .copied()
                    .map(crate::config::sip_digest_algorithm)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Checks `credentials` against `record`'s sealed HA1 values (opened for this one check)
    /// under the account's digest policy.
    fn verify(
        &self,
        credentials: &pms_sip::digest::DigestCredentials,
        request: &Request,
        record: Option<&UserRecord>,
        now: UnixMillis,
    ) -> Result<Result<pms_sip::digest::VerifiedUser, DigestError>, Refusal> {
        let policy = Self::digest_policy(record);
        let stored = record
            .map(|record| {
                self.keyring.credentials(record).map_err(|error| {
                    Refusal::Internal(format!("credentials of {}: {error}", record.user))
                })
            })
            .transpose()?;
        Ok(self.digest().verify_for(
            credentials,
            request.method.as_str(),
            &policy,
            |algorithm| {
                stored.as_ref().and_then(|stored| {
                    stored
                        .ha1(crate::config::stored_digest_algorithm(algorithm))
                        .map(str::to_owned)
                })
            },
            now,
        ))
    }

    /// Waits (bounded) until this node's replica of `group` holds everything its leader
    /// committed; `true` when it may now hold more than before the call.
    async fn catch_up(&self, group: GroupId) -> bool {
        self.metrics.replica_catch_ups_waiting.inc();
        let outcome = self.mailboxes.catch_up(group).await;
        self.metrics.replica_catch_ups_waiting.dec();
        self.metrics.replica_catch_ups_total.inc(outcome.name());
        outcome == CatchUp::CaughtUp
    }

    /// `user`'s `record`, or, when it has messaging disabled, the record as the directory's
    /// leader has it: this replica may trail a `pmsctl user set …` made a moment ago through
    /// another node, so the node catches up once before it refuses on it.
    async fn enabled_record(
        &self,
        user: &UserId,
        record: UserRecord,
    ) -> Result<UserRecord, Refusal> {
        if record.messaging_enabled || !self.catch_up(GroupId::DIRECTORY).await {
            return Ok(record);
        }
        Ok(self.user_record(user)?.unwrap_or(record))
    }

    /// Digest authentication (RFC 8760). `Ok(Err(challenges))` means "challenge": the caller
    /// answers 401/407 with them. `claimed` is the user the request speaks for (To of a
    /// REGISTER, From of a MESSAGE): its account's policy picks the challenges, so an account
    /// that must use MD5 is offered MD5 first while every other account keeps SHA-256. An
    /// unknown user gets the node's policy, like everyone else, so a challenge does not tell
    /// whether an account exists.
    ///
    /// Credentials from a source that failed too often (on any account, or on this one) are
    /// refused before they are checked, with the same answer whatever they hold (item 8).
    async fn authenticate(
        &self,
        request: &Request,
        header: &str,
        claimed: Option<&UserId>,
        source: std::net::IpAddr,
        now: UnixMillis,
    ) -> Result<Result<(UserId, UserRecord), Vec<String>>, Refusal> {
        let claimed_policy = || -> Result<Vec<Algorithm>, Refusal> {
            let record = match claimed {
                Some(user) => self.user_record(user)?,
                None => None,
            };
            Ok(Self::digest_policy(record.as_ref()))
        };
        let credentials = match request.authorization(header) {
            Ok(Some(credentials)) => credentials,
            Ok(None) => {
                let policy = claimed_policy()?;
                return Ok(Err(self.digest().challenges_for(now, false, &policy)));
            }
            Err(error) => {
                return Err(Refusal::Malformed(format!(
                    "Malformed {header}: {}",
                    short(&error)
                )));
            }
        };
        if let Err(error) = pms_sip::digest::check_uri(&credentials, &request.uri) {
            debug!(%error, request_uri = %request.uri, "digest uri mismatch");
            self.metrics
                .auth_failures_total
                .inc(request.method.as_str());
            return Err(Refusal::Malformed(
                "Digest uri does not match the Request-URI".into(),
            ));
        }
        let source = SourceKey::of(source);
        let account = UserId::parse(&credentials.username).ok();
        // Invariant: a throttled attempt is refused before its password is checked.
        let refused_for_ms = self
            .auth_throttle()
            .refused_for_ms(source, account.as_ref(), now);
        if let Some(left_ms) = refused_for_ms {
            self.metrics
                .auth_throttled_total
                .inc(request.method.as_str());
            return Err(Refusal::AuthThrottled {
                retry_after_secs: retry_after_secs(left_ms),
            });
        }
        let Some(user) = account else {
            self.auth_throttle().failed(source, None, now);
            return Err(Refusal::Forbidden("Authentication failed".into()));
        };
        let mut record = self.user_record(&user)?;
        let mut verified = self.verify(&credentials, request, record.as_ref(), now)?;
        // This replica may not hold an account added, or a password changed, a moment ago
        // through another node: before it refuses, it catches up with the directory's leader
        // once and checks again against what changed.
        if matches!(
            verified,
            Err(DigestError::BadResponse { .. } | DigestError::UnknownUser { .. })
        ) && self.catch_up(GroupId::DIRECTORY).await
        {
            let fresh = self.user_record(&user)?;
            if fresh != record {
                record = fresh;
                verified = self.verify(&credentials, request, record.as_ref(), now)?;
            }
        }
        let policy = Self::digest_policy(record.as_ref());
        match verified {
            Ok(_) => self.auth_throttle().succeeded(source, &user),
            // A nonce or opaque this node cannot vouch for (issued before a restart, or by a
            // node with another key) is re-challenged as stale, so the phone retries at once
            // without asking its user for the password (RFC 7616 §3.3).
            Err(
                DigestError::StaleNonce
                | DigestError::InvalidNonce { .. }
                | DigestError::WrongOpaque,
            ) => {
                return Ok(Err(self.digest().challenges_for(now, true, &policy)));
            }
            Err(DigestError::UnsupportedAlgorithm { .. }) => {
                return Ok(Err(self.digest().challenges_for(now, false, &policy)));
            }
            Err(error) => {
                self.metrics
                    .auth_failures_total
                    .inc(request.method.as_str());
                // A wrong password and an unknown account count alike (the throttle must not
                // tell whether an account exists); protocol errors guess no password.
                if matches!(
                    error,
                    DigestError::BadResponse { .. } | DigestError::UnknownUser { .. }
                ) {
                    self.auth_throttle().failed(source, Some(&user), now);
                }
                debug!(%error, "digest verification failed");
                return Err(Refusal::Forbidden("Authentication failed".into()));
            }
        }
        match record {
            Some(record) => Ok(Ok((user, record))),
            None => Err(Refusal::Forbidden("Authentication failed".into())),
        }
    }

    fn auth_throttle(&self) -> std::sync::MutexGuard<'_, AuthThrottle> {
        self.auth_throttle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn sender_rate(&self) -> std::sync::MutexGuard<'_, SenderRateLimiter> {
        self.sender_rate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What stands for `sender` in `recipient`'s mailbox: a hash keyed by a secret derived
    /// from the master key, so the state names no sender and links no two mailboxes.
    fn sender_key(&self, recipient: &UserId, sender: &UserId) -> SenderKey {
        SenderKey(pms_crypto::dedup_hash(&[
            b"mailbox-sender",
            &self.sender_key_secret,
            recipient.as_str().as_bytes(),
            sender.as_str().as_bytes(),
        ]))
    }

    fn digest(&self) -> std::sync::MutexGuard<'_, DigestServer> {
        self.digest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn challenge(
        request: &Request,
        status: u16,
        header: &str,
        challenges: Vec<String>,
        to_tag: &str,
    ) -> Response {
        let reason = if status == 401 {
            "Unauthorized"
        } else {
            "Proxy Authentication Required"
        };
        let mut response = response_to(request, status, reason, to_tag);
        for challenge in challenges {
            response.headers.push(header, challenge);
        }
        response
    }

    /// Proposes `command`; the commit latency is observed by the group that commits it (each
    /// proposal counted once, on the node that leads the group).
    async fn propose(&self, group: GroupId, command: Command) -> Result<CommandResponse, Refusal> {
        let result = self.mailboxes.propose(group, command).await;
        result.map_err(|error| match error {
            ProposeError::Retry { reason } => {
                debug!(%reason, "proposal outcome unknown");
                Refusal::Unavailable {
                    retry_after_secs: 1,
                }
            }
            ProposeError::Fatal { reason } => Refusal::Internal(reason),
        })
    }

    async fn register(
        &self,
        request: &Request,
        flow: &FlowInfo,
        to_tag: &str,
    ) -> Result<Response, Refusal> {
        Self::check_max_forwards(request)?;
        let to = request
            .to()
            .map_err(|error| Refusal::Malformed(error.reason()))?;
        let user = self.local_user(&to.uri)?;
        // RFC 3261 §10.3 step 1: the Request-URI names the registrar's domain; a REGISTER for
        // another domain must not touch local bindings.
        let request_uri = Self::request_uri(request)?;
        if !request_uri.host.eq_ignore_ascii_case(&self.config.domain) {
            return Err(Refusal::NotFound(format!(
                "Domain {} is not served here",
                truncate(&request_uri.host)
            )));
        }
        let now = self.clock.now();
        let (authenticated, record) = match self
            .authenticate(request, "Authorization", Some(&user), flow.peer.ip(), now)
            .await?
        {
            Ok(found) => found,
            Err(challenges) => {
                return Ok(Self::challenge(
                    request,
                    401,
                    "WWW-Authenticate",
                    challenges,
                    to_tag,
                ));
            }
        };
        if authenticated != user {
            self.metrics.auth_failures_total.inc("REGISTER");
            return Err(Refusal::Forbidden(
                "Credentials are not those of the To user".into(),
            ));
        }
        // The flow now belongs to an account holder: it leaves the unauthenticated pool.
        flow.authentication.mark_authenticated();
        let record = self.enabled_record(&user, record).await?;
        if !record.messaging_enabled {
            return Err(Refusal::Forbidden(format!(
                "Secure messaging is not enabled for {user}"
            )));
        }
        let contacts = request
            .contacts()
            .map_err(|error| Refusal::Malformed(error.reason()))?;
        let header_expires = request.expires();
        let mut changes = Vec::new();
        if contacts
            .iter()
            .any(|contact| matches!(contact, Contact::Star))
        {
            if contacts.len() != 1 || header_expires != Some(0) {
                return Err(Refusal::Malformed(
                    "Contact: * needs Expires: 0 and no other Contact".into(),
                ));
            }
            changes.push(BindingChange::UnbindAll);
        }
        for contact in &contacts {
            let Some(name_addr) = contact.name_addr() else {
                continue;
            };
            let contact_uri = name_addr.uri.to_string();
            let key = match (contact.sip_instance(), contact.reg_id()) {
                (Some(instance), Some(reg_id)) => format!("{instance};reg-id={reg_id}"),
                (Some(instance), None) => instance,
                _ => contact_uri.clone(),
            };
            let expires_secs = contact
                .expires()
                .or(header_expires)
                .unwrap_or(self.config.register_expires_default_secs);
            if expires_secs == 0 {
                changes.push(BindingChange::Unbind { key });
                continue;
            }
            if expires_secs < self.config.register_expires_min_secs {
                return Err(Refusal::IntervalTooBrief {
                    min_secs: self.config.register_expires_min_secs,
                });
            }
            let expires_secs = expires_secs.min(self.config.register_expires_max_secs);
            changes.push(BindingChange::Bind(Binding {
                user: user.clone(),
                key,
                contact: contact_uri,
                flow: flow.flow,
                over_tls: flow.transport == Transport::Tls,
                registered_at: now,
                expires_at: now.saturating_add_ms(expires_secs * 1000),
            }));
        }
        // Invariant: one REGISTER is one command, applied whole or not at all (RFC 3261 §10.3).
        let bound_keys: Vec<String> = changes
            .iter()
            .filter_map(|change| match change {
                BindingChange::Bind(binding) => Some(binding.key.clone()),
                _ => None,
            })
            .collect();
        let command = Command::Register {
            user: user.clone(),
            changes,
            now,
        };
        match self
            .propose(self.config.mailbox_group(&user), command)
            .await?
        {
            CommandResponse::Done => {
                for key in &bound_keys {
                    self.flows.note_binding(flow.flow, &user, key);
                }
            }
            CommandResponse::TooManyBindings { .. } => {
                return Err(Refusal::Forbidden("Too many registered devices".into()));
            }
            CommandResponse::UnknownUser { .. } => {
                return Err(Refusal::NotFound(format!("User {user} not found")));
            }
            other => return Err(Refusal::Internal(format!("unexpected response {other:?}"))),
        }
        let bindings = {
            let group = self.config.mailbox_group(&user);
            let state = self.mailboxes.state(group);
            query::bindings(&*state, group, &user, now)
                .map_err(|error| Refusal::Internal(error.to_string()))?
        };
        self.metrics
            .registrations
            .set(i64::try_from(self.flows.len()).unwrap_or(i64::MAX));
        let mut response = response_to(request, 200, "OK", to_tag);
        for binding in &bindings {
            let remaining_secs = binding.expires_at.0.saturating_sub(now.0) / 1000;
            response.headers.push(
                "Contact",
                format!("<{}>;expires={remaining_secs}", binding.contact),
            );
        }
        // RFC 5626 §6: a registration that used outbound (Supported: outbound and a Contact
        // with +sip.instance and reg-id) gets Require: outbound and the keep-alive interval;
        // clients such as libre start their CRLF keep-alives only when they see it.
        let outbound_requested = request
            .headers
            .get_list("Supported")
            .iter()
            .any(|tag| tag.trim().eq_ignore_ascii_case("outbound"));
        let outbound_contact = contacts
            .iter()
            .any(|contact| contact.sip_instance().is_some() && contact.reg_id().is_some());
        if outbound_requested && outbound_contact && !bindings.is_empty() {
            response.headers.push("Require", "outbound");
            response
                .headers
                .push("Flow-Timer", self.config.flow_timer_secs.to_string());
        }
        response.headers.push("Supported", SUPPORTED);
        if !bindings.is_empty() {
            self.wake(&user);
        }
        Ok(response)
    }

    async fn message(
        &self,
        request: &Request,
        flow: &FlowInfo,
        to_tag: &str,
    ) -> Result<Reply, Refusal> {
        Self::check_max_forwards(request)?;
        let request_uri = Self::request_uri(request)?;
        let recipient = self.local_user(&request_uri)?;
        let from = request
            .from()
            .map_err(|error| Refusal::Malformed(error.reason()))?;
        let now = self.clock.now();
        let claimed_sender = self.local_user(&from.uri).ok();
        let (sender, sender_record) = match self
            .authenticate(
                request,
                "Proxy-Authorization",
                claimed_sender.as_ref(),
                flow.peer.ip(),
                now,
            )
            .await?
        {
            Ok(found) => found,
            Err(challenges) => {
                return Ok(Reply::Now(Self::challenge(
                    request,
                    407,
                    "Proxy-Authenticate",
                    challenges,
                    to_tag,
                )));
            }
        };
        if claimed_sender.as_ref() != Some(&sender) {
            self.metrics.auth_failures_total.inc("MESSAGE");
            return Err(Refusal::Forbidden(
                "Authenticated user is not the From user".into(),
            ));
        }
        // The flow now belongs to an account holder: it leaves the unauthenticated pool.
        flow.authentication.mark_authenticated();
        if request.body.len() > self.config.body_bytes_max {
            return Err(Refusal::TooLarge {
                body_bytes_max: self.config.body_bytes_max,
            });
        }
        if request.body.is_empty() {
            return Err(Refusal::Malformed("MESSAGE has no body".into()));
        }
        let content_type = request
            .content_type()
            .ok_or_else(|| Refusal::UnsupportedMediaType("Missing Content-Type".into()))?;
        if !ACCEPTED_MIME_TYPES.contains(&content_type.mime_type.as_str()) {
            return Err(Refusal::UnsupportedMediaType(
                "Unsupported Media Type".into(),
            ));
        }
        // RFC 3261 §8.2.3: a coding PMS cannot decode is refused with 415 and Accept-Encoding.
        // Known codings are kept: the body is stored and delivered as sent.
        parse_content_encoding(request.headers.get("Content-Encoding"))
            .map_err(|_| Refusal::UnsupportedEncoding)?;
        let sender_record = self.enabled_record(&sender, sender_record).await?;
        if !sender_record.messaging_enabled {
            return Err(Refusal::Forbidden(format!(
                "Secure messaging is not enabled for sender {sender}"
            )));
        }
        // An account added, or its messaging enabled, a moment ago through another node may
        // not be on this replica yet.
        let mut recipient_record = self.user_record(&recipient)?;
        if !recipient_record
            .as_ref()
            .is_some_and(|record| record.messaging_enabled)
            && self.catch_up(GroupId::DIRECTORY).await
        {
            recipient_record = self.user_record(&recipient)?;
        }
        let Some(recipient_record) = recipient_record else {
            return Err(Refusal::NotFound(format!("User {recipient} not found")));
        };
        if !recipient_record.messaging_enabled {
            return Err(Refusal::Forbidden(format!(
                "Secure messaging is not enabled for recipient {recipient}"
            )));
        }
        // One sender cannot flood one recipient (per node; the queued quota below holds
        // cluster-wide).
        let admitted = self.sender_rate().admit(&sender, &recipient, now);
        if let Err(wait_ms) = admitted {
            self.metrics.messages_sender_limited_total.inc("rate");
            return Err(Refusal::SenderTooFast {
                retry_after_secs: retry_after_secs(wait_ms),
            });
        }
        // Unknown codings were refused above; a known one that does not decode is a bad body.
        let imdn = imdn_fields(request).map_err(|error| match error {
            ImdnError::Encoding(error) => Refusal::Malformed(format!(
                "Body does not decode as its Content-Encoding: {}",
                short(&error)
            )),
            error => Refusal::Malformed(format!("Malformed CPIM body: {}", short(&error))),
        })?;
        let validity_secs = request
            .expires()
            .map(|secs| secs.min(self.config.message_expires_max_secs))
            .unwrap_or(self.config.message_expires_default_secs);
        let payload = MessagePayload {
            from: format!("sip:{sender}@{}", self.config.domain),
            to: format!("sip:{recipient}@{}", self.config.domain),
            content_type: request
                .headers
                .get("Content-Type")
                .unwrap_or_default()
                .to_string(),
            body: request.body.clone(),
            date: request
                .headers
                .get("Date")
                .map(str::to_string)
                .unwrap_or_else(|| rfc1123(now)),
            imdn_message_id: imdn.message_id.clone(),
            disposition_notification: imdn
                .dispositions
                .any()
                .then(|| imdn.dispositions.header_value()),
            notification_in_cpim: imdn.from_cpim,
            content_encoding: request.headers.get("Content-Encoding").map(str::to_string),
            received_over_tls: flow.transport == Transport::Tls,
        };
        let message_id = MessageId::from_random_bytes(rand::random());
        tracing::Span::current().record("messaging.message.id", message_id.as_str());
        let sealed = self.seal_for(&recipient, &recipient_record, &message_id, &payload)?;
        let (cseq, _) = request
            .cseq()
            .map_err(|error| Refusal::Malformed(error.reason()))?;
        let call_id = request
            .call_id()
            .map_err(|error| Refusal::Malformed(error.reason()))?;
        let mut dedup_keys = vec![DedupKey(pms_crypto::dedup_hash(&[
            b"transaction",
            sender.as_str().as_bytes(),
            from.tag().unwrap_or_default().as_bytes(),
            call_id.as_bytes(),
            &cseq.to_be_bytes(),
        ]))];
        if let Some(imdn_id) = &imdn.message_id {
            dedup_keys.push(DedupKey(pms_crypto::dedup_hash(&[
                b"imdn",
                sender.as_str().as_bytes(),
                imdn_id.as_bytes(),
            ])));
        }
        let stored_notification = crate::delivery::notification(
            self,
            &message_id,
            &payload,
            pms_sip::imdn::ImdnStatus::Stored,
            now,
        )?;
        let notify_sender = stored_notification.is_some();
        let message = NewMessage {
            message_id: message_id.clone(),
            recipient: recipient.clone(),
            sealed,
            expires_at: now.saturating_add_ms(validity_secs.saturating_mul(1000)),
            dedup_keys,
        };
        // Registered before the proposal so that a delivery faster than our own answer is seen.
        let delivered = self.waiters.register(&message_id);
        let recipient_group = self.config.mailbox_group(&recipient);
        let (message_id, duplicate) = match self
            .propose(
                recipient_group,
                Command::Enqueue {
                    message,
                    accepted_at: now,
                    notification: stored_notification,
                    sender: Some(SenderQuota {
                        key: self.sender_key(&recipient, &sender),
                        queued_max: self.config.mailbox_messages_per_sender_max,
                    }),
                },
            )
            .await?
        {
            CommandResponse::Enqueued {
                message_id,
                duplicate,
                ..
            } => (message_id, duplicate),
            CommandResponse::UnknownUser { user } => {
                return Err(Refusal::NotFound(format!("User {user} not found")));
            }
            CommandResponse::SenderQueueFull { .. } => {
                self.metrics.messages_sender_limited_total.inc("queued");
                return Err(Refusal::SenderQueueFull {
                    retry_after_secs: pms_types::limits::SENDER_QUEUE_FULL_RETRY_AFTER_SECS,
                });
            }
            CommandResponse::MailboxFull { user } => {
                return Err(Refusal::TemporarilyUnavailable(format!(
                    "Mailbox of {user} is full"
                )));
            }
            other => return Err(Refusal::Internal(format!("unexpected response {other:?}"))),
        };
        let mut accepted = response_to(request, 202, "Accepted", to_tag);
        accepted
            .headers
            .push("X-PMS-Message-ID", message_id.as_str());
        let mut promoted = response_to(request, 200, "OK", to_tag);
        promoted
            .headers
            .push("X-PMS-Message-ID", message_id.as_str());
        if duplicate {
            self.metrics.messages_duplicate_total.inc();
            let state = self.mailboxes.state(recipient_group);
            let status = query::message_status(&*state, recipient_group, &message_id)
                .map_err(|error| Refusal::Internal(error.to_string()))?;
            let was_delivered =
                status.is_some_and(|status| status.state == MessageState::Delivered);
            return Ok(Reply::Now(if was_delivered { promoted } else { accepted }));
        }
        self.metrics.messages_accepted_total.inc();
        self.wake(&recipient);
        if notify_sender {
            self.wake(&sender);
        }
        // No reachable device: nothing can be delivered within the window, answer 202 now. A
        // binding whose flow this node knows is closed (the device's connection dropped
        // without unregistering) does not count, nor one that may not carry this message (a
        // plaintext flow for a message that arrived over TLS).
        let recipient_registered = {
            let state = self.mailboxes.state(recipient_group);
            query::bindings(&*state, recipient_group, &recipient, now)
                .map_err(|error| Refusal::Internal(error.to_string()))?
                .iter()
                .any(|binding| {
                    !self.flows.is_known_dead(binding.flow)
                        && crate::delivery::may_carry(binding, &payload, &self.config)
                })
        };
        if !recipient_registered {
            return Ok(Reply::Now(accepted));
        }
        Ok(Reply::AfterWindow {
            accepted,
            promoted,
            delivered,
            window: Duration::from_millis(self.config.sync_window_ms),
        })
    }

    /// Seals `payload` for `user` under the user's data key.
    pub fn seal_for(
        &self,
        user: &UserId,
        record: &UserRecord,
        message_id: &MessageId,
        payload: &MessagePayload,
    ) -> Result<Vec<u8>, Refusal> {
        let key = self
            .keyring
            .data_key(user, &record.wrapped_data_key)
            .map_err(|error| Refusal::Internal(format!("data key of {user}: {error}")))?;
        Ok(pms_crypto::seal(
            &key,
            user.as_str(),
            message_id.as_str(),
            &pms_mailbox::encode(payload),
        ))
    }
}

/// A `Retry-After` value (whole seconds, at least 1) for a wait of `wait_ms`.
fn retry_after_secs(wait_ms: u64) -> u32 {
    u32::try_from(wait_ms.div_ceil(1000))
        .unwrap_or(u32::MAX)
        .max(1)
}

fn short(error: &impl std::fmt::Display) -> String {
    truncate(&error.to_string())
}

/// Keeps reason phrases short and single-line.
fn truncate(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(80).collect()
}
