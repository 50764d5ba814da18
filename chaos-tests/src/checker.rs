//! The checker: judges a recorded history against PMS's guarantees. Pure: `check(&[Event])`
//! reads nothing but its arguments, so every rule is unit-tested with synthetic histories.
//!
//! Rules (a run passes when none is broken):
//! - **No loss**: every message answered 200/202 is delivered to its recipient at least once,
//!   or it had a validity (`Expires`) and the server reports it `expired` at the end.
//! - **No late delivery**: nothing is delivered later than the send's last response (or
//!   timeout) + its validity + [`LATE_TOLERANCE_MS_DEFAULT`] (the expiry sweep runs every
//!   200 ms, the rest is commit and network latency on a loaded machine).
//! - **No phantom**: every delivered body is one the harness sent, byte for byte, to that
//!   recipient; a message refused with a definite error (not 408/500/503/504) is never
//!   delivered.
//! - **Stored once**: all deliveries and acknowledgements of one body carry one server message
//!   id; a body delivered more than once is a *redelivery* (counted, allowed) unless it is
//!   delivered more than [`DELIVERIES_PER_MESSAGE_MAX`] times.
//! - **Ordered**: per sender and recipient, acknowledged messages are first delivered in the
//!   order they were sent (each sender waits for the final response before the next send, so
//!   that is enqueue order).
//! - **Recovers**: after every heal and at the end, every node is ready and a leader is agreed
//!   within the recovery bound ([`RECOVERY_BOUND_MS_DEFAULT`]; the product target is
//!   [`RECOVERY_TARGET_MS`], reported, not enforced). No node exits on its own.
//! - **Drains**: once every fault is healed and every recipient is online, the backlog of
//!   acknowledged messages drains within the drain timeout.
//! - **Progress**: the workload got at least one message acknowledged.
//!
//! Sends that timed out or lost their connection are *unknown*: delivered (at most
//! [`DELIVERIES_PER_MESSAGE_MAX`] times) or never are both fine.
//!
//! Invariant: the report's counters partition the messages: `acknowledged + unknown + refused ==
//! messages_sent`, and `delivered + expired + lost == acknowledged`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::history::{Event, FaultKind, RECOVERY_LABEL_START, SendOutcome};

/// Slack on "delivered before its validity ran out", see the file's doc.
pub const LATE_TOLERANCE_MS_DEFAULT: u64 = 2_000;
/// Longest acceptable time from a heal to every node ready with an agreed leader (the CI bound).
pub const RECOVERY_BOUND_MS_DEFAULT: u64 = 10_000;
/// What the product aims for (reported next to the measured maximum).
pub const RECOVERY_TARGET_MS: u64 = 2_000;
/// Most deliveries of one message before it counts as a failure (one redelivery after a
/// failover is expected: the device's 200 may be lost with the leader).
pub const DELIVERIES_PER_MESSAGE_MAX: usize = 2;
/// Examples listed per failed rule.
pub const FAILURE_EXAMPLES_MAX: usize = 8;
/// Final responses that leave a send's outcome unknown (the server may have committed it).
pub const AMBIGUOUS_REFUSAL_CODES: [u16; 4] = [408, 500, 503, 504];

/// The bounds the checker applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CheckConfig {
    pub late_tolerance_ms: u64,
    pub recovery_bound_ms: u64,
    pub deliveries_per_message_max: usize,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            late_tolerance_ms: LATE_TOLERANCE_MS_DEFAULT,
            recovery_bound_ms: RECOVERY_BOUND_MS_DEFAULT,
            deliveries_per_message_max: DELIVERIES_PER_MESSAGE_MAX,
        }
    }
}

impl CheckConfig {
    /// The bounds recorded in the history's `run_started`, else the defaults.
    pub fn from_history(events: &[Event]) -> CheckConfig {
        events
            .iter()
            .find_map(|event| match event {
                Event::RunStarted {
                    late_tolerance_ms,
                    recovery_bound_ms,
                    ..
                } => Some(CheckConfig {
                    late_tolerance_ms: *late_tolerance_ms,
                    recovery_bound_ms: *recovery_bound_ms,
                    ..CheckConfig::default()
                }),
                _ => None,
            })
            .unwrap_or_default()
    }
}

