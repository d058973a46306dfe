//! Outgoing e-mail, behind a small trait: SMTP (`lettre`) in deployments, a log line when no SMTP
//! server is configured (local demos).

use std::sync::Arc;

use async_trait::async_trait;
use lettre::message::header::ContentTransferEncoding;
use lettre::message::{Mailbox, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// One message to one recipient.
#[derive(Debug, Clone)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub body: String,
    /// Stable per event: a message sent twice after a crash carries the same id.
    pub message_id: String,
}

/// Why a mail did not go out.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// It never will: the server refused it for good (5xx), or the address cannot be used.
    #[error("refused for good: {0}")]
    Permanent(String),
    /// It may later: connection trouble, a time-out, a 4xx answer.
    #[error("not sent yet: {0:#}")]
    Transient(anyhow::Error),
}

#[async_trait]
pub trait Mailer: Send + Sync {
    async fn send(&self, mail: &Mail) -> Result<(), SendError>;
}

pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, mail: &Mail) -> Result<(), SendError> {
        let to: Mailbox = mail
            .to
            .parse()
            .map_err(|e| SendError::Permanent(format!("recipient address: {e}")))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.clone())
            .message_id(Some(mail.message_id.clone()))
            .singlepart(
                SinglePart::builder()
                    .header(lettre::message::header::ContentType::TEXT_PLAIN)
                    .header(ContentTransferEncoding::Base64)
                    .body(mail.body.clone()),
            )
            .map_err(|e| SendError::Permanent(format!("building the message: {e}")))?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(err) if err.is_permanent() => Err(SendError::Permanent(err.to_string())),
            Err(err) => Err(SendError::Transient(err.into())),
        }
    }
}

/// Used when `SMTP_URL` is unset: mails are not sent. The log says that one was due, never to
/// whom nor what it said (links in mails are credentials); only in development mode, where the
/// developer needs the links, does it print the whole mail.
pub struct LogMailer {
    pub reveal: bool,
}

#[async_trait]
impl Mailer for LogMailer {
    async fn send(&self, mail: &Mail) -> Result<(), SendError> {
        if self.reveal {
            tracing::warn!(to = %mail.to, subject = %mail.subject, body = %mail.body,
                "mail (development mode, SMTP_URL unset: logged, not sent)");
        } else {
            tracing::info!(subject = %mail.subject, message_id = %mail.message_id,
                "mail not sent: SMTP_URL is unset");
        }
        Ok(())
    }
}

/// The mailer the configuration asks for. `reveal`: development mode, where an unsent mail is
/// printed whole.
pub fn from_config(
    smtp_url: Option<&str>,
    from: &str,
    reveal: bool,
) -> anyhow::Result<Arc<dyn Mailer>> {
    match smtp_url.filter(|u| !u.is_empty()) {
        None => Ok(Arc::new(LogMailer { reveal })),
        Some(url) => Ok(Arc::new(SmtpMailer {
            transport: AsyncSmtpTransport::<Tokio1Executor>::from_url(url)?
                .timeout(Some(std::time::Duration::from_secs(10)))
                .build(),
            from: from.parse()?,
        })),
    }
}
