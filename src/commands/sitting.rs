//! The `Sitting` aggregate: an owner's request for someone to care for some of their plants
//! while away, and its lifecycle.
//!
//! `open` -> `accepted` -> `in_progress` -> `completed`; `open` or `accepted` -> `cancelled`;
//! `open` or `accepted` -> `expired` once its last day has passed without it starting.
//! The day before an accepted sitting starts, the reminder job issues its start reminder, once.
//!
//! After its last day (`ends_on`), a sitting that has not started is refused applications,
//! acceptance and start (`Expired`), whether or not the expiry job has expired it yet; the job
//! then appends `SittingExpired`, once.
//!
//! Who may cancel, and when:
//! - while `open`: the owner (or an admin), with a reason;
//! - while `accepted`: the owner, the accepted sitter (who backs out), or an admin;
//! - `in_progress`: nobody (the plants are in someone's care: complete it instead);
//! - `completed`, `cancelled` or `expired`: nothing more happens, but reviews after completion.
//!
//! What a sitting cannot know (which plants belong to the requester, the date today, whether the
//! sitter is free) is looked up before dispatch and carried in the command, or checked in the
//! append's transaction (the sitter's calendar, `events::bookings`).

use std::collections::BTreeSet;

use chrono::NaiveDate;
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::values::{Rating, SittingPeriod};
use super::Actor;
use crate::events::crypto::Sealed;
use crate::events::sitting::SittingEvent;

#[derive(Debug, Clone, PartialEq)]
pub enum SittingCommand {
    RequestSitting {
        owner_id: Uuid,
        plant_ids: Vec<Uuid>,
        /// Of `plant_ids`, those that do not exist or are not the owner's (looked up first).
        not_owned: Vec<Uuid>,
        period: SittingPeriod,
        location: Sealed,
        instructions: Option<Sealed>,
    },
    Apply {
        applicant: Actor,
        message: Option<Sealed>,
        /// The date today (UTC): no application after the sitting's last day.
        today: NaiveDate,
    },
    WithdrawApplication {
        applicant: Actor,
    },
    AcceptSitter {
        actor: Actor,
        sitter_id: Uuid,
        /// The date today (UTC): no acceptance after the sitting's last day.
        today: NaiveDate,
    },
    StartSitting {
        actor: Actor,
        today: NaiveDate,
    },
    ReportCare {
        actor: Actor,
        report_id: Uuid,
        plant_id: Uuid,
        note: Sealed,
        before_photo_id: Option<Uuid>,
        after_photo_id: Option<Uuid>,
    },
    CompleteSitting {
        actor: Actor,
    },
    CancelSitting {
        actor: Actor,
        reason: Sealed,
    },
    LeaveReview {
        actor: Actor,
        rating: Rating,
        comment: Option<Sealed>,
    },
    /// From the reminder job (`reminders`), not from a user: owner and sitter are to hear that
    /// the sitting starts tomorrow. Issued once; asked again, it does nothing.
    RemindStart {
        today: NaiveDate,
    },
    /// From the expiry job (`expiry`), not from a user: the sitting's last day is before `today`
    /// and it never started. Expires it once; asked again, it does nothing.
    ExpireSitting {
        today: NaiveDate,
    },
}

