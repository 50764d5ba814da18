//! The SIP edge of a PMS node: TLS/TCP/UDP listeners, one `SessionActor` per connection (flow),
//! the registrar and MESSAGE admission (`SipService`), and the `MailboxActor`s that deliver
//! queued messages through the flow a device registered on.
//!
//! The edge knows actix and tokio-rustls; it reaches the replicated state only through
//! `pms_mailbox::MailboxService`, so it knows nothing of Raft or RocksDB.
//!
//! Invariant: the edge answers 200/202 to a MESSAGE only after `MailboxService::propose`
//! returned `Enqueued` (majority commit, guarantee 1).
//! Invariant: delivery to a device goes out only through the flow its REGISTER came on.

pub mod auth_throttle;
pub mod config;
pub mod delivery;
pub mod flows;
pub mod keyring;
pub mod listeners;
pub mod mailbox;
pub mod sender_rate;
pub mod service;
pub mod session;
pub mod status;
pub mod via;

pub use config::EdgeConfig;
pub use service::SipService;
