//! The admin gRPC service: validates requests, checks the caller is the admin, and delegates to
//! an [`AdminBackend`].
//!
//! Invariant: a handler runs only for a TLS peer whose certificate chains to `ca.crt` (rustls
//! refuses the handshake otherwise) and whose leaf certificate's common name is `admin` (the
//! interceptor answers `PERMISSION_DENIED` otherwise). The backend sees only validated values.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pms_crypto::ReloadableCertificate;
use tokio_rustls::rustls::ServerConfig;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use super::convert::{
    cluster_status_to_proto, message_status_to_proto, parse_digest_algorithms, parse_message_id,
    parse_user, user_to_proto,
};
use super::{
    AdminBackend, AdminError, NewUser, Password, USERS_PAGE_SIZE_DEFAULT, USERS_PAGE_SIZE_MAX,
};
use crate::TransportError;
use crate::proto::admin_v1 as pb;
use crate::tls::{
    ADMIN_CLIENT_NAME, load_node_certificate, peer_common_name, server_tls_config, tls_incoming,
};

/// Longest an admin call may run on the server before it answers `CANCELLED`.
pub const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most concurrent admin calls per connection.
pub const ADMIN_CONCURRENT_CALLS_PER_CONNECTION_MAX: usize = 64;

struct AdminService {
    backend: Arc<dyn AdminBackend>,
}

/// Refuses every call whose peer certificate is not the admin's.
#[allow(clippy::result_large_err)] // tonic's interceptor signature fixes the error type.
fn require_admin(request: Request<()>) -> Result<Request<()>, Status> {
    match peer_common_name(&request) {
        Some(name) if name == ADMIN_CLIENT_NAME => Ok(request),
        other => {
            tracing::warn!(
                peer = ?request.remote_addr(),
                common_name = ?other,
                "admin call refused: client certificate is not the admin's"
            );
            Err(Status::permission_denied(format!(
                "the admin API requires a client certificate with common name {ADMIN_CLIENT_NAME:?}, got {}",
                other.map_or_else(|| "none".to_owned(), |name| format!("{name:?}"))
            )))
        }
    }
}

/// The admin service with its permission check, ready to be added to a node's gRPC server
/// (which must use [`server_tls_config`](crate::server_tls_config) so that peers have
/// certificates). `pmsd` uses this to serve admin and internal services on one port.
pub fn admin_routes(backend: Arc<dyn AdminBackend>) -> Routes {
    let service =
        pb::admin_server::AdminServer::with_interceptor(AdminService { backend }, require_admin);
    Routes::new(service)
}

/// A bound, not yet serving, admin gRPC server. Binding first lets callers learn the port
/// (tests bind port 0).
pub struct AdminServer {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    tls: Arc<ServerConfig>,
    backend: Arc<dyn AdminBackend>,
    extra_services: Vec<ServiceAdder>,
    metrics: Option<Arc<pms_types::metrics::Metrics>>,
}

/// Adds a service to the routes of a node's gRPC server.
pub type ServiceAdder = Box<dyn FnOnce(Routes) -> Routes + Send>;

impl AdminServer {
    /// Loads `node.crt`/`node.key`/`ca.crt` from `certs_dir` and binds `addr`.
    pub async fn bind(
        addr: SocketAddr,
        certs_dir: &Path,
        backend: Arc<dyn AdminBackend>,
    ) -> Result<Self, TransportError> {
        let node = load_node_certificate(certs_dir)?;
        Self::bind_with_certificate(addr, certs_dir, node, backend).await
    }

