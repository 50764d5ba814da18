//! `pms-transport`: the gRPC layer of PMS. Services and clients are generated from `proto/` by
//! `build.rs`; this crate converts between protobuf messages and plain Rust types, so that
//! **Architecture Invariant:** no other crate knows a protobuf type. Callers implement or call
//! plain Rust traits and structs ([`AdminBackend`], [`AdminClient`]).
//!
//! Every gRPC connection is mutually authenticated TLS with certificates from the cluster CA
//! (CockroachDB-style certs dir, see `pms-crypto`). Invariant: a connection without a client
//! certificate signed by `ca.crt` never reaches a handler, and an admin handler runs only for a
//! peer whose certificate common name is `admin`.

pub mod admin;
pub mod internal;
mod proto;
mod tls;

pub use admin::client::AdminClient;
pub use admin::server::{AdminServer, ServiceAdder, admin_routes, serve_admin};
pub use admin::{
    AdminBackend, AdminError, BackendFuture, BackupFiles, ClusterStatus, DigestAlgorithm,
    GroupMemberStatus, GroupRole, MasterKeyRotation, MessageState, MessageStatusReport, NewUser,
    NodeStatus, Password, UserPage, UserSummary,
};
pub use internal::server::{InternalShared, local_status};
pub use internal::{
    ClusterIdentity, DeliveryReport, FlowDelivery, ForwardError, Forwarded, GrpcNetworkFactory,
    LeaderContacts, PeerClients, PeerFuture, PeerNodeStatus, internal_service,
};
pub use tls::{ADMIN_CLIENT_NAME, server_tls_config};

use std::path::PathBuf;

/// Why a gRPC server or client could not be set up (as opposed to an RPC failing, which is an
/// [`AdminError`]).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A certificate or key in the certs dir is missing or unreadable.
    #[error("cannot load certificates from {certs_dir}: {reason}")]
    Certificates { certs_dir: PathBuf, reason: String },
    /// The TLS configuration was rejected by tonic/rustls.
    #[error("invalid TLS configuration")]
    Tls(#[source] tonic::transport::Error),
    /// The address is not `HOST:PORT`.
    #[error("invalid address {address:?}: {reason}")]
    InvalidAddress { address: String, reason: String },
    /// Binding the listen socket failed.
    #[error("cannot listen on {address}")]
    Bind {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Connecting (TCP + TLS + HTTP/2) to a server failed.
    #[error("cannot connect to {address}")]
    Connect {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The server stopped with an error.
    #[error("gRPC server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
}
