//! Conversions between the admin API's plain Rust types and its protobuf messages and status
//! codes. Invariant: nothing received from the network is trusted: every string is re-validated
//! (`UserId::parse`, `MessageId::parse`, `Password::new`) and every failure becomes an
//! [`AdminError`], never a panic.

use pms_mailbox::DigestAlgorithm;
use pms_types::{GroupId, MessageId, NodeId, UnixMillis, UserId};
use tonic::{Code, Status};

use super::{
    AdminError, ClusterStatus, GroupMemberStatus, GroupRole, MessageState, MessageStatusReport,
    NodeStatus, UserSummary,
};
use crate::proto::admin_v1 as pb;

impl From<AdminError> for Status {
    fn from(error: AdminError) -> Self {
        match error {
            AdminError::NotFound { what } => Status::not_found(what),
            AdminError::AlreadyExists { what } => Status::already_exists(what),
            AdminError::InvalidArgument { reason } => Status::invalid_argument(reason),
            AdminError::Unavailable { reason } => Status::unavailable(reason),
            AdminError::PermissionDenied { reason } => Status::permission_denied(reason),
            AdminError::FailedPrecondition { reason } => Status::failed_precondition(reason),
            AdminError::Internal { reason } => Status::internal(reason),
        }
    }
}

impl From<Status> for AdminError {
    fn from(status: Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            Code::NotFound => AdminError::NotFound { what: message },
            Code::AlreadyExists => AdminError::AlreadyExists { what: message },
            Code::InvalidArgument => AdminError::InvalidArgument { reason: message },
            // The call may or may not have taken effect: the caller may retry. The admin service
            // never answers UNKNOWN itself; tonic reports a connection broken mid-call with it
            // (e.g. a server refusing the client certificate after a TLS 1.3 handshake).
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                AdminError::Unavailable {
                    reason: format!("{:?}: {message}", status.code()),
                }
            }
            Code::PermissionDenied | Code::Unauthenticated => {
                AdminError::PermissionDenied { reason: message }
            }
            Code::FailedPrecondition => AdminError::FailedPrecondition { reason: message },
            Code::Internal => AdminError::Internal { reason: message },
            // Codes the admin API never sends (a proxy, a bug, a newer server) keep their name.
            other => AdminError::Internal {
                reason: format!("{other:?}: {message}"),
            },
        }
    }
}

/// A user name from the wire, or `INVALID_ARGUMENT`.
pub(crate) fn parse_user(name: &str) -> Result<UserId, AdminError> {
    UserId::parse(name).map_err(|e| AdminError::InvalidArgument {
        reason: format!("user {name:?}: {e}"),
    })
}

/// A message id from the wire, or `INVALID_ARGUMENT`.
pub(crate) fn parse_message_id(text: &str) -> Result<MessageId, AdminError> {
    MessageId::parse(text).ok_or_else(|| AdminError::InvalidArgument {
        reason: format!(
            "message id {text:?} is not 1..={} printable ASCII characters",
            pms_types::limits::MESSAGE_ID_BYTES_MAX
        ),
    })
}

/// A malformed answer from a server is the server's fault, not the caller's.
fn malformed_answer(error: AdminError) -> AdminError {
    AdminError::Internal {
        reason: format!("malformed answer from server: {error}"),
    }
}

pub(crate) fn user_to_proto(user: &UserSummary) -> pb::User {
    pb::User {
        user: user.user.as_str().to_owned(),
        messaging_enabled: user.messaging_enabled,
        digest_algorithms: digest_algorithms_to_proto(&user.digest_algorithms),
    }
}

pub(crate) fn user_from_proto(user: pb::User) -> Result<UserSummary, AdminError> {
    Ok(UserSummary {
        user: parse_user(&user.user).map_err(malformed_answer)?,
        messaging_enabled: user.messaging_enabled,
        digest_algorithms: parse_digest_algorithms(&user.digest_algorithms)
            .map_err(malformed_answer)?,
    })
}

