//! The workload: senders that send uniquely numbered MESSAGEs to random recipients through
//! random nodes, and recipients that come and go (connect to a random node, REGISTER, receive
//! for a while, disconnect, stay offline), then all stay online for the final drain.
//!
//! Every send attempt, its outcome and every received MESSAGE are recorded in the history; the
//! checker judges them later.
//!
//! Invariants:
//! - Invariant: every body is unique in the run (`chaos <run> s<sender> n<seq> 😀`), so a
//!   delivery names exactly one send, and bodies carry a 4-byte emoji to check UTF-8 survives.
//! - Invariant: a send without a final response within [`WorkloadConfig::send_timeout`], or
//!   whose connection drops, is recorded as `unknown`, never as lost; the sender reconnects
//!   (to another node when it can) and resends the same message at most
//!   [`SEND_ATTEMPTS_MAX`] times in all, keeping its Call-ID, From tag and `imdn.Message-ID`
//!   (the server must store it once).
//! - Invariant: each sender waits for the final response before its next message, so its sends
//!   to one recipient are enqueued in sequence order (the checker relies on it).
//! - Invariant: every loop is bounded by the workload's end instant or a named maximum, and
//!   every network wait has a deadline.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::rustls::ClientConfig;

use crate::checker::AMBIGUOUS_REFUSAL_CODES;
use crate::cluster::NodeEndpoints;
use crate::history::{Event, History, SendOutcome, now_ms};
use crate::user_agent::{
    Account, OutgoingMessage, Registration, SERVER_MESSAGE_ID_HEADER, SipConnection, UaEvent,
    register, send_message,
};

/// Attempts per message: the first send and at most one resend after an unknown outcome.
pub const SEND_ATTEMPTS_MAX: u32 = 2;
/// Deadline of TCP + TLS to a node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause after no node accepted a connection.
pub const CONNECT_RETRY_INTERVAL: Duration = Duration::from_millis(300);
/// Deadline of a REGISTER (with its challenge).
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// A recipient re-registers after this long online (its registration asks for 600 s).
pub const REGISTER_REFRESH_AFTER: Duration = Duration::from_secs(300);
/// Messages a sender sends over one connection before it moves to another random node
/// (inclusive range).
pub const SENDS_PER_CONNECTION: (u32, u32) = (10, 40);
/// Password of every workload account.
pub const ACCOUNT_PASSWORD: &str = "chaos correct horse battery staple";
/// Most senders or recipients.
pub const PARTICIPANTS_MAX: usize = 1_000;

/// What the recipients are doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecipientPhase {
    /// Online and offline in turns.
    Churn,
    /// Online until told to stop, reconnecting when a connection drops.
    Drain,
    Stop,
}

/// The workload's shape.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    pub run_id: String,
    pub seed: u64,
    pub senders: usize,
    pub recipients: usize,
    pub domain: String,
    /// Mean pause between two sends of one sender (varies ±50 %).
    pub send_interval: Duration,
    pub send_timeout: Duration,
    /// Share of messages sent with a short validity (`Expires`), percent.
    pub short_validity_percent: u32,
    /// Range of the short validities, seconds (inclusive).
    pub short_validity_secs: (u64, u64),
    /// How long a recipient stays online, seconds (inclusive range).
    pub online_secs: (u64, u64),
    /// How long a recipient stays offline, seconds (inclusive range).
    pub offline_secs: (u64, u64),
    /// Senders start no new message after this instant.
    pub end: Instant,
}

pub fn sender_name(index: usize) -> String {
    format!("chaos-s{index}")
}

pub fn recipient_name(index: usize) -> String {
    format!("chaos-r{index}")
}

/// The body of message `seq` of sender `sender`.
pub fn body_text(run_id: &str, sender: usize, seq: u64) -> String {
    format!("chaos {run_id} s{sender} n{seq} 😀")
}

pub fn body_id(sender: usize, seq: u64) -> String {
    format!("s{sender}-n{seq}")
}

/// The body id of a received body of this run, `None` for anything else.
pub fn parse_body_id(run_id: &str, body: &str) -> Option<String> {
    let mut words = body.split(' ');
    if words.next()? != "chaos" || words.next()? != run_id {
        return None;
    }
    let sender: usize = words.next()?.strip_prefix('s')?.parse().ok()?;
    let seq: u64 = words.next()?.strip_prefix('n')?.parse().ok()?;
    Some(body_id(sender, seq))
}

