//! The admin API client used by `pmsctl`: mutual TLS with `client.<name>.crt` from the certs
//! dir, trusting only `ca.crt`. Invariant: every answer is validated before it is returned as a
//! plain Rust type; a malformed answer is [`AdminError::Internal`], never a panic.

use std::path::Path;
use std::time::Duration;

use pms_types::{MessageId, NodeId, UserId};
use tonic::transport::Channel;

use pms_mailbox::DigestAlgorithm;

use super::convert::{
    cluster_status_from_proto, digest_algorithms_to_proto, message_status_from_proto,
    user_from_proto,
};
use super::{
    AdminError, ClusterStatus, MessageStatusReport, NewUser, USERS_PAGE_SIZE_MAX, UserPage,
    UserSummary,
};
use crate::TransportError;
use crate::proto::admin_v1 as pb;
use crate::tls::{ADMIN_CLIENT_NAME, GrpcTlsConnector, grpc_endpoint};

/// How long connecting (TCP + TLS + HTTP/2) may take.
pub const ADMIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one admin call may take before the client gives up (outcome unknown).
pub const ADMIN_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Most pages [`AdminClient::list_users`] fetches (so at most this many times
/// [`USERS_PAGE_SIZE_MAX`] users); a loop over a misbehaving server still ends.
pub const USERS_PAGES_MAX: usize = 10_000;

/// A connection to one node's admin API. Cheap to clone; calls may run concurrently.
#[derive(Clone, Debug)]
pub struct AdminClient {
    inner: pb::admin_client::AdminClient<Channel>,
}

impl AdminClient {
    /// Connects to `address` (`HOST:PORT`) as the admin (`client.admin.crt`/`.key`).
    pub async fn connect(address: &str, certs_dir: &Path) -> Result<Self, TransportError> {
        Self::connect_as(address, certs_dir, ADMIN_CLIENT_NAME).await
    }

    /// Connects presenting `client.<client_name>.crt`/`.key` from `certs_dir`. Only `admin` is
    /// allowed to call; other names get [`AdminError::PermissionDenied`] on every call.
    pub async fn connect_as(
        address: &str,
        certs_dir: &Path,
        client_name: &str,
    ) -> Result<Self, TransportError> {
        let identity =
            pms_crypto::load_client_identity(certs_dir, client_name).map_err(|error| {
                TransportError::Certificates {
                    certs_dir: certs_dir.to_path_buf(),
                    reason: error.to_string(),
                }
            })?;
        let connector = GrpcTlsConnector::new(certs_dir, &identity, address)?;
        let channel = grpc_endpoint(address)?
            .connect_timeout(ADMIN_CONNECT_TIMEOUT)
            .timeout(ADMIN_CALL_TIMEOUT)
            .connect_with_connector(connector)
            .await
            .map_err(|source| TransportError::Connect {
                address: address.to_owned(),
                source,
            })?;
        Ok(AdminClient {
            inner: pb::admin_client::AdminClient::new(channel),
        })
    }

    fn stub(&self) -> pb::admin_client::AdminClient<Channel> {
        self.inner.clone()
    }

    pub async fn add_user(&self, user: NewUser) -> Result<(), AdminError> {
        let request = pb::AddUserRequest {
            user: user.user.as_str().to_owned(),
            password: user.password.expose().to_owned(),
            messaging_enabled: Some(user.messaging_enabled),
            digest_algorithms: digest_algorithms_to_proto(&user.digest_algorithms),
        };
        self.stub().add_user(request).await?;
        Ok(())
    }

    pub async fn remove_user(&self, user: &UserId) -> Result<(), AdminError> {
        let request = pb::RemoveUserRequest {
            user: user.as_str().to_owned(),
        };
        self.stub().remove_user(request).await?;
        Ok(())
    }

    pub async fn set_messaging_enabled(
        &self,
        user: &UserId,
        enabled: bool,
    ) -> Result<(), AdminError> {
        let request = pb::SetMessagingEnabledRequest {
            user: user.as_str().to_owned(),
            enabled,
        };
        self.stub().set_messaging_enabled(request).await?;
        Ok(())
    }

    /// Replaces `user`'s digest policy (empty: the node's).
    pub async fn set_digest_algorithms(
        &self,
        user: &UserId,
        algorithms: &[DigestAlgorithm],
        password: Option<&str>,
    ) -> Result<(), AdminError> {
        let request = pb::SetDigestAlgorithmsRequest {
            user: user.as_str().to_owned(),
            digest_algorithms: digest_algorithms_to_proto(algorithms),
            password: password.unwrap_or_default().to_owned(),
        };
        self.stub().set_digest_algorithms(request).await?;
        Ok(())
    }

    /// One page of users after `after` (from the start when `None`); `page_size` 0 means the
    /// server's default.
    pub async fn list_users_page(
        &self,
        after: Option<&UserId>,
        page_size: u32,
    ) -> Result<UserPage, AdminError> {
        let request = pb::ListUsersRequest {
            page_token: after
                .map(|user| user.as_str().to_owned())
                .unwrap_or_default(),
            page_size,
        };
        let response = self.stub().list_users(request).await?.into_inner();
        let users = response
            .users
            .into_iter()
            .map(user_from_proto)
            .collect::<Result<Vec<_>, _>>()?;
        let next_after = if response.next_page_token.is_empty() {
            None
        } else {
            let next =
                UserId::parse(&response.next_page_token).map_err(|e| AdminError::Internal {
                    reason: format!("malformed answer from server: next page token: {e}"),
                })?;
            // A token that does not move forward would loop forever.
            if after.is_some_and(|after| next <= *after) {
                return Err(AdminError::Internal {
                    reason: "malformed answer from server: page token does not advance".into(),
                });
            }
            Some(next)
        };
        Ok(UserPage { users, next_after })
    }

    /// Every user, fetching pages of [`USERS_PAGE_SIZE_MAX`] (at most [`USERS_PAGES_MAX`]).
    pub async fn list_users(&self) -> Result<Vec<UserSummary>, AdminError> {
        let mut users = Vec::new();
        let mut after = None;
        for _ in 0..USERS_PAGES_MAX {
            let page_size = u32::try_from(USERS_PAGE_SIZE_MAX).unwrap_or(u32::MAX);
            let page = self.list_users_page(after.as_ref(), page_size).await?;
            users.extend(page.users);
            match page.next_after {
                Some(next) => after = Some(next),
                None => return Ok(users),
            }
        }
        Err(AdminError::Internal {
            reason: format!("more than {USERS_PAGES_MAX} pages of users"),
        })
    }

    pub async fn message_status(
        &self,
        message_id: &MessageId,
    ) -> Result<MessageStatusReport, AdminError> {
        let request = pb::MessageStatusRequest {
            message_id: message_id.as_str().to_owned(),
        };
        let response = self.stub().message_status(request).await?.into_inner();
        message_status_from_proto(response)
    }

    pub async fn cluster_status(&self) -> Result<ClusterStatus, AdminError> {
        let response = self
            .stub()
            .cluster_status(pb::ClusterStatusRequest {})
            .await?
            .into_inner();
        Ok(cluster_status_from_proto(response))
    }

    /// Adds node `node` at `address` (`HOST:PORT`) to the cluster; waits until it has caught
    /// up as a learner and became a voter.
    pub async fn add_node(&self, node: NodeId, address: &str) -> Result<(), AdminError> {
        let mut request = tonic::Request::new(pb::AddNodeRequest {
            node_id: node.0,
            address: address.to_owned(),
        });
        request.set_timeout(MEMBERSHIP_CALL_TIMEOUT);
        self.stub().add_node(request).await?;
        Ok(())
    }

    /// Moves the cluster to the master key every member loaded as `--master-key-file` and
    /// rewraps every account under it.
    pub async fn rotate_master_key(&self) -> Result<crate::MasterKeyRotation, AdminError> {
        let mut request = tonic::Request::new(pb::RotateMasterKeyRequest {});
        request.set_timeout(MEMBERSHIP_CALL_TIMEOUT);
        let response = self.stub().rotate_master_key(request).await?.into_inner();
        Ok(crate::MasterKeyRotation {
            from: response.from_fingerprint,
            to: response.to_fingerprint,
            accounts_rewrapped: response.accounts_rewrapped,
        })
    }

    /// Removes node `node` from the cluster.
    /// Streams a backup of the answering node into `dir` (which must exist and be empty),
    /// returning the files written (relative paths) and their total size.
    pub async fn backup(&self, dir: &std::path::Path) -> Result<(usize, u64), AdminError> {
        use tokio::io::AsyncWriteExt as _;
        let mut request = tonic::Request::new(pb::BackupRequest {});
        request.set_timeout(BACKUP_CALL_TIMEOUT);
        let mut stream = self.stub().backup(request).await?.into_inner();
        let local = |what: String| AdminError::InvalidArgument { reason: what };
        let mut current: Option<(String, tokio::fs::File)> = None;
        let (mut files, mut bytes) = (0usize, 0u64);
        while let Some(chunk) = stream.message().await? {
            let relative = std::path::Path::new(&chunk.path);
            if chunk.path.is_empty()
                || relative.is_absolute()
                || relative
                    .components()
                    .any(|part| !matches!(part, std::path::Component::Normal(_)))
            {
                return Err(AdminError::Internal {
                    reason: format!("the server sent a backup file named {:?}", chunk.path),
                });
            }
            if current.as_ref().is_none_or(|(path, _)| *path != chunk.path) {
                if let Some((_, file)) = current.take() {
                    file.sync_all()
                        .await
                        .map_err(|error| local(error.to_string()))?;
                }
                let target = dir.join(relative);
                if let Some(parent) = target.parent() {
                    tokio::fs::create_dir_all(parent)
                        .await
                        .map_err(|error| local(format!("{}: {error}", parent.display())))?;
                }
                let file = tokio::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                    .await
                    .map_err(|error| local(format!("{}: {error}", target.display())))?;
                current = Some((chunk.path.clone(), file));
                files += 1;
            }
            if let Some((_, file)) = current.as_mut() {
                file.write_all(&chunk.data)
                    .await
                    .map_err(|error| local(error.to_string()))?;
                bytes += chunk.data.len() as u64;
            }
        }
        if let Some((_, file)) = current.take() {
            file.sync_all()
                .await
                .map_err(|error| local(error.to_string()))?;
        }
        Ok((files, bytes))
    }

    pub async fn remove_node(&self, node: NodeId) -> Result<(), AdminError> {
        let mut request = tonic::Request::new(pb::RemoveNodeRequest { node_id: node.0 });
        request.set_timeout(MEMBERSHIP_CALL_TIMEOUT);
        self.stub().remove_node(request).await?;
        Ok(())
    }
}

/// How long a backup may take to stream.
pub const BACKUP_CALL_TIMEOUT: Duration = Duration::from_secs(3600);

/// How long a membership change may take (a new learner first copies the groups' state).
pub const MEMBERSHIP_CALL_TIMEOUT: Duration = Duration::from_secs(600);
