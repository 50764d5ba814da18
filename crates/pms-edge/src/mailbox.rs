//! Delivery and expiry, on the leader of the user's group.
//!
//! - `MailboxSupervisorActor` owns one `MailboxActor` per user with pending work, starting one
//!   on `Wake` (new message, new registration) and forgetting it when it stops.
//! - `MailboxActor` delivers its user's queue head through the newest live binding, one
//!   transaction at a time, and commits the outcome (`MarkDelivered` / `MarkFailed`), or backs
//!   off and retries. It stops when there is nothing it can do (empty queue or no live device)
//!   and is rebuilt from the state machine on the next `Wake`.
//! - `ExpiryActor` sweeps the head of the expiry index of every group this node leads (the
//!   groups side by side) and commits `Expire` entries, up to [`EXPIRY_COMMITS_IN_FLIGHT`] at
//!   once per group: concurrent proposals share Raft appends, so a node expires many messages
//!   per commit round instead of one, and keeps up with a sustained offline load.
//!
//! Invariant: a message is removed from the queue only by a committed `MarkDelivered` (device
//! answered 2xx), `MarkFailed` (device answered a permanent error) or `Expire` (guarantee 2).
//! Invariant: a queued message that cannot be opened on this node (its data key does not
//! unwrap, its record does not decode) is never failed for that: it stays queued and is retried
//! with backoff, so a node started with the wrong master key loses nothing.
//! Invariant: per user, delivery follows queue order and one attempt at a time (guarantee 4).
//! Invariant: a message whose validity ended is never sent to a device (guarantee 5).
//! Invariant: a message that arrived over TLS (and an IMDN about it) is sent only through a
//! binding registered over TLS unless `allow_plaintext_delivery` ([`may_carry`]). When no live
//! binding may carry the queue head, the head waits and so does everything behind it: order is
//! per user, so a later message never overtakes it on a plaintext flow; a TLS registration
//! (or the head's expiry) unblocks the queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use pms_mailbox::{Command, CommandResponse, query};
use pms_sip::imdn::ImdnStatus;
use pms_types::limits::MAILBOX_ACTORS_MAX;
use pms_types::{GroupId, MessageId, UserId};
use tokio::sync::oneshot;
use tracing::{Instrument, debug, error, info_span, warn};

use crate::delivery::{delivery_request, may_carry, notification, open_payload};
use crate::service::SipService;
use crate::session::DeliveryOutcome;

/// Most senders waiting for the synchronous window at once; beyond it senders get 202 at once.
pub const DELIVERY_WAITERS_MAX: usize = 100_000;
/// Expired messages handled per group per sweep.
pub const EXPIRY_SWEEP_MAX: usize = 64;
/// Most `Expire` commits in flight per group during a sweep.
pub const EXPIRY_COMMITS_IN_FLIGHT: usize = 32;
/// How often the leader looks for users with queued messages and wakes their mailboxes. This
/// resumes delivery after a leader change, after a lost wake-up, and when a device's node came
/// back; new messages and registrations wake their mailbox at once.
pub const RESUME_SWEEP_INTERVAL: Duration = Duration::from_secs(2);
/// Users woken per resume sweep (the sweep continues where it stopped on the next tick).
pub const RESUME_SWEEP_USERS_MAX: usize = 1_024;
/// Outboxed IMDNs forwarded per group per sweep.
pub const OUTBOX_SWEEP_MAX: usize = 64;

/// Senders waiting to learn that their message was delivered within the synchronous window.
#[derive(Default, Debug)]
pub struct DeliveryWaiters {
    waiting: Mutex<HashMap<MessageId, (Instant, oneshot::Sender<()>)>>,
}

impl DeliveryWaiters {
    /// A receiver that fires when `message_id` is committed as delivered.
    pub fn register(&self, message_id: &MessageId) -> oneshot::Receiver<()> {
        let (sender, receiver) = oneshot::channel();
        let mut waiting = self.lock();
        if waiting.len() >= DELIVERY_WAITERS_MAX {
            // Waiters whose sender gave up (window over) are the stale ones.
            waiting.retain(|_, (_, sender)| !sender.is_closed());
        }
        if waiting.len() < DELIVERY_WAITERS_MAX {
            waiting.insert(message_id.clone(), (Instant::now(), sender));
        }
        receiver
    }

    /// Tells the waiter of `message_id`, if any, that it was delivered.
    pub fn delivered(&self, message_id: &MessageId) {
        if let Some((_, sender)) = self.lock().remove(message_id) {
            let _ = sender.send(());
        }
    }