/// One acknowledged message no recipient has received yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Undelivered {
    pub body_id: String,
    pub server_message_id: Option<String>,
    /// When its validity (plus the checker's tolerance) runs out, if it set one.
    pub deadline_ms: Option<u64>,
}

/// Acknowledged messages without a delivery, from the history.
pub fn acknowledged_undelivered(events: &[Event], tolerance_ms: u64) -> Vec<Undelivered> {
    use std::collections::{BTreeMap, BTreeSet};
    let mut validity: BTreeMap<&str, Option<u64>> = BTreeMap::new();
    let mut acknowledged: BTreeMap<&str, (u64, Option<&str>)> = BTreeMap::new();
    let mut delivered: BTreeSet<&str> = BTreeSet::new();
    for event in events {
        match event {
            Event::SendStarted {
                body_id,
                validity_secs,
                ..
            } => {
                validity.entry(body_id).or_insert(*validity_secs);
            }
            Event::SendFinished {
                at_ms,
                body_id,
                outcome: SendOutcome::Acknowledged,
                server_message_id,
                ..
            } => {
                acknowledged.insert(body_id, (*at_ms, server_message_id.as_deref()));
            }
            Event::Delivered {
                body_id: Some(body_id),
                ..
            } => {
                delivered.insert(body_id);
            }
            _ => {}
        }
    }
    acknowledged
        .into_iter()
        .filter(|(body_id, _)| !delivered.contains(body_id))
        .map(|(body_id, (at_ms, server_message_id))| Undelivered {
            body_id: body_id.to_owned(),
            server_message_id: server_message_id.map(str::to_owned),
            deadline_ms: validity.get(body_id).copied().flatten().map(|secs| {
                at_ms
                    .saturating_add(secs.saturating_mul(1000))
                    .saturating_add(tolerance_ms)
            }),
        })
        .collect()
}

/// What every workload task shares.
struct Shared {
    config: WorkloadConfig,
    endpoints: Vec<NodeEndpoints>,
    tls: Arc<ClientConfig>,
    history: Arc<History>,
}

/// The running workload's tasks.
pub struct Workload {
    pub senders: JoinSet<()>,
    pub recipients: JoinSet<()>,
    phase: watch::Sender<RecipientPhase>,
}

impl Workload {
    /// Starts every sender and recipient.
    pub fn start(
        config: WorkloadConfig,
        endpoints: Vec<NodeEndpoints>,
        tls: Arc<ClientConfig>,
        history: Arc<History>,
    ) -> anyhow::Result<Workload> {
        anyhow::ensure!(
            (1..=PARTICIPANTS_MAX).contains(&config.senders)
                && (1..=PARTICIPANTS_MAX).contains(&config.recipients),
            "senders and recipients must be within 1..={PARTICIPANTS_MAX}"
        );
        anyhow::ensure!(!endpoints.is_empty(), "no nodes");
        let (phase, phase_receiver) = watch::channel(RecipientPhase::Churn);
        let shared = Arc::new(Shared {
            config,
            endpoints,
            tls,
            history,
        });
        let mut recipients = JoinSet::new();
        for index in 1..=shared.config.recipients {
            recipients.spawn(run_recipient(
                Arc::clone(&shared),
                index,
                phase_receiver.clone(),
            ));
        }
        let mut senders = JoinSet::new();
        for index in 1..=shared.config.senders {
            senders.spawn(run_sender(Arc::clone(&shared), index));
        }
        Ok(Workload {
            senders,
            recipients,
            phase,
        })
    }

    pub fn set_phase(&self, phase: RecipientPhase) {
        let _ = self.phase.send(phase);
    }
}

