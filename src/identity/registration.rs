//! Registration, and the first administrator from the command line.

use uuid::Uuid;

use super::passwords::hash_password;
use super::IdentityError;
use crate::commands::user::{User, UserCommand};
use crate::commands::values::{DisplayName, Email, Password};
use crate::events::store::{is_unique_violation, CommandError, Committed};
use crate::events::user::{PasswordHash, Role};
use crate::events::Metadata;
use crate::App;

/// A validated registration.
pub struct Registration {
    pub email: Email,
    pub password: Password,
    pub display_name: DisplayName,
    pub botanist: bool,
}

/// Registers a user: the claim on the e-mail hash, the user's data key and the first event commit
/// together.
pub async fn register_user(
    app: &App,
    registration: Registration,
    metadata: Metadata,
) -> Result<(Uuid, Committed), IdentityError> {
    let password_hash = hash_password(registration.password).await?;
    let user_id = Uuid::now_v7();
    let email_hash = app.email_index.hash(&registration.email);
    let metadata = Metadata {
        actor_id: metadata.actor_id.or(Some(user_id)),
        ..metadata
    };

    let mut tx = crate::infra::db::begin(&app.pool).await?;
    let claimed = sqlx::query(
        "INSERT INTO email_claims (email_hash, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(&email_hash)
    .bind(user_id)
    .execute(&mut *tx)
    .await?;
    if claimed.rows_affected() == 0 {
        return Err(IdentityError::EmailTaken);
    }
    let cipher = app
        .keys
        .create_in(&mut tx, user_id)
        .await
        .map_err(|e| IdentityError::Internal(e.into()))?;
    let command = UserCommand::RegisterUser {
        email: cipher.seal(registration.email.as_str()),
        display_name: cipher.seal(registration.display_name.as_str()),
        password_hash: PasswordHash::Sealed(cipher.seal(&password_hash)),
        botanist_requested: registration.botanist,
    };
    let committed = app
        .store
        .execute_new_in::<User>(&mut tx, &user_id.to_string(), command, &(), &metadata)
        .await
        .map_err(|err| match err {
            // A concurrent registration of the same address lost the race on the claim.
            CommandError::Conflict => IdentityError::EmailTaken,
            other => other.into(),
        })?;
    tx.commit().await.map_err(|err| {
        if is_unique_violation(&err) {
            IdentityError::EmailTaken
        } else {
            err.into()
        }
    })?;
    app.store.appended("User");
    Ok((user_id, committed))
}

/// Registers an account and makes it ADMIN, both recorded as system actions; then brings the
/// users read model up to date so the account can log in at once. `arosaje admin create`.
pub async fn create_admin(
    app: &App,
    email: &str,
    password: &str,
    display_name: &str,
) -> anyhow::Result<Uuid> {
    let registration = Registration {
        email: Email::parse(email).map_err(|e| anyhow::anyhow!("--email {e}"))?,
        password: Password::parse(password, &[email, display_name])
            .map_err(|e| anyhow::anyhow!("--password {e}"))?,
        display_name: DisplayName::parse(display_name)
            .map_err(|e| anyhow::anyhow!("--display-name {e}"))?,
        botanist: false,
    };
    let metadata = Metadata::system("arosaje admin create");
    let (id, _) = register_user(app, registration, metadata.clone())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    app.store
        .execute::<User>(
            &id.to_string(),
            UserCommand::ChangeRole { role: Role::Admin },
            &(),
            &metadata,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    app.projections.catch_up("users").await?;
    Ok(id)
}