/// Max and median of a set of durations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DurationStats {
    pub count: usize,
    pub max_ms: Option<u64>,
    pub median_ms: Option<u64>,
    /// Measurements that did not complete (no recovery / no new leader within the wait).
    pub incomplete: usize,
}

impl DurationStats {
    fn from_samples(samples: &[Option<u64>]) -> DurationStats {
        let mut done: Vec<u64> = samples.iter().flatten().copied().collect();
        done.sort_unstable();
        DurationStats {
            count: samples.len(),
            max_ms: done.last().copied(),
            // The lower median: of two samples, the smaller.
            median_ms: done.get(done.len().saturating_sub(1) / 2).copied(),
            incomplete: samples.len() - done.len(),
        }
    }
}

/// What the checker found. `failures` is empty exactly when the run passed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub messages_sent: usize,
    pub send_attempts: usize,
    pub retries: usize,
    pub acknowledged: usize,
    /// Acknowledged messages delivered at least once.
    pub delivered: usize,
    /// Acknowledged, never delivered, validity ran out and the server reports `expired`.
    pub expired: usize,
    /// Acknowledged, never delivered, not expired.
    pub lost: usize,
    /// Sends whose outcome is unknown (timeout, connection lost, 408/500/503/504).
    pub unknown: usize,
    pub unknown_delivered: usize,
    /// Sends refused with a final error and never acknowledged (includes the ambiguous codes
    /// only when no attempt of the message timed out).
    pub refused: usize,
    pub refused_by_code: BTreeMap<u16, usize>,
    pub deliveries_total: usize,
    /// Messages delivered more than once.
    pub redelivered: usize,
    /// Messages delivered more than `deliveries_per_message_max` times.
    pub excess_deliveries: usize,
    pub late: usize,
    pub phantom: usize,
    pub corrupted: usize,
    pub misdelivered: usize,
    pub refused_but_delivered: usize,
    pub stored_twice: usize,
    pub out_of_order: usize,
    pub node_crashes: usize,
    pub faults_by_kind: BTreeMap<FaultKind, usize>,
    /// Keyed by recovery label (fault kind name, `start`, `final`).
    pub recovery_by_label: BTreeMap<String, DurationStats>,
    /// Recoveries after heals and at the end (not the cold start).
    pub recovery_overall: DurationStats,
    pub failover: DurationStats,
    pub drain_pending: Option<usize>,
    pub drain_ms: Option<u64>,
    pub config: Option<CheckConfig>,
    /// One line per broken rule, with examples.
    pub failures: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

#[derive(Debug, Default)]
struct MessageView {
    sender: String,
    recipient: String,
    seq: u64,
    body: String,
    validity_secs: Option<u64>,
    attempts: u32,
    unfinished_attempts: u32,
    acknowledged: bool,
    acknowledged_ids: BTreeSet<String>,
    unknown: bool,
    refusal_codes: Vec<u16>,
    last_response_ms: u64,
    server_state: Option<String>,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum MessageClass {
    Acknowledged,
    Unknown,
    Refused,
}

impl MessageView {
    fn class(&self) -> MessageClass {
        if self.acknowledged {
            MessageClass::Acknowledged
        } else if self.unknown || self.unfinished_attempts > 0 {
            MessageClass::Unknown
        } else {
            MessageClass::Refused
        }
    }

    /// Latest time by which the server must have stopped delivering this message.
    fn delivery_deadline_ms(&self, tolerance_ms: u64) -> Option<u64> {
        self.validity_secs.map(|validity_secs| {
            self.last_response_ms
                .saturating_add(validity_secs.saturating_mul(1000))
                .saturating_add(tolerance_ms)
        })
    }
}

#[derive(Debug)]
struct DeliveryView<'a> {
    index: usize,
    at_ms: u64,
    recipient: &'a str,
    body: &'a str,
    server_message_id: Option<&'a str>,
}

/// Collects up to [`FAILURE_EXAMPLES_MAX`] examples per rule and turns them into failure lines.
#[derive(Default)]
struct Findings {
    by_rule: BTreeMap<&'static str, (usize, Vec<String>)>,
}