pub(crate) fn digest_algorithms_to_proto(algorithms: &[DigestAlgorithm]) -> Vec<String> {
    algorithms
        .iter()
        .map(|algorithm| algorithm.name().to_owned())
        .collect()
}

/// A digest policy from the wire: empty (the node's policy) or known names without repeats.
pub(crate) fn parse_digest_algorithms(
    names: &[String],
) -> Result<Vec<DigestAlgorithm>, AdminError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    DigestAlgorithm::parse_list(&names.join(","))
        .map_err(|reason| AdminError::InvalidArgument { reason })
}

pub(crate) fn message_status_to_proto(report: &MessageStatusReport) -> pb::MessageStatusResponse {
    let (state, failure_sip_code) = match report.state {
        MessageState::Enqueued => (pb::MessageState::Enqueued, None),
        MessageState::Delivered => (pb::MessageState::Delivered, None),
        MessageState::Expired => (pb::MessageState::Expired, None),
        MessageState::Failed { sip_code } => (pb::MessageState::Failed, Some(u32::from(sip_code))),
    };
    pb::MessageStatusResponse {
        message_id: report.message_id.as_str().to_owned(),
        state: state.into(),
        recipient: report.recipient.as_str().to_owned(),
        enqueued_at_ms: report.enqueued_at.0,
        updated_at_ms: report.updated_at.0,
        failure_sip_code,
    }
}

pub(crate) fn message_status_from_proto(
    response: pb::MessageStatusResponse,
) -> Result<MessageStatusReport, AdminError> {
    let state = match pb::MessageState::try_from(response.state) {
        Ok(pb::MessageState::Enqueued) => MessageState::Enqueued,
        Ok(pb::MessageState::Delivered) => MessageState::Delivered,
        Ok(pb::MessageState::Expired) => MessageState::Expired,
        Ok(pb::MessageState::Failed) => MessageState::Failed {
            sip_code: response
                .failure_sip_code
                .and_then(|code| u16::try_from(code).ok())
                .unwrap_or(0),
        },
        Ok(pb::MessageState::Unspecified) | Err(_) => {
            return Err(AdminError::Internal {
                reason: format!(
                    "malformed answer from server: message state {}",
                    response.state
                ),
            });
        }
    };
    Ok(MessageStatusReport {
        message_id: parse_message_id(&response.message_id).map_err(malformed_answer)?,
        state,
        recipient: parse_user(&response.recipient).map_err(malformed_answer)?,
        enqueued_at: UnixMillis(response.enqueued_at_ms),
        updated_at: UnixMillis(response.updated_at_ms),
    })
}

fn role_to_proto(role: GroupRole) -> pb::GroupRole {
    match role {
        GroupRole::Leader => pb::GroupRole::Leader,
        GroupRole::Follower => pb::GroupRole::Follower,
        GroupRole::Candidate => pb::GroupRole::Candidate,
        GroupRole::Learner => pb::GroupRole::Learner,
        GroupRole::Unknown => pb::GroupRole::Unspecified,
    }
}

fn role_from_proto(role: i32) -> GroupRole {
    // A role added to the proto later is shown as unknown rather than failing the whole call.
    match pb::GroupRole::try_from(role) {
        Ok(pb::GroupRole::Leader) => GroupRole::Leader,
        Ok(pb::GroupRole::Follower) => GroupRole::Follower,
        Ok(pb::GroupRole::Candidate) => GroupRole::Candidate,
        Ok(pb::GroupRole::Learner) => GroupRole::Learner,
        Ok(pb::GroupRole::Unspecified) | Err(_) => GroupRole::Unknown,
    }
}

