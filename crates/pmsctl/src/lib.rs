//! `pmsctl`: the admin client (users, certificates, message status) and a small SIP user agent
//! (`send`, `listen`) for people and scripts.

pub mod ua;
