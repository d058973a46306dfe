//! One error type for the HTTP edge: every failure becomes
//! `{"error": {"code", "message", "fields"?}}` with the right status. Internal details are logged,
//! never sent.

use super::docs::{ErrorBody, ErrorDetail};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use uuid::Uuid;

use crate::commands::advice::AdviceError;
use crate::commands::conversation::ConversationError;
use crate::commands::plant::PlantError;
use crate::commands::sitting::SittingError;
use crate::commands::user::UserError;
use crate::commands::values::FieldErrors;
use crate::events::constraints::{self, OnViolation};
use crate::events::store::{
    is_connection_lost, passing_refusal, CommandError, DatabaseBusy, DatabaseUnavailable,
    OutcomeUnknown, PassingRefusal,
};
use crate::identity::IdentityError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{message}")]
    Unauthorized { code: &'static str, message: String },
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{message}")]
    PayloadTooLarge { message: String },
    #[error("{message}")]
    UnsupportedMediaType { message: String },
    #[error("invalid fields")]
    Validation(FieldErrors),
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    #[error("too many requests; retry in {} s", retry_after.as_secs_f64().ceil())]
    RateLimited { retry_after: std::time::Duration },
    /// A 429 with its own code (a limit on something other than the request rate).
    #[error("{message}")]
    TooManyRequests {
        code: &'static str,
        message: String,
        retry_after: std::time::Duration,
    },
    #[error("{message}")]
    Unavailable { code: &'static str, message: String },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Unauthorized {
            code,
            message: message.into(),
        }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::Forbidden {
            code: "forbidden",
            message: message.into(),
        }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Conflict {
            code,
            message: message.into(),
        }
    }

    /// One invalid field.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        let mut fields = FieldErrors::new();
        fields.add(field, message);
        ApiError::Validation(fields)
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::Unauthorized { code, .. } => (StatusCode::UNAUTHORIZED, code),
            ApiError::Forbidden { code, .. } => (StatusCode::FORBIDDEN, code),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::UnsupportedMediaType { .. } => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            ApiError::Unprocessable { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::TooManyRequests { code, .. } => (StatusCode::TOO_MANY_REQUESTS, code),
            ApiError::Unavailable { code, .. } => (StatusCode::SERVICE_UNAVAILABLE, code),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let this = self.or_constraint_conflict();
        let (status, code) = this.status_and_code();
        let message = match &this {
            ApiError::Internal(err) => {
                tracing::error!(error = %format!("{err:#}"), "internal error");
                "internal error".to_string()
            }
            ApiError::Validation(fields) => {
                let names: Vec<&str> = fields.0.keys().map(String::as_str).collect();
                format!("invalid fields: {}", names.join(", "))
            }
            other => other.to_string(),
        };
        let retry_after = match &this {
            ApiError::RateLimited { retry_after }
            | ApiError::TooManyRequests { retry_after, .. } => {
                Some(retry_after.as_secs_f64().ceil().max(1.0) as u64)
            }
            _ => None,
        };
        let fields = match this {
            ApiError::Validation(fields) => Some(fields.0),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_string(),
                message,
                fields,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from(secs));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        constraint_conflict(&err)
            .or_else(|| database_trouble(&err))
            .unwrap_or_else(|| ApiError::Internal(err.into()))
    }
}

/// A database error that says nothing about the request, as a 503: no connection came free
/// (`database_busy`), the connection was lost (`database_unavailable`), or the database refused
/// the statement for a passing reason (see [`refused`]). `None` for other errors.
fn database_trouble(err: &sqlx::Error) -> Option<ApiError> {
    if matches!(err, sqlx::Error::PoolTimedOut) {
        return Some(database_busy());
    }
    if is_connection_lost(err) {
        return Some(database_unavailable(err));
    }
    passing_refusal(err).map(|refusal| refused(refusal, err))
}

/// The one place where a unique or exclusion violation becomes an answer: a 409 with the code
/// its constraint has in [`constraints::CONSTRAINTS`]; one that means "another writer got there
/// first" (commands retried it already) is `concurrent_modification`. `None` for other errors.
fn constraint_conflict(err: &sqlx::Error) -> Option<ApiError> {
    Some(match constraints::on_violation(err)? {
        OnViolation::Retry => concurrent_modification(),
        OnViolation::Conflict { code, message } => ApiError::conflict(code, message),
    })
}

