//! The `arosaje` command: serve the API, migrate, inspect projections.

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use arosaje::config::{Config, StoreConfig};
use std::sync::Arc;

use arosaje::events::crypto::{EmailIndex, KeyStore, MessageKeys, MonthKeys};
use arosaje::projections::rebuild;
use arosaje::projections::runner::all_checkpoints;
use arosaje::projections::Projection;
use arosaje::{api, connect_database, App, MIGRATOR};

#[derive(Parser)]
#[command(
    name = "arosaje",
    version,
    about = "A'rosa-je: plant sitting, botanist advice, messaging"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Migrate the database, start the projectors and serve the HTTP API.
    Serve(Config),
    /// Apply pending database migrations and exit.
    Migrate(StoreConfig),
    /// Administration from the command line.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Inspect the projections.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// Print the OpenAPI document (as served at /openapi.json), for client generators; needs
    /// nothing running.
    Openapi,
    /// The event log's tamper evidence.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Populations: a demo world for newcomers, large loads for benches.
    Seed {
        #[command(subcommand)]
        command: SeedCommand,
    },
}

#[derive(Subcommand)]
enum SeedCommand {
    /// Fill an empty database with a small French demo world (accounts of every role, plants
    /// with photos, sittings in every state, advice, conversations), through the real commands;
    /// prints the accounts and their password.
    Demo {
        /// Seed even though the log is not empty (the demo e-mail addresses must still be free).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        config: Config,
    },
    /// Append a large population for benches, in batches straight into the event store (sealed,
    /// hash-chained, as the aggregates would have written it), then wait for the read models.
    Load {
        #[arg(long, default_value_t = 0)]
        users: u64,
        #[arg(long, default_value_t = 0)]
        plants: u64,
        #[arg(long, default_value_t = 0)]
        sittings: u64,
        #[arg(long, default_value_t = 0)]
        messages: u64,
        /// Conversations the messages go into (default: one per 20 messages).
        #[arg(long)]
        conversations: Option<u64>,
        /// Applications per sitting that is not cancelled (the sitter's included).
        #[arg(long, default_value_t = 1)]
        applications: u64,
        /// Botanist accounts (at least 3 for advice: an author and two reviewers).
        #[arg(long, default_value_t = 0)]
        botanists: u64,
        /// Advice on the plants of running sittings, with versions and verdicts.
        #[arg(long, default_value_t = 0)]
        advice: u64,
        /// Access records (users exporting their data).
        #[arg(long, default_value_t = 0)]
        access: u64,
        /// Events per INSERT (and per transaction).
        #[arg(long, default_value_t = 5_000)]
        batch: usize,
        /// Return once the events are appended; the read models catch up when `serve` runs.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        config: Config,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the whole log: recompute every event's hash, check every link and every signed
    /// checkpoint, and report the first event that does not hold (exit status 1).
    Verify(Config),
    /// Sign the events appended since the last checkpoint now (`serve` does it every 5 minutes).
    Checkpoint(Config),
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Make the texts of messages older than MESSAGE_RETENTION_DAYS unreadable now, and delete
    /// idempotency keys (and the answers they kept) older than 24 hours (`serve` does both every
    /// hour by itself).
    ExpireMessages {
        #[command(flatten)]
        config: Config,
    },
    /// Expire the open (and accepted, never started) sittings whose last day is before today, or
    /// before `--as-of` (`serve` does it every SITTING_EXPIRY_INTERVAL_SECS by itself); each
    /// owner is mailed once.
    ExpireSittings {
        /// The day to expire as of (YYYY-MM-DD, UTC); default today.
        #[arg(long)]
        as_of: Option<chrono::NaiveDate>,
        #[command(flatten)]
        config: Config,
    },
    /// Create an ADMIN account (the first admin of a new deployment).
    Create {
        #[arg(long)]
        email: String,
        /// The password (or ADMIN_PASSWORD, to keep it out of the shell history).
        #[arg(long, env = "ADMIN_PASSWORD", hide_env_values = true)]
        password: String,
        #[arg(long, default_value = "Administrator")]
        display_name: String,
        #[command(flatten)]
        config: Config,
    },
}

#[derive(Subcommand)]
enum ProjectionsCommand {
    /// Every projection: version in the code and of its model, checkpoint, lag in events and
    /// seconds, parked events, and state (live, rebuilding, needs rebuild).
    List(StoreConfig),
    /// Show each projection's checkpoint and how far behind the log it is.
    Status(StoreConfig),
    /// Replay the whole log into fresh tables while the live model keeps serving, then swap
    /// them in at once. Ctrl-C leaves the live model as it was; a rerun starts over.
    Rebuild {
        /// The read model to rebuild.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Every read model, in order (users first).
        #[arg(long)]
        all: bool,
        /// Rebuild aside and report the rows that differ from the live model; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Log positions per batch.
        #[arg(long, default_value_t = 10_000)]
        batch_size: i64,
        #[command(flatten)]
        config: Config,
    },
    /// Re-apply a projection's parked events (once the code is fixed); those that still fail
    /// stay parked.
    Retry {
        name: String,
        #[command(flatten)]
        config: Config,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // LOG_FORMAT=json: one JSON object per line, with the request's span (request id, client
    // address), for log shippers and the security events.
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    match Cli::parse().command {
        Command::Serve(config) => serve(config).await,
        Command::Migrate(store) => {
            let pool = connect_database(&store).await?;
            MIGRATOR.run(&pool).await.context("running migrations")?;
            println!("migrations applied");
            Ok(())
        }
        Command::Admin {
            command:
                AdminCommand::Create {
                    email,
                    password,
                    display_name,
                    config,
                },
        } => {
            let app = App::build(config).await?;
            let id =
                arosaje::identity::create_admin(&app, &email, &password, &display_name).await?;
            println!("admin {id} created for {}", email.trim().to_lowercase());
            Ok(())
        }
        Command::Admin {
            command: AdminCommand::ExpireMessages { config },
        } => {
            let days = config.message_retention_days;
            let app = App::build(config).await?;
            let expired = arosaje::messaging::expire_texts(
                &app,
                std::time::Duration::from_secs(u64::from(days) * 86_400),
            )
            .await?;
            println!("{expired} message texts older than {days} days made unreadable");
            let swept = api::idempotency::sweep_expired(&app.pool).await?;
            println!("{swept} idempotency keys older than 24 hours deleted");
            Ok(())
        }
        Command::Admin {
            command: AdminCommand::ExpireSittings { as_of, config },
        } => {
            let app = App::build(config).await?;
            let today = as_of.unwrap_or_else(|| chrono::Utc::now().date_naive());
            let run = arosaje::expiry::run_expiry(&app, today).await?;
            if run.standby {
                println!("another instance is expiring sittings right now; nothing done");
                return Ok(());
            }
            println!(
                "{} sittings ending before {today} expired ({} had nothing to do, {} failed)",
                run.expired, run.skipped, run.failed
            );
            if run.failed > 0 {
                anyhow::bail!("{} sittings could not be expired; see the log", run.failed);
            }
            Ok(())
        }
        Command::Audit { command } => audit(command).await,
        Command::Openapi => {
            let document = api::docs::openapi()
                .to_pretty_json()
                .context("serialising the OpenAPI document")?;
            println!("{document}");
            Ok(())
        }
        Command::Projections { command } => projections(command).await,
        Command::Seed { command } => seed(command).await,
    }
}

async fn seed(command: SeedCommand) -> anyhow::Result<()> {
    match command {
        SeedCommand::Demo { force, config } => {
            let app = App::build(config).await?;
            let options = arosaje::seed::demo::DemoOptions {
                force,
                ..Default::default()
            };
            match arosaje::seed::demo::seed(&app, options).await {
                Ok(world) => {
                    print_demo(&world);
                    Ok(())
                }
                // A refusal, not a failure: its message alone.
                Err(refused @ arosaje::seed::SeedError::NotEmpty(_)) => {
                    eprintln!("{refused}");
                    std::process::exit(1);
                }
                Err(err) => Err(err.into()),
            }
        }
        SeedCommand::Load {
            users,
            plants,
            sittings,
            messages,
            conversations,
            applications,
            botanists,
            advice,
            access,
            batch,
            no_wait,
            config,
        } => {
            let app = App::build(config).await?;
            let options = arosaje::seed::load::LoadOptions {
                users,
                plants,
                sittings,
                messages,
                conversations,
                applications,
                botanists,
                advice,
                access,
                batch,
                ..Default::default()
            };
            let plan = options.plan()?;
            println!(
                "appending {} users, {} botanists, {} plants, {} sittings, {} conversations, \
                 {} messages, {} advice, {} access records: {} events",
                plan.users,
                plan.botanists,
                plan.plants,
                plan.sittings,
                plan.conversations,
                plan.messages,
                plan.advice,
                plan.access,
                plan.events
            );
            let bar = indicatif::ProgressBar::new(plan.events).with_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} events, {per_sec}, ETA {eta}",
                )?,
            );
            let report = arosaje::seed::load::load(&app, &options, &|done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })
            .await;
            bar.finish_and_clear();
            let report = report?;
            println!(
                "appended {} events (positions {}..={}) in {:.1} s: {:.0} events/s",
                report.plan.events,
                report.first_position,
                report.last_position,
                report.elapsed.as_secs_f64(),
                report.events_per_second()
            );
            println!(
                "loaded accounts log in with the password {}",
                arosaje::seed::load::LOAD_PASSWORD
            );
            if no_wait {
                println!("the read models catch up when `arosaje serve` runs");
                return Ok(());
            }
            let spinner = indicatif::ProgressBar::new_spinner();
            spinner.set_message("read models catching up");
            spinner.enable_steady_tick(std::time::Duration::from_millis(200));
            let caught_up = arosaje::seed::load::catch_up(&app).await;
            spinner.finish_and_clear();
            let (laps, total) = caught_up?;
            let laps: Vec<String> = laps
                .iter()
                .map(|(name, t)| format!("{name} {:.1} s", t.as_secs_f64()))
                .collect();
            println!(
                "read models caught up in {:.1} s ({})",
                total.as_secs_f64(),
                laps.join(", ")
            );
            Ok(())
        }
    }
}

