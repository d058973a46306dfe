//! `arosaje seed demo`: a small French demo world, made through the real commands.
//!
//! Every step is the command the API would dispatch for that person (same aggregates, same
//! facts looked up first, same sealing, the same photo pipeline and the sitters' calendar guard),
//! with event metadata naming that person as the actor and this run as the correlation id. The
//! only liberty is the date: the domain takes "today" as an input (`SittingPeriod::parse` when a
//! sitting is requested, `today` in applications, acceptances and `StartSitting`), and the
//! story's past sittings are requested, applied to, accepted and started on the day they
//! happened (a sitting refuses all of these after its last day). The log's own timestamps stay the real ones (the time
//! of the seed): it records when the story was written, the sittings' dates say when it happened.

use chrono::{Days, NaiveDate, Utc};
use uuid::Uuid;

use super::{catch_up_read_models, log_size, SeedError};
use crate::commands::advice::{Advice, AdviceCommand, SittingFacts};
use crate::commands::conversation::{Conversation, ConversationCommand};
use crate::commands::plant::{Plant, PlantCommand};
use crate::commands::sitting::{Sitting, SittingCommand};
use crate::commands::user::{User, UserCommand};
use crate::commands::values::{DisplayName, Email, Password, PlantName, Rating, SittingPeriod};
use crate::commands::Actor;
use crate::events::advice::{Priority, Verdict};
use crate::events::bookings::SitterCalendar;
use crate::events::plant::Care;
use crate::events::sitting::Location;
use crate::events::user::{ProfileChanges, Role};
use crate::events::Metadata;
use crate::identity::{self, Registration};
use crate::App;

/// The password of every demo account (documented in the README: a demo database only).
pub const DEMO_PASSWORD: &str = "Monstera-en-vacances-2026";

/// Where the demo e-mail addresses live (`.test` is reserved: nothing is ever delivered there).
pub const DEMO_DOMAIN: &str = "demo.arosaje.test";

/// What `seed demo` may do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Seed even though the log is not empty (the demo addresses must still be free).
    pub force: bool,
    /// The day the story is told on (today, UTC, from the CLI).
    pub today: NaiveDate,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            force: false,
            today: Utc::now().date_naive(),
        }
    }
}

/// A demo account.
#[derive(Debug, Clone)]
pub struct DemoAccount {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
    /// `USER`, `BOTANIST`, `ADMIN` or `AUDITOR`.
    pub role: Role,
    /// Its part in the story.
    pub part: &'static str,
    /// Base32 TOTP secret, for the accounts that have two-factor authentication (ADMIN and
    /// AUDITOR: `ADMIN_MFA=required` is the default).
    pub totp_secret: Option<String>,
    /// One-time recovery codes (each works once as `totp_code` at login).
    pub recovery_codes: Vec<String>,
}

/// What the demo world holds, for the CLI's summary and for tests.
#[derive(Debug, Clone)]
pub struct DemoWorld {
    pub accounts: Vec<DemoAccount>,
    pub plants: Vec<Uuid>,
    /// The sittings, by status (`open`, `accepted`, ...).
    pub sittings: Vec<(&'static str, Uuid)>,
    pub advice: Vec<(&'static str, Uuid)>,
    pub conversations: Vec<Uuid>,
    /// Events appended by this run.
    pub events: i64,
}

impl DemoWorld {
    /// The account with this e-mail's local part (`camille`, `admin`...).
    pub fn account(&self, local: &str) -> Option<&DemoAccount> {
        let email = format!("{local}@{DEMO_DOMAIN}");
        self.accounts.iter().find(|a| a.email == email)
    }

    /// A sitting of the demo in this status.
    pub fn sitting(&self, status: &str) -> Option<Uuid> {
        self.sittings
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, id)| *id)
    }
}

/// Who is who in the story: (e-mail local part, display name, city, bio, part).
struct Person {
    local: &'static str,
    name: &'static str,
    city: &'static str,
    bio: &'static str,
    part: &'static str,
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    User,
    Botanist,
    PendingBotanist,
    Admin,
    Auditor,
}

const PEOPLE: &[Person] = &[
    Person {
        local: "camille",
        name: "Camille Martin",
        city: "Paris",
        bio: "Un appartement plein de plantes vertes près du canal Saint-Martin.",
        part: "owner (the demo owner)",
        kind: Kind::User,
    },
    Person {
        local: "lucas",
        name: "Lucas Bernard",
        city: "Lyon",
        bio: "Agrumes et olivier sur un balcon de la Croix-Rousse.",
        part: "owner",
        kind: Kind::User,
    },
    Person {
        local: "chloe",
        name: "Chloé Dubois",
        city: "Marseille",
        bio: "Plantes méditerranéennes, peu d'eau, beaucoup de soleil.",
        part: "owner",
        kind: Kind::User,
    },
    Person {
        local: "sarah",
        name: "Sarah Lefebvre",
        city: "Bordeaux",
        bio: "Un jardin d'hortensias et de camélias.",
        part: "owner",
        kind: Kind::User,
    },
    Person {
        local: "antoine",
        name: "Antoine Petit",
        city: "Nantes",
        bio: "Fougères et calatheas, l'humidité avant tout.",
        part: "owner",
        kind: Kind::User,
    },
    Person {
        local: "hugo",
        name: "Hugo Moreau",
        city: "Paris",
        bio: "Étudiant en horticulture, je garde vos plantes le week-end.",
        part: "sitter",
        kind: Kind::User,
    },
    Person {
        local: "lea",
        name: "Léa Laurent",
        city: "Lyon",
        bio: "Gardienne de plantes depuis trois ans.",
        part: "sitter",
        kind: Kind::User,
    },
    Person {
        local: "nathan",
        name: "Nathan Girard",
        city: "Marseille",
        bio: "Jardinier amateur, disponible l'été.",
        part: "sitter",
        kind: Kind::User,
    },
    Person {
        local: "manon",
        name: "Manon Roux",
        city: "Bordeaux",
        bio: "Je voyage entre Bordeaux et Nantes.",
        part: "sitter",
        kind: Kind::User,
    },
    Person {
        local: "elise",
        name: "Élise Fontaine",
        city: "Paris",
        bio: "Botaniste, spécialiste des plantes tropicales d'intérieur.",
        part: "botanist",
        kind: Kind::Botanist,
    },
    Person {
        local: "julien",
        name: "Julien Mercier",
        city: "Lyon",
        bio: "Botaniste, arbres fruitiers et méditerranéens.",
        part: "botanist",
        kind: Kind::Botanist,
    },
    Person {
        local: "ines",
        name: "Inès Garnier",
        city: "Nantes",
        bio: "Ingénieure agronome.",
        part: "botanist awaiting verification",
        kind: Kind::PendingBotanist,
    },
    Person {
        local: "admin",
        name: "Sophie Lambert",
        city: "Paris",
        bio: "Modératrice d'A'rosa-je.",
        part: "administrator",
        kind: Kind::Admin,
    },
    Person {
        local: "auditeur",
        name: "Paul Durand",
        city: "Paris",
        bio: "Auditeur.",
        part: "auditor",
        kind: Kind::Auditor,
    },
];