/// 503 `database_busy`: no connection came free in time, or the database refused a statement
/// for a passing reason; nothing was written. Counted in `database_busy_total`.
fn database_busy() -> ApiError {
    metrics::counter!("database_busy_total").increment(1);
    ApiError::Unavailable {
        code: "database_busy",
        message: "the database is busy; try again".into(),
    }
}

/// A statement the database refused for a passing reason (it wrote nothing): 503
/// `database_busy` or `database_unavailable`, logged, never a 500.
fn refused(refusal: PassingRefusal, err: &dyn std::fmt::Display) -> ApiError {
    match refusal {
        PassingRefusal::Busy => {
            tracing::warn!(error = %err, "database busy: statement refused");
            database_busy()
        }
        PassingRefusal::Unavailable => database_unavailable(err),
    }
}

/// 503 `database_unavailable`: nothing was written (a read, or a write that never reached the
/// database); the request may be sent again as is.
fn database_unavailable(err: &dyn std::fmt::Display) -> ApiError {
    metrics::counter!("database_unavailable_total").increment(1);
    tracing::warn!(error = %err, "database unavailable");
    ApiError::Unavailable {
        code: "database_unavailable",
        message: "the database is unavailable; try again shortly".into(),
    }
}

/// 503 `outcome_unknown`: a write's connection failed after the write was sent, so it may have
/// committed. A retry with the same `Idempotency-Key` answers the first outcome if it did, and
/// applies the request once if it did not.
fn outcome_unknown(err: &dyn std::fmt::Display) -> ApiError {
    metrics::counter!("outcome_unknown_total").increment(1);
    tracing::warn!(error = %err, "outcome of a write unknown");
    ApiError::Unavailable {
        code: "outcome_unknown",
        message: "the database connection failed during the write, which may or may not have \
                  been applied; retry with the same Idempotency-Key"
            .into(),
    }
}

fn concurrent_modification() -> ApiError {
    ApiError::conflict(
        "concurrent_modification",
        "the resource was changed concurrently; reload it and try again",
    )
}

impl ApiError {
    /// An internal error caused by a constraint violation, wherever it was wrapped (a command's
    /// `Internal`, a key store's error), is that violation's 409, never a 500; one caused by a
    /// lost database connection is a 503 (`outcome_unknown` for a write that may have
    /// committed, else `database_unavailable`), and so is a statement the database refused for
    /// a passing reason (`database_busy` or `database_unavailable`: it wrote nothing).
    fn or_constraint_conflict(self) -> ApiError {
        let ApiError::Internal(err) = &self else {
            return self;
        };
        if let Some(unknown) = err.downcast_ref::<OutcomeUnknown>() {
            return outcome_unknown(unknown);
        }
        if let Some(unavailable) = err.downcast_ref::<DatabaseUnavailable>() {
            return database_unavailable(unavailable);
        }
        if let Some(busy) = err.downcast_ref::<DatabaseBusy>() {
            return refused(PassingRefusal::Busy, busy);
        }
        let Some(cause) = err
            .chain()
            .find_map(|cause| cause.downcast_ref::<sqlx::Error>())
        else {
            return self;
        };
        database_trouble(cause)
            .or_else(|| constraint_conflict(cause))
            .unwrap_or(self)
    }
}