/// The demo's accounts and where to start.
fn print_demo(world: &arosaje::seed::demo::DemoWorld) {
    println!(
        "demo world ready: {} accounts, {} plants, {} sittings, {} advice, {} conversations ({} events)",
        world.accounts.len(),
        world.plants.len(),
        world.sittings.len(),
        world.advice.len(),
        world.conversations.len(),
        world.events
    );
    println!(
        "every account's password: {}",
        arosaje::seed::demo::DEMO_PASSWORD
    );
    println!();
    println!("{:<9} {:<32} {:<16} part", "role", "e-mail", "name");
    for account in &world.accounts {
        println!(
            "{:<9} {:<32} {:<16} {}",
            account.role.as_str(),
            account.email,
            account.display_name,
            account.part
        );
    }
    for account in world.accounts.iter().filter(|a| a.totp_secret.is_some()) {
        println!();
        println!(
            "{} has two-factor authentication (ADMIN_MFA=required): TOTP secret {} \
             (e.g. `oathtool --totp -b {}`), or one of these one-time recovery codes as \
             `totp_code`: {}",
            account.email,
            account.totp_secret.as_deref().unwrap_or_default(),
            account.totp_secret.as_deref().unwrap_or_default(),
            account.recovery_codes.join(" ")
        );
    }
    for (status, id) in &world.sittings {
        if *status == "in_progress" {
            println!();
            println!("the sitting in progress (its events: GET /api/audit/aggregates/Sitting/{id}): {id}");
        }
    }
}

