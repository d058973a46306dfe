//! Events of the `User` aggregate. Personal data is sealed with the user's data key.

use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use super::crypto::Sealed;

/// A user's role. Stored in events by its upper-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    User,
    Botanist,
    Admin,
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "USER",
            Role::Botanist => "BOTANIST",
            Role::Admin => "ADMIN",
            Role::Auditor => "AUDITOR",
        }
    }

    pub fn parse(value: &str) -> Option<Role> {
        match value {
            "USER" => Some(Role::User),
            "BOTANIST" => Some(Role::Botanist),
            "ADMIN" => Some(Role::Admin),
            "AUDITOR" => Some(Role::Auditor),
            _ => None,
        }
    }
}

/// Profile fields a user changes; `None` leaves a field as it is, `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileChanges {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<Sealed>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::double_option"
    )]
    pub phone: Option<Option<Sealed>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::double_option"
    )]
    pub city: Option<Option<Sealed>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::double_option"
    )]
    pub bio: Option<Option<Sealed>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UserEvent {
    /// Version 1. `email` and `display_name` are sealed; `password_hash` is an argon2id PHC string.
    UserRegistered {
        email: Sealed,
        display_name: Sealed,
        password_hash: String,
        role: Role,
        botanist_requested: bool,
    },
    /// Version 1.
    UserProfileUpdated { changes: ProfileChanges },
    /// Version 1. An admin (or the CLI) changed the user's role.
    UserRoleChanged { role: Role, previous: Role },
    /// Version 1. The account may no longer log in; its sessions are revoked.
    UserDisabled,
    /// Version 1.
    UserEnabled,
    /// Version 1. An admin verified a botanist account (a `UserRoleChanged` to BOTANIST follows).
    BotanistApproved,
    /// Version 1. An admin declined a botanist account; it stays a USER.
    BotanistRejected,
    /// Version 1. The user followed the link sent at registration.
    EmailVerified,
    /// Version 1. A reset link is to be mailed, valid for this password generation only.
    PasswordResetRequested { generation: u32 },
    /// Version 1. A new password (argon2id PHC string); `generation` counts password changes.
    PasswordChanged {
        password_hash: String,
        generation: u32,
    },
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        match self {
            UserEvent::UserRegistered { .. } => "UserRegistered",
            UserEvent::UserProfileUpdated { .. } => "UserProfileUpdated",
            UserEvent::UserRoleChanged { .. } => "UserRoleChanged",
            UserEvent::UserDisabled => "UserDisabled",
            UserEvent::UserEnabled => "UserEnabled",
            UserEvent::BotanistApproved => "BotanistApproved",
            UserEvent::BotanistRejected => "BotanistRejected",
            UserEvent::EmailVerified => "EmailVerified",
            UserEvent::PasswordResetRequested { .. } => "PasswordResetRequested",
            UserEvent::PasswordChanged { .. } => "PasswordChanged",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}