/// A key that cannot be read is an internal failure (logged, 500), whatever the route.
impl From<crate::events::crypto::CryptoError> for ApiError {
    fn from(err: crate::events::crypto::CryptoError) -> Self {
        ApiError::Internal(err.into())
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(err: redis::RedisError) -> Self {
        tracing::warn!(error = %err, "redis unavailable");
        ApiError::Unavailable {
            code: "sessions_unavailable",
            message: "the session store is unavailable; try again shortly".into(),
        }
    }
}

/// How each aggregate's domain errors read over HTTP.
pub trait DomainError: std::error::Error {
    fn into_api(self) -> ApiError;
}

impl DomainError for UserError {
    fn into_api(self) -> ApiError {
        match self {
            UserError::AlreadyRegistered => {
                ApiError::conflict("already_registered", self.to_string())
            }
            UserError::NotFound => ApiError::NotFound("user"),
            UserError::NothingToChange => ApiError::Unprocessable {
                code: "nothing_to_change",
                message: "the request changes nothing".into(),
            },
            UserError::NoPendingVerification => {
                ApiError::conflict("no_pending_verification", self.to_string())
            }
            UserError::StaleResetToken => ApiError::BadRequest {
                code: "invalid_token",
                message: self.to_string(),
            },
            UserError::Disabled => ApiError::Forbidden {
                code: "account_disabled",
                message: self.to_string(),
            },
            UserError::MfaAlreadyEnabled => {
                ApiError::conflict("mfa_already_enabled", self.to_string())
            }
            UserError::NoPendingEnrolment => {
                ApiError::conflict("no_pending_enrolment", self.to_string())
            }
            UserError::MfaNotEnabled => ApiError::conflict("mfa_not_enabled", self.to_string()),
            UserError::InvalidRecoveryCode => {
                ApiError::unauthorized("mfa_invalid", "this code is not valid")
            }
        }
    }
}

impl DomainError for PlantError {
    fn into_api(self) -> ApiError {
        match self {
            PlantError::AlreadyExists => ApiError::conflict("already_exists", self.to_string()),
            PlantError::NotFound => ApiError::NotFound("plant"),
        }
    }
}

impl DomainError for ConversationError {
    fn into_api(self) -> ApiError {
        let message = self.to_string();
        match self {
            ConversationError::AlreadyExists => ApiError::conflict("already_exists", message),
            ConversationError::NotFound | ConversationError::NotAParticipant => {
                ApiError::NotFound("conversation")
            }
            ConversationError::NoOneElse | ConversationError::TooManyParticipants => {
                ApiError::invalid("participant_ids", message)
            }
            ConversationError::UnknownParticipants(ids) => {
                let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
                ApiError::invalid(
                    "participant_ids",
                    format!("no such users: {}", ids.join(", ")),
                )
            }
            ConversationError::NotTheSittingsParties => ApiError::Forbidden {
                code: "not_the_sittings_parties",
                message,
            },
        }
    }
}

impl DomainError for AdviceError {
    fn into_api(self) -> ApiError {
        let message = self.to_string();
        let forbidden = |code| ApiError::Forbidden {
            code,
            message: message.clone(),
        };
        match self {
            AdviceError::AlreadyExists => ApiError::conflict("already_exists", message),
            AdviceError::NotABotanist => forbidden("not_a_botanist"),
            AdviceError::PlantNotFound => ApiError::NotFound("plant"),
            AdviceError::SittingNotFound => ApiError::invalid("sitting_id", "no such sitting"),
            AdviceError::PlantNotInSitting => {
                ApiError::invalid("sitting_id", "is not a sitting of this plant")
            }
            AdviceError::SittingClosed => ApiError::conflict("sitting_closed", message),
            AdviceError::NotFound => ApiError::NotFound("advice"),
            AdviceError::NotTheAuthor => forbidden("not_the_author"),
            AdviceError::OwnAdvice => forbidden("own_advice"),
            AdviceError::AlreadyReviewed => ApiError::conflict("already_reviewed", message),
            AdviceError::NotAModerator => forbidden("not_a_moderator"),
            AdviceError::AlreadyHidden => ApiError::conflict("already_hidden", message),
        }
    }
}

impl DomainError for SittingError {
    fn into_api(self) -> ApiError {
        let message = self.to_string();
        let conflict = |code| ApiError::conflict(code, message.clone());
        let forbidden = |code| ApiError::Forbidden {
            code,
            message: message.clone(),
        };
        match self {
            SittingError::AlreadyExists => conflict("already_exists"),
            SittingError::NotFound => ApiError::NotFound("sitting"),
            SittingError::NoPlants => {
                ApiError::invalid("plant_ids", "must name at least one plant")
            }
            SittingError::PlantsNotOwned(ids) => {
                let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
                ApiError::invalid(
                    "plant_ids",
                    format!("must be plants of yours: not {}", ids.join(", ")),
                )
            }
            SittingError::OwnSitting => conflict("own_sitting"),
            SittingError::NotOpen => conflict("sitting_not_open"),
            SittingError::AlreadyApplied => conflict("already_applied"),
            SittingError::NotApplied => conflict("not_applied"),
            SittingError::NotTheOwner => forbidden("not_the_owner"),
            SittingError::NotAnApplicant => conflict("not_an_applicant"),
            SittingError::SitterUnavailable => conflict("sitter_unavailable"),
            SittingError::NotAccepted => conflict("sitting_not_accepted"),
            SittingError::TooEarly(_) => conflict("sitting_not_started_yet"),
            SittingError::NotInProgress => conflict("sitting_not_in_progress"),
            SittingError::NotTheSitter => forbidden("not_the_sitter"),
            SittingError::NotAParticipant => forbidden("not_a_participant"),
            SittingError::PlantNotInSitting => {
                ApiError::invalid("plant_id", "is not a plant of this sitting")
            }
            SittingError::InProgress => conflict("sitting_in_progress"),
            SittingError::Closed => conflict("sitting_closed"),
            SittingError::NotCompleted => conflict("sitting_not_completed"),
            SittingError::AlreadyReviewed => conflict("already_reviewed"),
            // Only the reminder job meets it; no route runs that command.
            SittingError::NotStartingTomorrow(_) => conflict("sitting_not_starting_tomorrow"),
            SittingError::Expired => conflict("sitting_expired"),
            // Only the expiry job meets it.
            SittingError::NotEnded(_) => conflict("sitting_not_ended"),
        }
    }
}

impl From<IdentityError> for ApiError {
    fn from(err: IdentityError) -> Self {
        let message = err.to_string();
        match err {
            IdentityError::EmailTaken => ApiError::conflict("email_taken", message),
            IdentityError::InvalidCredentials => {
                ApiError::unauthorized("invalid_credentials", message)
            }
            IdentityError::WrongPassword => ApiError::invalid("current_password", message),
            IdentityError::MfaRequired => ApiError::unauthorized("mfa_required", message),
            IdentityError::MfaInvalid => ApiError::unauthorized("mfa_invalid", message),
            IdentityError::MfaLocked { retry_after } => ApiError::TooManyRequests {
                code: "mfa_locked",
                message,
                retry_after,
            },
            IdentityError::PasswordAttemptsExceeded { retry_after } => ApiError::TooManyRequests {
                code: "too_many_password_attempts",
                message,
                retry_after,
            },
            IdentityError::LimiterUnavailable(err) => {
                metrics::counter!("rate_limit_errors_total").increment(1);
                tracing::warn!(error = %err, "per-account limits unavailable; attempt refused");
                ApiError::Unavailable {
                    code: "rate_limiter_unavailable",
                    message,
                }
            }
            IdentityError::AccountDisabled => ApiError::Forbidden {
                code: "account_disabled",
                message,
            },
            IdentityError::InvalidRefreshToken => {
                ApiError::unauthorized("invalid_refresh_token", message)
            }
            IdentityError::RefreshTokenReused => {
                ApiError::unauthorized("refresh_token_reused", message)
            }
            IdentityError::Settling => ApiError::Unavailable {
                code: "account_settling",
                message,
            },
            IdentityError::SessionsUnavailable(err) => err.into(),
            IdentityError::User(err) => err.into(),
            IdentityError::Internal(err) => ApiError::Internal(err),
        }
    }
}

impl<E: DomainError> From<CommandError<E>> for ApiError {
    fn from(err: CommandError<E>) -> Self {
        match err {
            CommandError::Domain(err) => err.into_api(),
            CommandError::Conflict => concurrent_modification(),
            CommandError::Internal(err) => ApiError::Internal(err),
        }
    }
}

/// An error answer the edge gives outside any handler (405, 408, 500 after a panic).
pub fn error_answer(status: StatusCode, code: &str, message: &str) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.to_string(),
            message: message.to_string(),
            fields: None,
        },
    };
    (status, Json(body)).into_response()
}

impl From<crate::identity::erasure::ErasureError> for ApiError {
    fn from(err: crate::identity::erasure::ErasureError) -> Self {
        use crate::identity::erasure::ErasureError;
        let message = err.to_string();
        match err {
            ErasureError::NotFound => ApiError::NotFound("user"),
            ErasureError::SittingInProgress(_) => {
                ApiError::conflict("sitting_in_progress", message)
            }
            ErasureError::Settling => ApiError::Unavailable {
                code: "erasure_settling",
                message,
            },
            ErasureError::Sitting(err) => err.into(),
            ErasureError::User(err) => err.into(),
            ErasureError::Internal(err) => ApiError::Internal(err),
        }
    }
}
