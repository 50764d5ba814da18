//! `pmsctl user …`, `pmsctl message status` and `pmsctl cluster status`: parse the arguments,
//! call a node's admin API through `pms_transport::AdminClient`, and print the answer.
//!
//! Invariants: arguments are validated before connecting (a typo never needs a server);
//! machine-readable output is JSON (one object per line for lists) and goes to `out`, never
//! mixed with diagnostics; with `json` every command prints JSON objects only, one per line,
//! each action naming itself in `"command"`; timestamps are printed as RFC 3339 UTC with
//! milliseconds.

pub use pms_types::time::rfc3339_millis;
use std::io::Write;

use crate::output::report;
use std::path::Path;

use pms_transport::{
    AdminClient, AdminError, ClusterStatus, DigestAlgorithm, MessageState, MessageStatusReport,
    NewUser, Password, TransportError, UserSummary,
};
use pms_types::{MessageId, NodeId, UserId};
use serde::Serialize;

/// Users fetched per page by `user list` (printed as they arrive, so memory stays bounded).
pub const USER_LIST_PAGE_SIZE: u32 = 1_000;
/// Most pages `user list` fetches before it gives up on a server that never ends the list.
pub const USER_LIST_PAGES_MAX: usize = 100_000;

/// One admin subcommand, with its arguments still as typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminCommand {
    UserAdd {
        user: String,
        password: String,
        messaging_enabled: bool,
        /// A comma-separated list; `None` follows the node's policy.
        digest_algorithms: Option<String>,
    },
    /// `algorithms` is a comma-separated list, or `default`.
    UserSetDigestAlgorithms {
        user: String,
        algorithms: String,
        password: Option<String>,
    },
    UserRemove {
        user: String,
    },
    UserSetMessagingEnabled {
        user: String,
        enabled: bool,
    },
    UserList {
        json: bool,
    },
    MessageStatus {
        message_id: String,
    },
    ClusterStatus {
        json: bool,
    },
    ClusterAddNode {
        node: u64,
        address: String,
    },
    ClusterRemoveNode {
        node: u64,
    },
    RotateMasterKey,
}

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminCommandError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Connect(#[from] TransportError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    /// `cluster status` printed a cluster that is not whole (exit status 3, after the output).
    #[error("cluster degraded: {0}")]
    Degraded(String),
}

/// A validated command, ready to send.
enum Validated {
    UserAdd(NewUser),
    UserRemove(UserId),
    UserSetMessagingEnabled(UserId, bool),
    UserSetDigestAlgorithms(UserId, Vec<DigestAlgorithm>, Option<String>),
    UserList { json: bool },
    MessageStatus(MessageId),
    ClusterStatus { json: bool },
    ClusterAddNode(NodeId, String),
    ClusterRemoveNode(NodeId),
    RotateMasterKey,
}

fn parse_node(node: u64) -> Result<NodeId, AdminCommandError> {
    if node == 0 {
        return Err(AdminCommandError::InvalidArgument(
            "node ids start at 1".to_owned(),
        ));
    }
    Ok(NodeId(node))
}

fn parse_user(name: &str) -> Result<UserId, AdminCommandError> {
    UserId::parse(name)
        .map_err(|e| AdminCommandError::InvalidArgument(format!("user {name:?}: {e}")))
}

fn parse_digest_algorithms(list: &str) -> Result<Vec<DigestAlgorithm>, AdminCommandError> {
    DigestAlgorithm::parse_list(list).map_err(|reason| {
        AdminCommandError::InvalidArgument(format!("--digest-algorithms: {reason}"))
    })
}

