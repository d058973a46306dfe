//! Conversations: who takes part (`Conversation`), each message (`Message`, a stream of its
//! own), each read mark (`ReadMark`, likewise). See `events::conversation` for why.

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::conversation::{ConversationEvent, MessageEvent, ReadMarkEvent};
use crate::events::crypto::Sealed;

/// At most this many people in one conversation.
pub const MAX_PARTICIPANTS: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversationError {
    #[error("a conversation with this id already exists")]
    AlreadyExists,
    #[error("no such conversation")]
    NotFound,
    #[error("a conversation needs someone besides you")]
    NoOneElse,
    #[error("at most {MAX_PARTICIPANTS} people take part in a conversation")]
    TooManyParticipants,
    #[error("these people do not exist: {0:?}")]
    UnknownParticipants(Vec<Uuid>),
    #[error("a sitting's conversation is between its owner and its sitter")]
    NotTheSittingsParties,
    #[error("you do not take part in this conversation")]
    NotAParticipant,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ConversationCommand {
    StartConversation {
        started_by: Uuid,
        /// Everyone but `started_by` (who is added).
        others: Vec<Uuid>,
        /// Of `others`, those that are not active accounts (looked up first).
        unknown: Vec<Uuid>,
        sitting_id: Option<Uuid>,
        /// The sitting's owner and accepted sitter, when `sitting_id` names one that has both
        /// (looked up first).
        sitting_parties: Option<(Uuid, Uuid)>,
    },
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Conversation {
    participants: Vec<Uuid>,
    started: bool,
}

impl Conversation {
    pub fn takes_part(&self, user: Uuid) -> bool {
        self.started && self.participants.contains(&user)
    }

    pub fn participants(&self) -> &[Uuid] {
        &self.participants
    }
}

impl crate::events::upcast::Versioned for Conversation {}

impl Aggregate for Conversation {
    const TYPE: &'static str = "Conversation";
    type Command = ConversationCommand;
    type Event = ConversationEvent;
    type Error = ConversationError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            ConversationCommand::StartConversation {
                started_by,
                others,
                unknown,
                sitting_id,
                sitting_parties,
            } => {
                if self.started {
                    return Err(ConversationError::AlreadyExists);
                }
                let mut participant_ids = vec![started_by];
                for other in others {
                    if !participant_ids.contains(&other) {
                        participant_ids.push(other);
                    }
                }
                if participant_ids.len() < 2 {
                    return Err(ConversationError::NoOneElse);
                }
                if participant_ids.len() > MAX_PARTICIPANTS {
                    return Err(ConversationError::TooManyParticipants);
                }
                if !unknown.is_empty() {
                    return Err(ConversationError::UnknownParticipants(unknown));
                }
                if sitting_id.is_some() {
                    let Some((owner, sitter)) = sitting_parties else {
                        return Err(ConversationError::NotTheSittingsParties);
                    };
                    let mut expected = [owner, sitter];
                    let mut actual = participant_ids.clone();
                    expected.sort();
                    actual.sort();
                    if actual != expected {
                        return Err(ConversationError::NotTheSittingsParties);
                    }
                }
                let event = ConversationEvent::ConversationStarted {
                    started_by,
                    participant_ids,
                    sitting_id,
                };
                sink.write(event, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ConversationEvent::ConversationStarted {
                participant_ids, ..
            } => {
                self.participants = participant_ids;
                self.started = true;
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum MessageCommand {
    SendMessage {
        conversation_id: Uuid,
        sender_id: Uuid,
        /// Whether the sender takes part in the conversation (from its stream, looked up first).
        sender_takes_part: bool,
        body: Sealed,
    },
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Message {
    sent: bool,
}

impl crate::events::upcast::Versioned for Message {}

impl Aggregate for Message {
    const TYPE: &'static str = "Message";
    type Command = MessageCommand;
    type Event = MessageEvent;
    type Error = ConversationError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            MessageCommand::SendMessage {
                conversation_id,
                sender_id,
                sender_takes_part,
                body,
            } => {
                if self.sent {
                    return Err(ConversationError::AlreadyExists);
                }
                if !sender_takes_part {
                    return Err(ConversationError::NotAParticipant);
                }
                let event = MessageEvent::MessageSent {
                    conversation_id,
                    sender_id,
                    body,
                };
                sink.write(event, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            MessageEvent::MessageSent { .. } => self.sent = true,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReadMarkCommand {
    MarkRead {
        conversation_id: Uuid,
        user_id: Uuid,
        /// Whether the user takes part (looked up first).
        takes_part: bool,
        up_to: Uuid,
        /// The log position of message `up_to`, which must belong to the conversation (looked up
        /// first).
        position: i64,
    },
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ReadMark {
    recorded: bool,
}

impl crate::events::upcast::Versioned for ReadMark {}

impl Aggregate for ReadMark {
    const TYPE: &'static str = "ReadMark";
    type Command = ReadMarkCommand;
    type Event = ReadMarkEvent;
    type Error = ConversationError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            ReadMarkCommand::MarkRead {
                conversation_id,
                user_id,
                takes_part,
                up_to,
                position,
            } => {
                if self.recorded {
                    return Err(ConversationError::AlreadyExists);
                }
                if !takes_part {
                    return Err(ConversationError::NotAParticipant);
                }
                let event = ReadMarkEvent::MessagesRead {
                    conversation_id,
                    user_id,
                    up_to,
                    position,
                };
                sink.write(event, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ReadMarkEvent::MessagesRead { .. } => self.recorded = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;
    use crate::events::crypto::Cipher;

    const ANA: Uuid = Uuid::from_u128(1);
    const BEN: Uuid = Uuid::from_u128(2);
    const CAM: Uuid = Uuid::from_u128(3);
    const SITTING: Uuid = Uuid::from_u128(9);

    fn start(
        others: Vec<Uuid>,
        unknown: Vec<Uuid>,
        sitting: Option<(Uuid, Option<(Uuid, Uuid)>)>,
    ) -> ConversationCommand {
        ConversationCommand::StartConversation {
            started_by: ANA,
            others,
            unknown,
            sitting_id: sitting.map(|s| s.0),
            sitting_parties: sitting.and_then(|s| s.1),
        }
    }

    #[test]
    fn a_conversation_starts_between_the_starter_and_the_others_once_each() {
        TestFramework::<Conversation>::with(())
            .given_no_previous_events()
            .when(start(vec![BEN, ANA, BEN, CAM], vec![], None))
            .then_expect_events(vec![ConversationEvent::ConversationStarted {
                started_by: ANA,
                participant_ids: vec![ANA, BEN, CAM],
                sitting_id: None,
            }]);
    }

    #[test]
    fn a_conversation_needs_someone_else_who_exists() {
        let test = || TestFramework::<Conversation>::with(()).given_no_previous_events();
        test()
            .when(start(vec![ANA], vec![], None))
            .then_expect_error(ConversationError::NoOneElse);
        test()
            .when(start(vec![BEN], vec![BEN], None))
            .then_expect_error(ConversationError::UnknownParticipants(vec![BEN]));
        let crowd: Vec<Uuid> = (10..40).map(Uuid::from_u128).collect();
        test()
            .when(start(crowd, vec![], None))
            .then_expect_error(ConversationError::TooManyParticipants);
    }

    #[test]
    fn a_sittings_conversation_is_between_its_owner_and_its_sitter() {
        let test = || TestFramework::<Conversation>::with(()).given_no_previous_events();
        test()
            .when(start(vec![BEN], vec![], Some((SITTING, Some((ANA, BEN))))))
            .then_expect_events(vec![ConversationEvent::ConversationStarted {
                started_by: ANA,
                participant_ids: vec![ANA, BEN],
                sitting_id: Some(SITTING),
            }]);
        test()
            .when(start(vec![CAM], vec![], Some((SITTING, Some((ANA, BEN))))))
            .then_expect_error(ConversationError::NotTheSittingsParties);
        test()
            .when(start(vec![BEN], vec![], Some((SITTING, None))))
            .then_expect_error(ConversationError::NotTheSittingsParties);
    }

    #[test]
    fn only_participants_send_and_mark_read() {
        let body = Cipher::for_tests().seal("hello");
        let send = |takes_part| MessageCommand::SendMessage {
            conversation_id: SITTING,
            sender_id: CAM,
            sender_takes_part: takes_part,
            body: body.clone(),
        };
        TestFramework::<Message>::with(())
            .given_no_previous_events()
            .when(send(false))
            .then_expect_error(ConversationError::NotAParticipant);
        TestFramework::<Message>::with(())
            .given_no_previous_events()
            .when(send(true))
            .then_expect_events(vec![MessageEvent::MessageSent {
                conversation_id: SITTING,
                sender_id: CAM,
                body: body.clone(),
            }]);
        let mark = |takes_part| ReadMarkCommand::MarkRead {
            conversation_id: SITTING,
            user_id: CAM,
            takes_part,
            up_to: ANA,
            position: 7,
        };
        TestFramework::<ReadMark>::with(())
            .given_no_previous_events()
            .when(mark(false))
            .then_expect_error(ConversationError::NotAParticipant);
        TestFramework::<ReadMark>::with(())
            .given_no_previous_events()
            .when(mark(true))
            .then_expect_events(vec![ReadMarkEvent::MessagesRead {
                conversation_id: SITTING,
                user_id: CAM,
                up_to: ANA,
                position: 7,
            }]);
    }
}