/// The read models of this binary, on `pool` (`pepper` hashes e-mail addresses; only a rebuild
/// of `users` needs the real one).
fn read_models(pool: &sqlx::PgPool, pepper: &str) -> Vec<Arc<dyn Projection>> {
    arosaje::read_models(
        Arc::new(KeyStore::new(pool.clone())),
        Arc::new(MessageKeys::new(pool.clone())),
        Arc::new(MonthKeys::new(pool.clone())),
        EmailIndex::new(pepper),
    )
}

async fn projections(command: ProjectionsCommand) -> anyhow::Result<()> {
    match command {
        ProjectionsCommand::List(store) => {
            let pool = connect_database(&store).await?;
            // Versions and aggregate types only: nothing is applied, so no pepper is needed.
            let models = read_models(&pool, "");
            let rows = rebuild::list(&pool, &models).await?;
            println!(
                "{:<12} {:>4} {:>5} {:>12} {:>10} {:>10} {:>7}  state",
                "projection", "code", "model", "position", "lag", "lag (s)", "parked"
            );
            let or_dash = |v: Option<i32>| v.map_or("-".to_string(), |v| v.to_string());
            for row in rows {
                println!(
                    "{:<12} {:>4} {:>5} {:>12} {:>10} {:>10.1} {:>7}  {}",
                    row.name,
                    or_dash(row.code_version),
                    or_dash(row.checkpoint_version),
                    row.position,
                    row.lag_events,
                    row.lag_seconds,
                    row.parked,
                    row.state.as_str()
                );
            }
            Ok(())
        }
        ProjectionsCommand::Status(store) => {
            let pool = connect_database(&store).await?;
            let head: i64 =
                sqlx::query_scalar("SELECT COALESCE(max(global_position), 0) FROM events")
                    .fetch_one(&pool)
                    .await?;
            let mut rows: Vec<_> = all_checkpoints(&pool).await?.into_iter().collect();
            rows.sort_by(|a, b| a.0.cmp(&b.0));
            println!(
                "{:<16} {:>14} {:>10} {:>8}",
                "projection", "position", "behind", "parked"
            );
            for (name, state) in rows {
                let position = state.position.global_position;
                let behind = (head - position).max(0);
                println!("{name:<16} {position:>14} {behind:>10} {:>8}", state.parked);
            }
            Ok(())
        }
        ProjectionsCommand::Rebuild {
            name,
            all,
            dry_run,
            batch_size,
            mut config,
        } => {
            config.validate()?;
            let pool = connect_database(&config.store).await?;
            MIGRATOR.run(&pool).await.context("running migrations")?;
            let models = read_models(&pool, config.email_pepper());
            let chosen: Vec<Arc<dyn Projection>> = if all {
                models
            } else {
                let name = name.unwrap_or_default();
                match models.into_iter().find(|p| p.name() == name) {
                    Some(model) => vec![model],
                    None => anyhow::bail!(
                        "no read model named {name:?} (side-effect projectors are never rebuilt)"
                    ),
                }
            };
            let options = rebuild::RebuildOptions {
                batch_size: batch_size.max(1),
                dry_run,
                ..Default::default()
            };
            let mut differ = false;
            for model in chosen {
                let report = tokio::select! {
                    report = rebuild_with_bar(&pool, model.as_ref(), &options) => report?,
                    _ = tokio::signal::ctrl_c() => {
                        rebuild::discard(&pool, model.as_ref()).await?;
                        eprintln!("interrupted: {} left as it was", model.name());
                        std::process::exit(130);
                    }
                };
                println!(
                    "{}: {} events in {:.1} s ({:.0} events/s), model at position {}, {} parked{}",
                    report.projection,
                    report.events,
                    report.elapsed.as_secs_f64(),
                    report.events_per_second(),
                    report.position,
                    report.parked,
                    if dry_run {
                        " (dry run)"
                    } else {
                        ", swapped in"
                    }
                );
                for diff in report.differences.iter().flatten() {
                    differ |= !diff.is_empty();
                    println!(
                        "  {:<32} missing {:>8}  extra {:>8}  different {:>8}",
                        diff.table, diff.missing, diff.extra, diff.different
                    );
                }
            }
            if differ {
                std::process::exit(1);
            }
            Ok(())
        }
        ProjectionsCommand::Retry { name, mut config } => {
            config.validate()?;
            let pool = connect_database(&config.store).await?;
            let models = read_models(&pool, config.email_pepper());
            let Some(model) = models.into_iter().find(|p| p.name() == name) else {
                anyhow::bail!("no read model named {name:?}");
            };
            let report = rebuild::retry(&pool, model.as_ref()).await?;
            println!(
                "{name}: {} parked events applied, {} still parked",
                report.applied, report.still_parked
            );
            Ok(())
        }
    }
}

