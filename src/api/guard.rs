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
            Err(ApiError::forbidden(format!(
                "role {} may not {}",
                user.role.as_str(),
                C::WHAT
            )))
        }
    }
}
