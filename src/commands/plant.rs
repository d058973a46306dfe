//! The `Plant` aggregate: a user's plant and its care instructions.

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::values::PlantName;
use super::Actor;
use crate::events::crypto::Sealed;
use crate::events::plant::{Care, PlantChanges, PlantEvent};

/// Changes to care instructions; `None` keeps a field, `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CarePatch {
    pub watering_interval_days: Option<Option<i32>>,
    pub light: Option<Option<String>>,
    pub notes: Option<Option<String>>,
}

/// Validated changes to a plant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlantPatch {
    pub name: Option<PlantName>,
    pub species: Option<Option<String>>,
    pub description: Option<Option<String>>,
    pub care: CarePatch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlantCommand {
    CreatePlant {
        owner_id: Uuid,
        name: PlantName,
        species: Option<String>,
        description: Option<String>,
        care: Care,
    },
    UpdatePlant {
        actor: Actor,
        patch: PlantPatch,
    },
    DeletePlant {
        actor: Actor,
    },
    /// A photo stored under these (sealed) keys. Its owner adds photos, and so does the sitter of
    /// an accepted or running sitting of the plant (`by_active_sitter`, looked up first).
    AddPhoto {
        actor: Actor,
        by_active_sitter: bool,
        photo_id: Uuid,
        object_key: crate::events::crypto::Sealed,
        thumbnail_key: crate::events::crypto::Sealed,
        width: u32,
        height: u32,
        bytes: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlantError {
    #[error("a plant with this id already exists")]
    AlreadyExists,
    /// Unknown, deleted, or not the actor's to change: callers cannot tell these apart.
    #[error("no such plant")]
    NotFound,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Plant {
    owner_id: Option<Uuid>,
    deleted: bool,
    name: String,
    species: Option<String>,
    description: Option<String>,
    care: Care,
    /// Where its photos are stored (sealed under the owner's key), so that deleting the plant
    /// deletes them.
    #[serde(default)]
    photos: Vec<StoredPhoto>,
}

/// A photo of the plant and its stored objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPhoto {
    pub photo_id: Uuid,
    pub object_key: Sealed,
    pub thumbnail_key: Sealed,
}

impl Plant {
    /// The photos of the plant, whether or not it was deleted since.
    pub fn photos(&self) -> &[StoredPhoto] {
        &self.photos
    }

    /// Its owner, whether or not it was deleted since.
    pub fn created_by(&self) -> Option<Uuid> {
        self.owner_id
    }

    /// The owner of a plant that exists (not deleted).
    pub fn owner_id(&self) -> Option<Uuid> {
        self.owner_id.filter(|_| !self.deleted)
    }

    fn exists(&self) -> bool {
        self.owner_id.is_some() && !self.deleted
    }

    fn may_change(&self, actor: &Actor) -> bool {
        self.exists() && (actor.is_admin() || self.owner_id == Some(actor.id))
    }

    /// Only what actually differs from the current state.
    fn diff(&self, patch: PlantPatch) -> PlantChanges {
        fn changed<T: PartialEq>(new: Option<T>, current: &T) -> Option<T> {
            new.filter(|value| value != current)
        }
        let mut care = self.care.clone();
        if let Some(days) = patch.care.watering_interval_days {
            care.watering_interval_days = days;
        }
        if let Some(light) = patch.care.light {
            care.light = light;
        }
        if let Some(notes) = patch.care.notes {
            care.notes = notes;
        }
        PlantChanges {
            name: changed(patch.name.map(PlantName::into_inner), &self.name),
            species: changed(patch.species, &self.species),
            description: changed(patch.description, &self.description),
            care: changed(Some(care), &self.care),
        }
    }
}

/// No event of this aggregate has changed shape yet.
impl crate::events::upcast::Versioned for Plant {}

impl Aggregate for Plant {
    const TYPE: &'static str = "Plant";
    type Command = PlantCommand;
    type Event = PlantEvent;
    type Error = PlantError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            PlantCommand::CreatePlant {
                owner_id,
                name,
                species,
                description,
                care,
            } => {
                if self.owner_id.is_some() {
                    return Err(PlantError::AlreadyExists);
                }
                let event = PlantEvent::PlantCreated {
                    owner_id,
                    name: name.into_inner(),
                    species,
                    description,
                    care,
                };
                sink.write(event, self).await;
            }
            PlantCommand::UpdatePlant { actor, patch } => {
                if !self.may_change(&actor) {
                    return Err(PlantError::NotFound);
                }
                let changes = self.diff(patch);
                if !changes.is_empty() {
                    sink.write(PlantEvent::PlantUpdated { changes }, self).await;
                }
            }
            PlantCommand::DeletePlant { actor } => {
                if !self.may_change(&actor) {
                    return Err(PlantError::NotFound);
                }
                sink.write(PlantEvent::PlantDeleted, self).await;
            }
            PlantCommand::AddPhoto {
                actor,
                by_active_sitter,
                photo_id,
                object_key,
                thumbnail_key,
                width,
                height,
                bytes,
            } => {
                let allowed =
                    self.exists() && (self.owner_id == Some(actor.id) || by_active_sitter);
                if !allowed {
                    return Err(PlantError::NotFound);
                }
                let event = PlantEvent::PhotoAdded {
                    photo_id,
                    object_key,
                    thumbnail_key,
                    width,
                    height,
                    bytes,
                    uploaded_by: actor.id,
                };
                sink.write(event, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            PlantEvent::PlantCreated {
                owner_id,
                name,
                species,
                description,
                care,
            } => {
                self.owner_id = Some(owner_id);
                self.name = name;
                self.species = species;
                self.description = description;
                self.care = care;
            }
            PlantEvent::PlantUpdated { changes } => {
                if let Some(name) = changes.name {
                    self.name = name;
                }
                if let Some(species) = changes.species {
                    self.species = species;
                }
                if let Some(description) = changes.description {
                    self.description = description;
                }
                if let Some(care) = changes.care {
                    self.care = care;
                }
            }
            PlantEvent::PlantDeleted => self.deleted = true,
            PlantEvent::PhotoAdded {
                photo_id,
                object_key,
                thumbnail_key,
                ..
            } => self.photos.push(StoredPhoto {
                photo_id,
                object_key,
                thumbnail_key,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;
    use crate::events::crypto::Sealed;
    use crate::events::user::Role;

    type PlantTest = TestFramework<Plant>;

    const OWNER: Uuid = Uuid::from_u128(1);
    const STRANGER: Uuid = Uuid::from_u128(2);

    fn owner() -> Actor {
        Actor {
            id: OWNER,
            role: Role::User,
        }
    }

    fn created() -> PlantEvent {
        PlantEvent::PlantCreated {
            owner_id: OWNER,
            name: "Monstera".into(),
            species: None,
            description: None,
            care: Care {
                watering_interval_days: Some(7),
                light: Some("bright".into()),
                notes: None,
            },
        }
    }

    fn create() -> PlantCommand {
        PlantCommand::CreatePlant {
            owner_id: OWNER,
            name: PlantName::parse("Monstera").unwrap(),
            species: None,
            description: None,
            care: Care {
                watering_interval_days: Some(7),
                light: Some("bright".into()),
                notes: None,
            },
        }
    }

    #[test]
    fn creating_a_plant() {
        PlantTest::with(())
            .given_no_previous_events()
            .when(create())
            .then_expect_events(vec![created()]);
    }

    #[test]
    fn creating_twice_is_refused() {
        PlantTest::with(())
            .given(vec![created()])
            .when(create())
            .then_expect_error(PlantError::AlreadyExists);
    }

    #[test]
    fn updating_records_only_what_changed_and_merges_care() {
        let patch = PlantPatch {
            name: Some(PlantName::parse("Monstera").unwrap()),
            species: Some(Some("Monstera deliciosa".into())),
            care: CarePatch {
                notes: Some(Some("mist weekly".into())),
                ..Default::default()
            },
            ..Default::default()
        };
        PlantTest::with(())
            .given(vec![created()])
            .when(PlantCommand::UpdatePlant {
                actor: owner(),
                patch,
            })
            .then_expect_events(vec![PlantEvent::PlantUpdated {
                changes: PlantChanges {
                    name: None,
                    species: Some(Some("Monstera deliciosa".into())),
                    description: None,
                    care: Some(Care {
                        watering_interval_days: Some(7),
                        light: Some("bright".into()),
                        notes: Some("mist weekly".into()),
                    }),
                },
            }]);
    }

    #[test]
    fn an_update_that_changes_nothing_emits_nothing() {
        PlantTest::with(())
            .given(vec![created()])
            .when(PlantCommand::UpdatePlant {
                actor: owner(),
                patch: PlantPatch {
                    name: Some(PlantName::parse("Monstera").unwrap()),
                    ..Default::default()
                },
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn strangers_cannot_change_or_delete_but_admins_can() {
        let stranger = Actor {
            id: STRANGER,
            role: Role::User,
        };
        PlantTest::with(())
            .given(vec![created()])
            .when(PlantCommand::DeletePlant { actor: stranger })
            .then_expect_error(PlantError::NotFound);
        let botanist = Actor {
            id: STRANGER,
            role: Role::Botanist,
        };
        PlantTest::with(())
            .given(vec![created()])
            .when(PlantCommand::UpdatePlant {
                actor: botanist,
                patch: PlantPatch::default(),
            })
            .then_expect_error(PlantError::NotFound);
        let admin = Actor {
            id: STRANGER,
            role: Role::Admin,
        };
        PlantTest::with(())
            .given(vec![created()])
            .when(PlantCommand::DeletePlant { actor: admin })
            .then_expect_events(vec![PlantEvent::PlantDeleted]);
    }

    #[test]
    fn a_deleted_or_unknown_plant_is_not_found() {
        PlantTest::with(())
            .given(vec![created(), PlantEvent::PlantDeleted])
            .when(PlantCommand::DeletePlant { actor: owner() })
            .then_expect_error(PlantError::NotFound);
        PlantTest::with(())
            .given_no_previous_events()
            .when(PlantCommand::UpdatePlant {
                actor: owner(),
                patch: PlantPatch::default(),
            })
            .then_expect_error(PlantError::NotFound);
    }

    fn add_photo(actor: Actor, by_active_sitter: bool, keys: (&Sealed, &Sealed)) -> PlantCommand {
        PlantCommand::AddPhoto {
            actor,
            by_active_sitter,
            photo_id: Uuid::from_u128(50),
            object_key: keys.0.clone(),
            thumbnail_key: keys.1.clone(),
            width: 800,
            height: 600,
            bytes: 52_000,
        }
    }

    #[test]
    fn the_owner_or_an_active_sitter_adds_photos_and_no_one_else() {
        let cipher = crate::events::crypto::Cipher::for_tests();
        let (photo, thumb) = (
            cipher.seal("photos/a.jpg"),
            cipher.seal("photos/a.thumb.jpg"),
        );
        let stranger = Actor {
            id: STRANGER,
            role: Role::User,
        };
        let added = |by| PlantEvent::PhotoAdded {
            photo_id: Uuid::from_u128(50),
            object_key: photo.clone(),
            thumbnail_key: thumb.clone(),
            width: 800,
            height: 600,
            bytes: 52_000,
            uploaded_by: by,
        };
        PlantTest::with(())
            .given(vec![created()])
            .when(add_photo(owner(), false, (&photo, &thumb)))
            .then_expect_events(vec![added(OWNER)]);
        PlantTest::with(())
            .given(vec![created()])
            .when(add_photo(stranger, true, (&photo, &thumb)))
            .then_expect_events(vec![added(STRANGER)]);
        PlantTest::with(())
            .given(vec![created()])
            .when(add_photo(stranger, false, (&photo, &thumb)))
            .then_expect_error(PlantError::NotFound);
        PlantTest::with(())
            .given(vec![created(), PlantEvent::PlantDeleted])
            .when(add_photo(owner(), false, (&photo, &thumb)))
            .then_expect_error(PlantError::NotFound);
    }
}