/// Each refusal has its own code over HTTP (`api::error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SittingError {
    #[error("a sitting with this id already exists")]
    AlreadyExists,
    #[error("no such sitting")]
    NotFound,
    #[error("a sitting needs at least one plant")]
    NoPlants,
    #[error("every plant of a sitting must be one of yours")]
    PlantsNotOwned(Vec<Uuid>),
    #[error("you cannot apply to sit your own plants")]
    OwnSitting,
    #[error("the sitting is not open for applications")]
    NotOpen,
    #[error("you have already applied to this sitting")]
    AlreadyApplied,
    #[error("you have no application to this sitting")]
    NotApplied,
    #[error("only the owner of the sitting may do this")]
    NotTheOwner,
    #[error("the sitter must be one of the applicants")]
    NotAnApplicant,
    #[error("the sitter is already booked on overlapping days")]
    SitterUnavailable,
    #[error("the sitting has no accepted sitter yet")]
    NotAccepted,
    #[error("the sitting starts on {0}")]
    TooEarly(NaiveDate),
    #[error("the sitting is not in progress")]
    NotInProgress,
    #[error("only the sitter may do this")]
    NotTheSitter,
    #[error("only the owner or the sitter may do this")]
    NotAParticipant,
    #[error("this plant is not part of the sitting")]
    PlantNotInSitting,
    #[error("a sitting in progress cannot be cancelled: complete it")]
    InProgress,
    #[error("the sitting is over")]
    Closed,
    #[error("reviews come after the sitting is completed")]
    NotCompleted,
    #[error("you have already reviewed this sitting")]
    AlreadyReviewed,
    #[error("the sitting starts on {0}, not tomorrow")]
    NotStartingTomorrow(NaiveDate),
    #[error("the sitting's last day has passed without it starting: it has expired")]
    Expired,
    #[error("the sitting lasts until {0}: it has not expired")]
    NotEnded(NaiveDate),
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// No event yet.
    #[default]
    New,
    Open,
    Accepted,
    InProgress,
    Completed,
    Cancelled,
    /// Its last day passed while open, or accepted but not started.
    Expired,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::New => "new",
            Status::Open => "open",
            Status::Accepted => "accepted",
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Cancelled => "cancelled",
            Status::Expired => "expired",
        }
    }

    pub fn parse(value: &str) -> Option<Status> {
        [
            Status::Open,
            Status::Accepted,
            Status::InProgress,
            Status::Completed,
            Status::Cancelled,
            Status::Expired,
        ]
        .into_iter()
        .find(|s| s.as_str() == value)
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Sitting {
    owner_id: Option<Uuid>,
    plant_ids: Vec<Uuid>,
    starts_on: Option<NaiveDate>,
    ends_on: Option<NaiveDate>,
    status: Status,
    applicants: BTreeSet<Uuid>,
    sitter_id: Option<Uuid>,
    reviewed_by: BTreeSet<Uuid>,
    /// Whether the start reminder was issued (`SittingStartReminderIssued`).
    #[serde(default)]
    start_reminded: bool,
}

impl Sitting {
    pub fn status(&self) -> Status {
        self.status
    }

    pub fn plant_ids(&self) -> &[Uuid] {
        &self.plant_ids
    }

    pub fn sitter_id(&self) -> Option<Uuid> {
        self.sitter_id
    }

    /// First and last day, once requested.
    pub fn period(&self) -> Option<(NaiveDate, NaiveDate)> {
        self.starts_on.zip(self.ends_on)
    }

    fn is_owner(&self, actor: &Actor) -> bool {
        self.owner_id == Some(actor.id)
    }

    fn is_sitter(&self, actor: &Actor) -> bool {
        self.sitter_id == Some(actor.id)
    }

    /// Whether `today` is after the sitting's last day.
    fn is_over(&self, today: NaiveDate) -> bool {
        self.ends_on.is_some_and(|ends_on| today > ends_on)
    }

    fn exists(&self) -> Result<(), SittingError> {
        if self.status == Status::New {
            Err(SittingError::NotFound)
        } else {
            Ok(())
        }
    }

    fn decide(&self, command: SittingCommand) -> Result<Vec<SittingEvent>, SittingError> {
        use SittingCommand as C;
        use SittingError as E;
        use SittingEvent as Ev;
        if !matches!(command, C::RequestSitting { .. }) {
            self.exists()?;
        }
        let event = match command {
            C::RequestSitting {
                owner_id,
                plant_ids,
                not_owned,
                period,
                location,
                instructions,
            } => {
                if self.status != Status::New {
                    return Err(E::AlreadyExists);
                }
                if plant_ids.is_empty() {
                    return Err(E::NoPlants);
                }
                if !not_owned.is_empty() {
                    return Err(E::PlantsNotOwned(not_owned));
                }
                let mut unique = BTreeSet::new();
                let plant_ids = plant_ids
                    .into_iter()
                    .filter(|p| unique.insert(*p))
                    .collect();
                Ev::SittingRequested {
                    owner_id,
                    plant_ids,
                    starts_on: period.starts_on(),
                    ends_on: period.ends_on(),
                    location,
                    instructions,
                }
            }
            C::Apply {
                applicant,
                message,
                today,
            } => {
                if self.is_owner(&applicant) {
                    return Err(E::OwnSitting);
                }
                if self.status != Status::Open {
                    return Err(self.expired_or(E::NotOpen));
                }
                if self.is_over(today) {
                    return Err(E::Expired);
                }
                if self.applicants.contains(&applicant.id) {
                    return Err(E::AlreadyApplied);
                }
                Ev::ApplicationSubmitted {
                    applicant_id: applicant.id,
                    message,
                }
            }
            C::WithdrawApplication { applicant } => {
                if self.status != Status::Open {
                    return Err(E::NotOpen);
                }
                if !self.applicants.contains(&applicant.id) {
                    return Err(E::NotApplied);
                }
                Ev::ApplicationWithdrawn {
                    applicant_id: applicant.id,
                }
            }
            C::AcceptSitter {
                actor,
                sitter_id,
                today,
            } => {
                if !self.is_owner(&actor) {
                    return Err(E::NotTheOwner);
                }
                if self.status != Status::Open {
                    return Err(self.expired_or(E::NotOpen));
                }
                if self.is_over(today) {
                    return Err(E::Expired);
                }
                if !self.applicants.contains(&sitter_id) {
                    return Err(E::NotAnApplicant);
                }
                Ev::SitterAccepted { sitter_id }
            }
            C::StartSitting { actor, today } => {
                if !self.is_owner(&actor) && !self.is_sitter(&actor) {
                    return Err(E::NotAParticipant);
                }
                if self.status != Status::Accepted {
                    return Err(self.closed_or(E::NotAccepted));
                }
                if let Some(starts_on) = self.starts_on.filter(|s| today < *s) {
                    return Err(E::TooEarly(starts_on));
                }
                if self.is_over(today) {
                    return Err(E::Expired);
                }
                Ev::SittingStarted { by: actor.id }
            }
            C::ReportCare {
                actor,
                report_id,
                plant_id,
                note,
                before_photo_id,
                after_photo_id,
            } => {
                if !self.is_sitter(&actor) {
                    return Err(E::NotTheSitter);
                }
                if self.status != Status::InProgress {
                    return Err(self.closed_or(E::NotInProgress));
                }
                if !self.plant_ids.contains(&plant_id) {
                    return Err(E::PlantNotInSitting);
                }
                Ev::CareReported {
                    report_id,
                    sitter_id: actor.id,
                    plant_id,
                    note,
                    before_photo_id,
                    after_photo_id,
                }
            }
            C::CompleteSitting { actor } => {
                if !self.is_owner(&actor) && !self.is_sitter(&actor) {
                    return Err(E::NotAParticipant);
                }
                if self.status != Status::InProgress {
                    return Err(self.closed_or(E::NotInProgress));
                }
                Ev::SittingCompleted { by: actor.id }
            }
            C::CancelSitting { actor, reason } => {
                let allowed = match self.status {
                    Status::Open => self.is_owner(&actor) || actor.is_admin(),
                    Status::Accepted => {
                        self.is_owner(&actor) || self.is_sitter(&actor) || actor.is_admin()
                    }
                    Status::InProgress => return Err(E::InProgress),
                    // An expired sitting is over like a cancelled one (and erasure, which
                    // cancels what it finds open, takes `Closed` as "nothing left to close").
                    Status::Completed | Status::Cancelled | Status::Expired | Status::New => {
                        return Err(E::Closed)
                    }
                };
                if !allowed {
                    return Err(E::NotAParticipant);
                }
                Ev::SittingCancelled {
                    by: actor.id,
                    reason,
                }
            }
            C::LeaveReview {
                actor,
                rating,
                comment,
            } => {
                let subject_id = if self.is_owner(&actor) {
                    self.sitter_id
                } else if self.is_sitter(&actor) {
                    self.owner_id
                } else {
                    return Err(E::NotAParticipant);
                };
                if self.status != Status::Completed {
                    return Err(E::NotCompleted);
                }
                if self.reviewed_by.contains(&actor.id) {
                    return Err(E::AlreadyReviewed);
                }
                let Some(subject_id) = subject_id else {
                    return Err(E::NotCompleted);
                };
                Ev::ReviewLeft {
                    author_id: actor.id,
                    subject_id,
                    rating: rating.value(),
                    comment,
                }
            }
            C::RemindStart { today } => {
                if self.status != Status::Accepted {
                    return Err(self.closed_or(E::NotAccepted));
                }
                // Every instance's job may ask; the first one's event is the only one.
                if self.start_reminded {
                    return Ok(Vec::new());
                }
                let Some(starts_on) = self.starts_on else {
                    return Err(E::NotFound);
                };
                if today.succ_opt() != Some(starts_on) {
                    return Err(E::NotStartingTomorrow(starts_on));
                }
                Ev::SittingStartReminderIssued { starts_on }
            }
            C::ExpireSitting { today } => {
                match self.status {
                    // Every instance's job may ask; the first one's event is the only one.
                    Status::Expired => return Ok(Vec::new()),
                    Status::Open | Status::Accepted => {}
                    Status::InProgress => return Err(E::InProgress),
                    Status::Completed | Status::Cancelled | Status::New => return Err(E::Closed),
                }
                let Some(ends_on) = self.ends_on else {
                    return Err(E::NotFound);
                };
                if !self.is_over(today) {
                    return Err(E::NotEnded(ends_on));
                }
                Ev::SittingExpired { ends_on }
            }
        };
        Ok(vec![event])
    }

    /// A command that needs a live sitting, on one that is over, says so; otherwise `error`.
    fn closed_or(&self, error: SittingError) -> SittingError {
        match self.status {
            Status::Completed | Status::Cancelled => SittingError::Closed,
            Status::Expired => SittingError::Expired,
            _ => error,
        }
    }

    /// A command that needs an open sitting, on one that expired, says so; otherwise `error`.
    fn expired_or(&self, error: SittingError) -> SittingError {
        match self.status {
            Status::Expired => SittingError::Expired,
            _ => error,
        }
    }
}

/// No event of this aggregate has changed shape yet.
impl crate::events::upcast::Versioned for Sitting {}

impl Aggregate for Sitting {
    const TYPE: &'static str = "Sitting";
    type Command = SittingCommand;
    type Event = SittingEvent;
    type Error = SittingError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            SittingEvent::SittingRequested {
                owner_id,
                plant_ids,
                starts_on,
                ends_on,
                ..
            } => {
                self.owner_id = Some(owner_id);
                self.plant_ids = plant_ids;
                self.starts_on = Some(starts_on);
                self.ends_on = Some(ends_on);
                self.status = Status::Open;
            }
            SittingEvent::ApplicationSubmitted { applicant_id, .. } => {
                self.applicants.insert(applicant_id);
            }
            SittingEvent::ApplicationWithdrawn { applicant_id } => {
                self.applicants.remove(&applicant_id);
            }
            SittingEvent::SitterAccepted { sitter_id } => {
                self.sitter_id = Some(sitter_id);
                self.status = Status::Accepted;
            }
            SittingEvent::SittingStarted { .. } => self.status = Status::InProgress,
            SittingEvent::CareReported { .. } => {}
            SittingEvent::SittingCompleted { .. } => self.status = Status::Completed,
            SittingEvent::SittingCancelled { .. } => self.status = Status::Cancelled,
            SittingEvent::ReviewLeft { author_id, .. } => {
                self.reviewed_by.insert(author_id);
            }
            SittingEvent::SittingStartReminderIssued { .. } => self.start_reminded = true,
            SittingEvent::SittingExpired { .. } => self.status = Status::Expired,
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;
    use crate::events::crypto::Cipher;
    use crate::events::user::Role;

    type SittingTest = TestFramework<Sitting>;

    const OWNER: Uuid = Uuid::from_u128(1);
    const SITTER: Uuid = Uuid::from_u128(2);
    const OTHER: Uuid = Uuid::from_u128(3);
    const ADMIN: Uuid = Uuid::from_u128(4);
    const FERN: Uuid = Uuid::from_u128(10);
    const CACTUS: Uuid = Uuid::from_u128(11);
    const ELSEWHERE: Uuid = Uuid::from_u128(12);

    fn user(id: Uuid) -> Actor {
        Actor {
            id,
            role: Role::User,
        }
    }

    fn admin() -> Actor {
        Actor {
            id: ADMIN,
            role: Role::Admin,
        }
    }

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2027, 6, d).expect("date")
    }

    fn sealed(text: &str) -> Sealed {
        Cipher::for_tests().seal(text)
    }

    fn requested() -> SittingEvent {
        SittingEvent::SittingRequested {
            owner_id: OWNER,
            plant_ids: vec![FERN, CACTUS],
            starts_on: day(10),
            ends_on: day(20),
            location: sealed("{}"),
            instructions: None,
        }
    }

    fn applied(id: Uuid) -> SittingEvent {
        SittingEvent::ApplicationSubmitted {
            applicant_id: id,
            message: None,
        }
    }

    fn accepted() -> Vec<SittingEvent> {
        vec![
            requested(),
            applied(SITTER),
            SittingEvent::SitterAccepted { sitter_id: SITTER },
        ]
    }

    fn in_progress() -> Vec<SittingEvent> {
        let mut events = accepted();
        events.push(SittingEvent::SittingStarted { by: OWNER });
        events
    }

    fn completed() -> Vec<SittingEvent> {
        let mut events = in_progress();
        events.push(SittingEvent::SittingCompleted { by: OWNER });
        events
    }

    fn cancelled() -> Vec<SittingEvent> {
        vec![
            requested(),
            SittingEvent::SittingCancelled {
                by: OWNER,
                reason: sealed("plans changed"),
            },
        ]
    }

    fn request(plant_ids: Vec<Uuid>, not_owned: Vec<Uuid>) -> SittingCommand {
        SittingCommand::RequestSitting {
            owner_id: OWNER,
            plant_ids,
            not_owned,
            period: SittingPeriod::parse(day(10), day(20), day(1), 90).expect("period"),
            location: sealed("{}"),
            instructions: None,
        }
    }

    /// The events a command decides, compared without the sealed fields' random nonces.
    fn decided(
        given: Vec<SittingEvent>,
        command: SittingCommand,
    ) -> Result<Vec<String>, SittingError> {
        let mut sitting = Sitting::default();
        for event in given {
            sitting.apply(event);
        }
        sitting.decide(command).map(|events| {
            events
                .iter()
                .map(cqrs_es::DomainEvent::event_type)
                .collect()
        })
    }

    #[test]
    fn an_owner_requests_a_sitting_of_their_plants() {
        let location = sealed("{}");
        let command = SittingCommand::RequestSitting {
            owner_id: OWNER,
            plant_ids: vec![FERN, CACTUS, FERN],
            not_owned: vec![],
            period: SittingPeriod::parse(day(10), day(20), day(1), 90).expect("period"),
            location: location.clone(),
            instructions: None,
        };
        SittingTest::with(())
            .given_no_previous_events()
            .when(command)
            .then_expect_events(vec![SittingEvent::SittingRequested {
                owner_id: OWNER,
                plant_ids: vec![FERN, CACTUS],
                starts_on: day(10),
                ends_on: day(20),
                location,
                instructions: None,
            }]);
    }

    #[test]
    fn a_request_needs_plants_all_owned_by_the_requester() {
        assert_eq!(
            decided(vec![], request(vec![], vec![])),
            Err(SittingError::NoPlants)
        );
        assert_eq!(
            decided(vec![], request(vec![FERN, ELSEWHERE], vec![ELSEWHERE])),
            Err(SittingError::PlantsNotOwned(vec![ELSEWHERE]))
        );
        assert_eq!(
            decided(vec![requested()], request(vec![FERN], vec![])),
            Err(SittingError::AlreadyExists)
        );
    }

    #[test]
    fn anyone_but_the_owner_applies_once_while_open() {
        let apply = |id| SittingCommand::Apply {
            applicant: user(id),
            message: None,
            today: day(1),
        };
        assert_eq!(
            decided(vec![requested()], apply(SITTER)),
            Ok(vec!["ApplicationSubmitted".into()])
        );
        assert_eq!(
            decided(vec![requested()], apply(OWNER)),
            Err(SittingError::OwnSitting)
        );
        assert_eq!(
            decided(vec![requested(), applied(SITTER)], apply(SITTER)),
            Err(SittingError::AlreadyApplied)
        );
        assert_eq!(
            decided(accepted(), apply(OTHER)),
            Err(SittingError::NotOpen)
        );
        assert_eq!(decided(vec![], apply(SITTER)), Err(SittingError::NotFound));
    }

    #[test]
    fn an_applicant_withdraws_while_open_and_may_apply_again() {
        let withdraw = |id| SittingCommand::WithdrawApplication {
            applicant: user(id),
        };
        let given = vec![requested(), applied(SITTER)];
        assert_eq!(
            decided(given.clone(), withdraw(SITTER)),
            Ok(vec!["ApplicationWithdrawn".into()])
        );
        assert_eq!(
            decided(given, withdraw(OTHER)),
            Err(SittingError::NotApplied)
        );
        assert_eq!(
            decided(accepted(), withdraw(SITTER)),
            Err(SittingError::NotOpen)
        );
        let again = vec![
            requested(),
            applied(SITTER),
            SittingEvent::ApplicationWithdrawn {
                applicant_id: SITTER,
            },
        ];
        let apply = SittingCommand::Apply {
            applicant: user(SITTER),
            message: None,
            today: day(1),
        };
        assert_eq!(
            decided(again, apply),
            Ok(vec!["ApplicationSubmitted".into()])
        );
    }

    #[test]
    fn the_owner_accepts_one_applicant_while_open() {
        let accept = |actor, sitter_id| SittingCommand::AcceptSitter {
            actor,
            sitter_id,
            today: day(1),
        };
        let given = vec![requested(), applied(SITTER)];
        SittingTest::with(())
            .given(given.clone())
            .when(accept(user(OWNER), SITTER))
            .then_expect_events(vec![SittingEvent::SitterAccepted { sitter_id: SITTER }]);
        assert_eq!(
            decided(given.clone(), accept(user(OTHER), SITTER)),
            Err(SittingError::NotTheOwner)
        );
        assert_eq!(
            decided(given, accept(user(OWNER), OTHER)),
            Err(SittingError::NotAnApplicant)
        );
        assert_eq!(
            decided(accepted(), accept(user(OWNER), SITTER)),
            Err(SittingError::NotOpen)
        );
    }

    #[test]
    fn the_owner_or_the_sitter_starts_an_accepted_sitting_on_its_first_day() {
        let start = |id, today| SittingCommand::StartSitting {
            actor: user(id),
            today,
        };
        assert_eq!(
            decided(accepted(), start(SITTER, day(10))),
            Ok(vec!["SittingStarted".into()])
        );
        assert_eq!(
            decided(accepted(), start(OWNER, day(12))),
            Ok(vec!["SittingStarted".into()])
        );
        assert_eq!(
            decided(accepted(), start(OWNER, day(9))),
            Err(SittingError::TooEarly(day(10)))
        );
        assert_eq!(
            decided(accepted(), start(OTHER, day(10))),
            Err(SittingError::NotAParticipant)
        );
        let open = vec![requested(), applied(SITTER)];
        assert_eq!(
            decided(open, start(OWNER, day(10))),
            Err(SittingError::NotAccepted)
        );
        assert_eq!(
            decided(in_progress(), start(OWNER, day(10))),
            Err(SittingError::NotAccepted)
        );
        assert_eq!(
            decided(cancelled(), start(OWNER, day(10))),
            Err(SittingError::Closed)
        );
    }

    #[test]
    fn only_the_sitter_reports_care_on_the_sittings_plants_while_in_progress() {
        let report = |id, plant_id| SittingCommand::ReportCare {
            actor: user(id),
            report_id: Uuid::from_u128(99),
            plant_id,
            note: sealed("watered"),
            before_photo_id: None,
            after_photo_id: None,
        };
        assert_eq!(
            decided(in_progress(), report(SITTER, FERN)),
            Ok(vec!["CareReported".into()])
        );
        assert_eq!(
            decided(in_progress(), report(OWNER, FERN)),
            Err(SittingError::NotTheSitter)
        );
        assert_eq!(
            decided(in_progress(), report(SITTER, ELSEWHERE)),
            Err(SittingError::PlantNotInSitting)
        );
        assert_eq!(
            decided(accepted(), report(SITTER, FERN)),
            Err(SittingError::NotInProgress)
        );
        assert_eq!(
            decided(completed(), report(SITTER, FERN)),
            Err(SittingError::Closed)
        );
    }

    #[test]
    fn the_owner_or_the_sitter_completes_a_sitting_in_progress() {
        let complete = |id| SittingCommand::CompleteSitting { actor: user(id) };
        assert_eq!(
            decided(in_progress(), complete(SITTER)),
            Ok(vec!["SittingCompleted".into()])
        );
        assert_eq!(
            decided(in_progress(), complete(OTHER)),
            Err(SittingError::NotAParticipant)
        );
        assert_eq!(
            decided(accepted(), complete(OWNER)),
            Err(SittingError::NotInProgress)
        );
        assert_eq!(
            decided(completed(), complete(OWNER)),
            Err(SittingError::Closed)
        );
    }

    #[test]
    fn who_may_cancel_depends_on_the_state() {
        let cancel = |actor| SittingCommand::CancelSitting {
            actor,
            reason: sealed("sorry"),
        };
        let open = vec![requested(), applied(SITTER)];
        let ok = Ok(vec!["SittingCancelled".to_string()]);
        assert_eq!(decided(open.clone(), cancel(user(OWNER))), ok);
        assert_eq!(decided(open.clone(), cancel(admin())), ok);
        assert_eq!(
            decided(open.clone(), cancel(user(SITTER))),
            Err(SittingError::NotAParticipant)
        );
        assert_eq!(decided(accepted(), cancel(user(SITTER))), ok);
        assert_eq!(decided(accepted(), cancel(user(OWNER))), ok);
        assert_eq!(
            decided(accepted(), cancel(user(OTHER))),
            Err(SittingError::NotAParticipant)
        );
        assert_eq!(
            decided(in_progress(), cancel(user(OWNER))),
            Err(SittingError::InProgress)
        );
        assert_eq!(
            decided(completed(), cancel(user(OWNER))),
            Err(SittingError::Closed)
        );
        assert_eq!(
            decided(cancelled(), cancel(user(OWNER))),
            Err(SittingError::Closed)
        );
    }

    #[test]
    fn each_side_reviews_the_other_once_after_completion() {
        let review = |id| SittingCommand::LeaveReview {
            actor: user(id),
            rating: Rating::parse(5).expect("rating"),
            comment: None,
        };
        SittingTest::with(())
            .given(completed())
            .when(review(OWNER))
            .then_expect_events(vec![SittingEvent::ReviewLeft {
                author_id: OWNER,
                subject_id: SITTER,
                rating: 5,
                comment: None,
            }]);
        SittingTest::with(())
            .given(completed())
            .when(review(SITTER))
            .then_expect_events(vec![SittingEvent::ReviewLeft {
                author_id: SITTER,
                subject_id: OWNER,
                rating: 5,
                comment: None,
            }]);
        let mut reviewed = completed();
        reviewed.push(SittingEvent::ReviewLeft {
            author_id: OWNER,
            subject_id: SITTER,
            rating: 4,
            comment: None,
        });
        assert_eq!(
            decided(reviewed, review(OWNER)),
            Err(SittingError::AlreadyReviewed)
        );
        assert_eq!(
            decided(completed(), review(OTHER)),
            Err(SittingError::NotAParticipant)
        );
        assert_eq!(
            decided(in_progress(), review(OWNER)),
            Err(SittingError::NotCompleted)
        );
    }

    fn remind(today: NaiveDate) -> SittingCommand {
        SittingCommand::RemindStart { today }
    }

    #[test]
    fn the_start_reminder_is_issued_the_day_before_an_accepted_sitting_starts() {
        SittingTest::with(())
            .given(accepted())
            .when(remind(day(9)))
            .then_expect_events(vec![SittingEvent::SittingStartReminderIssued {
                starts_on: day(10),
            }]);
    }

    #[test]
    fn the_start_reminder_is_issued_once() {
        let mut reminded = accepted();
        reminded.push(SittingEvent::SittingStartReminderIssued { starts_on: day(10) });
        SittingTest::with(())
            .given(reminded.clone())
            .when(remind(day(9)))
            .then_expect_events(vec![]);
        // A reminded sitting goes on as before.
        let start = SittingCommand::StartSitting {
            actor: user(SITTER),
            today: day(10),
        };
        assert_eq!(decided(reminded, start), Ok(vec!["SittingStarted".into()]));
    }

    #[test]
    fn no_start_reminder_on_another_day() {
        for today in [day(8), day(10), day(11)] {
            assert_eq!(
                decided(accepted(), remind(today)),
                Err(SittingError::NotStartingTomorrow(day(10))),
                "{today}"
            );
        }
    }

    #[test]
    fn no_start_reminder_without_an_accepted_sitter_or_once_over() {
        assert_eq!(
            decided(vec![requested(), applied(SITTER)], remind(day(9))),
            Err(SittingError::NotAccepted)
        );
        assert_eq!(
            decided(in_progress(), remind(day(9))),
            Err(SittingError::NotAccepted)
        );
        assert_eq!(
            decided(cancelled(), remind(day(9))),
            Err(SittingError::Closed)
        );
        assert_eq!(decided(vec![], remind(day(9))), Err(SittingError::NotFound));
    }

    fn expire(today: NaiveDate) -> SittingCommand {
        SittingCommand::ExpireSitting { today }
    }

    fn expired(mut given: Vec<SittingEvent>) -> Vec<SittingEvent> {
        given.push(SittingEvent::SittingExpired { ends_on: day(20) });
        given
    }

    #[test]
    fn an_open_sitting_expires_the_day_after_its_last_day() {
        SittingTest::with(())
            .given(vec![requested(), applied(SITTER)])
            .when(expire(day(21)))
            .then_expect_events(vec![SittingEvent::SittingExpired { ends_on: day(20) }]);
    }

    #[test]
    fn an_accepted_sitting_that_never_started_expires_after_its_last_day() {
        SittingTest::with(())
            .given(accepted())
            .when(expire(day(25)))
            .then_expect_events(vec![SittingEvent::SittingExpired { ends_on: day(20) }]);
    }

    #[test]
    fn a_sitting_expires_once() {
        SittingTest::with(())
            .given(expired(accepted()))
            .when(expire(day(22)))
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_sitting_does_not_expire_before_its_last_day_is_over() {
        for today in [day(1), day(10), day(20)] {
            assert_eq!(
                decided(vec![requested()], expire(today)),
                Err(SittingError::NotEnded(day(20))),
                "{today}"
            );
        }
    }

    #[test]
    fn a_started_or_closed_sitting_does_not_expire() {
        assert_eq!(
            decided(in_progress(), expire(day(21))),
            Err(SittingError::InProgress)
        );
        assert_eq!(
            decided(completed(), expire(day(21))),
            Err(SittingError::Closed)
        );
        assert_eq!(
            decided(cancelled(), expire(day(21))),
            Err(SittingError::Closed)
        );
        assert_eq!(
            decided(vec![], expire(day(21))),
            Err(SittingError::NotFound)
        );
    }

    #[test]
    fn no_application_acceptance_or_start_after_the_last_day() {
        let apply = |today| SittingCommand::Apply {
            applicant: user(OTHER),
            message: None,
            today,
        };
        let accept = |today| SittingCommand::AcceptSitter {
            actor: user(OWNER),
            sitter_id: SITTER,
            today,
        };
        let start = |today| SittingCommand::StartSitting {
            actor: user(SITTER),
            today,
        };
        let open = vec![requested(), applied(SITTER)];
        // The last day itself is still in time.
        assert_eq!(
            decided(open.clone(), apply(day(20))),
            Ok(vec!["ApplicationSubmitted".into()])
        );
        assert_eq!(
            decided(open.clone(), accept(day(20))),
            Ok(vec!["SitterAccepted".into()])
        );
        assert_eq!(
            decided(accepted(), start(day(20))),
            Ok(vec!["SittingStarted".into()])
        );
        // The day after, before the job expired it.
        assert_eq!(
            decided(open.clone(), apply(day(21))),
            Err(SittingError::Expired)
        );
        assert_eq!(
            decided(open.clone(), accept(day(21))),
            Err(SittingError::Expired)
        );
        assert_eq!(
            decided(accepted(), start(day(21))),
            Err(SittingError::Expired)
        );
        // Once expired, whatever the date the command carries.
        assert_eq!(
            decided(expired(open.clone()), apply(day(12))),
            Err(SittingError::Expired)
        );
        assert_eq!(
            decided(expired(open.clone()), accept(day(12))),
            Err(SittingError::Expired)
        );
        assert_eq!(
            decided(expired(accepted()), start(day(12))),
            Err(SittingError::Expired)
        );
    }

    #[test]
    fn an_expired_sitting_is_over() {
        let cancel = SittingCommand::CancelSitting {
            actor: user(OWNER),
            reason: sealed("too late"),
        };
        assert_eq!(
            decided(expired(accepted()), cancel),
            Err(SittingError::Closed)
        );
        let withdraw = SittingCommand::WithdrawApplication {
            applicant: user(SITTER),
        };
        assert_eq!(
            decided(expired(vec![requested(), applied(SITTER)]), withdraw),
            Err(SittingError::NotOpen)
        );
        assert_eq!(
            decided(expired(accepted()), remind(day(9))),
            Err(SittingError::Expired)
        );
        let complete = SittingCommand::CompleteSitting { actor: user(OWNER) };
        assert_eq!(
            decided(expired(accepted()), complete),
            Err(SittingError::Expired)
        );
        let mut sitting = Sitting::default();
        for event in expired(accepted()) {
            sitting.apply(event);
        }
        assert_eq!(sitting.status(), Status::Expired);
    }

    #[test]
    fn status_names_round_trip() {
        for status in [
            "open",
            "accepted",
            "in_progress",
            "completed",
            "cancelled",
            "expired",
        ] {
            assert_eq!(Status::parse(status).map(|s| s.as_str()), Some(status));
        }
        assert_eq!(Status::parse("new"), None);
    }
}