impl Findings {
    fn add(&mut self, rule: &'static str, example: String) {
        let entry = self.by_rule.entry(rule).or_default();
        entry.0 += 1;
        if entry.1.len() < FAILURE_EXAMPLES_MAX {
            entry.1.push(example);
        }
    }

    fn into_lines(self) -> Vec<String> {
        self.by_rule
            .into_iter()
            .map(|(rule, (count, examples))| {
                let mut line = format!("{rule}: {count}");
                for example in examples {
                    let _ = write!(line, "\n    {example}");
                }
                if count > FAILURE_EXAMPLES_MAX {
                    let _ = write!(line, "\n    … and {} more", count - FAILURE_EXAMPLES_MAX);
                }
                line
            })
            .collect()
    }
}

/// Judges `events` (in recorded order) with `config`.
pub fn check(events: &[Event], config: &CheckConfig) -> Report {
    let mut report = Report {
        config: Some(*config),
        ..Report::default()
    };
    let mut findings = Findings::default();
    let mut messages: BTreeMap<&str, MessageView> = BTreeMap::new();
    let mut deliveries: BTreeMap<&str, Vec<DeliveryView<'_>>> = BTreeMap::new();
    let mut recoveries: BTreeMap<String, Vec<Option<u64>>> = BTreeMap::new();
    let mut recoveries_bounded: Vec<Option<u64>> = Vec::new();
    let mut failovers: Vec<Option<u64>> = Vec::new();

    for (index, event) in events.iter().enumerate() {
        match event {
            Event::SendStarted {
                at_ms,
                sender,
                recipient,
                body_id,
                seq,
                body,
                attempt,
                validity_secs,
                ..
            } => {
                let view = messages.entry(body_id).or_default();
                if view.attempts == 0 {
                    view.sender.clone_from(sender);
                    view.recipient.clone_from(recipient);
                    view.seq = *seq;
                    view.body.clone_from(body);
                    view.validity_secs = *validity_secs;
                }
                report.send_attempts += 1;
                if *attempt > 1 {
                    report.retries += 1;
                }
                view.attempts += 1;
                view.unfinished_attempts += 1;
                view.last_response_ms = view.last_response_ms.max(*at_ms);
            }
            Event::SendFinished {
                at_ms,
                body_id,
                outcome,
                code,
                server_message_id,
                ..
            } => {
                let Some(view) = messages.get_mut(body_id.as_str()) else {
                    findings.add(
                        "history: send finished without a start",
                        format!("{body_id} at {at_ms}"),
                    );
                    continue;
                };
                view.unfinished_attempts = view.unfinished_attempts.saturating_sub(1);
                view.last_response_ms = view.last_response_ms.max(*at_ms);
                match outcome {
                    SendOutcome::Acknowledged => {
                        view.acknowledged = true;
                        if let Some(id) = server_message_id {
                            view.acknowledged_ids.insert(id.clone());
                        }
                    }
                    SendOutcome::Unknown => view.unknown = true,
                    SendOutcome::Refused => {
                        let code = code.unwrap_or(0);
                        view.refusal_codes.push(code);
                        if AMBIGUOUS_REFUSAL_CODES.contains(&code) {
                            view.unknown = true;
                        }
                    }
                }
            }
            Event::Delivered {
                at_ms,
                recipient,
                body,
                body_id,
                server_message_id,
                ..
            } => {
                report.deliveries_total += 1;
                let delivery = DeliveryView {
                    index,
                    at_ms: *at_ms,
                    recipient,
                    body,
                    server_message_id: server_message_id.as_deref(),
                };
                match body_id {
                    Some(body_id) => deliveries.entry(body_id).or_default().push(delivery),
                    None => {
                        report.phantom += 1;
                        findings.add(
                            "phantom deliveries (body not sent by the harness)",
                            format!("to {recipient} at {at_ms}: {body:?}"),
                        );
                    }
                }
            }
            Event::FaultStarted { kind, .. } => {
                *report.faults_by_kind.entry(*kind).or_default() += 1;
            }
            Event::Failover { failover_ms, .. } => failovers.push(*failover_ms),
            Event::Recovered {
                fault_id,
                label,
                recovery_ms,
                detail,
                ..
            } => {
                recoveries
                    .entry(label.clone())
                    .or_default()
                    .push(*recovery_ms);
                if label == RECOVERY_LABEL_START {
                    continue;
                }
                recoveries_bounded.push(*recovery_ms);
                let what = match fault_id {
                    Some(id) => format!("fault {id} ({label})"),
                    None => label.clone(),
                };
                match recovery_ms {
                    None => findings.add(
                        "no recovery (nodes not all ready with an agreed leader)",
                        format!("after {what}: {detail}"),
                    ),
                    Some(ms) if *ms > config.recovery_bound_ms => findings.add(
                        "recovery slower than the bound",
                        format!("after {what}: {ms} ms > {} ms", config.recovery_bound_ms),
                    ),
                    Some(_) => {}
                }
            }
            Event::NodeExited {
                at_ms,
                node,
                status,
                log_path,
            } => {
                report.node_crashes += 1;
                findings.add(
                    "node processes exited on their own",
                    format!("node {node} at {at_ms}: {status} (log {log_path})"),
                );
            }
            Event::StatusChecked { body_id, state, .. } => {
                if let Some(view) = messages.get_mut(body_id.as_str()) {
                    let more_final = match (&view.server_state, state.as_str()) {
                        (None, _) => true,
                        (Some(_), "expired" | "delivered" | "failed") => true,
                        (Some(_), _) => false,
                    };
                    if more_final {
                        view.server_state = Some(state.clone());
                    }
                }
            }
            Event::DrainFinished {
                pending, drain_ms, ..
            } => {
                report.drain_pending = Some(*pending);
                report.drain_ms = Some(*drain_ms);
                if *pending > 0 {
                    findings.add(
                        "backlog did not drain",
                        format!(
                            "{pending} acknowledged messages still undelivered {drain_ms} ms after every recipient came online"
                        ),
                    );
                }
            }
            Event::RunStarted { .. }
            | Event::FaultHealed { .. }
            | Event::RecipientSession { .. }
            | Event::RunFinished { .. } => {}
        }
    }

    // Deliveries of bodies the harness never sent.
    for (body_id, list) in &deliveries {
        if !messages.contains_key(body_id) {
            for delivery in list {
                report.phantom += 1;
                findings.add(
                    "phantom deliveries (body not sent by the harness)",
                    format!(
                        "{body_id} to {} at {}: {:?}",
                        delivery.recipient, delivery.at_ms, delivery.body
                    ),
                );
            }
        }
    }

    report.messages_sent = messages.len();
    for (body_id, view) in &messages {
        let class = view.class();
        let delivered = deliveries.get(body_id).map_or(&[][..], Vec::as_slice);
        match class {
            MessageClass::Acknowledged => report.acknowledged += 1,
            MessageClass::Unknown => {
                report.unknown += 1;
                if !delivered.is_empty() {
                    report.unknown_delivered += 1;
                }
            }
            MessageClass::Refused => {
                report.refused += 1;
                for code in &view.refusal_codes {
                    *report.refused_by_code.entry(*code).or_default() += 1;
                }
            }
        }
        check_deliveries(
            body_id,
            view,
            class,
            delivered,
            config,
            &mut report,
            &mut findings,
        );
        if class == MessageClass::Acknowledged {
            if !delivered.is_empty() {
                report.delivered += 1;
            } else if view.validity_secs.is_some()
                && view.server_state.as_deref() == Some("expired")
            {
                report.expired += 1;
            } else {
                report.lost += 1;
                findings.add(
                    "lost (acknowledged, never delivered, not expired)",
                    format!(
                        "{body_id} {} → {} ids {:?} validity {:?} server says {}",
                        view.sender,
                        view.recipient,
                        view.acknowledged_ids,
                        view.validity_secs,
                        view.server_state.as_deref().unwrap_or("(not checked)")
                    ),
                );
            }
        }
    }
    check_order(&messages, &deliveries, &mut report, &mut findings);

    if report.messages_sent == 0 || report.acknowledged == 0 {
        findings.add(
            "no progress",
            format!(
                "{} messages sent, {} acknowledged",
                report.messages_sent, report.acknowledged
            ),
        );
    }
    report.recovery_by_label = recoveries
        .iter()
        .map(|(label, samples)| (label.clone(), DurationStats::from_samples(samples)))
        .collect();
    report.recovery_overall = DurationStats::from_samples(&recoveries_bounded);
    report.failover = DurationStats::from_samples(&failovers);
    report.failures = findings.into_lines();
    report
}

