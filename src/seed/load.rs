//! `arosaje seed load`: large populations for benches, appended in batches.
//!
//! The events are the aggregates' own event types (`UserEvent`, `PlantEvent`, ...), serialised
//! as the command bus serialises them, in sequences the aggregates would have produced (a
//! sitting is requested, applied to, accepted, started... in that order, by the people allowed
//! to), with personal data sealed under each writer's key and metadata naming the actor. They are
//! appended with multi-row `INSERT`s, each batch in one transaction with what must commit with it
//! (the users' keys and e-mail claims, the messages' keys, the sitters' calendar), so the
//! store's triggers hash-chain them and hand positions out in commit order as for any append.
//! The aggregates load them afterwards like any other events, and the read models catch up by
//! themselves when `serve` runs (or at once with [`catch_up`]).
//!
//! What the population looks like (deterministic given the sizes):
//! - user `u` (2 events: registered, e-mail verified): `load-{run}-{u}@load.arosaje.test`,
//!   password [`LOAD_PASSWORD`];
//! - plant `p` (1 event) belongs to user `p % users`;
//! - sitting `k` is, by `k % 5`: open with one application (2 events), accepted (3), in progress
//!   (4), completed with a care report and both reviews (8), cancelled by its owner while open
//!   (2). The `j`-th sitting of a booked kind is sat by user `j % users` in round `j / users`;
//!   rounds give each kind its own dates, so no sitter is ever booked twice on one day;
//! - conversation `c` (1 event) is between users `c % users` and `(c + 1) % users`; message `m`
//!   (1 event) goes into conversation `m % conversations`;
//! - with `--applications N` (default 1) every sitting but the cancelled ones gets `N - 1` more
//!   applications, from the users after its sitter, before the owner accepts;
//! - botanist `b` (4 events: registered asking to be a botanist, e-mail verified, approved, role
//!   changed) is `load-{run}-botanist-{b}@load.arosaje.test`;
//! - advice `a` (2 to 5 events) is given by botanist `a % botanists` on the plant of the
//!   `a`-th (modulo) sitting that is still open, accepted or in progress, in its context; it is
//!   revised when `a` is even, validated by the next botanist, rejected by the one after when
//!   `a % 3 == 0`, and withdrawn when `a % 7 == 0`;
//! - access record `r` (1 event, sealed under this month's key) is user `r % users` exporting
//!   their own data.
//!
//! Advice, messages and access records are interleaved (one of each in turn), after the
//! sittings and conversations, so the tail of the log is mixed as a real day's would be.

use std::time::{Duration, Instant};

use aes_gcm::aead::{KeyInit, OsRng};
use aes_gcm::Aes256Gcm;
use chrono::{Days, NaiveDate, Utc};
use cqrs_es::DomainEvent;
use serde::Serialize;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::access::{AccessDetails, AccessKind};
use crate::commands::values::{Email, Password};
use crate::events::access::AccessEvent;
use crate::events::advice::{AdviceEvent, Priority, Verdict};
use crate::events::conversation::{ConversationEvent, MessageEvent};
use crate::events::crypto::{Cipher, EmailIndex};
use crate::events::plant::{Care, PlantEvent};
use crate::events::sitting::{Location, SittingEvent};
use crate::events::user::{PasswordHash, Role, UserEvent};
use crate::events::Metadata;
use crate::App;

/// The password of every loaded account (hashed once, sealed under each user's key).
pub const LOAD_PASSWORD: &str = "Charge-de-test-2026";

/// The sizes asked for.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub users: u64,
    pub plants: u64,
    pub sittings: u64,
    pub messages: u64,
    /// Conversations; by default one per 20 messages (at least one when there are messages).
    pub conversations: Option<u64>,
    /// Applications per sitting (not cancelled), the sitter's included (at least 1).
    pub applications: u64,
    /// Botanist accounts (advice needs at least 3: an author and two reviewers).
    pub botanists: u64,
    /// Advice, each with its versions and verdicts.
    pub advice: u64,
    /// Access records (exports).
    pub access: u64,
    /// Events per `INSERT` (and per transaction).
    pub batch: usize,
    /// The day the population is made on (today, UTC, from the CLI).
    pub today: NaiveDate,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            users: 0,
            plants: 0,
            sittings: 0,
            messages: 0,
            conversations: None,
            applications: 1,
            botanists: 0,
            advice: 0,
            access: 0,
            batch: 5_000,
            today: Utc::now().date_naive(),
        }
    }
}

/// Sitting kinds, in the order of `k % 5`.
pub const SITTING_KINDS: [&str; 5] = ["open", "accepted", "in_progress", "completed", "cancelled"];
/// Events each kind of sitting has.
const SITTING_EVENTS: [u64; 5] = [2, 3, 4, 8, 2];

