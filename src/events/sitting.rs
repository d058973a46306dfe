//! Events of the `Sitting` aggregate (a *garde*). Where a home is (its exact location and city)
//! and what people write (instructions, application messages, report notes, cancellation
//! reasons, review comments) is personal data: sealed under the writer's key (DESIGN.md §6), so
//! erasing that user makes it unreadable in the log too. Dates, ids, states and ratings are in
//! clear.

use chrono::NaiveDate;
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::crypto::Sealed;

/// Where the plants are, as sealed in [`SittingEvent::SittingRequested`]: the JSON of
/// [`Location`] under the owner's key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
    pub city: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SittingEvent {
    /// Version 1.
    SittingRequested {
        owner_id: Uuid,
        plant_ids: Vec<Uuid>,
        starts_on: NaiveDate,
        ends_on: NaiveDate,
        /// [`Location`] as JSON, sealed under the owner's key.
        location: Sealed,
        /// Sealed under the owner's key.
        instructions: Option<Sealed>,
    },
    /// Version 1.
    ApplicationSubmitted {
        applicant_id: Uuid,
        /// Sealed under the applicant's key.
        message: Option<Sealed>,
    },
    /// Version 1.
    ApplicationWithdrawn { applicant_id: Uuid },
    /// Version 1. The owner chose this applicant; the sitter's calendar holds the period.
    SitterAccepted { sitter_id: Uuid },
    /// Version 1.
    SittingStarted { by: Uuid },
    /// Version 1.
    CareReported {
        report_id: Uuid,
        sitter_id: Uuid,
        plant_id: Uuid,
        /// Sealed under the sitter's key.
        note: Sealed,
        before_photo_id: Option<Uuid>,
        after_photo_id: Option<Uuid>,
    },
    /// Version 1.
    SittingCompleted { by: Uuid },
    /// Version 1.
    SittingCancelled {
        by: Uuid,
        /// Sealed under the key of `by`.
        reason: Sealed,
    },
    /// Version 1.
    ReviewLeft {
        author_id: Uuid,
        subject_id: Uuid,
        rating: u8,
        /// Sealed under the author's key.
        comment: Option<Sealed>,
    },
    /// Version 1. The accepted sitting starts tomorrow (`starts_on`): the mailer reminds the
    /// owner and the sitter. Issued once per sitting, by the reminder job.
    SittingStartReminderIssued { starts_on: NaiveDate },
    /// Version 1. The sitting's last day (`ends_on`) passed while it was still open, or accepted
    /// but never started: nobody will care for the plants any more. Appended once, by the expiry
    /// job; the sitter's booked days are freed and the owner is mailed.
    SittingExpired { ends_on: NaiveDate },
}

impl DomainEvent for SittingEvent {
    fn event_type(&self) -> String {
        match self {
            SittingEvent::SittingRequested { .. } => "SittingRequested",
            SittingEvent::ApplicationSubmitted { .. } => "ApplicationSubmitted",
            SittingEvent::ApplicationWithdrawn { .. } => "ApplicationWithdrawn",
            SittingEvent::SitterAccepted { .. } => "SitterAccepted",
            SittingEvent::SittingStarted { .. } => "SittingStarted",
            SittingEvent::CareReported { .. } => "CareReported",
            SittingEvent::SittingCompleted { .. } => "SittingCompleted",
            SittingEvent::SittingCancelled { .. } => "SittingCancelled",
            SittingEvent::ReviewLeft { .. } => "ReviewLeft",
            SittingEvent::SittingStartReminderIssued { .. } => "SittingStartReminderIssued",
            SittingEvent::SittingExpired { .. } => "SittingExpired",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}
