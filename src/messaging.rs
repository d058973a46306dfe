//! Sending a message: its key and its event commit together (a message whose key is missing
//! would be unreadable from birth; a key without a message is never used). Retention: texts
//! older than `MESSAGE_RETENTION_DAYS` lose their key, which makes them unreadable in the log,
//! and are removed from the read model and its search index in the same transaction.

use uuid::Uuid;

use crate::commands::conversation::{Conversation, ConversationError, Message, MessageCommand};
use crate::events::store::{CommandError, Committed};
use crate::events::Metadata;
use crate::App;

/// Seals `text` under a new key of the message's own and appends `MessageSent`.
pub async fn send(
    app: &App,
    conversation_id: Uuid,
    sender_id: Uuid,
    text: &str,
    metadata: &Metadata,
) -> Result<(Uuid, Committed), CommandError<ConversationError>> {
    let internal = |err: anyhow::Error| CommandError::Internal(err);
    // An earlier attempt under this request's Idempotency-Key committed: its outcome.
    if let Some((id, committed)) = crate::events::claim::prior_of_type("Message") {
        if let Ok(message_id) = id.parse() {
            return Ok((message_id, committed));
        }
    }
    let conversation = app
        .store
        .load_state::<Conversation>(&conversation_id.to_string())
        .await
        .map_err(internal)?;
    let sender_takes_part = conversation.is_some_and(|c| c.takes_part(sender_id));
    let message_id = Uuid::now_v7();
    let mut tx = crate::infra::db::begin(&app.pool)
        .await
        .map_err(|e| internal(e.into()))?;
    let cipher = app
        .message_keys
        .create_in(&mut tx, message_id, sender_id)
        .await
        .map_err(|e| internal(e.into()))?;
    let command = MessageCommand::SendMessage {
        conversation_id,
        sender_id,
        sender_takes_part,
        body: cipher.seal(text),
    };
    let committed = app
        .store
        .execute_new_in::<Message>(&mut tx, &message_id.to_string(), command, &(), metadata)
        .await?;
    tx.commit()
        .await
        .map_err(crate::events::store::commit_failed)?;
    app.store.appended("Message");
    Ok((message_id, committed))
}

/// Makes the texts of messages sent before `older_than` ago unreadable everywhere: their keys
/// are deleted (the sealed texts in the log can never be opened again) and the read model's
/// copies (and so the search index) are cleared, in one transaction. Idempotent, so every
/// instance may run it. Returns how many texts it made unreadable.
pub async fn expire_texts(app: &App, older_than: std::time::Duration) -> anyhow::Result<u64> {
    let mut tx = crate::infra::db::begin(&app.pool).await?;
    let expired: Vec<Uuid> = sqlx::query_scalar(
        "DELETE FROM message_keys WHERE created_at < now() - make_interval(secs => $1) \
         RETURNING message_id",
    )
    .bind(older_than.as_secs_f64())
    .fetch_all(&mut *tx)
    .await?;
    if !expired.is_empty() {
        sqlx::query("UPDATE messaging.messages SET body = NULL WHERE id = ANY($1)")
            .bind(&expired)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    if !expired.is_empty() {
        tracing::info!(count = expired.len(), "message texts expired");
        metrics::counter!("message_texts_expired_total").increment(expired.len() as u64);
    }
    Ok(expired.len() as u64)
}

/// One round of retention: [`expire_texts`], the retention of access records
/// ([`crate::access::expire`]) and the sweep of expired idempotency keys (whose stored answers
/// may quote a message). Failures are logged; each part runs whatever the others did.
pub async fn retain(app: &App) {
    let retention =
        std::time::Duration::from_secs(u64::from(app.config.message_retention_days) * 86_400);
    if let Err(err) = expire_texts(app, retention).await {
        tracing::warn!(error = %format!("{err:#}"), "message retention");
    }
    // Access records (crate::access): a year, then their month's key and partition go.
    if let Err(err) = crate::access::expire(app, chrono::Utc::now().date_naive()).await {
        tracing::warn!(error = %format!("{err:#}"), "access record retention");
    }
    match crate::api::idempotency::sweep_expired(&app.pool).await {
        Ok(rows) if rows > 0 => tracing::info!(rows, "expired idempotency keys swept"),
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "idempotency key retention"),
    }
}

/// Runs [`retain`] every hour (what `serve` starts).
pub async fn run_retention(app: App) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        every.tick().await;
        retain(&app).await;
    }
}
