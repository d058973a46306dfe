//! The `User` aggregate: registration and profile. Uniqueness of e-mail addresses is checked
//! before dispatch (the `email_claims` table, in the same transaction as the append).

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use crate::events::crypto::Sealed;
use crate::events::user::{PasswordHash, ProfileChanges, Role, UserEvent};

#[derive(Debug, Clone, PartialEq)]
pub enum UserCommand {
    /// Fields arrive validated (value objects) and sealed with the new user's key.
    RegisterUser {
        email: Sealed,
        display_name: Sealed,
        password_hash: PasswordHash,
        botanist_requested: bool,
    },
    UpdateProfile {
        changes: ProfileChanges,
    },
    /// Only admins (checked at the edge) change roles; a no-op change emits nothing.
    ChangeRole {
        role: Role,
    },
    Disable,
    Enable,
    ApproveBotanist,
    RejectBotanist,
    VerifyEmail,
    RequestPasswordReset,
    /// `generation` comes from the reset token: it must be the current one (single use).
    ResetPassword {
        generation: u32,
        password_hash: PasswordHash,
    },
    /// The user, logged in, changed their password; the current one was checked at the edge.
    ChangePassword {
        password_hash: PasswordHash,
    },
    /// A new (sealed) TOTP secret, pending until confirmed; replaces an earlier pending one.
    StartTotpEnrolment {
        secret: Sealed,
    },
    /// A code from the pending secret was checked at the edge; the recovery codes are hashed.
    ConfirmTotp {
        recovery_codes: Vec<String>,
    },
    /// Spends one recovery code (by its hash).
    UseRecoveryCode {
        code_hash: String,
    },
    /// A current code was checked at the edge.
    DisableTotp,
    /// Too many wrong second-factor codes in a row locked the second factor until `until`
    /// (the lock is kept in Redis; this records it so the owner is told).
    RecordSecondFactorLock {
        failures: u32,
        until: chrono::DateTime<chrono::Utc>,
    },
    /// A successful login from `device` (a hash of the user agent): recorded only when new.
    RecordLogin {
        device: String,
        user_agent: Sealed,
    },
    /// GDPR erasure, by the user or an admin (`by`). The caller deletes the user's key in the
    /// append's transaction. Afterwards the account is gone: every command answers `NotFound`.
    Erase {
        by: uuid::Uuid,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("this user is already registered")]
    AlreadyRegistered,
    #[error("no such user")]
    NotFound,
    #[error("nothing to change")]
    NothingToChange,
    #[error("this account has no pending botanist verification")]
    NoPendingVerification,
    #[error("this reset link was already used or superseded")]
    StaleResetToken,
    #[error("this account is disabled")]
    Disabled,
    #[error("two-factor authentication is already on")]
    MfaAlreadyEnabled,
    #[error("no TOTP enrolment is pending")]
    NoPendingEnrolment,
    #[error("two-factor authentication is off")]
    MfaNotEnabled,
    #[error("this recovery code is not valid")]
    InvalidRecoveryCode,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct User {
    registered: bool,
    role: Option<Role>,
    #[serde(default)]
    disabled: bool,
    #[serde(default)]
    botanist_pending: bool,
    #[serde(default)]
    email_verified: bool,
    #[serde(default)]
    password_generation: u32,
    #[serde(default)]
    totp_pending: bool,
    #[serde(default)]
    totp_enabled: bool,
    /// Hashes of the recovery codes not used yet.
    #[serde(default)]
    recovery_codes: Vec<String>,
    /// Devices (hashes of user agents) this account has logged in from.
    #[serde(default)]
    devices: Vec<String>,
    /// Erased (GDPR): the account is gone for good, and its id is never registered again.
    #[serde(default)]
    erased: bool,
}

/// Devices remembered per account; beyond it the oldest are forgotten (and would be new again).
const MAX_DEVICES: usize = 50;

/// Password hashes became sealed in version 2 of two events.
impl crate::events::upcast::Versioned for User {
    const UPCASTERS: &'static [crate::events::upcast::Upcaster] = crate::events::user::UPCASTERS;
}

impl Aggregate for User {
    const TYPE: &'static str = "User";
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            UserCommand::RegisterUser {
                email,
                display_name,
                password_hash,
                botanist_requested,
            } => {
                if self.registered || self.erased {
                    return Err(UserError::AlreadyRegistered);
                }
                let event = UserEvent::UserRegistered {
                    email,
                    display_name,
                    password_hash,
                    // A botanist starts as a USER until an admin verifies the account.
                    role: Role::User,
                    botanist_requested,
                };
                sink.write(event, self).await;
            }
            UserCommand::UpdateProfile { changes } => {
                if !self.registered {
                    return Err(UserError::NotFound);
                }
                if changes == ProfileChanges::default() {
                    return Err(UserError::NothingToChange);
                }
                sink.write(UserEvent::UserProfileUpdated { changes }, self)
                    .await;
            }
            UserCommand::ChangeRole { role } => {
                let previous = self
                    .role
                    .filter(|_| self.registered)
                    .ok_or(UserError::NotFound)?;
                if previous != role {
                    sink.write(UserEvent::UserRoleChanged { role, previous }, self)
                        .await;
                }
            }
            UserCommand::Disable => {
                if !self.registered {
                    return Err(UserError::NotFound);
                }
                if !self.disabled {
                    sink.write(UserEvent::UserDisabled, self).await;
                }
            }
            UserCommand::ApproveBotanist => {
                if !self.botanist_pending {
                    return Err(UserError::NoPendingVerification);
                }
                let previous = self.role.unwrap_or(Role::User);
                sink.write(UserEvent::BotanistApproved, self).await;
                if previous != Role::Botanist {
                    let event = UserEvent::UserRoleChanged {
                        role: Role::Botanist,
                        previous,
                    };
                    sink.write(event, self).await;
                }
            }
            UserCommand::RejectBotanist => {
                if !self.botanist_pending {
                    return Err(UserError::NoPendingVerification);
                }
                sink.write(UserEvent::BotanistRejected, self).await;
            }
            UserCommand::VerifyEmail => {
                if !self.registered {
                    return Err(UserError::NotFound);
                }
                if !self.email_verified {
                    sink.write(UserEvent::EmailVerified, self).await;
                }
            }
            UserCommand::RequestPasswordReset => {
                if !self.registered {
                    return Err(UserError::NotFound);
                }
                if self.disabled {
                    return Err(UserError::Disabled);
                }
                let event = UserEvent::PasswordResetRequested {
                    generation: self.password_generation,
                };
                sink.write(event, self).await;
            }
            UserCommand::ResetPassword {
                generation,
                password_hash,
            } => {
                if !self.registered {
                    return Err(UserError::NotFound);
                }
                if self.disabled {
                    return Err(UserError::Disabled);
                }
                if generation != self.password_generation {
                    return Err(UserError::StaleResetToken);
                }
                let event = UserEvent::PasswordChanged {
                    password_hash,
                    generation: generation + 1,
                };
                sink.write(event, self).await;
            }
            UserCommand::ChangePassword { password_hash } => {
                if !self.registered {
                    return Err(UserError::NotFound);
                }
                if self.disabled {
                    return Err(UserError::Disabled);
                }
                // A new generation: reset links mailed before the change stop working.
                let event = UserEvent::PasswordChanged {
                    password_hash,
                    generation: self.password_generation + 1,
                };
                sink.write(event, self).await;
            }
            UserCommand::StartTotpEnrolment { secret } => {
                self.active()?;
                if self.totp_enabled {
                    return Err(UserError::MfaAlreadyEnabled);
                }
                sink.write(UserEvent::TotpEnrolmentStarted { secret }, self)
                    .await;
            }
            UserCommand::ConfirmTotp { recovery_codes } => {
                self.active()?;
                if self.totp_enabled {
                    return Err(UserError::MfaAlreadyEnabled);
                }
                if !self.totp_pending {
                    return Err(UserError::NoPendingEnrolment);
                }
                sink.write(UserEvent::TotpEnabled { recovery_codes }, self)
                    .await;
            }
            UserCommand::UseRecoveryCode { code_hash } => {
                self.active()?;
                if !self.recovery_codes.contains(&code_hash) {
                    return Err(UserError::InvalidRecoveryCode);
                }
                sink.write(UserEvent::RecoveryCodeUsed { code_hash }, self)
                    .await;
            }
            UserCommand::DisableTotp => {
                self.active()?;
                if !self.totp_enabled {
                    return Err(UserError::MfaNotEnabled);
                }
                sink.write(UserEvent::TotpDisabled, self).await;
            }
            UserCommand::RecordSecondFactorLock { failures, until } => {
                if !self.registered {
                    return Err(UserError::NotFound);
                }
                sink.write(UserEvent::SecondFactorLocked { failures, until }, self)
                    .await;
            }
            UserCommand::RecordLogin { device, user_agent } => {
                self.active()?;
                if !self.devices.contains(&device) {
                    let first = self.devices.is_empty();
                    let event = UserEvent::LoggedInFromNewDevice {
                        device,
                        user_agent,
                        first,
                    };
                    sink.write(event, self).await;
                }
            }
            UserCommand::Enable => {
                if !self.registered {
                    return Err(UserError::NotFound);
                }
                if self.disabled {
                    sink.write(UserEvent::UserEnabled, self).await;
                }
            }
            UserCommand::Erase { by } => {
                if !self.registered {
                    return Err(UserError::NotFound);
                }
                sink.write(UserEvent::UserErased { by }, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            UserEvent::UserRegistered {
                role,
                botanist_requested,
                ..
            } => {
                self.registered = true;
                self.role = Some(role);
                self.botanist_pending = botanist_requested;
            }
            UserEvent::BotanistApproved | UserEvent::BotanistRejected => {
                self.botanist_pending = false;
            }
            UserEvent::EmailVerified => self.email_verified = true,
            UserEvent::PasswordResetRequested { .. } => {}
            UserEvent::PasswordChanged { generation, .. } => self.password_generation = generation,
            UserEvent::UserProfileUpdated { .. } => {}
            UserEvent::UserRoleChanged { role, .. } => self.role = Some(role),
            UserEvent::UserDisabled => self.disabled = true,
            UserEvent::UserEnabled => self.disabled = false,
            UserEvent::TotpEnrolmentStarted { .. } => self.totp_pending = true,
            UserEvent::TotpEnabled { recovery_codes } => {
                self.totp_pending = false;
                self.totp_enabled = true;
                self.recovery_codes = recovery_codes;
            }
            UserEvent::RecoveryCodeUsed { code_hash } => {
                self.recovery_codes.retain(|c| *c != code_hash);
            }
            UserEvent::TotpDisabled => {
                self.totp_enabled = false;
                self.recovery_codes.clear();
            }
            UserEvent::SecondFactorLocked { .. } => {}
            UserEvent::LoggedInFromNewDevice { device, .. } => {
                self.devices.push(device);
                if self.devices.len() > MAX_DEVICES {
                    self.devices.remove(0);
                }
            }
            UserEvent::UserErased { .. } => {
                *self = User {
                    erased: true,
                    ..User::default()
                };
            }
        }
    }
}

impl User {
    /// A registered account that is not disabled.
    fn active(&self) -> Result<(), UserError> {
        if !self.registered {
            return Err(UserError::NotFound);
        }
        if self.disabled {
            return Err(UserError::Disabled);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;
    use crate::events::crypto::Cipher;

    type UserTest = TestFramework<User>;

    fn cipher() -> Cipher {
        Cipher::for_tests()
    }

    fn registered(cipher: &Cipher) -> UserEvent {
        UserEvent::UserRegistered {
            email: cipher.seal("ana@example.com"),
            display_name: cipher.seal("Ana"),
            password_hash: "$argon2id$stub".into(),
            role: Role::User,
            botanist_requested: true,
        }
    }

    #[test]
    fn registering_a_new_user_makes_them_a_user_even_when_asking_for_botanist() {
        let c = cipher();
        let UserEvent::UserRegistered {
            email,
            display_name,
            ..
        } = registered(&c)
        else {
            unreachable!()
        };
        UserTest::with(())
            .given_no_previous_events()
            .when(UserCommand::RegisterUser {
                email: email.clone(),
                display_name: display_name.clone(),
                password_hash: "$argon2id$stub".into(),
                botanist_requested: true,
            })
            .then_expect_events(vec![UserEvent::UserRegistered {
                email,
                display_name,
                password_hash: "$argon2id$stub".into(),
                role: Role::User,
                botanist_requested: true,
            }]);
    }

    #[test]
    fn registering_twice_is_refused() {
        let c = cipher();
        UserTest::with(())
            .given(vec![registered(&c)])
            .when(UserCommand::RegisterUser {
                email: c.seal("x@example.com"),
                display_name: c.seal("X"),
                password_hash: "h".into(),
                botanist_requested: false,
            })
            .then_expect_error(UserError::AlreadyRegistered);
    }

    #[test]
    fn updating_a_profile_records_the_changes() {
        let c = cipher();
        let changes = ProfileChanges {
            city: Some(Some(c.seal("Lyon"))),
            phone: Some(None),
            ..Default::default()
        };
        UserTest::with(())
            .given(vec![registered(&c)])
            .when(UserCommand::UpdateProfile {
                changes: changes.clone(),
            })
            .then_expect_events(vec![UserEvent::UserProfileUpdated { changes }]);
    }

    #[test]
    fn changing_a_role_records_the_previous_one_and_a_no_op_emits_nothing() {
        let c = cipher();
        UserTest::with(())
            .given(vec![registered(&c)])
            .when(UserCommand::ChangeRole {
                role: Role::Botanist,
            })
            .then_expect_events(vec![UserEvent::UserRoleChanged {
                role: Role::Botanist,
                previous: Role::User,
            }]);
        UserTest::with(())
            .given(vec![registered(&c)])
            .when(UserCommand::ChangeRole { role: Role::User })
            .then_expect_events(vec![]);
        UserTest::with(())
            .given_no_previous_events()
            .when(UserCommand::ChangeRole { role: Role::Admin })
            .then_expect_error(UserError::NotFound);
    }

    #[test]
    fn a_pending_botanist_is_approved_once_or_rejected() {
        let c = cipher();
        UserTest::with(())
            .given(vec![registered(&c)])
            .when(UserCommand::ApproveBotanist)
            .then_expect_events(vec![
                UserEvent::BotanistApproved,
                UserEvent::UserRoleChanged {
                    role: Role::Botanist,
                    previous: Role::User,
                },
            ]);
        UserTest::with(())
            .given(vec![registered(&c), UserEvent::BotanistApproved])
            .when(UserCommand::ApproveBotanist)
            .then_expect_error(UserError::NoPendingVerification);
        UserTest::with(())
            .given(vec![registered(&c)])
            .when(UserCommand::RejectBotanist)
            .then_expect_events(vec![UserEvent::BotanistRejected]);
        let not_asked = UserEvent::UserRegistered {
            email: c.seal("x@example.com"),
            display_name: c.seal("X"),
            password_hash: "h".into(),
            role: Role::User,
            botanist_requested: false,
        };
        UserTest::with(())
            .given(vec![not_asked])
            .when(UserCommand::RejectBotanist)
            .then_expect_error(UserError::NoPendingVerification);
    }

    #[test]
    fn a_reset_token_works_once() {
        let c = cipher();
        UserTest::with(())
            .given(vec![registered(&c)])
            .when(UserCommand::RequestPasswordReset)
            .then_expect_events(vec![UserEvent::PasswordResetRequested { generation: 0 }]);
        UserTest::with(())
            .given(vec![registered(&c)])
            .when(UserCommand::ResetPassword {
                generation: 0,
                password_hash: "new".into(),
            })
            .then_expect_events(vec![UserEvent::PasswordChanged {
                password_hash: "new".into(),
                generation: 1,
            }]);
        UserTest::with(())
            .given(vec![
                registered(&c),
                UserEvent::PasswordChanged {
                    password_hash: "new".into(),
                    generation: 1,
                },
            ])
            .when(UserCommand::ResetPassword {
                generation: 0,
                password_hash: "again".into(),
            })
            .then_expect_error(UserError::StaleResetToken);
        UserTest::with(())
            .given(vec![registered(&c), UserEvent::UserDisabled])
            .when(UserCommand::RequestPasswordReset)
            .then_expect_error(UserError::Disabled);
    }

    #[test]
    fn changing_the_password_starts_a_new_generation_that_voids_reset_links() {
        let c = cipher();
        UserTest::with(())
            .given(vec![
                registered(&c),
                UserEvent::PasswordResetRequested { generation: 0 },
            ])
            .when(UserCommand::ChangePassword {
                password_hash: "changed".into(),
            })
            .then_expect_events(vec![UserEvent::PasswordChanged {
                password_hash: "changed".into(),
                generation: 1,
            }]);
        UserTest::with(())
            .given(vec![
                registered(&c),
                UserEvent::PasswordChanged {
                    password_hash: "changed".into(),
                    generation: 1,
                },
            ])
            .when(UserCommand::ResetPassword {
                generation: 0,
                password_hash: "from an old link".into(),
            })
            .then_expect_error(UserError::StaleResetToken);
        UserTest::with(())
            .given(vec![registered(&c), UserEvent::UserDisabled])
            .when(UserCommand::ChangePassword {
                password_hash: "x".into(),
            })
            .then_expect_error(UserError::Disabled);
        UserTest::with(())
            .given(vec![])
            .when(UserCommand::ChangePassword {
                password_hash: "x".into(),
            })
            .then_expect_error(UserError::NotFound);
    }

    #[test]
    fn totp_is_enabled_only_after_confirmation_and_recovery_codes_work_once() {
        let c = cipher();
        let secret = c.seal("JBSWY3DPEHPK3PXP");
        UserTest::with(())
            .given(vec![registered(&c)])
            .when(UserCommand::ConfirmTotp {
                recovery_codes: vec!["h1".into()],
            })
            .then_expect_error(UserError::NoPendingEnrolment);
        UserTest::with(())
            .given(vec![registered(&c)])
            .when(UserCommand::StartTotpEnrolment {
                secret: secret.clone(),
            })
            .then_expect_events(vec![UserEvent::TotpEnrolmentStarted {
                secret: secret.clone(),
            }]);
        let enabled = vec![
            registered(&c),
            UserEvent::TotpEnrolmentStarted {
                secret: secret.clone(),
            },
            UserEvent::TotpEnabled {
                recovery_codes: vec!["h1".into(), "h2".into()],
            },
        ];
        UserTest::with(())
            .given(enabled.clone())
            .when(UserCommand::StartTotpEnrolment { secret })
            .then_expect_error(UserError::MfaAlreadyEnabled);
        UserTest::with(())
            .given(enabled.clone())
            .when(UserCommand::UseRecoveryCode {
                code_hash: "h2".into(),
            })
            .then_expect_events(vec![UserEvent::RecoveryCodeUsed {
                code_hash: "h2".into(),
            }]);
        let mut spent = enabled.clone();
        spent.push(UserEvent::RecoveryCodeUsed {
            code_hash: "h2".into(),
        });
        UserTest::with(())
            .given(spent)
            .when(UserCommand::UseRecoveryCode {
                code_hash: "h2".into(),
            })
            .then_expect_error(UserError::InvalidRecoveryCode);
        UserTest::with(())
            .given(enabled)
            .when(UserCommand::DisableTotp)
            .then_expect_events(vec![UserEvent::TotpDisabled]);
        UserTest::with(())
            .given(vec![registered(&c)])
            .when(UserCommand::DisableTotp)
            .then_expect_error(UserError::MfaNotEnabled);
    }

    #[test]
    fn a_second_factor_lock_is_recorded_for_a_registered_account_only() {
        let c = cipher();
        let until = chrono::DateTime::parse_from_rfc3339("2026-12-03T10:15:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        UserTest::with(())
            .given(vec![registered(&c)])
            .when(UserCommand::RecordSecondFactorLock { failures: 5, until })
            .then_expect_events(vec![UserEvent::SecondFactorLocked { failures: 5, until }]);
        UserTest::with(())
            .given_no_previous_events()
            .when(UserCommand::RecordSecondFactorLock { failures: 5, until })
            .then_expect_error(UserError::NotFound);
    }

    #[test]
    fn a_login_is_recorded_only_from_a_new_device_and_the_first_is_marked() {
        let c = cipher();
        let ua = c.seal("Firefox");
        UserTest::with(())
            .given(vec![registered(&c)])
            .when(UserCommand::RecordLogin {
                device: "d1".into(),
                user_agent: ua.clone(),
            })
            .then_expect_events(vec![UserEvent::LoggedInFromNewDevice {
                device: "d1".into(),
                user_agent: ua.clone(),
                first: true,
            }]);
        let seen = vec![
            registered(&c),
            UserEvent::LoggedInFromNewDevice {
                device: "d1".into(),
                user_agent: ua.clone(),
                first: true,
            },
        ];
        UserTest::with(())
            .given(seen.clone())
            .when(UserCommand::RecordLogin {
                device: "d1".into(),
                user_agent: ua.clone(),
            })
            .then_expect_events(vec![]);
        UserTest::with(())
            .given(seen)
            .when(UserCommand::RecordLogin {
                device: "d2".into(),
                user_agent: ua.clone(),
            })
            .then_expect_events(vec![UserEvent::LoggedInFromNewDevice {
                device: "d2".into(),
                user_agent: ua,
                first: false,
            }]);
    }

    #[test]
    fn verifying_an_email_twice_records_it_once() {
        let c = cipher();
        UserTest::with(())
            .given(vec![registered(&c)])
            .when(UserCommand::VerifyEmail)
            .then_expect_events(vec![UserEvent::EmailVerified]);
        UserTest::with(())
            .given(vec![registered(&c), UserEvent::EmailVerified])
            .when(UserCommand::VerifyEmail)
            .then_expect_events(vec![]);
    }

    #[test]
    fn disabling_and_enabling_are_idempotent() {
        let c = cipher();
        UserTest::with(())
            .given(vec![registered(&c)])
            .when(UserCommand::Disable)
            .then_expect_events(vec![UserEvent::UserDisabled]);
        UserTest::with(())
            .given(vec![registered(&c), UserEvent::UserDisabled])
            .when(UserCommand::Disable)
            .then_expect_events(vec![]);
        UserTest::with(())
            .given(vec![registered(&c), UserEvent::UserDisabled])
            .when(UserCommand::Enable)
            .then_expect_events(vec![UserEvent::UserEnabled]);
        UserTest::with(())
            .given(vec![registered(&c)])
            .when(UserCommand::Enable)
            .then_expect_events(vec![]);
        UserTest::with(())
            .given_no_previous_events()
            .when(UserCommand::Disable)
            .then_expect_error(UserError::NotFound);
    }

    #[test]
    fn updating_an_unknown_user_or_with_no_change_is_refused() {
        let c = cipher();
        UserTest::with(())
            .given_no_previous_events()
            .when(UserCommand::UpdateProfile {
                changes: ProfileChanges {
                    bio: Some(Some(c.seal("hi"))),
                    ..Default::default()
                },
            })
            .then_expect_error(UserError::NotFound);
        UserTest::with(())
            .given(vec![registered(&c)])
            .when(UserCommand::UpdateProfile {
                changes: ProfileChanges::default(),
            })
            .then_expect_error(UserError::NothingToChange);
    }

    #[test]
    fn erasing_a_user_records_who_did_it_and_leaves_nothing_to_command() {
        let c = cipher();
        let admin = uuid::Uuid::new_v4();
        UserTest::with(())
            .given(vec![registered(&c)])
            .when(UserCommand::Erase { by: admin })
            .then_expect_events(vec![UserEvent::UserErased { by: admin }]);
        let erased = vec![registered(&c), UserEvent::UserErased { by: admin }];
        UserTest::with(())
            .given(erased.clone())
            .when(UserCommand::Erase { by: admin })
            .then_expect_error(UserError::NotFound);
        UserTest::with(())
            .given(erased.clone())
            .when(UserCommand::Disable)
            .then_expect_error(UserError::NotFound);
        UserTest::with(())
            .given(erased)
            .when(UserCommand::RegisterUser {
                email: c.seal("ana@example.com"),
                display_name: c.seal("Ana"),
                password_hash: "$argon2id$stub".into(),
                botanist_requested: false,
            })
            .then_expect_error(UserError::AlreadyRegistered);
    }

    #[test]
    fn nobody_erases_an_account_that_does_not_exist() {
        UserTest::with(())
            .given_no_previous_events()
            .when(UserCommand::Erase {
                by: uuid::Uuid::new_v4(),
            })
            .then_expect_error(UserError::NotFound);
    }
}
