//! `apply`: one command in, mutations and a response out.

use crate::{ApplyError, Command, CommandResponse};
use pms_types::{GroupId, Mutation, StateRead};

/// The effects of applying one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub mutations: Vec<Mutation>,
    pub response: CommandResponse,
}

/// Applies `command` to the state of `group` as read through `state`.
pub fn apply(state: &impl StateRead, group: GroupId, command: &Command) -> Result<Applied, ApplyError> {
    let _ = (state, group, command);
    Ok(Applied { mutations: Vec::new(), response: CommandResponse::Done })
}
