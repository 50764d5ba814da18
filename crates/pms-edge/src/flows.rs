//! The flows (connections) this node holds, by connection number, so that delivery can find the
//! `SessionActor` a device registered through.
//!
//! Invariant: a flow is in the registry exactly while its `SessionActor` runs; a binding whose
//! flow is absent here (closed connection, earlier incarnation, other node) is not used.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use actix::Addr;
use pms_types::{FlowId, UserId};

use crate::session::SessionActor;

/// Most bindings remembered per flow for unbinding when it closes.
const BINDINGS_PER_FLOW_MAX: usize = 64;

/// Live flows of this node incarnation.
#[derive(Debug)]
pub struct FlowRegistry {
    template: FlowId,
    next_connection: AtomicU64,
    live: Mutex<HashMap<u64, Addr<SessionActor>>>,
    /// Bindings registered through each live flow (user, binding key), unbound when it closes.
    bound: Mutex<HashMap<u64, Vec<(UserId, String)>>>,
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
            bound: Mutex::new(HashMap::new()),
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

    /// Remembers that `user`'s binding `key` was registered through `flow` (one of ours).
    pub fn note_binding(&self, flow: FlowId, user: &UserId, key: &str) {
        if flow.node != self.template.node || flow.incarnation != self.template.incarnation {
            return;
        }
        let mut bound = self
            .bound
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = bound.entry(flow.connection).or_default();
        let known = entry
            .iter()
            .any(|(known_user, known_key)| known_user == user && known_key == key);
        if !known && entry.len() < BINDINGS_PER_FLOW_MAX {
            entry.push((user.clone(), key.to_owned()));
        }
    }

    /// The bindings registered through `flow`, forgotten here (the flow closed).
    pub fn take_bindings(&self, flow: FlowId) -> Vec<(UserId, String)> {
        self.bound
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&flow.connection)
            .unwrap_or_default()
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

    /// Whether `flow` is known to be closed: one of this node's flows (this incarnation or an
    /// earlier one) that has no live session. Flows of other nodes are not known here.
    pub fn is_known_dead(&self, flow: FlowId) -> bool {
        flow.node == self.template.node && self.session(flow).is_none()
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