/// A rebuild with a progress bar (events done/total, events/s, ETA) on a terminal, else a log
/// line with the same every 5 seconds.
async fn rebuild_with_bar(
    pool: &sqlx::PgPool,
    model: &dyn Projection,
    options: &rebuild::RebuildOptions,
) -> anyhow::Result<rebuild::RebuildReport> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        let log = rebuild::ProgressLog::new(model.name(), std::time::Duration::from_secs(5));
        return rebuild::rebuild(pool, model, options, &|progress| log.observe(progress)).await;
    }
    let bar = indicatif::ProgressBar::new(0).with_style(indicatif::ProgressStyle::with_template(
        "{prefix:>10} {bar:40} {pos}/{len} events, {per_sec}, ETA {eta}",
    )?);
    bar.set_prefix(model.name());
    let report = rebuild::rebuild(pool, model, options, &|progress| {
        bar.set_length(progress.total);
        bar.set_position(progress.done);
    })
    .await;
    bar.finish_and_clear();
    report
}

async fn audit(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Checkpoint(mut config) => {
            config.validate()?;
            let pool = connect_database(&config.store).await?;
            let key = arosaje::audit::checkpoint_key(&config);
            match arosaje::audit::checkpoint(&pool, &key).await? {
                Some(position) => println!("checkpoint signed at position {position}"),
                None => println!("no event since the last checkpoint"),
            }
            Ok(())
        }
        AuditCommand::Verify(mut config) => {
            config.validate()?;
            let pool = connect_database(&config.store).await?;
            let key = arosaje::audit::checkpoint_key(&config);
            let bar =
                indicatif::ProgressBar::new(0).with_style(indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} events, {per_sec}, ETA {eta}",
                )?);
            let report = arosaje::audit::verify(&pool, &key, &|done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })
            .await?;
            bar.finish_and_clear();
            let rate = report.events as f64 / report.elapsed.as_secs_f64().max(1e-9);
            match report.broken {
                None => {
                    println!(
                        "the log holds: {} events and {} checkpoints verified in {:.1} s ({rate:.0} events/s)",
                        report.events,
                        report.checkpoints,
                        report.elapsed.as_secs_f64()
                    );
                    Ok(())
                }
                Some(broken) => {
                    eprintln!("BROKEN after {} good events: {broken}", report.events);
                    std::process::exit(1);
                }
            }
        }
    }
}

async fn serve(mut config: Config) -> anyhow::Result<()> {
    if config.web_dir.is_none() {
        config.web_dir = api::web::Site::default_dir();
    }
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let bind = config.bind_addr;
    let app = App::build(config).await?;
    let _background = app.start(app.config.run_projectors);
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind} (BIND_ADDR)"))?;
    tracing::info!(%bind, "serving the A'rosa-je API");
    axum::serve(
        listener,
        api::router(app).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown())
    .await?;
    Ok(())
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut signal) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            signal.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}
