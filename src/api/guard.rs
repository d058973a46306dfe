//! The permission matrix of DESIGN.md §5, in one place: each capability names the roles that
//! hold it, and a handler asks for a capability by taking `Can<Capability>` as an argument.
//! Ownership (a USER's own plant) is checked where the resource is, and answers 404.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::error::ApiError;
use super::token::AuthUser;
use crate::events::user::Role;
use crate::App;

/// A permission, held by some roles.
pub trait Capability: Send + Sync + 'static {
    const ROLES: &'static [Role];
    /// What the capability allows, for the 403 message.
    const WHAT: &'static str;

    fn allows(role: Role) -> bool {
        Self::ROLES.contains(&role)
    }
}

/// Create, change and delete one's own plants (ADMIN: anyone's).
pub struct ManagePlants;
impl Capability for ManagePlants {
    const ROLES: &'static [Role] = &[Role::User, Role::Admin];
    const WHAT: &'static str = "manage plants";
}

/// Read every plant, not only one's own.
pub struct ReadAllPlants;
impl Capability for ReadAllPlants {
    const ROLES: &'static [Role] = &[Role::Botanist, Role::Admin];
    const WHAT: &'static str = "read all plants";
}

/// Give, revise, withdraw and review advice; work from the botanists' queue.
pub struct WriteAdvice;
impl Capability for WriteAdvice {
    const ROLES: &'static [Role] = &[Role::Botanist];
    const WHAT: &'static str = "write advice";
}

/// Remove an advice: its author withdraws it, a moderator hides it.
pub struct RemoveAdvice;
impl Capability for RemoveAdvice {
    const ROLES: &'static [Role] = &[Role::Botanist, Role::Admin];
    const WHAT: &'static str = "remove advice";
}

/// Read the event log (audit).
pub struct ReadAudit;
impl Capability for ReadAudit {
    const ROLES: &'static [Role] = &[Role::Auditor, Role::Admin];
    const WHAT: &'static str = "read the event log";
}

/// User administration and moderation.
pub struct Administer;
impl Capability for Administer {
    const ROLES: &'static [Role] = &[Role::Admin];
    const WHAT: &'static str = "administer users";
}

/// An authenticated caller who holds capability `C` (401 without a valid session, 403 without
/// the capability).
pub struct Can<C: Capability>(pub AuthUser, PhantomData<C>);

impl<C: Capability> std::ops::Deref for Can<C> {
    type Target = AuthUser;
    fn deref(&self) -> &AuthUser {
        &self.0
    }
}

impl<C: Capability> FromRequestParts<App> for Can<C> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, app).await?;
        if C::allows(user.role) {
            Ok(Can(user, PhantomData))
        } else {
            super::security_log::access_denied(user.user_id, user.role.as_str(), C::WHAT);
            Err(ApiError::forbidden(format!(
                "role {} may not {}",
                user.role.as_str(),
                C::WHAT
            )))
        }
    }
}

/// An authenticated caller whose e-mail address is verified: what requesting or applying for a
/// sitting will require (403 `email_not_verified`). `REQUIRE_EMAIL_VERIFICATION=false` lets local
/// demos skip it.
pub struct Verified(pub AuthUser);

impl FromRequestParts<App> for Verified {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, app).await?;
        if !app.config.require_email_verification {
            return Ok(Verified(user));
        }
        let verified: Option<bool> =
            sqlx::query_scalar("SELECT email_verified FROM users WHERE id = $1")
                .bind(user.user_id)
                .fetch_optional(&app.pool)
                .await?;
        if verified == Some(true) {
            Ok(Verified(user))
        } else {
            Err(ApiError::Forbidden {
                code: "email_not_verified",
                message: "confirm your e-mail address first (see the link we sent)".into(),
            })
        }
    }
}
