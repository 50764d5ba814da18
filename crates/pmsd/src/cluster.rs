//! What makes one node part of a cluster: [`ClusterRouter`] (commands go to the leader of their
//! group, locally or over gRPC), [`GrpcRemoteFlows`] (deliveries go out through the node that
//! holds the device's flow), [`EdgeFlowDelivery`] (the far end of such a push), and
//! [`wake_on_apply`] (the leader's mailboxes hear about every applied message and binding,
//! whichever node proposed it; every node's synchronous-window waiters hear of deliveries).
//!
//! Invariant: callers never see "not leader": the router follows the leader until a deadline,
//! and reports an unknown outcome (retryable) rather than a failure when an answer was lost.
//! Retrying a command is safe because every command is idempotent or deduplicated by the state
//! machine (`Enqueue` by its dedup keys, outcomes by queue position and message id).
//! Invariant: after a forwarded command commits, the router waits (bounded) until this node's
//! replica applied it, so the caller reads its own write.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pms_edge::SipService;
use pms_edge::service::RemoteFlows;
use pms_edge::session::DeliveryOutcome;
use pms_mailbox::{BoxFuture, Command, CommandResponse};
use pms_replication::{Replication, ReplicationError};
use pms_sip::message::Request;
use pms_transport::{DeliveryReport, FlowDelivery, ForwardError, PeerClients, PeerFuture};
use pms_types::{FlowId, GroupId};
use tracing::{Instrument as _, debug, warn};

/// How long the router keeps trying to get a command committed (following leader changes,
/// retrying lost answers) before it reports an unknown outcome.
pub const FORWARD_DEADLINE: Duration = Duration::from_secs(8);
/// First and longest pause between two tries.
const FORWARD_BACKOFF_MIN: Duration = Duration::from_millis(20);
const FORWARD_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Longest one forwarded try may take: a paused or partitioned leader costs this much, and the
/// next try goes to whichever leader the group knows by then.
const FORWARD_TRY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long to wait for this node's replica to apply a forwarded command.
const LOCAL_APPLY_WAIT: Duration = Duration::from_secs(2);

/// Sends commands to the leader of their group.
pub struct ClusterRouter {
    replication: Arc<Replication>,
    peers: Arc<PeerClients>,
}

impl ClusterRouter {
    pub fn new(replication: Arc<Replication>, peers: Arc<PeerClients>) -> Self {
        ClusterRouter { replication, peers }
    }

    pub fn peers(&self) -> &Arc<PeerClients> {
        &self.peers
    }

    /// Replicates `command` in `group` through its leader, wherever it is; returns after the
    /// command committed and this node applied it (or [`LOCAL_APPLY_WAIT`] passed).
    /// Inside a trace (a SIP transaction's), the routing is a span of that trace; outside one
    /// (the prune schedule, the expiry sweep) it starts none, so idle nodes export nothing.
    pub async fn propose(
        &self,
        group_id: GroupId,
        command: Command,
    ) -> Result<CommandResponse, ReplicationError> {
        let span = if in_trace() {
            tracing::info_span!(
                "cluster_propose",
                otel.kind = "internal",
                pms.group = group_id.0,
                pms.command = pms_replication::command_name(&command),
            )
        } else {
            tracing::Span::none()
        };
        self.route(group_id, command).instrument(span).await
    }