fn validate(command: AdminCommand) -> Result<Validated, AdminCommandError> {
    Ok(match command {
        AdminCommand::UserAdd {
            user,
            password,
            messaging_enabled,
            digest_algorithms,
        } => Validated::UserAdd(NewUser {
            user: parse_user(&user)?,
            password: Password::new(password)
                .map_err(|e| AdminCommandError::InvalidArgument(e.to_string()))?,
            messaging_enabled,
            digest_algorithms: match digest_algorithms {
                Some(list) => parse_digest_algorithms(&list)?,
                None => Vec::new(),
            },
        }),
        AdminCommand::UserSetDigestAlgorithms {
            user,
            algorithms,
            password,
        } => {
            let algorithms = if algorithms.trim().eq_ignore_ascii_case("default") {
                Vec::new()
            } else {
                parse_digest_algorithms(&algorithms)?
            };
            Validated::UserSetDigestAlgorithms(parse_user(&user)?, algorithms, password)
        }
        AdminCommand::UserRemove { user } => Validated::UserRemove(parse_user(&user)?),
        AdminCommand::UserSetMessagingEnabled { user, enabled } => {
            Validated::UserSetMessagingEnabled(parse_user(&user)?, enabled)
        }
        AdminCommand::UserList { json } => Validated::UserList { json },
        AdminCommand::MessageStatus { message_id } => {
            Validated::MessageStatus(MessageId::parse(&message_id).ok_or_else(|| {
                AdminCommandError::InvalidArgument(format!(
                    "message id {message_id:?} is not 1..=64 printable ASCII characters"
                ))
            })?)
        }
        AdminCommand::ClusterStatus { json } => Validated::ClusterStatus { json },
        AdminCommand::ClusterAddNode { node, address } => {
            let host_and_port = address
                .rsplit_once(':')
                .filter(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if host_and_port.is_none() {
                return Err(AdminCommandError::InvalidArgument(format!(
                    "address {address:?} is not HOST:PORT"
                )));
            }
            Validated::ClusterAddNode(parse_node(node)?, address)
        }
        AdminCommand::ClusterRemoveNode { node } => Validated::ClusterRemoveNode(parse_node(node)?),
        AdminCommand::RotateMasterKey => Validated::RotateMasterKey,
    })
}

/// Validates `command`, connects to the admin API at `admin_address` with the admin certificate
/// from `certs_dir`, runs the command and prints its result to `out`: sentences and tables, or
/// JSON lines when `json` is set (the `json` flags of `UserList` and `ClusterStatus` also
/// select JSON for those two).
pub async fn run(
    admin_address: &str,
    certs_dir: &Path,
    command: AdminCommand,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), AdminCommandError> {
    let command = validate(command)?;
    let client = AdminClient::connect(admin_address, certs_dir).await?;
    match command {
        Validated::UserAdd(new_user) => {
            let (user, enabled) = (new_user.user.clone(), new_user.messaging_enabled);
            let algorithms = policy_names(&new_user.digest_algorithms);
            client.add_user(new_user).await?;
            report(
                out,
                json,
                &serde_json::json!({"command": "user add", "user": user.as_str(),
                    "messaging_enabled": enabled, "digest_algorithms": algorithms}),
                format_args!(
                    "added user {user} (messaging {})",
                    if enabled { "enabled" } else { "disabled" }
                ),
            )?;
        }
        Validated::UserRemove(user) => {
            client.remove_user(&user).await?;
            report(
                out,
                json,
                &serde_json::json!({"command": "user remove", "user": user.as_str()}),
                format_args!("removed user {user}"),
            )?;
        }
        Validated::UserSetMessagingEnabled(user, enabled) => {
            client.set_messaging_enabled(&user, enabled).await?;
            let verb = if enabled { "enabled" } else { "disabled" };
            let command = if enabled {
                "user enable"
            } else {
                "user disable"
            };
            report(
                out,
                json,
                &serde_json::json!({"command": command, "user": user.as_str(),
                    "messaging_enabled": enabled}),
                format_args!("{verb} messaging for user {user}"),
            )?;
        }
        Validated::UserSetDigestAlgorithms(user, algorithms, password) => {
            client
                .set_digest_algorithms(&user, &algorithms, password.as_deref())
                .await?;
            report(
                out,
                json,
                &serde_json::json!({"command": "user set-digest", "user": user.as_str(),
                    "digest_algorithms": policy_names(&algorithms)}),
                format_args!(
                    "digest algorithms of user {user}: {}",
                    policy_text(&algorithms)
                ),
            )?;
        }
        Validated::UserList { json: list_json } => {
            list_users(&client, json || list_json, out).await?;
        }
        Validated::MessageStatus(message_id) => {
            let report = client.message_status(&message_id).await?;
            write_message_status(&report, out)?;
        }
        Validated::ClusterStatus { json: status_json } => {
            // A group between two leaders (a leadership transfer, an election) is no leader
            // for a moment: only a view that stays leaderless counts as degraded.
            let mut status = client.cluster_status().await?;
            for _ in 0..LEADERLESS_RECHECKS_MAX {
                let problems = degradation(&status);
                if problems.is_empty() || status.nodes.iter().any(|node| node.unreachable.is_some())
                {
                    break;
                }
                tokio::time::sleep(LEADERLESS_RECHECK_INTERVAL).await;
                status = client.cluster_status().await?;
            }
            write_cluster_status(&status, json || status_json, out)?;
            out.flush()?;
            let problems = degradation(&status);
            if !problems.is_empty() {
                return Err(AdminCommandError::Degraded(problems.join("; ")));
            }
        }
        Validated::ClusterAddNode(node, address) => {
            client.add_node(node, &address).await?;
            report(
                out,
                json,
                &serde_json::json!({"command": "cluster add-node", "node": node.0,
                    "address": address}),
                format_args!("added node {node} at {address} (voter in every group)"),
            )?;
        }
        Validated::ClusterRemoveNode(node) => {
            client.remove_node(node).await?;
            report(
                out,
                json,
                &serde_json::json!({"command": "cluster remove-node", "node": node.0}),
                format_args!("removed node {node} from every group"),
            )?;
        }
        Validated::RotateMasterKey => {
            let rotation = client.rotate_master_key().await?;
            report(
                out,
                json,
                &serde_json::json!({"command": "cluster rotate-master-key",
                    "from": rotation.from.to_string(), "to": rotation.to.to_string(),
                    "accounts_rewrapped": rotation.accounts_rewrapped}),
                format_args!(
                    "master key rotated: {} -> {}; {} accounts rewrapped. Every node now shreds the old wrapped keys (pms_shred_pending 0 when done); then restart each node without --previous-master-key-file and destroy the old key file",
                    rotation.from, rotation.to, rotation.accounts_rewrapped
                ),
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

async fn list_users(
    client: &AdminClient,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), AdminCommandError> {
    if !json {
        write_user_table_header(out)?;
    }
    let mut after: Option<UserId> = None;
    for _ in 0..USER_LIST_PAGES_MAX {
        let page = client
            .list_users_page(after.as_ref(), USER_LIST_PAGE_SIZE)
            .await?;
        for user in &page.users {
            write_user(user, json, out)?;
        }
        match page.next_after {
            Some(next) => after = Some(next),
            None => return Ok(()),
        }
    }
    Err(AdminError::Internal {
        reason: format!("the server returned more than {USER_LIST_PAGES_MAX} pages of users"),
    }
    .into())
}

#[derive(Serialize)]
struct UserLine<'a> {
    user: &'a str,
    messaging_enabled: bool,
    /// Empty when the account follows the node's policy.
    digest_algorithms: Vec<&'static str>,
}

/// An account's digest policy for JSON: the algorithm names, empty for the node's policy.
fn policy_names(algorithms: &[DigestAlgorithm]) -> Vec<&'static str> {
    algorithms
        .iter()
        .map(|algorithm| algorithm.name())
        .collect()
}

/// An account's digest policy as people read it: `md5,sha256`, or `default`.
fn policy_text(algorithms: &[DigestAlgorithm]) -> String {
    if algorithms.is_empty() {
        return "default".to_owned();
    }
    algorithms
        .iter()
        .map(|algorithm| algorithm.name())
        .collect::<Vec<_>>()
        .join(",")
}

/// The header of the human-readable user table.
pub fn write_user_table_header(out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "{:<32} {:<10} DIGEST", "USER", "MESSAGING")
}

/// One user: a JSON line (`{"user":…,"messaging_enabled":…}`) or a table row.
pub fn write_user(user: &UserSummary, json: bool, out: &mut dyn Write) -> std::io::Result<()> {
    if json {
        let line = UserLine {
            user: user.user.as_str(),
            messaging_enabled: user.messaging_enabled,
            digest_algorithms: user
                .digest_algorithms
                .iter()
                .map(|algorithm| algorithm.name())
                .collect(),
        };
        serde_json::to_writer(&mut *out, &line)?;
        writeln!(out)
    } else {
        let enabled = if user.messaging_enabled {
            "enabled"
        } else {
            "disabled"
        };
        writeln!(
            out,
            "{:<32} {enabled:<10} {}",
            user.user,
            policy_text(&user.digest_algorithms)
        )
    }
}

#[derive(Serialize)]
struct MessageStatusLine<'a> {
    message_id: &'a str,
    status: &'static str,
    recipient: &'a str,
    enqueued_at: String,
    updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    sip_code: Option<u16>,
}

/// `{"message_id","status","recipient","enqueued_at","updated_at"}` on one line, plus
/// `sip_code` when the message failed.
pub fn write_message_status(
    report: &MessageStatusReport,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let line = MessageStatusLine {
        message_id: report.message_id.as_str(),
        status: report.state.as_str(),
        recipient: report.recipient.as_str(),
        enqueued_at: rfc3339_millis(report.enqueued_at),
        updated_at: rfc3339_millis(report.updated_at),
        sip_code: match report.state {
            MessageState::Failed { sip_code } => Some(sip_code),
            _ => None,
        },
    };
    serde_json::to_writer(&mut *out, &line)?;
    writeln!(out)
}

#[derive(Serialize)]
struct ClusterJson<'a> {
    reporting_node: u64,
    nodes: Vec<NodeJson<'a>>,
    /// What keeps the cluster from being whole ([`degradation`]); empty when it is whole.
    degraded: Vec<String>,
}