/// What a load makes, computed before it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub users: u64,
    pub plants: u64,
    pub sittings: u64,
    /// Sittings by kind, in the order of [`SITTING_KINDS`].
    pub sittings_by_status: [u64; 5],
    pub conversations: u64,
    pub messages: u64,
    pub botanists: u64,
    pub advice: u64,
    pub access: u64,
    pub events: u64,
}

impl LoadOptions {
    /// What these sizes make; refuses sizes the population cannot have.
    pub fn plan(&self) -> anyhow::Result<Plan> {
        if self.plants > 0 && self.users == 0 {
            anyhow::bail!("plants need owners: --users must be at least 1");
        }
        if self.sittings > 0 && (self.users < 2 || self.plants < 2) {
            anyhow::bail!(
                "sittings need an owner and a sitter: --users and --plants must be at least 2"
            );
        }
        let conversations = self.conversations();
        if (self.messages > 0 || conversations > 0) && self.users < 2 {
            anyhow::bail!("conversations need two people: --users must be at least 2");
        }
        if self.messages > 0 && conversations == 0 {
            anyhow::bail!("messages need a conversation: --conversations must be at least 1");
        }
        let applications = self.applications.max(1);
        if applications > 1 && self.users < applications + 1 {
            anyhow::bail!(
                "{applications} applications per sitting need at least {} users",
                applications + 1
            );
        }
        if self.advice > 0 && self.botanists < 3 {
            anyhow::bail!("advice needs an author and two reviewers: --botanists at least 3");
        }
        if self.advice > 0 && self.running_sittings() == 0 {
            anyhow::bail!("advice goes on sittings still running: --sittings at least 1");
        }
        if self.access > 0 && self.users == 0 {
            anyhow::bail!("access records are exports by users: --users at least 1");
        }
        let mut by_status = [0; 5];
        for (i, count) in by_status.iter_mut().enumerate() {
            *count = self.sittings / 5 + u64::from((i as u64) < self.sittings % 5);
        }
        let sitting_events: u64 = by_status
            .iter()
            .zip(SITTING_EVENTS)
            .map(|(n, e)| n * e)
            .sum::<u64>()
            + (self.sittings - by_status[4]) * (applications - 1);
        let advice_events: u64 = (0..self.advice).map(advice_events).sum();
        Ok(Plan {
            users: self.users,
            plants: self.plants,
            sittings: self.sittings,
            sittings_by_status: by_status,
            conversations,
            messages: self.messages,
            botanists: self.botanists,
            advice: self.advice,
            access: self.access,
            events: 2 * self.users
                + 4 * self.botanists
                + self.plants
                + sitting_events
                + conversations
                + self.messages
                + advice_events
                + self.access,
        })
    }

    /// Sittings still running at the end of the load (open, accepted, in progress): advice goes
    /// on them.
    fn running_sittings(&self) -> u64 {
        (0..3)
            .map(|i| self.sittings / 5 + u64::from(i < self.sittings % 5))
            .sum()
    }

    fn conversations(&self) -> u64 {
        self.conversations
            .unwrap_or_else(|| self.messages.div_ceil(20))
    }
}

/// Events advice `a` has: given, revised (even `a`), validated, rejected (`a % 3 == 0`),
/// withdrawn (`a % 7 == 0`).
fn advice_events(a: u64) -> u64 {
    2 + u64::from(a % 2 == 0) + u64::from(a % 3 == 0) + u64::from(a % 7 == 0)
}

/// What a load did.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub plan: Plan,
    /// Log positions of the first and last event appended.
    pub first_position: i64,
    pub last_position: i64,
    pub elapsed: Duration,
}

