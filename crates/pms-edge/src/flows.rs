//! The flows (connections) this node holds, by connection number, so that delivery can find the
//! `SessionActor` a device registered through.
//!
//! Invariant: a flow is in the registry exactly while its `SessionActor` runs; a binding whose
//! flow is absent here (closed connection, earlier incarnation, other node) is not used.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use actix::Addr;
use pms_types::FlowId;

use crate::session::SessionActor;

/// Live flows of this node incarnation.
#[derive(Debug)]
pub struct FlowRegistry {
    template: FlowId,
    next_connection: AtomicU64,
    live: Mutex<HashMap<u64, Addr<SessionActor>>>,
}

impl FlowRegistry {
    pub fn new(node: pms_types::NodeId, incarnation: u64) -> Self {
        FlowRegistry {
            template: FlowId {
                node,
                incarnation,
                connection: 0,
            },
            next_connection: AtomicU64::new(1),
            live: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh flow id for a new connection.
    pub fn allocate(&self) -> FlowId {
        FlowId {
            connection: self.next_connection.fetch_add(1, Ordering::Relaxed),
            ..self.template
        }
    }

    pub fn insert(&self, flow: FlowId, session: Addr<SessionActor>) {
        self.lock().insert(flow.connection, session);
    }

    pub fn remove(&self, flow: FlowId) {
        self.lock().remove(&flow.connection);
    }

    /// The session of `flow` when it is one of ours and still open.
    pub fn session(&self, flow: FlowId) -> Option<Addr<SessionActor>> {
        if flow.node != self.template.node || flow.incarnation != self.template.incarnation {
            return None;
        }
        self.lock()
            .get(&flow.connection)
            .filter(|session| session.connected())
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every open session (for draining on shutdown).
    pub fn sessions(&self) -> Vec<Addr<SessionActor>> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Addr<SessionActor>>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts and
        // removes), so a poisoned lock is still usable.
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