#[derive(Serialize)]
struct NodeJson<'a> {
    node: u64,
    address: &'a str,
    /// The PMS version the node runs (`null` when it did not answer).
    version: Option<&'a str>,
    groups: Vec<GroupJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unreachable: Option<&'a str>,
}

#[derive(Serialize)]
struct GroupJson {
    group: u32,
    role: &'static str,
    last_applied_index: Option<u64>,
    lag: Option<u64>,
    leader: Option<u64>,
    term: Option<u64>,
}

/// The cluster as the answering node sees it: one JSON document, or a table with one row per
/// node and group.
/// How often `cluster status` asks again while a member sees a group without leader.
const LEADERLESS_RECHECKS_MAX: usize = 5;
/// How long it waits between those views (an election takes 0.5–1 s).
const LEADERLESS_RECHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// What keeps `status` from being a whole cluster: members that did not answer, and groups a
/// member sees without a leader. Empty when every member answered and knows every leader.
pub fn degradation(status: &ClusterStatus) -> Vec<String> {
    let mut problems = Vec::new();
    for node in &status.nodes {
        if let Some(reason) = &node.unreachable {
            problems.push(format!("node {} unreachable ({reason})", node.node));
            continue;
        }
        let leaderless: Vec<String> = node
            .groups
            .iter()
            .filter(|group| group.leader.is_none())
            .map(|group| group.group.to_string())
            .collect();
        if !leaderless.is_empty() {
            problems.push(format!(
                "node {} knows no leader of group {}",
                node.node,
                leaderless.join(", ")
            ));
        }
    }
    problems
}

