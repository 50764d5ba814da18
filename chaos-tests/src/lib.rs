//! `pms-chaos`: a Jepsen-style harness for PMS. It runs real `pmsd` processes, injects real
//! faults (SIGKILL, SIGSTOP, SIGTERM, network partitions between per-node network namespaces),
//! drives a SIP workload over TLS, records everything in a history and checks the history
//! against PMS's guarantees: no acknowledged message lost, none delivered after its validity,
//! nothing delivered that was never sent, stored once, ordered, and the cluster recovers.
//!
//! Layout, in the order of a run: `cluster` (processes, addresses, health) over `netns` and
//! `command`; `workload` over `user_agent`; `nemesis`; `history`; `checker` (pure); `summary`;
//! `runner` ties them together and is what the binary and the short integration test call.
//!
//! Invariant: the checker judges only the recorded history; nothing the harness did not record
//! can make a run pass.

pub mod bench;
pub mod checker;
pub mod cluster;
pub mod command;
pub mod history;
pub mod nemesis;
pub mod netns;
pub mod runner;
pub mod summary;
pub mod user_agent;
pub mod workload;

pub use runner::{ChaosOptions, RunOutcome, run};