    /// Forgets a waiter whose window closed.
    pub fn forget_older_than(&self, age: Duration) {
        self.lock()
            .retain(|_, (since, sender)| since.elapsed() < age && !sender.is_closed());
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<MessageId, (Instant, oneshot::Sender<()>)>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Look at `user`'s queue and devices now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wake {
    pub user: UserId,
    /// From the resume sweep: start an actor if none runs, but leave a running one (and its
    /// backoff) alone.
    pub resume: bool,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Kick;

#[derive(Message)]
#[rtype(result = "()")]
struct MailboxStopped {
    user: UserId,
    actor: Addr<MailboxActor>,
}

pub struct MailboxSupervisorActor {
    service: Arc<SipService>,
    actors: HashMap<UserId, Addr<MailboxActor>>,
}

impl MailboxSupervisorActor {
    pub fn new(service: Arc<SipService>) -> Self {
        MailboxSupervisorActor {
            service,
            actors: HashMap::new(),
        }
    }
}

impl Actor for MailboxSupervisorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
        let window = Duration::from_millis(self.service.config().sync_window_ms.saturating_mul(2));
        ctx.run_interval(Duration::from_secs(5), move |actor, _| {
            actor.service.waiters().forget_older_than(window);
        });
    }
}

impl Handler<Wake> for MailboxSupervisorActor {
    type Result = ();

    fn handle(&mut self, Wake { user, resume }: Wake, ctx: &mut Self::Context) {
        if let Some(actor) = self.actors.get(&user) {
            if resume && actor.connected() {
                return;
            }
            match actor.try_send(Kick) {
                // A full mailbox already holds a kick.
                Ok(()) | Err(SendError::Full(_)) => return,
                Err(SendError::Closed(_)) => {}
            }
        }
        if self.actors.len() >= MAILBOX_ACTORS_MAX {
            warn!(%user, "too many active mailboxes; delivery waits for the next wake-up");
            return;
        }
        let actor = MailboxActor {
            user: user.clone(),
            service: self.service.clone(),
            supervisor: ctx.address(),
            running: false,
            kicked: false,
            backoff_ms: self.service.config().delivery_backoff_min_ms,
            retry: None,
        }
        .start();
        let _ = actor.try_send(Kick);
        self.actors.insert(user, actor);
    }
}

impl Handler<MailboxStopped> for MailboxSupervisorActor {
    type Result = ();

    fn handle(&mut self, MailboxStopped { user, actor }: MailboxStopped, _: &mut Self::Context) {
        if self.actors.get(&user) == Some(&actor) {
            self.actors.remove(&user);
        }
    }
}

/// What one delivery attempt leads to.
enum Step {
    /// Something was committed; look at the next message now.
    Progress,
    /// Try again after the backoff.
    Retry,
    /// Nothing to do until the next wake-up.
    Idle,
}

pub struct MailboxActor {
    user: UserId,
    service: Arc<SipService>,
    supervisor: Addr<MailboxSupervisorActor>,
    running: bool,
    kicked: bool,
    backoff_ms: u64,
    retry: Option<SpawnHandle>,
}

impl MailboxActor {
    fn run(&mut self, ctx: &mut Context<Self>) {
        if let Some(retry) = self.retry.take() {
            ctx.cancel_future(retry);
        }
        self.running = true;
        self.kicked = false;
        let service = self.service.clone();
        let user = self.user.clone();
        let span = info_span!("mailbox", %user);
        ctx.spawn(
            async move { attempt(&service, &user).await }
                .instrument(span)
                .into_actor(self)
                .map(|step, actor, ctx| {
                    actor.running = false;
                    match step {
                        Step::Progress => {
                            actor.backoff_ms = actor.service.config().delivery_backoff_min_ms;
                            actor.run(ctx);
                        }
                        Step::Retry if actor.kicked => actor.run(ctx),
                        Step::Retry => {
                            let delay = Duration::from_millis(actor.backoff_ms);
                            actor.backoff_ms = (actor.backoff_ms * 2)
                                .min(actor.service.config().delivery_backoff_max_ms);
                            actor.retry = Some(ctx.run_later(delay, |actor, ctx| {
                                actor.retry = None;
                                actor.run(ctx);
                            }));
                        }
                        Step::Idle if actor.kicked => actor.run(ctx),
                        Step::Idle => ctx.stop(),
                    }
                }),
        );
    }
}

impl Actor for MailboxActor {
    type Context = Context<Self>;