/// A task's own seeded generator (the seed fixes choices, not network timing).
fn task_rng(seed: u64, role: u64, index: usize) -> StdRng {
    let index = u64::try_from(index).unwrap_or(u64::MAX);
    StdRng::seed_from_u64(seed ^ role.rotate_left(32) ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn random_in(rng: &mut StdRng, (low, high): (u64, u64)) -> u64 {
    rng.gen_range(low.min(high)..=high.max(low))
}

/// Connects to a random node, trying the others in turn, `avoid` last. `None` when none
/// accepted.
async fn connect_random(
    shared: &Shared,
    rng: &mut StdRng,
    avoid: Option<u64>,
) -> Option<(u64, SipConnection)> {
    let count = shared.endpoints.len();
    let first = rng.gen_range(0..count);
    let mut order: Vec<&NodeEndpoints> = (0..count)
        .map(|offset| &shared.endpoints[(first + offset) % count])
        .collect();
    order.sort_by_key(|endpoints| Some(endpoints.id) == avoid);
    for endpoints in order {
        if let Ok(connection) =
            SipConnection::connect(endpoints.sip_tls, Arc::clone(&shared.tls), CONNECT_TIMEOUT)
                .await
        {
            return Some((endpoints.id, connection));
        }
    }
    None
}

async fn run_sender(shared: Arc<Shared>, index: usize) {
    let config = &shared.config;
    let mut rng = task_rng(config.seed, 1, index);
    let account = Account {
        user: sender_name(index),
        password: ACCOUNT_PASSWORD.to_owned(),
        domain: config.domain.clone(),
    };
    let mut connection: Option<(u64, SipConnection)> = None;
    let mut last_failed_node: Option<u64> = None;
    let mut sends_on_connection = 0u32;
    let mut sends_before_switch = rng.gen_range(SENDS_PER_CONNECTION.0..=SENDS_PER_CONNECTION.1);
    let mut seq = 0u64;
    while Instant::now() < config.end {
        if connection.is_none() {
            connection = connect_random(&shared, &mut rng, last_failed_node).await;
            if connection.is_none() {
                tokio::time::sleep(CONNECT_RETRY_INTERVAL).await;
                continue;
            }
            sends_on_connection = 0;
        }
        seq += 1;
        let recipient = recipient_name(rng.gen_range(1..=config.recipients));
        let validity_secs = rng
            .gen_ratio(config.short_validity_percent.min(100), 100)
            .then(|| random_in(&mut rng, config.short_validity_secs));
        let mut message = OutgoingMessage::new(
            format!("sip:{recipient}@{}", config.domain),
            body_text(&config.run_id, index, seq),
            validity_secs,
        );
        let id = body_id(index, seq);
        for attempt in 1..=SEND_ATTEMPTS_MAX {
            if connection.is_none() {
                // A resend: another node if possible, within one send timeout.
                let give_up_at = Instant::now() + config.send_timeout;
                while connection.is_none() && Instant::now() < give_up_at {
                    connection = connect_random(&shared, &mut rng, last_failed_node).await;
                    if connection.is_none() {
                        tokio::time::sleep(CONNECT_RETRY_INTERVAL).await;
                    }
                }
                sends_on_connection = 0;
            }
            let Some((node, open)) = connection.as_mut() else {
                break;
            };
            let node = *node;
            shared.history.record(Event::SendStarted {
                at_ms: now_ms(),
                sender: account.user.clone(),
                recipient: recipient.clone(),
                body_id: id.clone(),
                seq,
                body: message.body.clone(),
                attempt,
                node,
                validity_secs,
                call_id: message.call_id.clone(),
            });
            let deadline = Instant::now() + config.send_timeout;
            let result = send_message(open, &account, &mut message, deadline).await;
            let (outcome, code, server_message_id, detail, retry) = match result {
                Ok(response) if (200..300).contains(&response.code) => (
                    SendOutcome::Acknowledged,
                    Some(response.code),
                    response.server_message_id,
                    response.reason,
                    false,
                ),
                Ok(response) => {
                    let ambiguous = AMBIGUOUS_REFUSAL_CODES.contains(&response.code);
                    (
                        SendOutcome::Refused,
                        Some(response.code),
                        None,
                        response.reason,
                        ambiguous,
                    )
                }
                Err(error) => (SendOutcome::Unknown, None, None, error.to_string(), true),
            };
            shared.history.record(Event::SendFinished {
                at_ms: now_ms(),
                sender: account.user.clone(),
                body_id: id.clone(),
                attempt,
                outcome,
                code,
                server_message_id,
                detail,
            });
            if !retry {
                break;
            }
            // The node may be the faulty one: drop the connection, resend elsewhere.
            last_failed_node = Some(node);
            connection = None;
        }
        sends_on_connection += 1;
        if sends_on_connection >= sends_before_switch {
            connection = None;
            sends_before_switch = rng.gen_range(SENDS_PER_CONNECTION.0..=SENDS_PER_CONNECTION.1);
        }
        let interval_ms = u64::try_from(config.send_interval.as_millis()).unwrap_or(1_000);
        let pause_ms = random_in(&mut rng, (interval_ms / 2, interval_ms * 3 / 2));
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
    }
}

/// How an online session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SessionEnd {
    /// The online period ran out (churn): go offline.
    PeriodOver,
    /// Could not connect or register, or the connection dropped: try again soon.
    Failed,
    Stop,
}

async fn run_recipient(
    shared: Arc<Shared>,
    index: usize,
    mut phase: watch::Receiver<RecipientPhase>,
) {
    let config = &shared.config;
    let mut rng = task_rng(config.seed, 2, index);
    let account = Account {
        user: recipient_name(index),
        password: ACCOUNT_PASSWORD.to_owned(),
        domain: config.domain.clone(),
    };
    // One device per recipient: the same instance id and REGISTER Call-ID across sessions.
    let mut registration = Registration::new();
    let mut last_failed_node = None;
    loop {
        let current = *phase.borrow_and_update();
        if current == RecipientPhase::Stop {
            return;
        }
        let online_for = Duration::from_secs(random_in(&mut rng, config.online_secs));
        let end = online_session(
            &shared,
            &account,
            &mut registration,
            &mut rng,
            &mut phase,
            online_for,
            &mut last_failed_node,
        )
        .await;
        let pause = match end {
            SessionEnd::Stop => return,
            SessionEnd::Failed => CONNECT_RETRY_INTERVAL,
            SessionEnd::PeriodOver => Duration::from_secs(random_in(&mut rng, config.offline_secs)),
        };
        // Offline; a phase change (drain or stop) ends an offline period early. After a
        // failure the short pause is always kept, so a dead cluster is not hammered.
        let wake_at = Instant::now() + pause;
        while Instant::now() < wake_at {
            let current = *phase.borrow_and_update();
            if current == RecipientPhase::Stop
                || (current == RecipientPhase::Drain && end == SessionEnd::PeriodOver)
            {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep_until(wake_at) => {}
                changed = phase.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// Connects, registers and receives until the online period ends (churn only), the phase
/// becomes `Stop`, or the connection fails. Records the session's start and end.
async fn online_session(
    shared: &Shared,
    account: &Account,
    registration: &mut Registration,
    rng: &mut StdRng,
    phase: &mut watch::Receiver<RecipientPhase>,
    online_for: Duration,
    last_failed_node: &mut Option<u64>,
) -> SessionEnd {
    let Some((node, mut connection)) = connect_random(shared, rng, *last_failed_node).await else {
        return SessionEnd::Failed;
    };
    match register(
        &mut connection,
        account,
        registration,
        Instant::now() + REGISTER_TIMEOUT,
    )
    .await
    {
        Ok(received) => {
            record_session(shared, account, node, true, String::new());
            for request in &received {
                record_delivery(shared, account, node, request);
            }
        }
        Err(error) => {
            *last_failed_node = Some(node);
            record_session(shared, account, node, false, format!("REGISTER: {error}"));
            return SessionEnd::Failed;
        }
    }
    let (end, detail) = receive(
        shared,
        account,
        registration,
        phase,
        online_for,
        node,
        &mut connection,
    )
    .await;
    if end == SessionEnd::Failed {
        *last_failed_node = Some(node);
    }
    record_session(shared, account, node, false, detail);
    end
}

/// The receiving part of [`online_session`]: how it ended and why.
async fn receive(
    shared: &Shared,
    account: &Account,
    registration: &mut Registration,
    phase: &mut watch::Receiver<RecipientPhase>,
    online_for: Duration,
    node: u64,
    connection: &mut SipConnection,
) -> (SessionEnd, String) {
    let online_until = Instant::now() + online_for;
    let mut registered_at = Instant::now();
    loop {
        let current = *phase.borrow_and_update();
        if current == RecipientPhase::Stop {
            return (SessionEnd::Stop, "stop".to_owned());
        }
        let draining = current == RecipientPhase::Drain;
        let refresh_at = registered_at + REGISTER_REFRESH_AFTER;
        let wake_at = if draining {
            refresh_at
        } else {
            refresh_at.min(online_until)
        };
        tokio::select! {
            event = connection.next_event() => {
                let handled = match event {
                    Ok(UaEvent::Request(request)) => {
                        if request.method == pms_sip::Method::Message {
                            record_delivery(shared, account, node, &request);
                        }
                        connection.answer(&request).await
                    }
                    Ok(UaEvent::Ping) => connection.pong().await,
                    Ok(UaEvent::Response(_)) => Ok(()),
                    Err(error) => Err(error),
                };
                if let Err(error) = handled {
                    return (SessionEnd::Failed, error.to_string());
                }
            }
            () = tokio::time::sleep_until(wake_at) => {
                if !draining && Instant::now() >= online_until {
                    return (SessionEnd::PeriodOver, "period over".to_owned());
                }
                if Instant::now() >= refresh_at {
                    registered_at = Instant::now();
                    let deadline = registered_at + REGISTER_TIMEOUT;
                    match register(connection, account, registration, deadline).await {
                        Ok(received) => {
                            for request in &received {
                                record_delivery(shared, account, node, request);
                            }
                        }
                        Err(error) => {
                            return (SessionEnd::Failed, format!("re-REGISTER: {error}"));
                        }
                    }
                }
            }
            changed = phase.changed() => {
                if changed.is_err() {
                    return (SessionEnd::Stop, "workload dropped".to_owned());
                }
            }
        }
    }
}

fn record_session(shared: &Shared, account: &Account, node: u64, online: bool, detail: String) {
    shared.history.record(Event::RecipientSession {
        at_ms: now_ms(),
        recipient: account.user.clone(),
        node,
        online,
        detail,
    });
}

fn record_delivery(shared: &Shared, account: &Account, node: u64, request: &pms_sip::Request) {
    let body = String::from_utf8_lossy(&request.body).into_owned();
    shared.history.record(Event::Delivered {
        at_ms: now_ms(),
        recipient: account.user.clone(),
        node,
        body_id: parse_body_id(&shared.config.run_id, &body),
        body,
        server_message_id: request
            .headers
            .get(SERVER_MESSAGE_ID_HEADER)
            .map(str::to_owned),
        call_id: request.call_id().ok().map(str::to_owned),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_name_their_message_and_only_this_run_parses() {
        let body = body_text("ab12", 3, 17);
        assert_eq!(body, "chaos ab12 s3 n17 😀");
        assert_eq!(parse_body_id("ab12", &body).as_deref(), Some("s3-n17"));
        assert_eq!(parse_body_id("other", &body), None);
        assert_eq!(parse_body_id("ab12", "hello"), None);
        assert_eq!(parse_body_id("ab12", "chaos ab12 s3 nX"), None);
    }

    #[test]
    fn undelivered_acknowledged_messages_carry_their_validity_deadline() {
        let started = |body_id: &str, validity_secs| Event::SendStarted {
            at_ms: 1_000,
            sender: "s".into(),
            recipient: "r".into(),
            body_id: body_id.into(),
            seq: 1,
            body: String::new(),
            attempt: 1,
            node: 1,
            validity_secs,
            call_id: String::new(),
        };
        let acknowledged = |body_id: &str| Event::SendFinished {
            at_ms: 2_000,
            sender: "s".into(),
            body_id: body_id.into(),
            attempt: 1,
            outcome: SendOutcome::Acknowledged,
            code: Some(202),
            server_message_id: Some(format!("id-{body_id}")),
            detail: String::new(),
        };
        let events = vec![
            started("a", None),
            acknowledged("a"),
            started("b", Some(5)),
            acknowledged("b"),
            started("c", None),
            acknowledged("c"),
            Event::Delivered {
                at_ms: 3_000,
                recipient: "r".into(),
                node: 1,
                body: String::new(),
                body_id: Some("c".into()),
                server_message_id: None,
                call_id: None,
            },
            started("d", None),
        ];
        let undelivered = acknowledged_undelivered(&events, 100);
        assert_eq!(
            undelivered,
            vec![
                Undelivered {
                    body_id: "a".into(),
                    server_message_id: Some("id-a".into()),
                    deadline_ms: None,
                },
                Undelivered {
                    body_id: "b".into(),
                    server_message_id: Some("id-b".into()),
                    deadline_ms: Some(7_100),
                },
            ]
        );
    }
}