impl LoadReport {
    pub fn events_per_second(&self) -> f64 {
        self.plan.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// One event row, as `events` stores it.
struct Row {
    aggregate_type: &'static str,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: String,
    metadata: String,
}

/// A batch and the rows that must commit with its events.
#[derive(Default)]
struct Batch {
    events: Vec<Row>,
    user_keys: Vec<(Uuid, Vec<u8>)>,
    email_claims: Vec<(Vec<u8>, Uuid)>,
    message_keys: Vec<(Uuid, Uuid, Vec<u8>)>,
    bookings: Vec<(Uuid, Uuid, NaiveDate, NaiveDate)>,
}

/// Builds the population in order and hands it out in batches (CPU work: sealing, JSON).
struct Generator {
    run: String,
    today: NaiveDate,
    batch_size: usize,
    email_index: EmailIndex,
    password_hash: String,
    batch: Batch,
    out: mpsc::Sender<Batch>,
    /// This month and its access key, for access records.
    access_key: Option<(NaiveDate, Cipher)>,
}

/// The receiving end went away (the writer failed): stop generating.
struct Stopped;

impl Generator {
    fn push<E: DomainEvent + Serialize>(
        &mut self,
        aggregate_type: &'static str,
        aggregate_id: &Uuid,
        sequence: i64,
        event: &E,
        actor: Uuid,
    ) -> Result<(), Stopped> {
        self.push_as(
            aggregate_type,
            aggregate_id,
            sequence,
            event,
            Some(actor),
            Role::User.as_str(),
        )
    }

    /// [`Self::push`] with another actor role (or the system: no actor).
    fn push_as<E: DomainEvent + Serialize>(
        &mut self,
        aggregate_type: &'static str,
        aggregate_id: &Uuid,
        sequence: i64,
        event: &E,
        actor: Option<Uuid>,
        role: &str,
    ) -> Result<(), Stopped> {
        let request = Uuid::new_v4().to_string();
        let metadata = Metadata {
            actor_id: actor,
            actor_role: role.to_string(),
            request_id: request.clone(),
            correlation_id: self.run.clone(),
            causation_id: request,
        };
        // Serialising our own event types and a map of strings cannot fail.
        let payload = serde_json::to_string(event).unwrap_or_default();
        let metadata = serde_json::to_string(&metadata.to_map()).unwrap_or_default();
        self.batch.events.push(Row {
            aggregate_type,
            aggregate_id: aggregate_id.to_string(),
            sequence,
            event_type: event.event_type(),
            event_version: event.event_version(),
            payload,
            metadata,
        });
        Ok(())
    }

    /// Sends the batch once full (only between whole aggregates' worth of rows).
    fn maybe_flush(&mut self) -> Result<(), Stopped> {
        if self.batch.events.len() >= self.batch_size {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Stopped> {
        if self.batch.events.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.out.blocking_send(batch).map_err(|_| Stopped)
    }

    fn day(&self, offset: i64) -> NaiveDate {
        let days = Days::new(offset.unsigned_abs());
        if offset < 0 {
            self.today - days
        } else {
            self.today + days
        }
    }

    fn run(mut self, options: &LoadOptions, plan: &Plan) -> Result<(), Stopped> {
        let users = self.users(options.users)?;
        let plant_owner = |p: u64| (p % options.users) as usize;
        let mut plants = Vec::with_capacity(options.plants as usize);
        for p in 0..options.plants {
            let id = Uuid::now_v7();
            let owner = users[plant_owner(p)].0;
            let (name, species) = PLANT_NAMES[(p as usize) % PLANT_NAMES.len()];
            let event = PlantEvent::PlantCreated {
                owner_id: owner,
                name: format!("{name} {p}"),
                species: Some(species.to_string()),
                description: None,
                care: Care {
                    watering_interval_days: Some(3 + (p % 12) as i32),
                    light: Some("lumière vive indirecte".into()),
                    notes: None,
                },
            };
            self.push("Plant", &id, 1, &event, owner)?;
            plants.push(id);
            self.maybe_flush()?;
        }
        let botanists = self.botanists(options.botanists)?;
        // Sittings still running, for advice: (sitting, plant, plant owner, sitter).
        let mut running: Vec<(Uuid, Uuid, Uuid, Option<Uuid>)> = Vec::new();
        // The j-th sitting of each kind, for the sitter and the round.
        let mut of_kind = [0u64; 5];
        for k in 0..options.sittings {
            let kind = (k % 5) as usize;
            let j = of_kind[kind];
            of_kind[kind] += 1;
            let sitter = (j % options.users) as usize;
            let round = (j / options.users) as i64;
            // A plant whose owner is not the sitter (see `plan` for why three candidates do).
            let m = options.plants;
            let plant = [k % m, (k + 1) % m, (k + 2) % m]
                .into_iter()
                .find(|p| kind == 4 || plant_owner(*p) != sitter)
                .unwrap_or(k % m);
            let owner = plant_owner(plant);
            let (starts, ends) = match kind {
                1 => (5 + 8 * round, 11 + 8 * round),
                2 => (-3 - 24 * round, 3 - 24 * round),
                3 => (-11 - 24 * round, -5 - 24 * round),
                _ => (30 + (k % 60) as i64, 36 + (k % 60) as i64),
            };
            // More applicants: the users after the sitter, neither owner nor sitter.
            let others: Vec<usize> = (1..users.len())
                .map(|i| (sitter + i) % users.len())
                .filter(|u| *u != owner && *u != sitter)
                .take(options.applications.max(1) as usize - 1)
                .collect();
            let others: Vec<&(Uuid, Cipher)> = others.iter().map(|u| &users[*u]).collect();
            let id = self.sitting(
                kind,
                &users[owner],
                &users[sitter],
                &others,
                (plants[plant as usize], (self.day(starts), self.day(ends))),
                k,
            )?;
            if kind <= 2 {
                let sitter = (kind > 0).then_some(users[sitter].0);
                running.push((id, plants[plant as usize], users[owner].0, sitter));
            }
            self.maybe_flush()?;
        }
        let conversations = self.conversations(plan.conversations, &users)?;
        // Advice, messages and access records in turn.
        let tail = plan.advice.max(plan.messages).max(plan.access);
        for i in 0..tail {
            if i < plan.advice {
                self.advice(i, &botanists, &running)?;
            }
            if i < plan.access {
                let user = users[(i % options.users) as usize].0;
                self.access(user)?;
            }
            if i >= plan.messages {
                self.maybe_flush()?;
                continue;
            }
            let m = i;
            let c = (m % plan.conversations) as usize;
            let (conversation, a, b) = conversations[c];
            let sender = if (m / plan.conversations) % 2 == 0 {
                a
            } else {
                b
            };
            let id = Uuid::now_v7();
            let key = Aes256Gcm::generate_key(&mut OsRng).to_vec();
            let cipher = Cipher::new(id, &key).map_err(|_| Stopped)?;
            let text = MESSAGES[(m as usize) % MESSAGES.len()];
            let event = MessageEvent::MessageSent {
                conversation_id: conversation,
                sender_id: sender,
                body: cipher.seal(text),
            };
            self.batch.message_keys.push((id, sender, key));
            self.push("Message", &id, 1, &event, sender)?;
            self.maybe_flush()?;
        }
        self.flush()
    }

    /// Botanist accounts: registered asking to be one, verified, approved, made BOTANIST.
    fn botanists(&mut self, count: u64) -> Result<Vec<(Uuid, Cipher)>, Stopped> {
        let mut botanists = Vec::with_capacity(count as usize);
        for b in 0..count {
            let id = Uuid::now_v7();
            let key = Aes256Gcm::generate_key(&mut OsRng).to_vec();
            let cipher = Cipher::new(id, &key).map_err(|_| Stopped)?;
            let email = format!("load-{}-botanist-{b}@load.arosaje.test", self.run_tag());
            let parsed = Email::parse(&email).map_err(|_| Stopped)?;
            self.batch.user_keys.push((id, key));
            self.batch
                .email_claims
                .push((self.email_index.hash(&parsed), id));
            let registered = UserEvent::UserRegistered {
                email: cipher.seal(parsed.as_str()),
                display_name: cipher.seal(&format!("Botaniste {b}")),
                password_hash: PasswordHash::Sealed(cipher.seal(&self.password_hash)),
                role: Role::User,
                botanist_requested: true,
            };
            self.push("User", &id, 1, &registered, id)?;
            self.push("User", &id, 2, &UserEvent::EmailVerified, id)?;
            let system = Role::Admin.as_str();
            self.push_as("User", &id, 3, &UserEvent::BotanistApproved, None, system)?;
            let promoted = UserEvent::UserRoleChanged {
                role: Role::Botanist,
                previous: Role::User,
            };
            self.push_as("User", &id, 4, &promoted, None, system)?;
            botanists.push((id, cipher));
            self.maybe_flush()?;
        }
        Ok(botanists)
    }

    /// Advice `a` (see the module documentation) on a running sitting's plant.
    fn advice(
        &mut self,
        a: u64,
        botanists: &[(Uuid, Cipher)],
        running: &[(Uuid, Uuid, Uuid, Option<Uuid>)],
    ) -> Result<(), Stopped> {
        let n = botanists.len() as u64;
        let (author, cipher) = &botanists[(a % n) as usize];
        let (sitting, plant, owner, sitter) = running[(a % running.len() as u64) as usize];
        let id = Uuid::now_v7();
        let priority = [Priority::Normal, Priority::Urgent, Priority::FollowUp][(a % 3) as usize];
        let botanist = Role::Botanist.as_str();
        let mut events = vec![(
            AdviceEvent::AdviceGiven {
                author_id: *author,
                plant_id: plant,
                plant_owner_id: owner,
                sitting_id: Some(sitting),
                sitter_id: sitter,
                priority,
                body: cipher.seal(ADVICE[(a as usize) % ADVICE.len()]),
            },
            *author,
        )];
        let mut version = 1;
        if a % 2 == 0 {
            version = 2;
            let revised = AdviceEvent::AdviceRevised {
                version,
                priority: Priority::Normal,
                body: cipher.seal("Finalement : arroser une fois par semaine."),
            };
            events.push((revised, *author));
        }
        let (validator, validator_cipher) = &botanists[((a + 1) % n) as usize];
        let validated = AdviceEvent::AdviceReviewed {
            botanist_id: *validator,
            verdict: Verdict::Validated,
            advice_version: version,
            comment: Some(validator_cipher.seal("D'accord.")),
        };
        events.push((validated, *validator));
        if a % 3 == 0 {
            let rejecter = botanists[((a + 2) % n) as usize].0;
            let rejected = AdviceEvent::AdviceReviewed {
                botanist_id: rejecter,
                verdict: Verdict::Rejected,
                advice_version: version,
                comment: None,
            };
            events.push((rejected, rejecter));
        }
        if a % 7 == 0 {
            events.push((AdviceEvent::AdviceWithdrawn { by: *author }, *author));
        }
        for (i, (event, actor)) in events.iter().enumerate() {
            self.push_as("Advice", &id, i as i64 + 1, event, Some(*actor), botanist)?;
        }
        Ok(())
    }

    /// One access record: `user` exported their own data.
    fn access(&mut self, user: Uuid) -> Result<(), Stopped> {
        let Some((month, cipher)) = self.access_key.clone() else {
            return Err(Stopped);
        };
        let details = AccessDetails {
            kind: AccessKind::Export,
            subject_id: Some(user),
            reason: None,
            query: serde_json::json!({}),
        };
        let event = AccessEvent::AccessRecorded {
            month: crate::access::month_label(month),
            details: cipher.seal(&serde_json::to_string(&details).unwrap_or_default()),
        };
        self.push("Access", &Uuid::now_v7(), 1, &event, user)
    }

    /// Registered and verified users: (id, cipher).
    fn users(&mut self, count: u64) -> Result<Vec<(Uuid, Cipher)>, Stopped> {
        let mut users = Vec::with_capacity(count as usize);
        for u in 0..count {
            let id = Uuid::now_v7();
            let key = Aes256Gcm::generate_key(&mut OsRng).to_vec();
            let cipher = Cipher::new(id, &key).map_err(|_| Stopped)?;
            let email = format!("load-{}-{u}@load.arosaje.test", self.run_tag());
            let parsed = Email::parse(&email).map_err(|_| Stopped)?;
            let name = format!(
                "{} {}",
                FIRST_NAMES[(u as usize) % FIRST_NAMES.len()],
                LAST_NAMES[(u as usize / FIRST_NAMES.len()) % LAST_NAMES.len()]
            );
            self.batch.user_keys.push((id, key));
            self.batch
                .email_claims
                .push((self.email_index.hash(&parsed), id));
            let registered = UserEvent::UserRegistered {
                email: cipher.seal(parsed.as_str()),
                display_name: cipher.seal(&name),
                password_hash: PasswordHash::Sealed(cipher.seal(&self.password_hash)),
                role: Role::User,
                botanist_requested: false,
            };
            self.push("User", &id, 1, &registered, id)?;
            self.push("User", &id, 2, &UserEvent::EmailVerified, id)?;
            users.push((id, cipher));
            self.maybe_flush()?;
        }
        Ok(users)
    }

    fn run_tag(&self) -> &str {
        // `seed-load-<uuid v7>`: the random tail tells runs apart.
        self.run.rsplit('-').next().unwrap_or("run")
    }

    /// One sitting of `kind` (an index of [`SITTING_KINDS`]).
    fn sitting(
        &mut self,
        kind: usize,
        (owner, owner_cipher): &(Uuid, Cipher),
        (sitter, sitter_cipher): &(Uuid, Cipher),
        others: &[&(Uuid, Cipher)],
        (plant, (starts_on, ends_on)): (Uuid, (NaiveDate, NaiveDate)),
        k: u64,
    ) -> Result<Uuid, Stopped> {
        let (owner, sitter) = (*owner, *sitter);
        let id = Uuid::now_v7();
        let place = CITIES[(k as usize) % CITIES.len()];
        let location = serde_json::to_string(&Location {
            lat: place.1 + ((k % 100) as f64 - 50.0) * 0.0005,
            lon: place.2 + ((k / 100 % 100) as f64 - 50.0) * 0.0005,
            city: place.0.to_string(),
        })
        .unwrap_or_default();
        let mut events: Vec<(SittingEvent, Uuid)> = vec![(
            SittingEvent::SittingRequested {
                owner_id: owner,
                plant_ids: vec![plant],
                starts_on,
                ends_on,
                location: owner_cipher.seal(&location),
                instructions: Some(owner_cipher.seal("Arroser le matin, merci !")),
            },
            owner,
        )];
        if kind == 4 {
            let cancelled = SittingEvent::SittingCancelled {
                by: owner,
                reason: owner_cipher.seal("Voyage annulé."),
            };
            events.push((cancelled, owner));
        } else {
            let applied = SittingEvent::ApplicationSubmitted {
                applicant_id: sitter,
                message: Some(sitter_cipher.seal("Disponible ces dates-là.")),
            };
            events.push((applied, sitter));
            for (other, other_cipher) in others {
                let applied = SittingEvent::ApplicationSubmitted {
                    applicant_id: *other,
                    message: Some(other_cipher.seal("Je peux aussi, si besoin.")),
                };
                events.push((applied, *other));
            }
        }
        if (1..=3).contains(&kind) {
            events.push((SittingEvent::SitterAccepted { sitter_id: sitter }, owner));
            self.batch.bookings.push((id, sitter, starts_on, ends_on));
        }
        if (2..=3).contains(&kind) {
            events.push((SittingEvent::SittingStarted { by: sitter }, sitter));
        }
        if kind == 3 {
            let report = SittingEvent::CareReported {
                report_id: Uuid::now_v7(),
                sitter_id: sitter,
                plant_id: plant,
                note: sitter_cipher.seal("Plante arrosée, tout va bien."),
                before_photo_id: None,
                after_photo_id: None,
            };
            events.push((report, sitter));
            events.push((SittingEvent::SittingCompleted { by: owner }, owner));
            let from_owner = SittingEvent::ReviewLeft {
                author_id: owner,
                subject_id: sitter,
                rating: 3 + (k % 3) as u8,
                comment: Some(owner_cipher.seal("Très bonne garde.")),
            };
            events.push((from_owner, owner));
            let from_sitter = SittingEvent::ReviewLeft {
                author_id: sitter,
                subject_id: owner,
                rating: 4 + (k % 2) as u8,
                comment: None,
            };
            events.push((from_sitter, sitter));
        }
        for (i, (event, actor)) in events.iter().enumerate() {
            self.push("Sitting", &id, i as i64 + 1, event, *actor)?;
        }
        Ok(id)
    }

    /// Conversations: (id, first participant, second).
    fn conversations(
        &mut self,
        count: u64,
        users: &[(Uuid, Cipher)],
    ) -> Result<Vec<(Uuid, Uuid, Uuid)>, Stopped> {
        let n = users.len() as u64;
        let mut conversations = Vec::with_capacity(count as usize);
        for c in 0..count {
            let id = Uuid::now_v7();
            let a = users[(c % n) as usize].0;
            let b = users[((c + 1) % n) as usize].0;
            let event = ConversationEvent::ConversationStarted {
                started_by: a,
                participant_ids: vec![a, b],
                sitting_id: None,
            };
            self.push("Conversation", &id, 1, &event, a)?;
            conversations.push((id, a, b));
            self.maybe_flush()?;
        }
        Ok(conversations)
    }
}

/// Appends the population described by `options`; `progress(done, total)` after each batch.
pub async fn load(
    app: &App,
    options: &LoadOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> anyhow::Result<LoadReport> {
    let plan = options.plan()?;
    let password = Password::parse(LOAD_PASSWORD, &[])
        .map_err(|e| anyhow::anyhow!("the load password {e}"))?;
    let password_hash = crate::identity::passwords::hash_password(password).await?;
    let started = Instant::now();
    let access_key = if plan.access > 0 {
        let month = crate::access::month_of(options.today);
        Some((month, app.month_keys.current(month).await?))
    } else {
        None
    };
    let (tx, mut rx) = mpsc::channel::<Batch>(2);
    let generator = Generator {
        run: format!("seed-load-{}", Uuid::now_v7().simple()),
        today: options.today,
        batch_size: options.batch.max(1),
        email_index: app.email_index.clone(),
        password_hash,
        batch: Batch::default(),
        out: tx,
        access_key,
    };
    let (gen_options, gen_plan) = (options.clone(), plan.clone());
    let generating =
        tokio::task::spawn_blocking(move || generator.run(&gen_options, &gen_plan).is_ok());
    let head_before: i64 =
        sqlx::query_scalar("SELECT COALESCE(max(global_position), 0) FROM events")
            .fetch_one(&app.pool)
            .await?;
    let (mut done, mut first, mut last) = (0u64, None, head_before);
    while let Some(batch) = rx.recv().await {
        let (low, high) = write(app, batch, &mut done).await?;
        first.get_or_insert(low);
        last = last.max(high);
        progress(done, plan.events);
    }
    if !generating.await? {
        anyhow::bail!("seed load: the generator stopped early");
    }
    for aggregate_type in [
        "User",
        "Plant",
        "Sitting",
        "Conversation",
        "Message",
        "Advice",
        "Access",
    ] {
        app.store.appended(aggregate_type);
    }
    skip_side_effects(app, head_before, last).await?;
    settle_statistics(app).await?;
    Ok(LoadReport {
        plan,
        first_position: first.unwrap_or(head_before),
        last_position: last,
        elapsed: started.elapsed(),
    })
}

/// Appends one batch with its keys, claims and bookings, in one transaction; returns the first
/// and last positions it got.
async fn write(app: &App, batch: Batch, done: &mut u64) -> anyhow::Result<(i64, i64)> {
    let mut tx = crate::infra::db::begin(&app.pool).await?;
    if !batch.user_keys.is_empty() {
        let (ids, keys): (Vec<Uuid>, Vec<Vec<u8>>) = batch.user_keys.into_iter().unzip();
        sqlx::query(
            "INSERT INTO user_keys (user_id, key) SELECT * FROM UNNEST($1::uuid[], $2::bytea[])",
        )
        .bind(&ids)
        .bind(&keys)
        .execute(&mut *tx)
        .await?;
        let (hashes, users): (Vec<Vec<u8>>, Vec<Uuid>) = batch.email_claims.into_iter().unzip();
        sqlx::query(
            "INSERT INTO email_claims (email_hash, user_id) SELECT * FROM UNNEST($1::bytea[], $2::uuid[])",
        )
        .bind(&hashes)
        .bind(&users)
        .execute(&mut *tx)
        .await?;
    }
    if !batch.message_keys.is_empty() {
        let mut ids = Vec::with_capacity(batch.message_keys.len());
        let mut senders = Vec::with_capacity(batch.message_keys.len());
        let mut keys = Vec::with_capacity(batch.message_keys.len());
        for (id, sender, key) in batch.message_keys {
            ids.push(id);
            senders.push(sender);
            keys.push(key);
        }
        sqlx::query(
            "INSERT INTO message_keys (message_id, sender_id, key) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::bytea[])",
        )
        .bind(&ids)
        .bind(&senders)
        .bind(&keys)
        .execute(&mut *tx)
        .await?;
    }
    let n = batch.events.len();
    let mut types = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut sequences = Vec::with_capacity(n);
    let mut event_types = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    let mut metadata = Vec::with_capacity(n);
    for row in batch.events {
        types.push(row.aggregate_type);
        ids.push(row.aggregate_id);
        sequences.push(row.sequence);
        event_types.push(row.event_type);
        versions.push(row.event_version);
        payloads.push(row.payload);
        metadata.push(row.metadata);
    }
    // One statement: the commit-order lock is taken once for the batch, and the rows of a
    // stream go in sequence order (the hash chain links each to the one before).
    let (low, high): (Option<i64>, Option<i64>) = sqlx::query_as(
        "WITH appended AS ( \
           INSERT INTO events \
             (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
           SELECT t, i, s, et, ev, p::jsonb, m::jsonb \
             FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], \
                         $7::text[]) AS e(t, i, s, et, ev, p, m) \
           RETURNING global_position) \
         SELECT min(global_position), max(global_position) FROM appended",
    )
    .bind(&types)
    .bind(&ids)
    .bind(&sequences)
    .bind(&event_types)
    .bind(&versions)
    .bind(&payloads)
    .bind(&metadata)
    .fetch_one(&mut *tx)
    .await?;
    if !batch.bookings.is_empty() {
        let mut sittings = Vec::with_capacity(batch.bookings.len());
        let mut sitters = Vec::with_capacity(batch.bookings.len());
        let mut starts = Vec::with_capacity(batch.bookings.len());
        let mut ends = Vec::with_capacity(batch.bookings.len());
        for (sitting, sitter, s, e) in batch.bookings {
            sittings.push(sitting);
            sitters.push(sitter);
            starts.push(s);
            ends.push(e);
        }
        sqlx::query(
            "INSERT INTO sitter_bookings (sitting_id, sitter_id, days) \
             SELECT b, s, daterange(f, t, '[]') \
               FROM UNNEST($1::uuid[], $2::uuid[], $3::date[], $4::date[]) AS x(b, s, f, t)",
        )
        .bind(&sittings)
        .bind(&sitters)
        .bind(&starts)
        .bind(&ends)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    metrics::counter!("events_appended_total", "aggregate_type" => "seed_load").increment(n as u64);
    *done += n as u64;
    Ok((low.unwrap_or(0), high.unwrap_or(0)))
}

/// After a bulk load, what autovacuum would do some time later, done now: the planner's
/// statistics of the tables the load wrote, and the BRIN summaries of their new pages (unsummarised
/// pages are read by every BRIN scan, e.g. an audit query's time window). Read models analyse
/// themselves as they are built.
async fn settle_statistics(app: &App) -> sqlx::Result<()> {
    sqlx::query("ANALYZE events, user_keys, email_claims, message_keys, sitter_bookings")
        .execute(&app.pool)
        .await?;
    sqlx::query(
        "SELECT brin_summarize_new_values('events_timestamp_brin'), \
                brin_summarize_new_values('message_keys_created_brin')",
    )
    .execute(&app.pool)
    .await?;
    Ok(())
}

/// A bench population is not news: the mail outbox and the WebSocket fan-out skip it (no
/// verification mail to thousands of made-up addresses). Only a projector that had reached the
/// log's head before the load is moved past it; one that lagged keeps its place and would see
/// the load too.
async fn skip_side_effects(app: &App, head_before: i64, last: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE projection_checkpoints SET last_position = $2, updated_at = now() \
          WHERE name = ANY($3) AND last_position >= $1 AND last_position < $2",
    )
    .bind(head_before)
    .bind(last)
    .bind(&["mailer", "fanout"][..])
    .execute(&app.pool)
    .await?;
    Ok(())
}

/// Brings every read model up to the head of the log: `users` first, then the others at once
/// (each on its own task, as `serve` runs them). Returns each model's time and the total.
///
/// Users go first because the other models refer to their rows: on a backlog of new users,
/// a model that ran ahead of `users` would fail on its foreign keys and, after
/// `PROJECTION_MAX_ATTEMPTS`, park those events.
///
/// Models never built on a large log (a cold start) are built by a rebuild first, as `serve`
/// does (see [`crate::projections::Projections::spawn`]); their lap is `cold start`.
pub async fn catch_up(app: &App) -> anyhow::Result<(Vec<(&'static str, Duration)>, Duration)> {
    let started = Instant::now();
    let mut laps = Vec::new();
    let cold = app.projections.cold_models().await?;
    if !cold.is_empty() {
        crate::projections::rebuild::build_cold(&app.pool, &cold, &Default::default()).await?;
        laps.push(("cold start", started.elapsed()));
    }
    let users = Instant::now();
    app.projections.catch_up("users").await?;
    laps.push(("users", users.elapsed()));
    let tasks: Vec<_> = super::READ_MODELS
        .iter()
        .filter(|name| **name != "users")
        .map(|name| {
            let app = app.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                app.projections.catch_up(name).await?;
                anyhow::Ok((*name, t.elapsed()))
            })
        })
        .collect();
    for task in tasks {
        laps.push(task.await??);
    }
    Ok((laps, started.elapsed()))
}

const FIRST_NAMES: &[&str] = &[
    "Camille", "Lucas", "Chloé", "Hugo", "Léa", "Nathan", "Manon", "Louis", "Inès", "Jules",
    "Sarah", "Adam", "Jade", "Gabriel", "Zoé", "Arthur", "Emma", "Paul", "Alice", "Théo",
];
const LAST_NAMES: &[&str] = &[
    "Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy",
    "Moreau", "Simon", "Laurent", "Lefebvre", "Michel", "Garcia", "David", "Bertrand", "Roux",
];
const PLANT_NAMES: &[(&str, &str)] = &[
    ("Monstera", "Monstera deliciosa"),
    ("Ficus", "Ficus elastica"),
    ("Pothos", "Epipremnum aureum"),
    ("Basilic", "Ocimum basilicum"),
    ("Olivier", "Olea europaea"),
    ("Lavande", "Lavandula angustifolia"),
    ("Orchidée", "Phalaenopsis"),
    ("Calathea", "Calathea orbifolia"),
];
const CITIES: &[(&str, f64, f64)] = &[
    ("Paris", 48.8566, 2.3522),
    ("Lyon", 45.7640, 4.8357),
    ("Marseille", 43.2965, 5.3698),
    ("Bordeaux", 44.8378, -0.5792),
    ("Nantes", 47.2184, -1.5536),
    ("Toulouse", 43.6047, 1.4442),
    ("Lille", 50.6292, 3.0573),
];
const ADVICE: &[&str] = &[
    "Moins d'eau en hiver, la terre doit sécher entre deux arrosages.",
    "Tourner le pot d'un quart chaque semaine pour une pousse régulière.",
    "Les feuilles jaunes : trop d'eau, espacer les arrosages.",
];
const MESSAGES: &[&str] = &[
    "Bonjour, les plantes vont bien ?",
    "Oui, tout est arrosé.",
    "Merci beaucoup, à bientôt !",
    "Le basilic avait soif ce matin.",
    "Je passe demain pour l'arrosage.",
];