    fn stopped(&mut self, ctx: &mut Self::Context) {
        self.supervisor.do_send(MailboxStopped {
            user: self.user.clone(),
            actor: ctx.address(),
        });
    }
}

impl Handler<Kick> for MailboxActor {
    type Result = ();

    fn handle(&mut self, _: Kick, ctx: &mut Self::Context) {
        if self.running {
            self.kicked = true;
        } else {
            self.backoff_ms = self.service.config().delivery_backoff_min_ms;
            self.run(ctx);
        }
    }
}

/// One delivery attempt for the head of `user`'s queue.
async fn attempt(service: &SipService, user: &UserId) -> Step {
    match try_attempt(service, user).await {
        Ok(step) => step,
        Err(refusal) => {
            warn!(%user, ?refusal, "delivery attempt failed inside PMS");
            Step::Retry
        }
    }
}

async fn try_attempt(service: &SipService, user: &UserId) -> Result<Step, crate::status::Refusal> {
    let config = service.config();
    let group = config.mailbox_group(user);
    if !service.mailboxes().is_leader(group) {
        return Ok(Step::Idle);
    }
    // Invariant: a mailbox delivers only what a confirmed leader's state says is queued: a
    // leader cut off from the majority may not know that its successor already delivered
    // (and committed) the head, and must not send it again.
    if !service.mailboxes().confirm_leadership(group).await {
        return Ok(Step::Retry);
    }
    let now = service.clock().now();
    let internal =
        |error: pms_mailbox::ApplyError| crate::status::Refusal::Internal(error.to_string());
    let state = service.mailboxes().state(group);
    let mut bindings = query::bindings(&*state, group, user, now).map_err(internal)?;
    bindings.sort_by_key(|binding| std::cmp::Reverse(binding.registered_at));
    let local_node = config.node;
    let remote = service.remote_flows();
    // Bindings this node can try: its own open flows, and flows of other nodes when the
    // cluster can push there. Newest registration first.
    bindings.retain(|binding| {
        if binding.flow.node == local_node {
            service.flows().session(binding.flow).is_some()
        } else {
            remote.is_some()
        }
    });
    if bindings.is_empty() {
        return Ok(Step::Idle);
    }
    let Some(message) = query::queue(&*state, group, user, 0, 1)
        .map_err(internal)?
        .into_iter()
        .next()
    else {
        return Ok(Step::Idle);
    };
    drop(state);
    if message.expires_at <= now {
        // Invariant: never sent after its validity; the expiry sweep commits `Expire`.
        return Ok(Step::Retry);
    }
    let payload = match open_payload(service, &message) {
        Ok(payload) => payload,
        Err(refusal) => {
            // Invariant: a message is never failed because it cannot be opened here: the
            // cause (a master key that does not unwrap the data key, a record of a newer
            // format) is this node's, not the message's. It stays queued, and the head is
            // retried with backoff (it still expires at its time).
            error!(%user, message_id = %message.message_id, ?refusal, "queued message cannot be opened on this node (wrong master key?): keeping it queued and retrying");
            return Ok(Step::Retry);
        }
    };
    bindings.retain(|binding| may_carry(binding, &payload, config));
    if bindings.is_empty() {
        // Invariant: the head waits for a flow that may carry it (see the module doc); the
        // TLS registration that can carry it wakes this mailbox.
        debug!(%user, message_id = %message.message_id, "queue head arrived over TLS and the user has no TLS flow; waiting");
        return Ok(Step::Idle);
    }
    let timeout = Duration::from_millis(config.delivery_timeout_ms);
    let mut outcome = DeliveryOutcome::FlowClosed;
    for binding in &bindings {
        // Invariant: re-checked before every push: a retry never goes out after expiry.
        if message.expires_at <= service.clock().now() {
            return Ok(Step::Retry);
        }
        let request = delivery_request(binding, &message, &payload, &config.domain);
        service.metrics().delivery_attempts_total.inc();
        let span = info_span!("delivery_attempt", otel.kind = "internal", message_id = %message.message_id, seq = message.seq, flow_node = %binding.flow.node);
        crate::delivery::join_accepting_trace(&span, &message.message_id);
        outcome = async {
            if binding.flow.node == local_node {
                service.deliver_local(binding.flow, request, timeout).await
            } else if let Some(remote) = &remote {
                remote.deliver(binding.flow, request, timeout).await
            } else {
                DeliveryOutcome::FlowClosed
            }
        }
        .instrument(span)
        .await;
        // A closed flow (connection gone, node gone) says nothing about the message: try the
        // user's next device. Every other outcome ends this attempt.
        if outcome != DeliveryOutcome::FlowClosed {
            break;
        }
    }
    let now = service.clock().now();
    match outcome {
        DeliveryOutcome::Final {
            status: 200..=299, ..
        } => {
            let imdn = notification(
                service,
                &message.message_id,
                &payload,
                ImdnStatus::Delivered,
                now,
            )?;
            let notify = imdn.as_ref().map(|imdn| imdn.recipient.clone());
            let response = commit_outcome(
                service,
                group,
                Command::MarkDelivered {
                    recipient: user.clone(),
                    seq: message.seq,
                    message_id: message.message_id.clone(),
                    at: now,
                    notification: imdn,
                },
            )
            .await?;
            service.waiters().delivered(&message.message_id);
            if response == CommandResponse::Done {
                service.metrics().messages_delivered_total.inc();
                let waited_ms = now.0.saturating_sub(message.enqueued_at.0);
                service
                    .metrics()
                    .delivery_latency_seconds
                    .observe(Duration::from_millis(waited_ms).as_secs_f64());
                if let Some(sender) = notify {
                    service.wake(&sender);
                }
            }
            Ok(Step::Progress)
        }
        DeliveryOutcome::Final {
            status: 408 | 480 | 503,
            ..
        }
        | DeliveryOutcome::TimedOut
        | DeliveryOutcome::FlowClosed
        | DeliveryOutcome::Busy => {
            debug!(%user, ?outcome, "delivery deferred");
            Ok(Step::Retry)
        }
        DeliveryOutcome::Final { status, .. } => {
            let imdn = notification(
                service,
                &message.message_id,
                &payload,
                ImdnStatus::Failed,
                now,
            )?;
            let notify = imdn.as_ref().map(|imdn| imdn.recipient.clone());
            let response = commit_outcome(
                service,
                group,
                Command::MarkFailed {
                    recipient: user.clone(),
                    seq: message.seq,
                    message_id: message.message_id.clone(),
                    code: status,
                    at: now,
                    notification: imdn,
                },
            )
            .await?;
            if response == CommandResponse::Done {
                service.metrics().messages_failed_total.inc();
                if let Some(sender) = notify {
                    service.wake(&sender);
                }
            }
            Ok(Step::Progress)
        }
    }
}

