//! `pmsctl`: the admin client (users, certificates, message status) and a small SIP user agent
//! (`send`, `listen`) for people and scripts.
//!
//! The binary (`main.rs`) only parses the command line and maps it onto these modules; every
//! behaviour lives here so that it can be tested without a process.

pub mod admin;
pub mod backup;
pub mod cert;
pub mod output;
pub mod ua;