pub(crate) fn cluster_status_to_proto(status: &ClusterStatus) -> pb::ClusterStatusResponse {
    pb::ClusterStatusResponse {
        reporting_node_id: status.reporting_node.0,
        nodes: status
            .nodes
            .iter()
            .map(|node| pb::Node {
                node_id: node.node.0,
                address: node.address.clone(),
                groups: node
                    .groups
                    .iter()
                    .map(|member| pb::GroupMember {
                        group_id: member.group.0,
                        role: role_to_proto(member.role).into(),
                        last_applied_index: member.last_applied_index,
                        leader_node_id: member.leader.map(|leader| leader.0),
                        lag: member.lag,
                        term: member.term,
                    })
                    .collect(),
                unreachable: node.unreachable.clone().unwrap_or_default(),
                version: node.version.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

pub(crate) fn cluster_status_from_proto(response: pb::ClusterStatusResponse) -> ClusterStatus {
    ClusterStatus {
        reporting_node: NodeId(response.reporting_node_id),
        nodes: response
            .nodes
            .into_iter()
            .map(|node| NodeStatus {
                node: NodeId(node.node_id),
                address: node.address,
                groups: node
                    .groups
                    .into_iter()
                    .map(|member| GroupMemberStatus {
                        group: GroupId(member.group_id),
                        role: role_from_proto(member.role),
                        last_applied_index: member.last_applied_index,
                        leader: member.leader_node_id.map(NodeId),
                        lag: member.lag,
                        term: member.term,
                    })
                    .collect(),
                unreachable: Some(node.unreachable).filter(|reason| !reason.is_empty()),
                version: Some(node.version).filter(|version| !version.is_empty()),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_admin_error_survives_a_round_trip_through_a_status() {
        let errors = [
            AdminError::NotFound {
                what: "user bob".into(),
            },
            AdminError::AlreadyExists {
                what: "user bob".into(),
            },
            AdminError::InvalidArgument {
                reason: "bad".into(),
            },
            AdminError::PermissionDenied {
                reason: "cn".into(),
            },
            AdminError::FailedPrecondition {
                reason: "quorum".into(),
            },
            AdminError::Internal {
                reason: "disk".into(),
            },
        ];
        for error in errors {
            assert_eq!(AdminError::from(Status::from(error.clone())), error);
        }
        let unavailable = AdminError::from(Status::from(AdminError::Unavailable {
            reason: "no leader".into(),
        }));
        assert!(
            matches!(unavailable, AdminError::Unavailable { reason } if reason.contains("no leader"))
        );
    }

    #[test]
    fn message_status_round_trips_and_rejects_an_unknown_state() {
        let report = MessageStatusReport {
            message_id: MessageId::parse("0123abcd").unwrap(),
            state: MessageState::Failed { sip_code: 488 },
            recipient: UserId::parse("bob").unwrap(),
            enqueued_at: UnixMillis(1),
            updated_at: UnixMillis(2),
        };
        let wire = message_status_to_proto(&report);
        assert_eq!(message_status_from_proto(wire.clone()).unwrap(), report);
        let bad = pb::MessageStatusResponse { state: 99, ..wire };
        assert!(matches!(
            message_status_from_proto(bad),
            Err(AdminError::Internal { .. })
        ));
    }

    #[test]
    fn cluster_status_round_trips() {
        let status = ClusterStatus {
            reporting_node: NodeId(1),
            nodes: vec![NodeStatus {
                node: NodeId(1),
                address: "10.0.0.1:50051".into(),
                groups: vec![
                    GroupMemberStatus {
                        group: GroupId(0),
                        role: GroupRole::Leader,
                        last_applied_index: Some(42),
                        leader: Some(NodeId(1)),
                        lag: Some(3),
                        term: Some(7),
                    },
                    GroupMemberStatus {
                        group: GroupId(1),
                        role: GroupRole::Unknown,
                        last_applied_index: None,
                        leader: None,
                        lag: None,
                        term: None,
                    },
                ],
                unreachable: Some("connection refused".into()),
                version: Some("0.1.0".into()),
            }],
        };
        assert_eq!(
            cluster_status_from_proto(cluster_status_to_proto(&status)),
            status
        );
    }
}