async fn commit_outcome(
    service: &SipService,
    group: GroupId,
    command: Command,
) -> Result<CommandResponse, crate::status::Refusal> {
    // The group that commits it observes the commit latency (once per proposal).
    let result = service.mailboxes().propose(group, command).await;
    result.map_err(|error| crate::status::Refusal::Internal(error.to_string()))
}

/// Commits `Expire` for messages whose validity ended.
/// Also runs the resume sweep (see [`RESUME_SWEEP_INTERVAL`]) on the leader.
pub struct ExpiryActor {
    service: Arc<SipService>,
    sweeping: bool,
    /// Where the resume sweep continues in each group: the last user it woke.
    resume_after: HashMap<GroupId, UserId>,
}

impl ExpiryActor {
    pub fn new(service: Arc<SipService>) -> Self {
        ExpiryActor {
            service,
            sweeping: false,
            resume_after: HashMap::new(),
        }
    }

    /// The mailbox groups this node leads now.
    fn led_groups(&self) -> Vec<GroupId> {
        self.service
            .config()
            .mailbox_group_ids()
            .filter(|group| self.service.mailboxes().is_leader(*group))
            .collect()
    }

    fn resume_sweep(&mut self) {
        for group in self.service.config().mailbox_group_ids() {
            if !self.service.mailboxes().is_leader(group) {
                self.resume_after.remove(&group);
                continue;
            }
            let users = {
                let state = self.service.mailboxes().state(group);
                query::users_with_queue(
                    &*state,
                    group,
                    self.resume_after.get(&group),
                    RESUME_SWEEP_USERS_MAX,
                )
            };
            match users {
                Ok(users) => {
                    match users.last() {
                        Some(last) if users.len() == RESUME_SWEEP_USERS_MAX => {
                            self.resume_after.insert(group, last.clone());
                        }
                        _ => {
                            self.resume_after.remove(&group);
                        }
                    }
                    for user in &users {
                        self.service.wake_for_resume(user);
                    }
                }
                Err(error) => {
                    warn!(%group, %error, "mailbox index unreadable; resume sweep skipped")
                }
            }
        }
    }
}

