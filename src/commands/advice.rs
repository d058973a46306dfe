//! The `Advice` aggregate: a botanist's advice on a plant, optionally in the context of one of its
//! sittings. Every edit is a new version; other botanists (never the author) validate or reject
//! it, once each; its author withdraws it, a moderator (ADMIN) hides it with a reason.
//!
//! Facts the advice cannot know (the plant's owner, the sitting and its sitter) are looked up
//! from their own aggregates before dispatch and carried in the command.

use std::collections::BTreeSet;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::sitting::Status as SittingStatus;
use super::Actor;
use crate::events::advice::{AdviceEvent, Priority, Verdict};
use crate::events::crypto::Sealed;
use crate::events::user::Role;

/// The sitting an advice is given in the context of, as its own stream tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SittingFacts {
    pub status: SittingStatus,
    pub plant_ids: Vec<Uuid>,
    pub sitter_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AdviceCommand {
    GiveAdvice {
        author: Actor,
        plant_id: Uuid,
        /// The plant's owner; `None` when the plant does not exist (or was deleted).
        plant_owner_id: Option<Uuid>,
        /// The sitting named by the botanist, if any (`None` inside: it does not exist).
        sitting: Option<(Uuid, Option<SittingFacts>)>,
        /// Who cares for the plant right now (the sitter of an accepted or running sitting of
        /// it), when no sitting was named.
        current_sitter_id: Option<Uuid>,
        priority: Priority,
        body: Sealed,
    },
    ReviseAdvice {
        actor: Actor,
        /// `None` keeps the current priority.
        priority: Option<Priority>,
        body: Sealed,
    },
    ReviewAdvice {
        actor: Actor,
        verdict: Verdict,
        comment: Option<Sealed>,
    },
    WithdrawAdvice {
        actor: Actor,
    },
    HideAdvice {
        actor: Actor,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdviceError {
    #[error("an advice with this id already exists")]
    AlreadyExists,
    #[error("only botanists give and review advice")]
    NotABotanist,
    #[error("no such plant")]
    PlantNotFound,
    #[error("no such sitting")]
    SittingNotFound,
    #[error("this plant is not part of that sitting")]
    PlantNotInSitting,
    #[error("that sitting is over (completed, cancelled or expired)")]
    SittingClosed,
    /// Unknown, withdrawn, or hidden.
    #[error("no such advice")]
    NotFound,
    #[error("only its author changes or withdraws an advice")]
    NotTheAuthor,
    #[error("an author does not validate or reject their own advice")]
    OwnAdvice,
    #[error("you already gave your verdict on this advice")]
    AlreadyReviewed,
    #[error("only moderators hide advice")]
    NotAModerator,
    #[error("this advice is already hidden")]
    AlreadyHidden,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    #[default]
    New,
    Active,
    Withdrawn,
    Hidden,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Advice {
    author_id: Option<Uuid>,
    plant_id: Option<Uuid>,
    version: u32,
    priority: Priority,
    reviewers: BTreeSet<Uuid>,
    state: State,
}

impl Advice {
    pub fn plant_id(&self) -> Option<Uuid> {
        self.plant_id
    }

    pub fn state(&self) -> State {
        self.state
    }

    fn active(&self) -> Result<Uuid, AdviceError> {
        match (self.state, self.author_id) {
            (State::Active, Some(author)) => Ok(author),
            _ => Err(AdviceError::NotFound),
        }
    }

    fn decide(&self, command: AdviceCommand) -> Result<AdviceEvent, AdviceError> {
        use AdviceCommand as C;
        use AdviceError as E;
        match command {
            C::GiveAdvice {
                author,
                plant_id,
                plant_owner_id,
                sitting,
                current_sitter_id,
                priority,
                body,
            } => {
                if self.state != State::New {
                    return Err(E::AlreadyExists);
                }
                if author.role != Role::Botanist {
                    return Err(E::NotABotanist);
                }
                let plant_owner_id = plant_owner_id.ok_or(E::PlantNotFound)?;
                let (sitting_id, sitter_id) = match sitting {
                    None => (None, current_sitter_id),
                    Some((_, None)) => return Err(E::SittingNotFound),
                    Some((id, Some(facts))) => {
                        if !facts.plant_ids.contains(&plant_id) {
                            return Err(E::PlantNotInSitting);
                        }
                        if matches!(
                            facts.status,
                            SittingStatus::Completed
                                | SittingStatus::Cancelled
                                | SittingStatus::Expired
                        ) {
                            return Err(E::SittingClosed);
                        }
                        (Some(id), facts.sitter_id)
                    }
                };
                Ok(AdviceEvent::AdviceGiven {
                    author_id: author.id,
                    plant_id,
                    plant_owner_id,
                    sitting_id,
                    sitter_id,
                    priority,
                    body,
                })
            }
            C::ReviseAdvice {
                actor,
                priority,
                body,
            } => {
                if self.active()? != actor.id {
                    return Err(E::NotTheAuthor);
                }
                Ok(AdviceEvent::AdviceRevised {
                    version: self.version + 1,
                    priority: priority.unwrap_or(self.priority),
                    body,
                })
            }
            C::ReviewAdvice {
                actor,
                verdict,
                comment,
            } => {
                let author = self.active()?;
                if actor.role != Role::Botanist {
                    return Err(E::NotABotanist);
                }
                if author == actor.id {
                    return Err(E::OwnAdvice);
                }
                if self.reviewers.contains(&actor.id) {
                    return Err(E::AlreadyReviewed);
                }
                Ok(AdviceEvent::AdviceReviewed {
                    botanist_id: actor.id,
                    verdict,
                    advice_version: self.version,
                    comment,
                })
            }
            C::WithdrawAdvice { actor } => {
                if self.active()? != actor.id {
                    return Err(E::NotTheAuthor);
                }
                Ok(AdviceEvent::AdviceWithdrawn { by: actor.id })
            }
            C::HideAdvice { actor, reason } => {
                if !actor.is_admin() {
                    return Err(E::NotAModerator);
                }
                match self.state {
                    State::Active => Ok(AdviceEvent::AdviceHidden {
                        by: actor.id,
                        reason,
                    }),
                    State::Hidden => Err(E::AlreadyHidden),
                    State::New | State::Withdrawn => Err(E::NotFound),
                }
            }
        }
    }
}

/// No event of this aggregate has changed shape yet.
impl crate::events::upcast::Versioned for Advice {}

impl Aggregate for Advice {
    const TYPE: &'static str = "Advice";
    type Command = AdviceCommand;
    type Event = AdviceEvent;
    type Error = AdviceError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = self.decide(command)?;
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            AdviceEvent::AdviceGiven {
                author_id,
                plant_id,
                priority,
                ..
            } => {
                self.author_id = Some(author_id);
                self.plant_id = Some(plant_id);
                self.priority = priority;
                self.version = 1;
                self.state = State::Active;
            }
            AdviceEvent::AdviceRevised {
                version, priority, ..
            } => {
                self.version = version;
                self.priority = priority;
            }
            AdviceEvent::AdviceReviewed { botanist_id, .. } => {
                self.reviewers.insert(botanist_id);
            }
            AdviceEvent::AdviceWithdrawn { .. } => self.state = State::Withdrawn,
            AdviceEvent::AdviceHidden { .. } => self.state = State::Hidden,
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;
    use crate::events::crypto::Cipher;

    type AdviceTest = TestFramework<Advice>;

    const AUTHOR: Uuid = Uuid::from_u128(1);
    const PEER: Uuid = Uuid::from_u128(2);
    const OWNER: Uuid = Uuid::from_u128(3);
    const SITTER: Uuid = Uuid::from_u128(4);
    const ADMIN: Uuid = Uuid::from_u128(5);
    const FERN: Uuid = Uuid::from_u128(10);
    const CACTUS: Uuid = Uuid::from_u128(11);
    const SITTING: Uuid = Uuid::from_u128(20);

    fn botanist(id: Uuid) -> Actor {
        Actor {
            id,
            role: Role::Botanist,
        }
    }

    fn as_role(id: Uuid, role: Role) -> Actor {
        Actor { id, role }
    }

    fn sealed(text: &str) -> Sealed {
        Cipher::for_tests().seal(text)
    }

    fn give(sitting: Option<(Uuid, Option<SittingFacts>)>) -> AdviceCommand {
        AdviceCommand::GiveAdvice {
            author: botanist(AUTHOR),
            plant_id: FERN,
            plant_owner_id: Some(OWNER),
            sitting,
            current_sitter_id: None,
            priority: Priority::Urgent,
            body: sealed("water less"),
        }
    }

    fn facts(status: SittingStatus, plants: Vec<Uuid>) -> Option<(Uuid, Option<SittingFacts>)> {
        Some((
            SITTING,
            Some(SittingFacts {
                status,
                plant_ids: plants,
                sitter_id: Some(SITTER),
            }),
        ))
    }

    fn given_event() -> AdviceEvent {
        AdviceEvent::AdviceGiven {
            author_id: AUTHOR,
            plant_id: FERN,
            plant_owner_id: OWNER,
            sitting_id: None,
            sitter_id: None,
            priority: Priority::Normal,
            body: sealed("water less"),
        }
    }

    fn review(by: Uuid, verdict: Verdict) -> AdviceCommand {
        AdviceCommand::ReviewAdvice {
            actor: botanist(by),
            verdict,
            comment: None,
        }
    }

    /// The one event a command produced (bodies are sealed with fresh nonces, so tests look at
    /// the shape rather than compare whole events).
    fn only_event(result: Result<AdviceEvent, AdviceError>) -> AdviceEvent {
        result.expect("the command succeeds")
    }

    fn state_after(events: Vec<AdviceEvent>) -> Advice {
        let mut advice = Advice::default();
        for event in events {
            advice.apply(event);
        }
        advice
    }

    #[test]
    fn a_botanist_gives_advice_on_an_existing_plant() {
        match only_event(Advice::default().decide(give(None))) {
            AdviceEvent::AdviceGiven {
                author_id,
                plant_owner_id,
                sitting_id,
                priority,
                ..
            } => {
                assert_eq!(author_id, AUTHOR);
                assert_eq!(plant_owner_id, OWNER);
                assert_eq!(sitting_id, None);
                assert_eq!(priority, Priority::Urgent);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn given_in_a_sittings_context_the_sitter_is_recorded() {
        let event = only_event(
            Advice::default().decide(give(facts(SittingStatus::InProgress, vec![FERN, CACTUS]))),
        );
        match event {
            AdviceEvent::AdviceGiven {
                sitting_id,
                sitter_id,
                ..
            } => {
                assert_eq!(sitting_id, Some(SITTING));
                assert_eq!(sitter_id, Some(SITTER));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn only_botanists_give_advice() {
        for role in [Role::User, Role::Admin, Role::Auditor] {
            let mut command = give(None);
            if let AdviceCommand::GiveAdvice { author, .. } = &mut command {
                *author = as_role(AUTHOR, role);
            }
            AdviceTest::with(())
                .given_no_previous_events()
                .when(command)
                .then_expect_error(AdviceError::NotABotanist);
        }
    }

    #[test]
    fn advice_on_a_missing_plant_is_refused() {
        let mut command = give(None);
        if let AdviceCommand::GiveAdvice { plant_owner_id, .. } = &mut command {
            *plant_owner_id = None;
        }
        AdviceTest::with(())
            .given_no_previous_events()
            .when(command)
            .then_expect_error(AdviceError::PlantNotFound);
    }

    #[test]
    fn the_named_sitting_must_exist_hold_the_plant_and_be_running() {
        AdviceTest::with(())
            .given_no_previous_events()
            .when(give(Some((SITTING, None))))
            .then_expect_error(AdviceError::SittingNotFound);
        AdviceTest::with(())
            .given_no_previous_events()
            .when(give(facts(SittingStatus::Open, vec![CACTUS])))
            .then_expect_error(AdviceError::PlantNotInSitting);
        for closed in [
            SittingStatus::Completed,
            SittingStatus::Cancelled,
            SittingStatus::Expired,
        ] {
            AdviceTest::with(())
                .given_no_previous_events()
                .when(give(facts(closed, vec![FERN])))
                .then_expect_error(AdviceError::SittingClosed);
        }
    }

    #[test]
    fn advice_is_given_once() {
        AdviceTest::with(())
            .given(vec![given_event()])
            .when(give(None))
            .then_expect_error(AdviceError::AlreadyExists);
    }

    #[test]
    fn each_revision_is_the_next_version_and_keeps_the_priority_unless_changed() {
        let revise = |priority| AdviceCommand::ReviseAdvice {
            actor: botanist(AUTHOR),
            priority,
            body: sealed("water even less"),
        };
        let advice = state_after(vec![given_event()]);
        match only_event(advice.decide(revise(None))) {
            AdviceEvent::AdviceRevised {
                version, priority, ..
            } => {
                assert_eq!(version, 2);
                assert_eq!(priority, Priority::Normal);
            }
            other => panic!("unexpected {other:?}"),
        }
        let advice = state_after(vec![
            given_event(),
            AdviceEvent::AdviceRevised {
                version: 2,
                priority: Priority::Normal,
                body: sealed("v2"),
            },
        ]);
        match only_event(advice.decide(revise(Some(Priority::FollowUp)))) {
            AdviceEvent::AdviceRevised {
                version, priority, ..
            } => {
                assert_eq!(version, 3);
                assert_eq!(priority, Priority::FollowUp);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn only_the_author_revises_or_withdraws() {
        AdviceTest::with(())
            .given(vec![given_event()])
            .when(AdviceCommand::ReviseAdvice {
                actor: botanist(PEER),
                priority: None,
                body: sealed("mine now"),
            })
            .then_expect_error(AdviceError::NotTheAuthor);
        AdviceTest::with(())
            .given(vec![given_event()])
            .when(AdviceCommand::WithdrawAdvice {
                actor: botanist(PEER),
            })
            .then_expect_error(AdviceError::NotTheAuthor);
        AdviceTest::with(())
            .given(vec![given_event()])
            .when(AdviceCommand::WithdrawAdvice {
                actor: botanist(AUTHOR),
            })
            .then_expect_events(vec![AdviceEvent::AdviceWithdrawn { by: AUTHOR }]);
    }

    #[test]
    fn another_botanist_reviews_the_current_version_once() {
        AdviceTest::with(())
            .given(vec![given_event()])
            .when(review(PEER, Verdict::Rejected))
            .then_expect_events(vec![AdviceEvent::AdviceReviewed {
                botanist_id: PEER,
                verdict: Verdict::Rejected,
                advice_version: 1,
                comment: None,
            }]);
        AdviceTest::with(())
            .given(vec![
                given_event(),
                AdviceEvent::AdviceReviewed {
                    botanist_id: PEER,
                    verdict: Verdict::Validated,
                    advice_version: 1,
                    comment: None,
                },
            ])
            .when(review(PEER, Verdict::Rejected))
            .then_expect_error(AdviceError::AlreadyReviewed);
    }

    #[test]
    fn the_author_never_reviews_their_own_advice() {
        AdviceTest::with(())
            .given(vec![given_event()])
            .when(review(AUTHOR, Verdict::Validated))
            .then_expect_error(AdviceError::OwnAdvice);
    }

    #[test]
    fn only_botanists_review() {
        AdviceTest::with(())
            .given(vec![given_event()])
            .when(AdviceCommand::ReviewAdvice {
                actor: as_role(ADMIN, Role::Admin),
                verdict: Verdict::Validated,
                comment: None,
            })
            .then_expect_error(AdviceError::NotABotanist);
    }

    #[test]
    fn moderators_hide_advice_once_with_a_reason() {
        let hide = |actor| AdviceCommand::HideAdvice {
            actor,
            reason: "off-topic".into(),
        };
        AdviceTest::with(())
            .given(vec![given_event()])
            .when(hide(as_role(ADMIN, Role::Admin)))
            .then_expect_events(vec![AdviceEvent::AdviceHidden {
                by: ADMIN,
                reason: "off-topic".into(),
            }]);
        AdviceTest::with(())
            .given(vec![given_event()])
            .when(hide(botanist(PEER)))
            .then_expect_error(AdviceError::NotAModerator);
        AdviceTest::with(())
            .given(vec![
                given_event(),
                AdviceEvent::AdviceHidden {
                    by: ADMIN,
                    reason: "spam".into(),
                },
            ])
            .when(hide(as_role(ADMIN, Role::Admin)))
            .then_expect_error(AdviceError::AlreadyHidden);
    }

    #[test]
    fn withdrawn_or_hidden_advice_takes_no_more_commands() {
        for end in [
            AdviceEvent::AdviceWithdrawn { by: AUTHOR },
            AdviceEvent::AdviceHidden {
                by: ADMIN,
                reason: "spam".into(),
            },
        ] {
            AdviceTest::with(())
                .given(vec![given_event(), end.clone()])
                .when(review(PEER, Verdict::Validated))
                .then_expect_error(AdviceError::NotFound);
            AdviceTest::with(())
                .given(vec![given_event(), end])
                .when(AdviceCommand::ReviseAdvice {
                    actor: botanist(AUTHOR),
                    priority: None,
                    body: sealed("again"),
                })
                .then_expect_error(AdviceError::NotFound);
        }
    }

    #[test]
    fn unknown_advice_takes_no_commands() {
        AdviceTest::with(())
            .given_no_previous_events()
            .when(AdviceCommand::WithdrawAdvice {
                actor: botanist(AUTHOR),
            })
            .then_expect_error(AdviceError::NotFound);
    }
}
