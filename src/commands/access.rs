//! The `Access` aggregate: one record of someone looking at personal data (an export, an admin's
//! view of a user, an auditor's query). Recorded once; nothing changes it afterwards.

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use crate::events::access::AccessEvent;
use crate::events::crypto::Sealed;

#[derive(Debug, Clone, PartialEq)]
pub enum AccessCommand {
    /// `details` arrive sealed under `month`'s key.
    Record { month: String, details: Sealed },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("this access is already recorded")]
    AlreadyRecorded,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Access {
    recorded: bool,
}

impl crate::events::upcast::Versioned for Access {}

impl Aggregate for Access {
    const TYPE: &'static str = "Access";
    type Command = AccessCommand;
    type Event = AccessEvent;
    type Error = AccessError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            AccessCommand::Record { month, details } => {
                if self.recorded {
                    return Err(AccessError::AlreadyRecorded);
                }
                sink.write(AccessEvent::AccessRecorded { month, details }, self)
                    .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            AccessEvent::AccessRecorded { .. } => self.recorded = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;
    use crate::events::crypto::Cipher;

    #[test]
    fn an_access_is_recorded_once() {
        let details = Cipher::for_tests().seal("{}");
        let recorded = AccessEvent::AccessRecorded {
            month: "2026-11".into(),
            details: details.clone(),
        };
        TestFramework::<Access>::with(())
            .given_no_previous_events()
            .when(AccessCommand::Record {
                month: "2026-11".into(),
                details: details.clone(),
            })
            .then_expect_events(vec![recorded.clone()]);
        TestFramework::<Access>::with(())
            .given(vec![recorded])
            .when(AccessCommand::Record {
                month: "2026-11".into(),
                details,
            })
            .then_expect_error(AccessError::AlreadyRecorded);
    }
}