/// (owner, name, species, description, watering interval in days, light, care notes).
type PlantSpec = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    i32,
    &'static str,
    &'static str,
);

const PLANTS: &[PlantSpec] = &[
    (
        "camille",
        "Monstera du salon",
        "Monstera deliciosa",
        "Grande feuille fendue, près de la fenêtre.",
        7,
        "lumière vive indirecte",
        "Vaporiser les feuilles en été.",
    ),
    (
        "camille",
        "Figuier lyre",
        "Ficus lyrata",
        "N'aime pas être déplacé.",
        10,
        "lumière vive",
        "Tourner le pot d'un quart chaque semaine.",
    ),
    (
        "camille",
        "Basilic",
        "Ocimum basilicum",
        "Sur le rebord de la cuisine.",
        2,
        "plein soleil",
        "Pincer les fleurs.",
    ),
    (
        "camille",
        "Orchidée blanche",
        "Phalaenopsis",
        "Offerte pour mes 30 ans.",
        10,
        "lumière douce",
        "Tremper le pot 10 minutes, jamais d'eau dans le cœur.",
    ),
    (
        "lucas",
        "Olivier",
        "Olea europaea",
        "Sur le balcon, plein sud.",
        10,
        "plein soleil",
        "Laisser sécher entre deux arrosages.",
    ),
    (
        "lucas",
        "Citronnier",
        "Citrus limon",
        "Rentré l'hiver.",
        5,
        "plein soleil",
        "Engrais agrumes une fois par mois.",
    ),
    (
        "lucas",
        "Pothos",
        "Epipremnum aureum",
        "Suspendu dans l'entrée.",
        7,
        "mi-ombre",
        "Très tolérant.",
    ),
    (
        "chloe",
        "Lavande",
        "Lavandula angustifolia",
        "Trois pieds en jardinière.",
        14,
        "plein soleil",
        "Surtout ne pas trop arroser.",
    ),
    (
        "chloe",
        "Aloe vera",
        "Aloe barbadensis",
        "Sur la terrasse.",
        21,
        "plein soleil",
        "Arroser seulement si la terre est sèche.",
    ),
    (
        "chloe",
        "Figuier",
        "Ficus carica",
        "Dans un grand bac.",
        7,
        "plein soleil",
        "Pailler l'été.",
    ),
    (
        "sarah",
        "Hortensia bleu",
        "Hydrangea macrophylla",
        "Au pied du mur nord.",
        3,
        "mi-ombre",
        "Eau de pluie de préférence.",
    ),
    (
        "sarah",
        "Camélia",
        "Camellia japonica",
        "En pot devant la porte.",
        4,
        "mi-ombre",
        "Terre de bruyère.",
    ),
    (
        "antoine",
        "Fougère de Boston",
        "Nephrolepis exaltata",
        "Dans la salle de bains.",
        3,
        "lumière douce",
        "Aime l'humidité.",
    ),
    (
        "antoine",
        "Calathea",
        "Calathea orbifolia",
        "Feuilles rayées argentées.",
        5,
        "mi-ombre",
        "Eau non calcaire.",
    ),
];

/// Real places: (city, lat, lon).
const PARIS: (&str, f64, f64) = ("Paris", 48.8711, 2.3656);
const LYON: (&str, f64, f64) = ("Lyon", 45.7745, 4.8316);
const MARSEILLE: (&str, f64, f64) = ("Marseille", 43.2925, 5.3811);
const BORDEAUX: (&str, f64, f64) = ("Bordeaux", 44.8412, -0.5800);
const NANTES: (&str, f64, f64) = ("Nantes", 47.2138, -1.5561);

struct Seeder<'a> {
    app: &'a App,
    /// This run: every event's correlation id.
    run: String,
    today: NaiveDate,
    accounts: Vec<DemoAccount>,
    plants: Vec<(&'static str, Uuid)>,
    photo_variant: u32,
}

