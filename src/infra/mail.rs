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

#[async_trait]
pub trait Mailer: Send + Sync {
    async fn send(&self, mail: &Mail) -> anyhow::Result<()>;
}

pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, mail: &Mail) -> anyhow::Result<()> {
        let message = Message::builder()
            .from(self.from.clone())
            .to(mail.to.parse()?)
            .subject(mail.subject.clone())
            .message_id(Some(mail.message_id.clone()))
            .singlepart(
                SinglePart::builder()
                    .header(lettre::message::header::ContentType::TEXT_PLAIN)
                    .header(ContentTransferEncoding::Base64)
                    .body(mail.body.clone()),
            )?;
        self.transport.send(message).await?;
        Ok(())
    }
}

/// Used when `SMTP_URL` is unset: mails are written to the log instead of sent.
pub struct LogMailer;

#[async_trait]
impl Mailer for LogMailer {
    async fn send(&self, mail: &Mail) -> anyhow::Result<()> {
        tracing::info!(to = %mail.to, subject = %mail.subject, body = %mail.body, "mail (SMTP_URL unset: logged, not sent)");
        Ok(())
    }
}

/// The mailer the configuration asks for.
pub fn from_config(smtp_url: Option<&str>, from: &str) -> anyhow::Result<Arc<dyn Mailer>> {
    match smtp_url.filter(|u| !u.is_empty()) {
        None => Ok(Arc::new(LogMailer)),
        Some(url) => Ok(Arc::new(SmtpMailer {
            transport: AsyncSmtpTransport::<Tokio1Executor>::from_url(url)?
                .timeout(Some(std::time::Duration::from_secs(10)))
                .build(),
            from: from.parse()?,
        })),
    }
}