impl Actor for ExpiryActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(RESUME_SWEEP_INTERVAL, |actor, _| actor.resume_sweep());
        let tick = Duration::from_millis(self.service.config().expiry_tick_ms);
        ctx.run_interval(tick, |actor, ctx| {
            if actor.sweeping {
                return;
            }
            let groups = actor.led_groups();
            if groups.is_empty() {
                return;
            }
            actor.sweeping = true;
            let service = actor.service.clone();
            ctx.spawn(
                async move {
                    let sweeps = groups.into_iter().map(|group| {
                        let service = &service;
                        async move {
                            sweep(service, group).await;
                            forward_outbox(service, group).await;
                        }
                    });
                    futures::future::join_all(sweeps).await;
                }
                .instrument(info_span!("expiry_sweep"))
                .into_actor(actor)
                .map(|(), actor, _| actor.sweeping = false),
            );
        });
    }
}

/// Queues the outboxed IMDNs of `group` in their recipients' groups, then clears them here.
/// Invariant: an IMDN leaves the outbox only after its `Enqueue` committed in the target group
/// (deduplicated there by its dedup key, so a repeat after a crash is stored once).
async fn forward_outbox(service: &SipService, group: GroupId) {
    let entries = {
        let state = service.mailboxes().state(group);
        match query::outbox(&*state, group, OUTBOX_SWEEP_MAX) {
            Ok(entries) => entries,
            Err(error) => {
                warn!(%group, %error, "outbox unreadable");
                return;
            }
        }
    };
    for entry in entries {
        let recipient = entry.message.recipient.clone();
        let message_id = entry.message.message_id.clone();
        let target = service.config().mailbox_group(&recipient);
        let command = Command::Enqueue {
            message: entry.message,
            accepted_at: entry.accepted_at,
            notification: None,
            sender: None,
        };
        match commit_outcome(service, target, command).await {
            Ok(CommandResponse::Enqueued { .. }) => {
                service.wake(&recipient);
            }
            // The sender is gone or its mailbox is full: the report cannot be queued.
            Ok(other) => debug!(%recipient, ?other, "outboxed notification not queued"),
            Err(refusal) => {
                warn!(%group, ?refusal, "outboxed notification not forwarded; retried next sweep");
                return;
            }
        }
        if let Err(refusal) =
            commit_outcome(service, group, Command::ClearOutbox { message_id }).await
        {
            warn!(%group, ?refusal, "outbox entry not cleared; retried next sweep");
            return;
        }
    }
}

async fn sweep(service: &SipService, group: GroupId) {
    use futures::TryStreamExt as _;
    let now = service.clock().now();
    let due = {
        let state = service.mailboxes().state(group);
        match query::expiring(&*state, group, now, EXPIRY_SWEEP_MAX) {
            Ok(due) => due,
            Err(error) => {
                warn!(%error, "expiry index unreadable");
                return;
            }
        }
    };
    // The first commit that fails ends the sweep (the rest are retried on the next one).
    let expired = futures::stream::iter(due.into_iter().map(Ok))
        .try_for_each_concurrent(EXPIRY_COMMITS_IN_FLIGHT, |(_, recipient, seq)| {
            expire(service, group, recipient, seq, now)
        })
        .await;
    if let Err(refusal) = expired {
        warn!(%group, ?refusal, "expire could not commit; retried next sweep");
    }
}

/// Commits `Expire` for `recipient`'s message `seq` if it is still queued, with a failed
/// report for its sender when one was asked for.
async fn expire(
    service: &SipService,
    group: GroupId,
    recipient: UserId,
    seq: u64,
    now: pms_types::UnixMillis,
) -> Result<(), crate::status::Refusal> {
    let message = {
        let state = service.mailboxes().state(group);
        query::queue(&*state, group, &recipient, seq, 1)
            .ok()
            .and_then(|queue| queue.into_iter().next())
            .filter(|message| message.seq == seq)
    };
    let Some(message) = message else {
        return Ok(());
    };
    let imdn = open_payload(service, &message).ok().and_then(|payload| {
        notification(
            service,
            &message.message_id,
            &payload,
            ImdnStatus::Failed,
            now,
        )
        .ok()
        .flatten()
    });
    let notify = imdn.as_ref().map(|imdn| imdn.recipient.clone());
    let command = Command::Expire {
        recipient,
        seq,
        message_id: message.message_id.clone(),
        at: now,
        notification: imdn,
    };
    match commit_outcome(service, group, command).await? {
        CommandResponse::Done => {
            service.metrics().messages_expired_total.inc();
            if let Some(sender) = notify {
                service.wake(&sender);
            }
        }
        other => debug!(?other, "expire not applied"),
    }
    Ok(())
}
