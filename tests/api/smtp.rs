//! A small SMTP server on loopback for the tests: it keeps every message it accepts, and can be
//! told to be slow or to refuse some recipients for good.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::helpers::eventually;

#[derive(Debug, Clone)]
pub struct Received {
    pub recipients: Vec<String>,
    pub data: String,
}

impl Received {
    /// The decoded text body (our mails are one base64 text part).
    pub fn body(&self) -> String {
        let encoded = self.data.split("\r\n\r\n").nth(1).unwrap_or("");
        let compact: String = encoded.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(compact)
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub fn subject(&self) -> String {
        self.data
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or("")
            .to_string()
    }

    /// The token in the mail's link.
    pub fn token(&self) -> String {
        let body = self.body();
        let start = body.find("#token=").expect("a link with a token") + "#token=".len();
        body[start..]
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string()
    }
}

/// How the server behaves.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Waited before every reply.
    pub delay: Duration,
    /// Recipients containing one of these are refused with 550.
    pub refuse: Vec<String>,
}

pub struct SmtpServer {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl SmtpServer {
    pub async fn start() -> SmtpServer {
        Self::start_with(Behaviour::default()).await
    }

    pub async fn start_with(behaviour: Behaviour) -> SmtpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("smtp://{}", listener.local_addr().expect("addr"));
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = received.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let store = store.clone();
                let behaviour = behaviour.clone();
                tokio::spawn(async move {
                    let (read, mut write) = socket.into_split();
                    let mut lines = BufReader::new(read).lines();
                    let _ = write.write_all(b"220 test SMTP\r\n").await;
                    let mut recipients = Vec::new();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if !behaviour.delay.is_zero() {
                            tokio::time::sleep(behaviour.delay).await;
                        }
                        let upper = line.to_ascii_uppercase();
                        let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO")
                        {
                            b"250 test\r\n"
                        } else if upper.starts_with("RCPT TO:") {
                            let to = line[8..].trim().trim_matches(['<', '>']).to_string();
                            if behaviour.refuse.iter().any(|r| to.contains(r.as_str())) {
                                b"550 5.1.1 no such mailbox\r\n"
                            } else {
                                recipients.push(to);
                                b"250 OK\r\n"
                            }
                        } else if upper == "DATA" {
                            let _ = write.write_all(b"354 go ahead\r\n").await;
                            let mut data = String::new();
                            while let Ok(Some(line)) = lines.next_line().await {
                                if line == "." {
                                    break;
                                }
                                data.push_str(line.strip_prefix('.').unwrap_or(&line));
                                data.push_str("\r\n");
                            }
                            store.lock().unwrap().push(Received {
                                recipients: std::mem::take(&mut recipients),
                                data,
                            });
                            b"250 OK queued\r\n"
                        } else if upper == "QUIT" {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            break;
                        } else {
                            b"250 OK\r\n"
                        };
                        if write.write_all(reply).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        SmtpServer { url, received }
    }

    /// Mails received so far for `to`.
    pub fn mails_to(&self, to: &str) -> Vec<Received> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.recipients.iter().any(|r| r == to))
            .cloned()
            .collect()
    }

    /// Waits for the `n`-th mail to `to` and returns it.
    pub async fn wait_for(&self, to: &str, n: usize) -> Received {
        eventually(
            &format!("mail #{n} to {to}"),
            Duration::from_secs(20),
            || async { self.mails_to(to).len() >= n },
        )
        .await;
        self.mails_to(to)[n - 1].clone()
    }
}