    /// Binds `addr`, presenting whatever node certificate `node` holds at each handshake (a
    /// node replaces it on SIGHUP) and verifying clients against `ca.crt` in `certs_dir`.
    pub async fn bind_with_certificate(
        addr: SocketAddr,
        certs_dir: &Path,
        node: Arc<ReloadableCertificate>,
        backend: Arc<dyn AdminBackend>,
    ) -> Result<Self, TransportError> {
        let tls = server_tls_config(certs_dir, node)?;
        let bind_error = |source| TransportError::Bind {
            address: addr,
            source,
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok(AdminServer {
            listener,
            local_addr,
            tls,
            backend,
            extra_services: Vec::new(),
            metrics: None,
        })
    }

    /// Also serves the service `add` adds, on the same port (a node serves its internal
    /// service beside the admin API; see [`crate::internal_service`]).
    #[must_use]
    pub fn with_service(mut self, add: ServiceAdder) -> Self {
        self.extra_services.push(add);
        self
    }

    /// Counts the port's TLS handshakes in `pms_tls_handshakes_total{port="grpc"}`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<pms_types::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then stops accepting and drains in-flight calls.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), TransportError> {
        let incoming = tls_incoming(self.listener, self.tls, self.metrics);
        let mut routes = admin_routes(self.backend);
        for add in self.extra_services {
            routes = add(routes);
        }
        Server::builder()
            .timeout(ADMIN_REQUEST_TIMEOUT)
            .concurrency_limit_per_connection(ADMIN_CONCURRENT_CALLS_PER_CONNECTION_MAX)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(TransportError::Serve)
    }
}