pub fn write_cluster_status(
    status: &ClusterStatus,
    json: bool,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    if json {
        let document = ClusterJson {
            reporting_node: status.reporting_node.0,
            nodes: status
                .nodes
                .iter()
                .map(|node| NodeJson {
                    node: node.node.0,
                    address: &node.address,
                    version: node.version.as_deref(),
                    groups: node
                        .groups
                        .iter()
                        .map(|member| GroupJson {
                            group: member.group.0,
                            role: member.role.as_str(),
                            last_applied_index: member.last_applied_index,
                            leader: member.leader.map(|leader| leader.0),
                            lag: member.lag,
                            term: member.term,
                        })
                        .collect(),
                    unreachable: node.unreachable.as_deref(),
                })
                .collect(),
            degraded: degradation(status),
        };
        serde_json::to_writer(&mut *out, &document)?;
        return writeln!(out);
    }
    writeln!(out, "as seen by node {}", status.reporting_node)?;
    writeln!(
        out,
        "{:<6} {:<24} {:<8} {:<6} {:<10} {:<6} {:<10} {:<6} LEADER",
        "NODE", "ADDRESS", "VERSION", "GROUP", "ROLE", "TERM", "APPLIED", "LAG"
    )?;
    let or_dash = |value: Option<u64>| value.map_or_else(|| "-".to_owned(), |v| v.to_string());
    for node in &status.nodes {
        if let Some(reason) = &node.unreachable {
            writeln!(
                out,
                "{:<6} {:<24} unreachable: {reason}",
                node.node, node.address
            )?;
            continue;
        }
        let version = node.version.as_deref().unwrap_or("-");
        if node.groups.is_empty() {
            writeln!(out, "{:<6} {:<24} {version:<8} -", node.node, node.address)?;
        }
        for member in &node.groups {
            writeln!(
                out,
                "{:<6} {:<24} {version:<8} {:<6} {:<10} {:<6} {:<10} {:<6} {}",
                node.node,
                node.address,
                member.group,
                member.role.as_str(),
                or_dash(member.term),
                or_dash(member.last_applied_index),
                or_dash(member.lag),
                or_dash(member.leader.map(|leader| leader.0)),
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pms_transport::{GroupMemberStatus, GroupRole, NodeStatus};
    use pms_types::UnixMillis;
    use pms_types::{GroupId, NodeId};

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339_millis(UnixMillis(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(UnixMillis(951_782_400_000)),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339_millis(UnixMillis(1_700_000_000_123)),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            rfc3339_millis(UnixMillis(4_107_542_399_999)),
            "2100-02-28T23:59:59.999Z"
        );
    }

    #[test]
    fn message_status_is_one_json_object_with_the_documented_keys() {
        let report = MessageStatusReport {
            message_id: MessageId::parse("abc123").unwrap(),
            state: MessageState::Expired,
            recipient: UserId::parse("bob").unwrap(),
            enqueued_at: UnixMillis(0),
            updated_at: UnixMillis(1_000),
        };
        let mut out = Vec::new();
        write_message_status(&report, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "message_id": "abc123",
                "status": "expired",
                "recipient": "bob",
                "enqueued_at": "1970-01-01T00:00:00.000Z",
                "updated_at": "1970-01-01T00:00:01.000Z",
            })
        );
    }

    #[test]
    fn users_print_as_json_lines_or_a_table() {
        let users = [
            UserSummary {
                user: UserId::parse("alice").unwrap(),
                messaging_enabled: true,
                digest_algorithms: Vec::new(),
            },
            UserSummary {
                user: UserId::parse("bob").unwrap(),
                messaging_enabled: false,
                digest_algorithms: vec![DigestAlgorithm::Md5, DigestAlgorithm::Sha256],
            },
        ];
        let mut json = Vec::new();
        for user in &users {
            write_user(user, true, &mut json).unwrap();
        }
        let lines: Vec<serde_json::Value> = String::from_utf8(json)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(
            lines[1],
            serde_json::json!({"user": "bob", "messaging_enabled": false, "digest_algorithms": ["md5", "sha256"]})
        );

        let mut table = Vec::new();
        write_user_table_header(&mut table).unwrap();
        for user in &users {
            write_user(user, false, &mut table).unwrap();
        }
        let table = String::from_utf8(table).unwrap();
        let rows: Vec<Vec<&str>> = table
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows,
            [
                vec!["USER", "MESSAGING", "DIGEST"],
                vec!["alice", "enabled", "default"],
                vec!["bob", "disabled", "md5,sha256"]
            ]
        );
    }

    #[test]
    fn cluster_status_json_names_roles_and_unknowns() {
        let status = ClusterStatus {
            reporting_node: NodeId(2),
            nodes: vec![NodeStatus {
                node: NodeId(2),
                address: "10.0.0.2:50051".into(),
                groups: vec![GroupMemberStatus {
                    group: GroupId(0),
                    role: GroupRole::Follower,
                    last_applied_index: None,
                    leader: Some(NodeId(1)),
                    lag: None,
                    term: Some(3),
                }],
                unreachable: None,
                version: Some("0.1.0".into()),
            }],
        };
        let mut out = Vec::new();
        write_cluster_status(&status, true, &mut out).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["nodes"][0]["groups"][0]["role"], "follower");
        assert_eq!(
            value["nodes"][0]["groups"][0]["last_applied_index"],
            serde_json::Value::Null
        );
        assert_eq!(value["nodes"][0]["groups"][0]["leader"], 1);
        assert_eq!(value["nodes"][0]["groups"][0]["term"], 3);
        assert_eq!(value["nodes"][0]["version"], "0.1.0");
        assert!(degradation(&status).is_empty(), "a whole cluster");
    }

    #[test]
    fn an_unreachable_member_or_a_group_without_leader_is_degraded() {
        let group = |leader: Option<u64>| GroupMemberStatus {
            group: GroupId(3),
            role: GroupRole::Follower,
            last_applied_index: Some(7),
            leader: leader.map(NodeId),
            lag: Some(0),
            term: Some(2),
        };
        let status = ClusterStatus {
            reporting_node: NodeId(1),
            nodes: vec![
                NodeStatus {
                    node: NodeId(1),
                    address: "10.0.0.1:50051".into(),
                    groups: vec![group(None)],
                    unreachable: None,
                    version: Some("0.1.0".into()),
                },
                NodeStatus {
                    node: NodeId(2),
                    address: "10.0.0.2:50051".into(),
                    groups: Vec::new(),
                    unreachable: Some("connection refused".into()),
                    version: None,
                },
                NodeStatus {
                    node: NodeId(3),
                    address: "10.0.0.3:50051".into(),
                    groups: vec![group(Some(3))],
                    unreachable: None,
                    version: Some("0.1.0".into()),
                },
            ],
        };
        assert_eq!(
            degradation(&status),
            [
                "node 1 knows no leader of group 3",
                "node 2 unreachable (connection refused)"
            ]
        );
    }

    #[tokio::test]
    async fn bad_arguments_fail_before_connecting() {
        let nowhere = Path::new("/nonexistent-certs-dir");
        let bad_user = AdminCommand::UserRemove {
            user: "no spaces".into(),
        };
        let result = run("127.0.0.1:1", nowhere, bad_user, false, &mut Vec::new()).await;
        assert!(
            matches!(result, Err(AdminCommandError::InvalidArgument(_))),
            "{result:?}"
        );
        let bad_id = AdminCommand::MessageStatus {
            message_id: String::new(),
        };
        let result = run("127.0.0.1:1", nowhere, bad_id, false, &mut Vec::new()).await;
        assert!(
            matches!(result, Err(AdminCommandError::InvalidArgument(_))),
            "{result:?}"
        );
    }
}
