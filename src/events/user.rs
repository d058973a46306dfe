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

/// An argon2id PHC string as events carry it: sealed with the user's key since version 2, so the
/// log holds no hash in plain sight and erasure shreds it with the rest; events written before
/// (version 1) are upcast to `Legacy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PasswordHash {
    Sealed(Sealed),
    Legacy(String),
}

#[cfg(test)]
impl From<&str> for PasswordHash {
    fn from(value: &str) -> Self {
        PasswordHash::Legacy(value.to_string())
    }
}

/// Version 1 carried `password_hash` as a plain string: it becomes `{"legacy": ...}`.
fn password_hash_v1_to_v2(mut payload: serde_json::Value) -> serde_json::Value {
    if let Some(body) = payload.as_object_mut().and_then(|m| m.values_mut().next()) {
        if let Some(hash) = body.get_mut("password_hash") {
            if hash.is_string() {
                *hash = serde_json::json!({ "legacy": hash.take() });
            }
        }
    }
    payload
}

/// The upcasters of `User` events (see `events::upcast`).
pub const UPCASTERS: &[crate::events::upcast::Upcaster] = &[
    crate::events::upcast::Upcaster {
        event_type: "UserRegistered",
        from: "1",
        to: "2",
        upcast: password_hash_v1_to_v2,
    },
    crate::events::upcast::Upcaster {
        event_type: "PasswordChanged",
        from: "1",
        to: "2",
        upcast: password_hash_v1_to_v2,
    },
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UserEvent {
    /// Version 2. `email`, `display_name` and `password_hash` are sealed (version 1 carried the
    /// hash in clear).
    UserRegistered {
        email: Sealed,
        display_name: Sealed,
        password_hash: PasswordHash,
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
    /// Version 2. A new password (sealed argon2id PHC string; clear in version 1); `generation`
    /// counts password changes.
    PasswordChanged {
        password_hash: PasswordHash,
        generation: u32,
    },
    /// Version 1. The user began enrolling a TOTP app with this (sealed) secret; not in force
    /// until confirmed with a code.
    TotpEnrolmentStarted { secret: Sealed },
    /// Version 1. The pending secret is confirmed: logins now need a code. `recovery_codes` are
    /// SHA-256 hashes (hex) of the one-time recovery codes shown once to the user.
    TotpEnabled { recovery_codes: Vec<String> },
    /// Version 1. A recovery code (by its hash) stood in for a TOTP code, once.
    RecoveryCodeUsed { code_hash: String },
    /// Version 1. The user removed their TOTP app.
    TotpDisabled,
    /// Version 1. `failures` wrong second-factor codes in a row: every code is refused until
    /// `until` (the lock itself lives in Redis; this records it, and the owner is mailed).
    SecondFactorLocked {
        failures: u32,
        until: chrono::DateTime<chrono::Utc>,
    },
    /// Version 1. A login from a device (a hash of its user agent) not seen on this account before;
    /// `first` for the account's very first device, which nobody needs warning about.
    LoggedInFromNewDevice {
        device: String,
        user_agent: Sealed,
        first: bool,
    },
    /// Version 1. GDPR erasure: the user's data key was deleted in the same transaction, so every
    /// field sealed under it is unreadable from now on; read models drop or anonymise what they
    /// hold of the user. `by` is the user themself or the admin who erased the account.
    UserErased { by: uuid::Uuid },
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
            UserEvent::TotpEnrolmentStarted { .. } => "TotpEnrolmentStarted",
            UserEvent::TotpEnabled { .. } => "TotpEnabled",
            UserEvent::RecoveryCodeUsed { .. } => "RecoveryCodeUsed",
            UserEvent::TotpDisabled => "TotpDisabled",
            UserEvent::SecondFactorLocked { .. } => "SecondFactorLocked",
            UserEvent::LoggedInFromNewDevice { .. } => "LoggedInFromNewDevice",
            UserEvent::UserErased { .. } => "UserErased",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        match self {
            UserEvent::UserRegistered { .. } | UserEvent::PasswordChanged { .. } => "2",
            _ => "1",
        }
        .to_string()
    }
}