/// Serves the admin API on `addr` with mutual TLS from `certs_dir` until `shutdown` completes.
pub async fn serve_admin(
    addr: SocketAddr,
    certs_dir: &Path,
    backend: Arc<dyn AdminBackend>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), TransportError> {
    AdminServer::bind(addr, certs_dir, backend)
        .await?
        .serve(shutdown)
        .await
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn add_user(
        &self,
        request: Request<pb::AddUserRequest>,
    ) -> Result<Response<pb::AddUserResponse>, Status> {
        let request = request.into_inner();
        let user = NewUser {
            user: parse_user(&request.user)?,
            password: Password::new(request.password)?,
            messaging_enabled: request.messaging_enabled.unwrap_or(true),
            digest_algorithms: parse_digest_algorithms(&request.digest_algorithms)?,
        };
        self.backend.add_user(user).await?;
        Ok(Response::new(pb::AddUserResponse {}))
    }

    async fn remove_user(
        &self,
        request: Request<pb::RemoveUserRequest>,
    ) -> Result<Response<pb::RemoveUserResponse>, Status> {
        let user = parse_user(&request.into_inner().user)?;
        self.backend.remove_user(user).await?;
        Ok(Response::new(pb::RemoveUserResponse {}))
    }

    async fn set_messaging_enabled(
        &self,
        request: Request<pb::SetMessagingEnabledRequest>,
    ) -> Result<Response<pb::SetMessagingEnabledResponse>, Status> {
        let request = request.into_inner();
        let user = parse_user(&request.user)?;
        self.backend
            .set_messaging_enabled(user, request.enabled)
            .await?;
        Ok(Response::new(pb::SetMessagingEnabledResponse {}))
    }

    async fn set_digest_algorithms(
        &self,
        request: Request<pb::SetDigestAlgorithmsRequest>,
    ) -> Result<Response<pb::SetDigestAlgorithmsResponse>, Status> {
        let request = request.into_inner();
        let user = parse_user(&request.user)?;
        let algorithms = parse_digest_algorithms(&request.digest_algorithms)?;
        let password = if request.password.is_empty() {
            None
        } else {
            Some(Password::new(request.password)?)
        };
        self.backend
            .set_digest_algorithms(user, algorithms, password)
            .await?;
        Ok(Response::new(pb::SetDigestAlgorithmsResponse {}))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let request = request.into_inner();
        let after = if request.page_token.is_empty() {
            None
        } else {
            Some(
                parse_user(&request.page_token).map_err(|_| AdminError::InvalidArgument {
                    reason: "invalid page token".to_owned(),
                })?,
            )
        };
        let limit = match usize::try_from(request.page_size) {
            Ok(0) => USERS_PAGE_SIZE_DEFAULT,
            Ok(size) => size.min(USERS_PAGE_SIZE_MAX),
            Err(_) => USERS_PAGE_SIZE_MAX,
        };
        let mut users = self.backend.list_users(after, limit).await?;
        // Invariant: a page never exceeds the limit, whatever the backend returned.
        users.truncate(limit);
        let next_page_token = match users.last() {
            Some(last) if users.len() == limit => last.user.as_str().to_owned(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListUsersResponse {
            users: users.iter().map(user_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn message_status(
        &self,
        request: Request<pb::MessageStatusRequest>,
    ) -> Result<Response<pb::MessageStatusResponse>, Status> {
        let message_id = parse_message_id(&request.into_inner().message_id)?;
        let report = self.backend.message_status(message_id).await?;
        Ok(Response::new(message_status_to_proto(&report)))
    }

    async fn cluster_status(
        &self,
        _request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let status = self.backend.cluster_status().await?;
        Ok(Response::new(cluster_status_to_proto(&status)))
    }

    async fn add_node(
        &self,
        request: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::AddNodeResponse>, Status> {
        let request = request.into_inner();
        let node = parse_node_id(request.node_id)?;
        crate::tls::host_of(&request.address).map_err(|error| AdminError::InvalidArgument {
            reason: error.to_string(),
        })?;
        self.backend.add_node(node, request.address).await?;
        Ok(Response::new(pb::AddNodeResponse {}))
    }

    async fn rotate_master_key(
        &self,
        _request: Request<pb::RotateMasterKeyRequest>,
    ) -> Result<Response<pb::RotateMasterKeyResponse>, Status> {
        let rotation = self.backend.rotate_master_key().await?;
        Ok(Response::new(pb::RotateMasterKeyResponse {
            from_fingerprint: rotation.from,
            to_fingerprint: rotation.to,
            accounts_rewrapped: rotation.accounts_rewrapped,
        }))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let node = parse_node_id(request.into_inner().node_id)?;
        self.backend.remove_node(node).await?;
        Ok(Response::new(pb::RemoveNodeResponse {}))
    }

    type BackupStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

    async fn backup(
        &self,
        _request: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let backup = self.backend.backup().await?;
        let (sender, receiver) = tokio::sync::mpsc::channel(BACKUP_CHUNKS_IN_FLIGHT);
        tokio::spawn(async move {
            if let Err(status) = stream_backup(&backup, &sender).await {
                let _ = sender.send(Err(status)).await;
            }
            if let Err(error) = tokio::fs::remove_dir_all(&backup.dir).await {
                tracing::warn!(dir = %backup.dir.display(), %error, "cannot remove a streamed backup");
            }
        });
        Ok(Response::new(Box::pin(futures::stream::unfold(
            receiver,
            |mut receiver| async move { receiver.recv().await.map(|chunk| (chunk, receiver)) },
        ))))
    }
}

/// Bytes per streamed backup chunk.
pub const BACKUP_CHUNK_BYTES: usize = 1024 * 1024;
/// Chunks read ahead of the client.
const BACKUP_CHUNKS_IN_FLIGHT: usize = 4;

/// Sends every file of `backup` in chunks; stops early when the client went away.
async fn stream_backup(
    backup: &super::BackupFiles,
    sender: &tokio::sync::mpsc::Sender<Result<pb::BackupChunk, Status>>,
) -> Result<(), Status> {
    use tokio::io::AsyncReadExt as _;
    for relative in &backup.files {
        let path = relative
            .to_str()
            .ok_or_else(|| Status::internal(format!("backup file name {relative:?}")))?
            .to_owned();
        let mut file = tokio::fs::File::open(backup.dir.join(relative))
            .await
            .map_err(|error| Status::internal(format!("reading backup file {path}: {error}")))?;
        let mut first = true;
        loop {
            let mut data = vec![0u8; BACKUP_CHUNK_BYTES];
            let mut filled = 0;
            while filled < data.len() {
                let read = file.read(&mut data[filled..]).await.map_err(|error| {
                    Status::internal(format!("reading backup file {path}: {error}"))
                })?;
                if read == 0 {
                    break;
                }
                filled += read;
            }
            data.truncate(filled);
            let done = filled < BACKUP_CHUNK_BYTES;
            if filled > 0 || first {
                let chunk = pb::BackupChunk {
                    path: path.clone(),
                    data,
                };
                if sender.send(Ok(chunk)).await.is_err() {
                    return Ok(());
                }
            }
            first = false;
            if done {
                break;
            }
        }
    }
    Ok(())
}

fn parse_node_id(node_id: u64) -> Result<pms_types::NodeId, AdminError> {
    if node_id == 0 {
        return Err(AdminError::InvalidArgument {
            reason: "node ids start at 1".to_owned(),
        });
    }
    Ok(pms_types::NodeId(node_id))
}