/// Per-message delivery rules: body, recipient, count, ids, timeliness, refusals.
fn check_deliveries(
    body_id: &str,
    view: &MessageView,
    class: MessageClass,
    delivered: &[DeliveryView<'_>],
    config: &CheckConfig,
    report: &mut Report,
    findings: &mut Findings,
) {
    if delivered.is_empty() {
        return;
    }
    if class == MessageClass::Refused {
        report.refused_but_delivered += 1;
        findings.add(
            "delivered although refused with a definite error",
            format!("{body_id} codes {:?}", view.refusal_codes),
        );
    }
    if delivered.len() > 1 {
        report.redelivered += 1;
    }
    if delivered.len() > config.deliveries_per_message_max {
        report.excess_deliveries += 1;
        findings.add(
            "delivered too many times",
            format!(
                "{body_id} delivered {} times (allowed {})",
                delivered.len(),
                config.deliveries_per_message_max
            ),
        );
    }
    let mut ids: BTreeSet<&str> = view.acknowledged_ids.iter().map(String::as_str).collect();
    ids.extend(
        delivered
            .iter()
            .filter_map(|delivery| delivery.server_message_id),
    );
    if ids.len() > 1 {
        report.stored_twice += 1;
        findings.add(
            "stored more than once (one body, several server message ids)",
            format!("{body_id} ids {ids:?}"),
        );
    }
    let deadline = view.delivery_deadline_ms(config.late_tolerance_ms);
    let mut late_seen = false;
    let mut corrupted_seen = false;
    let mut misdelivered_seen = false;
    for delivery in delivered {
        if delivery.body != view.body && !corrupted_seen {
            corrupted_seen = true;
            report.corrupted += 1;
            findings.add(
                "body changed in transit",
                format!("{body_id} sent {:?} got {:?}", view.body, delivery.body),
            );
        }
        if delivery.recipient != view.recipient && !misdelivered_seen {
            misdelivered_seen = true;
            report.misdelivered += 1;
            findings.add(
                "delivered to the wrong recipient",
                format!(
                    "{body_id} for {} delivered to {}",
                    view.recipient, delivery.recipient
                ),
            );
        }
        if let Some(deadline) = deadline
            && delivery.at_ms > deadline
            && !late_seen
        {
            late_seen = true;
            report.late += 1;
            findings.add(
                "delivered after its validity ran out",
                format!(
                    "{body_id} validity {:?} s, last response at {}, delivered at {} ({} ms past the deadline incl. {} ms tolerance)",
                    view.validity_secs,
                    view.last_response_ms,
                    delivery.at_ms,
                    delivery.at_ms - deadline,
                    config.late_tolerance_ms
                ),
            );
        }
    }
}

/// Per sender → recipient, acknowledged messages are first delivered in send order.
fn check_order(
    messages: &BTreeMap<&str, MessageView>,
    deliveries: &BTreeMap<&str, Vec<DeliveryView<'_>>>,
    report: &mut Report,
    findings: &mut Findings,
) {
    // (sender, recipient) → (seq, index of the first delivery, body id)
    type FirstDeliveries<'a> = Vec<(u64, usize, &'a str)>;
    let mut by_pair: BTreeMap<(&str, &str), FirstDeliveries<'_>> = BTreeMap::new();
    for (body_id, view) in messages {
        if view.class() != MessageClass::Acknowledged {
            continue;
        }
        let Some(first) = deliveries
            .get(body_id)
            .and_then(|list| list.iter().map(|delivery| delivery.index).min())
        else {
            continue;
        };
        by_pair
            .entry((view.sender.as_str(), view.recipient.as_str()))
            .or_default()
            .push((view.seq, first, *body_id));
    }
    for ((sender, recipient), mut list) in by_pair {
        list.sort_unstable();
        let mut latest: Option<(usize, &str)> = None;
        for (_, first_index, body_id) in list {
            if let Some((latest_index, latest_body)) = latest
                && first_index < latest_index
            {
                report.out_of_order += 1;
                findings.add(
                    "delivered out of send order",
                    format!("{sender} → {recipient}: {body_id} first arrived before {latest_body}"),
                );
                continue;
            }
            latest = Some((first_index, body_id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds synthetic histories with a monotonic clock.
    struct Script {
        events: Vec<Event>,
        now: u64,
    }

    impl Script {
        fn new() -> Script {
            Script {
                events: Vec::new(),
                now: 1_000_000,
            }
        }

        fn tick(&mut self, ms: u64) -> u64 {
            self.now += ms;
            self.now
        }

        fn body(id: &str) -> String {
            format!("chaos test {id} 😀")
        }

        fn send(&mut self, id: &str, seq: u64, to: &str, validity_secs: Option<u64>) {
            let at_ms = self.tick(1);
            self.events.push(Event::SendStarted {
                at_ms,
                sender: "s1".into(),
                recipient: to.into(),
                body_id: id.into(),
                seq,
                body: Self::body(id),
                attempt: 1,
                node: 1,
                validity_secs,
                call_id: format!("call-{id}"),
            });
        }

        fn finish(&mut self, id: &str, outcome: SendOutcome, code: Option<u16>) {
            let at_ms = self.tick(10);
            self.events.push(Event::SendFinished {
                at_ms,
                sender: "s1".into(),
                body_id: id.into(),
                attempt: 1,
                outcome,
                code,
                server_message_id: (outcome == SendOutcome::Acknowledged)
                    .then(|| format!("server-{id}")),
                detail: String::new(),
            });
        }

        fn acknowledged(&mut self, id: &str, seq: u64, to: &str, validity_secs: Option<u64>) {
            self.send(id, seq, to, validity_secs);
            self.finish(id, SendOutcome::Acknowledged, Some(202));
        }

        fn deliver_at(&mut self, id: &str, to: &str, at_ms: u64) {
            self.events.push(Event::Delivered {
                at_ms,
                recipient: to.into(),
                node: 1,
                body: Self::body(id),
                body_id: Some(id.into()),
                server_message_id: Some(format!("server-{id}")),
                call_id: Some(format!("delivery-{id}")),
            });
        }

        fn deliver(&mut self, id: &str, to: &str) {
            let at_ms = self.tick(5);
            self.deliver_at(id, to, at_ms);
        }

        fn status(&mut self, id: &str, state: &str) {
            let at_ms = self.tick(1);
            self.events.push(Event::StatusChecked {
                at_ms,
                body_id: id.into(),
                server_message_id: format!("server-{id}"),
                state: state.into(),
            });
        }

        fn fault_and_recovery(&mut self, recovery_ms: Option<u64>) {
            let at_ms = self.tick(1);
            self.events.push(Event::FaultStarted {
                at_ms,
                fault_id: 1,
                kind: FaultKind::KillLeader,
                node: 2,
                detail: String::new(),
            });
            let at_ms = self.tick(3_000);
            self.events.push(Event::FaultHealed {
                at_ms,
                fault_id: 1,
                kind: FaultKind::KillLeader,
                node: 2,
            });
            let at_ms = self.tick(recovery_ms.unwrap_or(60_000));
            self.events.push(Event::Recovered {
                at_ms,
                fault_id: Some(1),
                label: FaultKind::KillLeader.name().into(),
                recovery_ms,
                detail: String::new(),
            });
        }

        /// A history that keeps every guarantee: acknowledged messages delivered (one twice),
        /// one expired, one unknown delivered, one unknown never delivered, one refused.
        fn passing() -> Script {
            let mut script = Script::new();
            script.acknowledged("s1-n1", 1, "r1", None);
            script.deliver("s1-n1", "r1");
            script.fault_and_recovery(Some(1_500));
            script.acknowledged("s1-n2", 2, "r1", Some(5));
            script.acknowledged("s1-n3", 3, "r1", None);
            script.deliver("s1-n3", "r1");
            script.deliver("s1-n3", "r1");
            script.send("s1-n4", 4, "r2", None);
            script.finish("s1-n4", SendOutcome::Unknown, None);
            script.deliver("s1-n4", "r2");
            script.send("s1-n5", 5, "r2", None);
            script.finish("s1-n5", SendOutcome::Unknown, None);
            script.send("s1-n6", 6, "r2", None);
            script.finish("s1-n6", SendOutcome::Refused, Some(503));
            script.send("s1-n7", 7, "r2", None);
            script.finish("s1-n7", SendOutcome::Refused, Some(404));
            script.status("s1-n2", "expired");
            script
        }

        fn check(&self) -> Report {
            check(&self.events, &CheckConfig::default())
        }
    }

    fn assert_failed_with(report: &Report, rule: &str) {
        assert!(!report.passed(), "expected a failure: {report:#?}");
        assert!(
            report.failures.iter().any(|line| line.starts_with(rule)),
            "expected a {rule:?} failure, got {:#?}",
            report.failures
        );
    }

    #[test]
    fn a_history_that_keeps_every_guarantee_passes() {
        let report = Script::passing().check();
        assert!(report.passed(), "{:#?}", report.failures);
        assert_eq!(report.messages_sent, 7);
        assert_eq!(report.acknowledged, 3);
        assert_eq!(report.delivered, 2);
        assert_eq!(report.expired, 1);
        assert_eq!(report.lost, 0);
        assert_eq!(report.unknown, 3, "timeouts and the 503");
        assert_eq!(report.unknown_delivered, 1);
        assert_eq!(report.refused, 1);
        assert_eq!(report.refused_by_code.get(&404), Some(&1));
        assert_eq!(report.redelivered, 1);
        assert_eq!(report.deliveries_total, 4);
        assert_eq!(report.faults_by_kind.get(&FaultKind::KillLeader), Some(&1));
        assert_eq!(report.recovery_overall.max_ms, Some(1_500));
        assert_eq!(
            report.acknowledged + report.unknown + report.refused,
            report.messages_sent
        );
        assert_eq!(
            report.delivered + report.expired + report.lost,
            report.acknowledged
        );
    }

    #[test]
    fn an_acknowledged_message_never_delivered_is_lost() {
        let mut script = Script::passing();
        script.acknowledged("s1-n8", 8, "r1", None);
        let report = script.check();
        assert_eq!(report.lost, 1);
        assert_failed_with(&report, "lost");
    }

    #[test]
    fn a_backlog_left_after_the_drain_fails() {
        let mut script = Script::passing();
        script.events.push(Event::DrainFinished {
            at_ms: 1,
            pending: 0,
            drain_ms: 900,
        });
        assert!(script.check().passed());
        script.events.push(Event::DrainFinished {
            at_ms: 2,
            pending: 3,
            drain_ms: 60_000,
        });
        assert_failed_with(&script.check(), "backlog did not drain");
    }

    #[test]
    fn an_undelivered_message_with_validity_is_lost_unless_the_server_expired_it() {
        let mut script = Script::passing();
        script.acknowledged("s1-n8", 8, "r1", Some(5));
        script.status("s1-n8", "enqueued");
        let report = script.check();
        assert_eq!(report.lost, 1);
        assert_failed_with(&report, "lost");
    }

    #[test]
    fn a_delivery_after_validity_and_tolerance_is_late() {
        let mut script = Script::passing();
        script.acknowledged("s1-n8", 8, "r1", Some(5));
        let responded_at = script.now;
        script.deliver_at(
            "s1-n8",
            "r1",
            responded_at + 5_000 + LATE_TOLERANCE_MS_DEFAULT + 1,
        );
        let report = script.check();
        assert_eq!(report.late, 1);
        assert_failed_with(&report, "delivered after its validity ran out");

        let mut script = Script::passing();
        script.acknowledged("s1-n8", 8, "r1", Some(5));
        let responded_at = script.now;
        script.deliver_at(
            "s1-n8",
            "r1",
            responded_at + 5_000 + LATE_TOLERANCE_MS_DEFAULT,
        );
        assert!(
            script.check().passed(),
            "exactly at the deadline is on time"
        );
    }

    #[test]
    fn a_delivery_of_something_never_sent_is_a_phantom() {
        let mut script = Script::passing();
        script.deliver("s9-n1", "r1");
        let at_ms = script.tick(1);
        script.events.push(Event::Delivered {
            at_ms,
            recipient: "r1".into(),
            node: 1,
            body: "not ours".into(),
            body_id: None,
            server_message_id: None,
            call_id: None,
        });
        let report = script.check();
        assert_failed_with(&report, "phantom deliveries");
        assert!(
            report.failures[0].starts_with("phantom deliveries (body not sent by the harness): 2")
        );
    }

    #[test]
    fn a_third_delivery_of_one_message_fails() {
        let mut script = Script::passing();
        script.deliver("s1-n1", "r1");
        assert!(script.check().passed(), "two deliveries are a redelivery");
        script.deliver("s1-n1", "r1");
        let report = script.check();
        assert_eq!(report.excess_deliveries, 1);
        assert_failed_with(&report, "delivered too many times");
    }

    #[test]
    fn two_server_ids_for_one_body_mean_it_was_stored_twice() {
        let mut script = Script::passing();
        let at_ms = script.tick(1);
        script.events.push(Event::Delivered {
            at_ms,
            recipient: "r1".into(),
            node: 1,
            body: Script::body("s1-n1"),
            body_id: Some("s1-n1".into()),
            server_message_id: Some("another-id".into()),
            call_id: None,
        });
        assert_failed_with(&script.check(), "stored more than once");
    }

    #[test]
    fn changed_bodies_wrong_recipients_and_refused_deliveries_fail() {
        let mut script = Script::passing();
        script.deliver("s1-n7", "r2");
        assert_failed_with(&script.check(), "delivered although refused");

        let mut script = Script::passing();
        script.acknowledged("s1-n8", 8, "r1", None);
        script.deliver("s1-n8", "r2");
        assert_failed_with(&script.check(), "delivered to the wrong recipient");

        let mut script = Script::passing();
        script.acknowledged("s1-n8", 8, "r1", None);
        let at_ms = script.tick(1);
        script.events.push(Event::Delivered {
            at_ms,
            recipient: "r1".into(),
            node: 1,
            body: "chaos test s1-n8 ?".into(),
            body_id: Some("s1-n8".into()),
            server_message_id: Some("server-s1-n8".into()),
            call_id: None,
        });
        assert_failed_with(&script.check(), "body changed in transit");
    }

    #[test]
    fn acknowledged_messages_arriving_out_of_send_order_fail() {
        let mut script = Script::passing();
        script.acknowledged("s1-n8", 8, "r1", None);
        script.acknowledged("s1-n9", 9, "r1", None);
        script.deliver("s1-n9", "r1");
        script.deliver("s1-n8", "r1");
        let report = script.check();
        assert_eq!(report.out_of_order, 1);
        assert_failed_with(&report, "delivered out of send order");
    }

    #[test]
    fn slow_or_missing_recovery_and_crashes_fail() {
        let mut script = Script::passing();
        script.fault_and_recovery(Some(RECOVERY_BOUND_MS_DEFAULT + 1));
        assert_failed_with(&script.check(), "recovery slower than the bound");

        let mut script = Script::passing();
        script.fault_and_recovery(None);
        assert_failed_with(&script.check(), "no recovery");

        let mut script = Script::passing();
        script.events.push(Event::NodeExited {
            at_ms: 1,
            node: 3,
            status: "signal 6".into(),
            log_path: "node-3/pmsd.log".into(),
        });
        assert_failed_with(&script.check(), "node processes exited");
    }

    #[test]
    fn a_run_without_acknowledged_messages_proves_nothing() {
        let mut script = Script::new();
        script.send("s1-n1", 1, "r1", None);
        script.finish("s1-n1", SendOutcome::Unknown, None);
        assert_failed_with(&script.check(), "no progress");
    }
}
