//! Aggregates: commands, their rules (`handle`), how events fold into state (`apply`), and their
//! domain errors. Pure: no SQL, no HTTP, no Redis. Facts an aggregate cannot know are looked up
//! before dispatch and carried in the command.

pub mod access;
pub mod advice;
pub mod conversation;
pub mod plant;
pub mod sitting;
pub mod user;
pub mod values;

use uuid::Uuid;

use crate::events::user::Role;

/// Who issues a command, as the aggregate needs to know for its rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actor {
    pub id: Uuid,
    pub role: Role,
}

impl Actor {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}