    async fn route(
        &self,
        group_id: GroupId,
        command: Command,
    ) -> Result<CommandResponse, ReplicationError> {
        let group = self.replication.require_group(group_id)?;
        let deadline = Instant::now() + FORWARD_DEADLINE;
        let mut backoff = FORWARD_BACKOFF_MIN;
        let mut last_error: Option<ReplicationError> = None;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(last_error.unwrap_or(ReplicationError::NoLeader {
                    group: group_id,
                    timeout_ms: duration_ms(FORWARD_DEADLINE),
                }));
            }
            let leader = match group.current_leader() {
                Some(leader) => leader,
                None => {
                    if let Err(error) = group
                        .wait_for_leader(remaining.min(Duration::from_secs(1)))
                        .await
                    {
                        last_error = Some(error);
                    }
                    continue;
                }
            };
            if leader == self.replication.node_id() {
                let commit = if in_trace() {
                    tracing::info_span!(
                        "raft_commit",
                        otel.kind = "internal",
                        pms.group = group_id.0,
                        pms.command = pms_replication::command_name(&command),
                    )
                } else {
                    tracing::Span::none()
                };
                // Before the proposal, so that this leader's delivery of the message finds it.
                commit.in_scope(|| pms_edge::delivery::remember_trace(&command));
                match group.propose(command.clone()).instrument(commit).await {
                    Ok(response) => return Ok(response),
                    Err(error) if error.is_retryable() => {
                        debug!(group = %group_id, %error, "propose will be retried");
                        last_error = Some(error);
                    }
                    Err(error) => return Err(error),
                }
            } else {
                let Some(address) = group.member_address(leader) else {
                    last_error = Some(ReplicationError::NotLeader {
                        group: group_id,
                        leader: Some(leader),
                    });
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(FORWARD_BACKOFF_MAX);
                    continue;
                };
                match self
                    .peers
                    .propose(
                        &address,
                        group_id,
                        &command,
                        remaining.min(FORWARD_TRY_TIMEOUT),
                    )
                    .await
                {
                    Ok(forwarded) => {
                        // Read-your-writes on this node; a lagging replica only delays it.
                        if let Err(error) = group
                            .wait_for_applied(forwarded.log_index, LOCAL_APPLY_WAIT)
                            .await
                        {
                            warn!(group = %group_id, %error, "this replica lags the leader");
                        }
                        return Ok(forwarded.response);
                    }
                    Err(ForwardError::NotLeader { leader, .. }) => {
                        last_error = Some(ReplicationError::NotLeader {
                            group: group_id,
                            leader: leader.map(|node| node.0),
                        });
                    }
                    Err(ForwardError::OutcomeUnknown { address, detail }) => {
                        debug!(group = %group_id, %address, %detail, "forwarded propose will be retried");
                        last_error = Some(ReplicationError::Timeout {
                            group: group_id,
                            timeout_ms: duration_ms(FORWARD_DEADLINE),
                        });
                    }
                    Err(ForwardError::Refused { address, detail }) => {
                        return Err(ReplicationError::Refused {
                            group: group_id,
                            detail: format!("{address}: {detail}"),
                        });
                    }
                }
            }
            tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())))
                .await;
            backoff = (backoff * 2).min(FORWARD_BACKOFF_MAX);
        }
    }

    /// Waits until this node's replica of `group` has applied every command the group committed
    /// before the call: asks the leader for a read index (itself when it leads, else over
    /// gRPC) and waits until this replica applied that index. One try within `timeout`: the
    /// caller only wants state at least as fresh as the leader's, and goes on with what it has
    /// when the leader cannot be asked.
    pub async fn catch_up(
        &self,
        group_id: GroupId,
        timeout: Duration,
    ) -> Result<(), ReplicationError> {
        let group = self.replication.require_group(group_id)?;
        let deadline = Instant::now() + timeout;
        let leader = match group.current_leader() {
            Some(leader) => leader,
            None => group.wait_for_leader(timeout).await?,
        };
        let remaining = || deadline.saturating_duration_since(Instant::now());
        let index = if leader == self.replication.node_id() {
            group.read_index(remaining()).await?
        } else {
            let address = leader_address(group, leader)?;
            self.peers
                .read_index(&address, group_id, remaining())
                .await
                .map_err(|error| match error {
                    ForwardError::NotLeader { leader, .. } => ReplicationError::NotLeader {
                        group: group_id,
                        leader: leader.map(|node| node.0),
                    },
                    ForwardError::OutcomeUnknown { .. } => ReplicationError::Timeout {
                        group: group_id,
                        timeout_ms: duration_ms(timeout),
                    },
                    ForwardError::Refused { address, detail } => ReplicationError::Refused {
                        group: group_id,
                        detail: format!("{address}: {detail}"),
                    },
                })?
        };
        group.wait_for_applied(index, remaining()).await
    }

    /// Adds (`Some(address)`) or removes (`None`) `node` in every group, through each group's
    /// leader.
    pub async fn change_membership(
        &self,
        node: u64,
        address: Option<String>,
    ) -> Result<(), ReplicationError> {
        for group in self.replication.groups() {
            let group_id = group.id();
            let deadline = Instant::now() + FORWARD_DEADLINE;
            loop {
                let leader = group
                    .wait_for_leader(deadline.saturating_duration_since(Instant::now()))
                    .await?;
                let result = if leader == self.replication.node_id() {
                    match &address {
                        Some(address) => group.add_voter(node, address.clone()).await,
                        None => group.remove_node(node).await,
                    }
                } else {
                    let leader_address = leader_address(group, leader)?;
                    self.peers
                        .change_membership(
                            &leader_address,
                            group_id,
                            pms_types::NodeId(node),
                            address.clone(),
                            // Adding a learner waits until it caught up: allow for it.
                            FORWARD_DEADLINE * 8,
                        )
                        .await
                        .map_err(|error| match error {
                            ForwardError::NotLeader { leader, .. } => ReplicationError::NotLeader {
                                group: group_id,
                                leader: leader.map(|node| node.0),
                            },
                            ForwardError::OutcomeUnknown { detail, .. } => {
                                ReplicationError::Refused {
                                    group: group_id,
                                    detail: format!("outcome unknown, retry: {detail}"),
                                }
                            }
                            ForwardError::Refused { detail, .. } => ReplicationError::Refused {
                                group: group_id,
                                detail,
                            },
                        })
                };
                match result {
                    Ok(()) => break,
                    Err(ReplicationError::NotLeader { .. }) if Instant::now() < deadline => {
                        tokio::time::sleep(FORWARD_BACKOFF_MAX).await;
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(())
    }
}

/// Whether the current span belongs to an OpenTelemetry trace (exported, or carrying the ids
/// of `--log-format json`).
fn in_trace() -> bool {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    tracing::Span::current()
        .context()
        .span()
        .span_context()
        .is_valid()
}

/// The address of `leader` in `group`'s membership; `NotLeader` when the membership does not
/// name it (it changed meanwhile: the caller asks again).
fn leader_address(group: &pms_replication::Group, leader: u64) -> Result<String, ReplicationError> {
    group
        .member_address(leader)
        .ok_or(ReplicationError::NotLeader {
            group: group.id(),
            leader: Some(leader),
        })
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The placeholder Via of a request pushed to another node (removed there).
const PUSH_VIA: &str = "SIP/2.0/TLS pms.invalid;branch=z9hG4bK-pms-push";

/// Deliveries through flows that other nodes hold, over gRPC.
pub struct GrpcRemoteFlows {
    pub replication: Arc<Replication>,
    pub peers: Arc<PeerClients>,
}

impl RemoteFlows for GrpcRemoteFlows {
    fn deliver(
        &self,
        flow: FlowId,
        request: Request,
        timeout: Duration,
    ) -> BoxFuture<'_, DeliveryOutcome> {
        Box::pin(async move {
            // The flow's node is a member of some group; its address is in the membership.
            let address = self
                .replication
                .groups()
                .find_map(|group| group.member_address(flow.node.0));
            let Some(address) = address else {
                return DeliveryOutcome::FlowClosed;
            };
            // A SIP request needs a Via to parse; the far node replaces it with its own.
            let mut request = request;
            request.headers.set("Via", PUSH_VIA);
            match self
                .peers
                .deliver(&address, flow, request.to_bytes(), timeout)
                .await
            {
                DeliveryReport::Final(status) => DeliveryOutcome::Final {
                    status,
                    reason: String::new(),
                },
                DeliveryReport::TimedOut => DeliveryOutcome::TimedOut,
                DeliveryReport::FlowClosed => DeliveryOutcome::FlowClosed,
                DeliveryReport::Busy => DeliveryOutcome::Busy,
            }
        })
    }
}

/// The far end of a pushed delivery: this node's flows, through its SIP edge. Until the edge
/// is up every push finds no flow.
#[derive(Default)]
pub struct EdgeFlowDelivery {
    pub service: OnceLock<Arc<SipService>>,
}

impl FlowDelivery for EdgeFlowDelivery {
    fn proposing(&self, command: &Command) {
        pms_edge::delivery::remember_trace(command);
    }

    fn deliver(
        &self,
        flow: FlowId,
        request: Vec<u8>,
        timeout: Duration,
    ) -> PeerFuture<'_, DeliveryReport> {
        Box::pin(async move {
            let Some(service) = self.service.get() else {
                return DeliveryReport::FlowClosed;
            };
            let mut request = match pms_sip::message::parse(&request) {
                Ok(pms_sip::message::SipMessage::Request(request)) => request,
                _ => {
                    warn!(?flow, "pushed delivery is not a SIP request; refused");
                    return DeliveryReport::FlowClosed;
                }
            };
            // The session adds this node's own Via, as for a local delivery.
            request.headers.remove("Via");
            match service.deliver_local(flow, request, timeout).await {
                DeliveryOutcome::Final { status, .. } => DeliveryReport::Final(status),
                DeliveryOutcome::TimedOut => DeliveryReport::TimedOut,
                DeliveryOutcome::FlowClosed => DeliveryReport::FlowClosed,
                DeliveryOutcome::Busy => DeliveryReport::Busy,
            }
        })
    }
}

/// Wakes the mailbox of every user an applied command concerns, while this node leads the
/// group: a message or IMDN queued, a device bound. Commands proposed on other nodes reach the
/// leader's mailboxes this way. Runs until the group's event channel closes.
pub async fn wake_on_apply(
    replication: Arc<Replication>,
    group: GroupId,
    service: Arc<SipService>,
) {
    let Some(events) = replication
        .group(group)
        .map(|group| group.subscribe_applied())
    else {
        return;
    };
    let mut events = events;
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            // Missed events: the resume sweep finds every queued user within its interval.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                debug!(
                    missed,
                    "applied events missed; the resume sweep covers them"
                );
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        // Every replica applies every outcome: the node holding a sender's synchronous window
        // learns of the delivery here even when another node's mailbox delivered it.
        if let Command::MarkDelivered { message_id, .. } = &*event.command {
            service.waiters().delivered(message_id);
        }
        if !replication
            .group(group)
            .is_some_and(|group| group.is_leader())
        {
            continue;
        }
        match &*event.command {
            Command::Enqueue {
                message,
                notification,
                ..
            } => {
                service.wake(&message.recipient);
                if let Some(notification) = notification {
                    service.wake(&notification.recipient);
                }
            }
            Command::Bind { binding, .. } => service.wake(&binding.user),
            Command::MarkDelivered { notification, .. }
            | Command::MarkFailed { notification, .. }
            | Command::Expire { notification, .. } => {
                if let Some(notification) = notification {
                    service.wake(&notification.recipient);
                }
            }
            _ => {}
        }
    }
}
