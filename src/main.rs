//! The `arosaje` command: serve the API, migrate, inspect projections.

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use arosaje::config::{Config, StoreConfig};
use arosaje::projections::runner::all_checkpoints;
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
    /// Make the texts of messages older than MESSAGE_RETENTION_DAYS unreadable now (`serve`
    /// does it every hour by itself).
    ExpireMessages {
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
    /// List the projections this binary knows.
    List,
    /// Show each projection's checkpoint and how far behind the log it is.
    Status(StoreConfig),
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
        Command::Projections { command } => match command {
            ProjectionsCommand::List => {
                for name in arosaje::PROJECTION_NAMES {
                    println!("{name}");
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
        },
    }
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

async fn serve(config: Config) -> anyhow::Result<()> {
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