/// Fills the database with the demo world. Refuses a non-empty log unless `force`.
pub async fn seed(app: &App, options: DemoOptions) -> Result<DemoWorld, SeedError> {
    let before = log_size(app).await?;
    if before > 0 && !options.force {
        return Err(SeedError::NotEmpty(before));
    }
    let mut seeder = Seeder {
        app,
        run: format!("seed-demo-{}", Uuid::now_v7()),
        today: options.today,
        accounts: Vec::new(),
        plants: Vec::new(),
        photo_variant: 0,
    };
    let world = seeder.tell().await?;
    Ok(DemoWorld {
        events: log_size(app).await? - before,
        ..world
    })
}

/// Error context for a step of the story.
fn step<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> anyhow::Result<T> {
    result.map_err(|err| anyhow::anyhow!("seed demo, {what}: {err}"))
}

impl Seeder<'_> {
    async fn tell(&mut self) -> anyhow::Result<DemoWorld> {
        self.accounts().await?;
        // The other read models refer to users' rows: let `users` lead, as it does when people
        // register over HTTP (the answer waits for it).
        step(self.app.projections.catch_up("users").await, "catching up")?;
        for (i, spec) in PLANTS.iter().enumerate() {
            let id = self.plant(spec).await?;
            self.plants.push((spec.1, id));
            // Every plant has its owner's photo; the first ones a second, later one.
            self.photo(spec.0, id).await?;
            if i % 4 == 0 {
                self.photo(spec.0, id).await?;
            }
        }
        let sittings = self.sittings().await?;
        let advice = self.advice(&sittings).await?;
        let conversations = self.conversations(&sittings).await?;
        self.mfa().await?;
        step(catch_up_read_models(self.app).await, "catching up")?;
        Ok(DemoWorld {
            accounts: self.accounts.clone(),
            plants: self.plants.iter().map(|(_, id)| *id).collect(),
            sittings,
            advice,
            conversations,
            events: 0,
        })
    }

    fn who(&self, local: &str) -> anyhow::Result<&DemoAccount> {
        let email = format!("{local}@{DEMO_DOMAIN}");
        self.accounts
            .iter()
            .find(|a| a.email == email)
            .ok_or_else(|| anyhow::anyhow!("seed demo: no account {local}"))
    }

    fn actor(&self, local: &str) -> anyhow::Result<Actor> {
        let account = self.who(local)?;
        Ok(Actor {
            id: account.id,
            role: account.role,
        })
    }

    /// Metadata of a command issued by `local`, as the API records it.
    fn by(&self, local: &str) -> anyhow::Result<Metadata> {
        let account = self.who(local)?;
        Ok(self.metadata(Some(account.id), account.role.as_str()))
    }

    fn metadata(&self, actor_id: Option<Uuid>, role: &str) -> Metadata {
        let request = Uuid::new_v4().to_string();
        Metadata {
            actor_id,
            actor_role: role.to_string(),
            request_id: request.clone(),
            correlation_id: self.run.clone(),
            causation_id: request,
        }
    }

    fn plant_id(&self, name: &str) -> anyhow::Result<Uuid> {
        self.plants
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, id)| *id)
            .ok_or_else(|| anyhow::anyhow!("seed demo: no plant {name}"))
    }

    fn day(&self, offset: i64) -> NaiveDate {
        let days = Days::new(offset.unsigned_abs());
        if offset < 0 {
            self.today - days
        } else {
            self.today + days
        }
    }

    async fn accounts(&mut self) -> anyhow::Result<()> {
        let app = self.app;
        let password = DEMO_PASSWORD;
        for person in PEOPLE {
            let email = format!("{}@{DEMO_DOMAIN}", person.local);
            let registration = Registration {
                email: step(Email::parse(&email), "e-mail")?,
                password: step(
                    Password::parse(password, &[&email, person.name]),
                    "password",
                )?,
                display_name: step(DisplayName::parse(person.name), "name")?,
                botanist: matches!(person.kind, Kind::Botanist | Kind::PendingBotanist),
            };
            let registered =
                identity::register_user(app, registration, self.metadata(None, "USER")).await;
            let (id, _) = match registered {
                Err(identity::IdentityError::EmailTaken) => {
                    return Err(anyhow::anyhow!(
                        "seed demo: {email} is taken: this database already has the demo world"
                    ))
                }
                other => step(other, "registration")?,
            };
            self.accounts.push(DemoAccount {
                id,
                email: email.clone(),
                display_name: person.name.to_string(),
                role: Role::User,
                part: person.part,
                totp_secret: None,
                recovery_codes: Vec::new(),
            });
            // The link of the verification mail, followed.
            let user_meta = self.by(person.local)?;
            step(
                app.store
                    .execute::<User>(&id.to_string(), UserCommand::VerifyEmail, &(), &user_meta)
                    .await,
                "e-mail verification",
            )?;
            let cipher = step(app.keys.cipher(id).await, "user key")?;
            let changes = ProfileChanges {
                city: Some(Some(cipher.seal(person.city))),
                bio: Some(Some(cipher.seal(person.bio))),
                ..Default::default()
            };
            step(
                app.store
                    .execute::<User>(
                        &id.to_string(),
                        UserCommand::UpdateProfile { changes },
                        &(),
                        &self.by(person.local)?,
                    )
                    .await,
                "profile",
            )?;
        }
        // The administrator is made from the command line (as `arosaje admin create` does),
        // then acts: promotes the auditor and verifies the botanists (but not Inès yet).
        self.set_role("admin", Role::Admin, self.metadata(None, "SYSTEM"))
            .await?;
        self.set_role("auditeur", Role::Auditor, self.by("admin")?)
            .await?;
        for person in PEOPLE.iter().filter(|p| p.kind == Kind::Botanist) {
            let id = self.who(person.local)?.id;
            step(
                app.store
                    .execute::<User>(
                        &id.to_string(),
                        UserCommand::ApproveBotanist,
                        &(),
                        &self.by("admin")?,
                    )
                    .await,
                "botanist verification",
            )?;
            self.set_local_role(person.local, Role::Botanist);
        }
        Ok(())
    }

    fn set_local_role(&mut self, local: &str, role: Role) {
        let email = format!("{local}@{DEMO_DOMAIN}");
        if let Some(account) = self.accounts.iter_mut().find(|a| a.email == email) {
            account.role = role;
        }
    }

    async fn set_role(
        &mut self,
        local: &str,
        role: Role,
        metadata: Metadata,
    ) -> anyhow::Result<()> {
        let id = self.who(local)?.id;
        step(
            self.app
                .store
                .execute::<User>(
                    &id.to_string(),
                    UserCommand::ChangeRole { role },
                    &(),
                    &metadata,
                )
                .await,
            "role change",
        )?;
        self.set_local_role(local, role);
        Ok(())
    }

    async fn plant(&self, spec: &PlantSpec) -> anyhow::Result<Uuid> {
        let (owner, name, species, description, watering, light, notes) = *spec;
        let id = Uuid::now_v7();
        let command = PlantCommand::CreatePlant {
            owner_id: self.who(owner)?.id,
            name: step(PlantName::parse(name), "plant name")?,
            species: Some(species.to_string()),
            description: Some(description.to_string()),
            care: Care {
                watering_interval_days: Some(watering),
                light: Some(light.to_string()),
                notes: Some(notes.to_string()),
            },
        };
        step(
            self.app
                .store
                .execute_new::<Plant>(&id.to_string(), command, &(), &self.by(owner)?)
                .await,
            "plant",
        )?;
        Ok(id)
    }

    /// A generated picture of `plant_id`, uploaded by `local` through the photo pipeline.
    async fn photo(&mut self, local: &str, plant_id: Uuid) -> anyhow::Result<Uuid> {
        let variant = self.photo_variant;
        self.photo_variant += 1;
        let png = tokio::task::spawn_blocking(move || super::picture::plant_png(variant))
            .await
            .map_err(|e| anyhow::anyhow!("drawing a picture: {e}"))??;
        let plant = step(
            self.app
                .store
                .load_state::<Plant>(&plant_id.to_string())
                .await,
            "plant",
        )?;
        let owner_id = plant
            .and_then(|p| p.owner_id())
            .ok_or_else(|| anyhow::anyhow!("seed demo: plant {plant_id} has no owner"))?;
        let uploaded = step(
            crate::photos::add_photo(
                self.app,
                self.actor(local)?,
                owner_id,
                plant_id,
                png,
                &self.by(local)?,
            )
            .await,
            "photo",
        )?;
        Ok(uploaded.photo_id)
    }

    /// Requests a sitting on the day `requested` (days from today).
    async fn request(
        &self,
        owner: &str,
        plants: &[&str],
        (starts, ends): (i64, i64),
        requested: i64,
        (city, lat, lon): (&str, f64, f64),
        instructions: &str,
    ) -> anyhow::Result<Uuid> {
        let app = self.app;
        let owner_id = self.who(owner)?.id;
        let plant_ids = plants
            .iter()
            .map(|p| self.plant_id(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        // The fact the sitting cannot know, from the plants' own streams (as the API does).
        let mut not_owned = Vec::new();
        for plant_id in &plant_ids {
            let plant = step(
                app.store.load_state::<Plant>(&plant_id.to_string()).await,
                "plant",
            )?;
            if plant.and_then(|p| p.owner_id()) != Some(owner_id) {
                not_owned.push(*plant_id);
            }
        }
        let period = step(
            SittingPeriod::parse(
                self.day(starts),
                self.day(ends),
                self.day(requested),
                app.config.max_sitting_days,
            )
            .map_err(|(field, message)| format!("{field} {message}")),
            "sitting period",
        )?;
        let cipher = step(app.keys.cipher(owner_id).await, "user key")?;
        let location = serde_json::to_string(&Location {
            lat,
            lon,
            city: city.to_string(),
        })?;
        let id = Uuid::now_v7();
        let command = SittingCommand::RequestSitting {
            owner_id,
            plant_ids,
            not_owned,
            period,
            location: cipher.seal(&location),
            instructions: Some(cipher.seal(instructions)),
        };
        step(
            app.store
                .execute_new::<Sitting>(&id.to_string(), command, &(), &self.by(owner)?)
                .await,
            "sitting request",
        )?;
        Ok(id)
    }

    /// A sitting command by `local`, with the sitters' calendar guard (as the API runs them).
    async fn sitting(&self, id: Uuid, local: &str, command: SittingCommand) -> anyhow::Result<()> {
        step(
            self.app
                .store
                .execute_guarded::<Sitting>(
                    &id.to_string(),
                    command,
                    &(),
                    &self.by(local)?,
                    &SitterCalendar,
                )
                .await,
            "sitting",
        )?;
        Ok(())
    }

    async fn seal(&self, local: &str, text: &str) -> anyhow::Result<crate::events::crypto::Sealed> {
        let cipher = step(self.app.keys.cipher(self.who(local)?.id).await, "user key")?;
        Ok(cipher.seal(text))
    }

    /// `local` applies on the day `on` (days from today).
    async fn apply(&self, id: Uuid, local: &str, on: i64, message: &str) -> anyhow::Result<()> {
        let command = SittingCommand::Apply {
            applicant: self.actor(local)?,
            message: Some(self.seal(local, message).await?),
            today: self.day(on),
        };
        self.sitting(id, local, command).await
    }

    /// `owner` accepts `sitter` on the day `on` (days from today).
    async fn accept(&self, id: Uuid, owner: &str, sitter: &str, on: i64) -> anyhow::Result<()> {
        let command = SittingCommand::AcceptSitter {
            actor: self.actor(owner)?,
            sitter_id: self.who(sitter)?.id,
            today: self.day(on),
        };
        self.sitting(id, owner, command).await
    }

    async fn start(&self, id: Uuid, local: &str, on: i64) -> anyhow::Result<()> {
        let command = SittingCommand::StartSitting {
            actor: self.actor(local)?,
            today: self.day(on),
        };
        self.sitting(id, local, command).await
    }

    /// A care report; with `photos`, the sitter photographs the plant before and after (the
    /// sitter may: the sitting is running, as the sittings read model tells the photo pipeline).
    async fn report(
        &mut self,
        id: Uuid,
        sitter: &str,
        plant: &str,
        note: &str,
        photos: bool,
    ) -> anyhow::Result<()> {
        let plant_id = self.plant_id(plant)?;
        let (before, after) = if photos {
            step(
                self.app.projections.catch_up("sittings").await,
                "catching up",
            )?;
            let before = self.photo(sitter, plant_id).await?;
            let after = self.photo(sitter, plant_id).await?;
            (Some(before), Some(after))
        } else {
            (None, None)
        };
        let command = SittingCommand::ReportCare {
            actor: self.actor(sitter)?,
            report_id: Uuid::now_v7(),
            plant_id,
            note: self.seal(sitter, note).await?,
            before_photo_id: before,
            after_photo_id: after,
        };
        self.sitting(id, sitter, command).await
    }

    async fn complete(&self, id: Uuid, local: &str) -> anyhow::Result<()> {
        let command = SittingCommand::CompleteSitting {
            actor: self.actor(local)?,
        };
        self.sitting(id, local, command).await
    }

    async fn cancel(&self, id: Uuid, local: &str, reason: &str) -> anyhow::Result<()> {
        let command = SittingCommand::CancelSitting {
            actor: self.actor(local)?,
            reason: self.seal(local, reason).await?,
        };
        self.sitting(id, local, command).await
    }

    async fn review(
        &self,
        id: Uuid,
        local: &str,
        rating: i64,
        comment: &str,
    ) -> anyhow::Result<()> {
        let command = SittingCommand::LeaveReview {
            actor: self.actor(local)?,
            rating: step(Rating::parse(rating), "rating")?,
            comment: Some(self.seal(local, comment).await?),
        };
        self.sitting(id, local, command).await
    }

    /// A completed sitting: requested, applied to, accepted, started, reported on, completed and
    /// reviewed both ways, all in the past.
    async fn completed(
        &mut self,
        owner: &str,
        sitter: &str,
        plants: &[&str],
        (starts, ends): (i64, i64),
        place: (&str, f64, f64),
        words: [&str; 5],
    ) -> anyhow::Result<Uuid> {
        let [instructions, application, note, owner_review, sitter_review] = words;
        let id = self
            .request(
                owner,
                plants,
                (starts, ends),
                starts - 14,
                place,
                instructions,
            )
            .await?;
        self.apply(id, sitter, starts - 14, application).await?;
        self.accept(id, owner, sitter, starts - 7).await?;
        self.start(id, sitter, starts).await?;
        self.report(id, sitter, plants[0], note, true).await?;
        self.complete(id, owner).await?;
        self.review(id, owner, 5, owner_review).await?;
        self.review(id, sitter, 4, sitter_review).await?;
        Ok(id)
    }

    async fn sittings(&mut self) -> anyhow::Result<Vec<(&'static str, Uuid)>> {
        let mut sittings = Vec::new();
        // Completed, weeks ago, in Paris, Marseille and Bordeaux.
        let paris_done = self
            .completed(
                "camille",
                "hugo",
                &["Monstera du salon"],
                (-60, -53),
                PARIS,
                [
                    "La clé est chez la gardienne, code 4821B.",
                    "Bonjour, j'habite à deux rues, je peux passer tous les deux jours.",
                    "Monstera arrosé, une nouvelle feuille est en train de sortir !",
                    "Hugo a été parfait, le Monstera a adoré.",
                    "Appartement agréable, consignes très claires.",
                ],
            )
            .await?;
        sittings.push(("completed", paris_done));
        let marseille = self
            .completed(
                "chloe",
                "nathan",
                &["Lavande", "Aloe vera"],
                (-30, -23),
                MARSEILLE,
                [
                    "Très peu d'eau pour la lavande, l'aloe une seule fois.",
                    "Je connais bien les plantes méditerranéennes, je suis à Endoume.",
                    "Lavande en fleurs, terre encore humide : pas d'arrosage aujourd'hui.",
                    "Nathan a suivi les consignes à la lettre, merci !",
                    "Merci Chloé, la terrasse est magnifique.",
                ],
            )
            .await?;
        sittings.push(("completed", marseille));
        let bordeaux = self
            .completed(
                "sarah",
                "manon",
                &["Hortensia bleu"],
                (-20, -14),
                BORDEAUX,
                [
                    "Arroser l'hortensia à l'eau de pluie (cuve au fond du jardin).",
                    "Je suis à Bordeaux toute la semaine, avec plaisir.",
                    "Hortensia arrosé à l'eau de pluie, les fleurs bleuissent.",
                    "Manon est de confiance, je recommande.",
                    "Jardin superbe, Sarah est très accueillante.",
                ],
            )
            .await?;
        sittings.push(("completed", bordeaux));

        // In progress since three days, in Paris: Hugo sits the basil and the orchid.
        let running = self
            .request(
                "camille",
                &["Basilic", "Orchidée blanche"],
                (-3, 4),
                -10,
                PARIS,
                "Le basilic a soif tous les deux jours ; l'orchidée se trempe le dimanche.",
            )
            .await?;
        self.apply(
            running,
            "hugo",
            -10,
            "Je peux reprendre vos plantes, comme en début d'année.",
        )
        .await?;
        self.apply(running, "manon", -9, "Je serai à Paris cette semaine-là.")
            .await?;
        self.accept(running, "camille", "hugo", -8).await?;
        self.start(running, "hugo", -3).await?;
        self.report(
            running,
            "hugo",
            "Basilic",
            "Basilic arrosé et pincé, deux fleurs retirées.",
            true,
        )
        .await?;
        self.report(
            running,
            "hugo",
            "Orchidée blanche",
            "Orchidée trempée dix minutes, une nouvelle hampe apparaît.",
            false,
        )
        .await?;
        sittings.push(("in_progress", running));

        // Accepted, starting in four days, in Lyon.
        let lyon = self
            .request(
                "lucas",
                &["Olivier", "Citronnier"],
                (4, 11),
                0,
                LYON,
                "Le citronnier a besoin d'eau tous les cinq jours, l'olivier presque jamais.",
            )
            .await?;
        self.apply(
            lyon,
            "lea",
            0,
            "J'habite à la Croix-Rousse, je peux passer à pied.",
        )
        .await?;
        self.apply(lyon, "nathan", 0, "Je serai à Lyon pour le travail.")
            .await?;
        self.accept(lyon, "lucas", "lea", 0).await?;
        sittings.push(("accepted", lyon));

        // Open, in two weeks, in Paris: two applications, one withdrawn.
        let open = self
            .request(
                "camille",
                &["Monstera du salon", "Figuier lyre"],
                (12, 19),
                0,
                PARIS,
                "Le figuier ne doit pas bouger ; le Monstera aime être vaporisé.",
            )
            .await?;
        self.apply(open, "hugo", 0, "Encore moi ! Disponible ces dates-là.")
            .await?;
        self.apply(open, "manon", 0, "Je peux aussi, si Hugo n'est pas libre.")
            .await?;
        self.apply(open, "lea", 0, "Disponible, je serai à Paris.")
            .await?;
        self.sitting(
            open,
            "lea",
            SittingCommand::WithdrawApplication {
                applicant: self.actor("lea")?,
            },
        )
        .await?;
        sittings.push(("open", open));
        let nantes_open = self
            .request(
                "antoine",
                &["Calathea"],
                (25, 30),
                0,
                NANTES,
                "Eau filtrée uniquement, le calathea déteste le calcaire.",
            )
            .await?;
        self.apply(
            nantes_open,
            "manon",
            0,
            "Je passe souvent à Nantes, avec plaisir.",
        )
        .await?;
        sittings.push(("open", nantes_open));

        // Cancelled: by the owner while open (Nantes), by the sitter once accepted (Bordeaux).
        let nantes = self
            .request(
                "antoine",
                &["Fougère de Boston"],
                (20, 27),
                0,
                NANTES,
                "Brumiser la fougère chaque matin.",
            )
            .await?;
        self.cancel(nantes, "antoine", "Voyage annulé, je reste à Nantes.")
            .await?;
        sittings.push(("cancelled", nantes));
        let bordeaux_cancelled = self
            .request(
                "sarah",
                &["Camélia"],
                (6, 9),
                0,
                BORDEAUX,
                "Le camélia est devant la porte, arrosoir dans le garage.",
            )
            .await?;
        self.apply(
            bordeaux_cancelled,
            "manon",
            0,
            "Disponible ces quatre jours.",
        )
        .await?;
        self.accept(bordeaux_cancelled, "sarah", "manon", 0).await?;
        self.cancel(
            bordeaux_cancelled,
            "manon",
            "Désolée, un empêchement familial : je ne pourrai pas venir.",
        )
        .await?;
        sittings.push(("cancelled", bordeaux_cancelled));

        // Expired: Chloé's request for the days after her holiday found an applicant she never
        // accepted; once its last day had passed, the expiry job expired it (as `serve` does).
        let marseille_expired = self
            .request(
                "chloe",
                &["Aloe vera"],
                (-12, -9),
                -20,
                MARSEILLE,
                "L'aloe se contente d'un verre d'eau.",
            )
            .await?;
        self.apply(
            marseille_expired,
            "lea",
            -19,
            "Je descends à Marseille ces jours-là.",
        )
        .await?;
        self.expire(marseille_expired).await?;
        sittings.push(("expired", marseille_expired));
        Ok(sittings)
    }

    /// What the expiry job does today for a sitting whose last day has passed, as the system.
    async fn expire(&self, id: Uuid) -> anyhow::Result<()> {
        let command = SittingCommand::ExpireSitting { today: self.day(0) };
        step(
            self.app
                .store
                .execute_guarded::<Sitting>(
                    &id.to_string(),
                    command,
                    &(),
                    &self.metadata(None, "SYSTEM"),
                    &SitterCalendar,
                )
                .await,
            "sitting expiry",
        )?;
        Ok(())
    }

    async fn give_advice(
        &self,
        botanist: &str,
        plant: &str,
        sitting: Option<Uuid>,
        priority: Priority,
        body: &str,
    ) -> anyhow::Result<Uuid> {
        let app = self.app;
        let plant_id = self.plant_id(plant)?;
        // Facts the advice cannot know, looked up as the API does.
        let plant_owner_id = step(
            app.store.load_state::<Plant>(&plant_id.to_string()).await,
            "plant",
        )?
        .and_then(|p| p.owner_id());
        let sitting = match sitting {
            None => None,
            Some(id) => {
                let facts = step(
                    app.store.load_state::<Sitting>(&id.to_string()).await,
                    "sitting",
                )?
                .map(|s| SittingFacts {
                    status: s.status(),
                    plant_ids: s.plant_ids().to_vec(),
                    sitter_id: s.sitter_id(),
                });
                Some((id, facts))
            }
        };
        let current_sitter_id = match sitting {
            Some(_) => None,
            None => current_sitter(app, plant_id).await?,
        };
        let id = Uuid::now_v7();
        let command = AdviceCommand::GiveAdvice {
            author: self.actor(botanist)?,
            plant_id,
            plant_owner_id,
            sitting,
            current_sitter_id,
            priority,
            body: self.seal(botanist, body).await?,
        };
        step(
            app.store
                .execute_new::<Advice>(&id.to_string(), command, &(), &self.by(botanist)?)
                .await,
            "advice",
        )?;
        Ok(id)
    }

    async fn on_advice(&self, id: Uuid, local: &str, command: AdviceCommand) -> anyhow::Result<()> {
        step(
            self.app
                .store
                .execute::<Advice>(&id.to_string(), command, &(), &self.by(local)?)
                .await,
            "advice",
        )?;
        Ok(())
    }

    async fn verdict(
        &self,
        id: Uuid,
        local: &str,
        verdict: Verdict,
        comment: &str,
    ) -> anyhow::Result<()> {
        let command = AdviceCommand::ReviewAdvice {
            actor: self.actor(local)?,
            verdict,
            comment: Some(self.seal(local, comment).await?),
        };
        self.on_advice(id, local, command).await
    }

    async fn advice(
        &self,
        sittings: &[(&'static str, Uuid)],
    ) -> anyhow::Result<Vec<(&'static str, Uuid)>> {
        // Who sits a plant now comes from the sittings read model.
        step(
            self.app.projections.catch_up("sittings").await,
            "catching up",
        )?;
        let running = sittings
            .iter()
            .find(|(s, _)| *s == "in_progress")
            .map(|(_, id)| *id);
        let mut advice = Vec::new();
        let given = self
            .give_advice(
                "elise",
                "Monstera du salon",
                None,
                Priority::Normal,
                "Arrosez quand les trois premiers centimètres de terreau sont secs ; un tuteur en mousse l'aidera à grimper.",
            )
            .await?;
        advice.push(("given", given));
        let urgent = self
            .give_advice(
                "elise",
                "Basilic",
                running,
                Priority::Urgent,
                "Les feuilles jaunissent par le bas : trop d'eau. Laissez sécher la surface avant d'arroser.",
            )
            .await?;
        advice.push(("given", urgent));

        let revised = self
            .give_advice(
                "julien",
                "Olivier",
                None,
                Priority::Normal,
                "Un olivier en pot se taille à la fin de l'hiver.",
            )
            .await?;
        self.on_advice(
            revised,
            "julien",
            AdviceCommand::ReviseAdvice {
                actor: self.actor("julien")?,
                priority: Some(Priority::FollowUp),
                body: self
                    .seal(
                        "julien",
                        "Un olivier en pot se taille à la fin de l'hiver, après les gelées ; rempotez tous les trois ans.",
                    )
                    .await?,
            },
        )
        .await?;
        advice.push(("revised", revised));

        let validated = self
            .give_advice(
                "julien",
                "Lavande",
                None,
                Priority::Normal,
                "Taillez la lavande juste après la floraison, sans couper dans le bois.",
            )
            .await?;
        self.verdict(
            validated,
            "elise",
            Verdict::Validated,
            "Tout à fait, c'est la bonne période.",
        )
        .await?;
        advice.push(("validated", validated));

        let rejected = self
            .give_advice(
                "elise",
                "Hortensia bleu",
                None,
                Priority::Normal,
                "Ajoutez du calcaire pour garder les fleurs bleues.",
            )
            .await?;
        self.verdict(
            rejected,
            "julien",
            Verdict::Rejected,
            "C'est l'inverse : le bleu vient d'un sol acide et d'aluminium, le calcaire le fait virer au rose.",
        )
        .await?;
        advice.push(("rejected", rejected));

        let withdrawn = self
            .give_advice(
                "elise",
                "Calathea",
                None,
                Priority::Normal,
                "Placez le calathea en plein soleil.",
            )
            .await?;
        self.on_advice(
            withdrawn,
            "elise",
            AdviceCommand::WithdrawAdvice {
                actor: self.actor("elise")?,
            },
        )
        .await?;
        advice.push(("withdrawn", withdrawn));

        let hidden = self
            .give_advice(
                "julien",
                "Figuier",
                None,
                Priority::Normal,
                "Pour des conseils personnalisés, écrivez-moi sur mon site commercial.",
            )
            .await?;
        self.on_advice(
            hidden,
            "admin",
            AdviceCommand::HideAdvice {
                actor: self.actor("admin")?,
                reason: "Publicité : les conseils restent sur A'rosa-je.".to_string(),
            },
        )
        .await?;
        advice.push(("hidden", hidden));
        Ok(advice)
    }

    /// Starts a conversation and sends its messages, `(sender, text)` in order.
    async fn conversation(
        &self,
        started_by: &str,
        other: &str,
        sitting_id: Option<Uuid>,
        messages: &[(&str, &str)],
    ) -> anyhow::Result<Uuid> {
        let app = self.app;
        let others = vec![self.who(other)?.id];
        // Facts the conversation cannot know, from the read models (as the API does).
        let known: Vec<Uuid> =
            sqlx::query_scalar("SELECT id FROM users WHERE id = ANY($1) AND status = 'active'")
                .bind(&others)
                .fetch_all(&app.pool)
                .await?;
        let unknown = others
            .iter()
            .filter(|id| !known.contains(id))
            .copied()
            .collect();
        let sitting_parties: Option<(Uuid, Uuid)> = match sitting_id {
            Some(sitting) => sqlx::query_as(
                "SELECT owner_id, sitter_id FROM sittings WHERE id = $1 AND sitter_id IS NOT NULL",
            )
            .bind(sitting)
            .fetch_optional(&app.pool)
            .await?,
            None => None,
        };
        let id = Uuid::now_v7();
        let command = ConversationCommand::StartConversation {
            started_by: self.who(started_by)?.id,
            others,
            unknown,
            sitting_id,
            sitting_parties,
        };
        step(
            app.store
                .execute_new::<Conversation>(&id.to_string(), command, &(), &self.by(started_by)?)
                .await,
            "conversation",
        )?;
        for (sender, text) in messages {
            step(
                crate::messaging::send(app, id, self.who(sender)?.id, text, &self.by(sender)?)
                    .await,
                "message",
            )?;
        }
        Ok(id)
    }

    async fn conversations(&self, sittings: &[(&'static str, Uuid)]) -> anyhow::Result<Vec<Uuid>> {
        step(self.app.projections.catch_up("users").await, "catching up")?;
        step(
            self.app.projections.catch_up("sittings").await,
            "catching up",
        )?;
        let find = |status: &str, n: usize| {
            sittings
                .iter()
                .filter(|(s, _)| *s == status)
                .nth(n)
                .map(|(_, id)| *id)
        };
        let mut conversations = Vec::new();
        conversations.push(
            self.conversation(
                "camille",
                "hugo",
                find("in_progress", 0),
                &[
                    ("camille", "Bonjour Hugo, merci encore ! Le basilic a vraiment besoin d'arrosage tous les deux jours."),
                    ("hugo", "Bien reçu. Je suis passé ce matin, il avait un peu soif."),
                    ("hugo", "J'ai retiré deux fleurs, et une botaniste a laissé un conseil sur l'arrosage."),
                    ("camille", "Parfait, je lis ça. À dimanche pour l'orchidée !"),
                ],
            )
            .await?,
        );
        conversations.push(
            self.conversation(
                "lucas",
                "lea",
                find("accepted", 0),
                &[
                    (
                        "lucas",
                        "Bonjour Léa, je vous laisse les clés chez le boulanger en bas de la rue.",
                    ),
                    ("lea", "Très bien, je passerai les chercher la veille."),
                    ("lucas", "L'arrosoir est sur le balcon, merci !"),
                ],
            )
            .await?,
        );
        conversations.push(
            self.conversation(
                "chloe",
                "nathan",
                find("completed", 1),
                &[
                    ("nathan", "Tout s'est bien passé, la lavande est superbe."),
                    ("chloe", "Merci Nathan, je vous laisse un avis."),
                ],
            )
            .await?,
        );
        conversations.push(
            self.conversation(
                "camille",
                "elise",
                None,
                &[
                    ("camille", "Bonjour, faut-il rempoter le Monstera au printemps ?"),
                    ("elise", "Oui, si les racines sortent par le fond du pot : un pot à peine plus grand suffit."),
                ],
            )
            .await?,
        );
        Ok(conversations)
    }

    /// The administrator and the auditor enrol an authenticator app (`ADMIN_MFA=required` is the
    /// default), through the same steps as `POST /api/me/mfa/totp` and its confirmation.
    async fn mfa(&mut self) -> anyhow::Result<()> {
        for local in ["admin", "auditeur"] {
            let account = self.who(local)?.clone();
            let enrolment = step(
                identity::mfa::start(
                    self.app,
                    account.id,
                    &account.email,
                    DEMO_PASSWORD.to_string(),
                    &self.by(local)?,
                )
                .await,
                "TOTP enrolment",
            )?;
            // The confirmation reads the pending secret from the users read model.
            step(self.app.projections.catch_up("users").await, "catching up")?;
            let code = totp_now(&enrolment.secret)?;
            let (codes, _) = step(
                identity::mfa::confirm(self.app, account.id, Uuid::nil(), &code, &self.by(local)?)
                    .await,
                "TOTP confirmation",
            )?;
            if let Some(entry) = self.accounts.iter_mut().find(|a| a.id == account.id) {
                entry.totp_secret = Some(enrolment.secret);
                entry.recovery_codes = codes;
            }
        }
        Ok(())
    }
}

/// The current TOTP code of a base32 secret (RFC 6238, as authenticator apps compute it).
pub fn totp_now(secret: &str) -> anyhow::Result<String> {
    let bytes = totp_rs::Secret::Encoded(secret.to_string())
        .to_bytes()
        .map_err(|e| anyhow::anyhow!("TOTP secret: {e:?}"))?;
    let totp = totp_rs::TOTP::new_unchecked(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        30,
        bytes,
        None,
        String::new(),
    );
    Ok(totp.generate_current()?)
}

/// The sitter of an accepted or running sitting of the plant, as `POST /api/plants/{id}/advice`
/// looks it up (a running one first).
async fn current_sitter(app: &App, plant_id: Uuid) -> anyhow::Result<Option<Uuid>> {
    Ok(sqlx::query_scalar(
        "SELECT s.sitter_id FROM sittings s JOIN sitting_plants p ON p.sitting_id = s.id \
          WHERE p.plant_id = $1 AND s.sitter_id IS NOT NULL \
            AND s.status IN ('accepted', 'in_progress') \
          ORDER BY s.status = 'in_progress' DESC, s.starts_on LIMIT 1",
    )
    .bind(plant_id)
    .fetch_optional(&app.pool)
    .await?)
}
