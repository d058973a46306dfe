//! Sending a message: its key and its event commit together (a message whose key is missing
//! would be unreadable from birth; a key without a message is never used).

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
    let conversation = app
        .store
        .load_state::<Conversation>(&conversation_id.to_string())
        .await
        .map_err(internal)?;
    let sender_takes_part = conversation.is_some_and(|c| c.takes_part(sender_id));
    let message_id = Uuid::now_v7();
    let mut tx = app.pool.begin().await.map_err(|e| internal(e.into()))?;
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
    tx.commit().await.map_err(|e| internal(e.into()))?;
    app.store.appended("Message");
    Ok((message_id, committed))
}
