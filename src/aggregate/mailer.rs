//! Sending an alert: SMTP (STARTTLS, TLS or plain, with credentials) or `.eml` files when no SMTP is set.

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::config::{AggregateConfig, SmtpSecurity};
use super::email::Rendered;

pub enum Mailer {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Files(AsyncFileTransport<Tokio1Executor>, std::path::PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("building the message: {0}")]
    Build(String),
    #[error("sending: {0}")]
    Send(String),
}

impl Mailer {
    pub fn new(cfg: &AggregateConfig) -> Result<Self, MailError> {
        let smtp = &cfg.smtp;
        if smtp.host.is_empty() {
            std::fs::create_dir_all(&cfg.eml_dir)
                .map_err(|e| MailError::Build(format!("{}: {e}", cfg.eml_dir.display())))?;
            return Ok(Mailer::Files(
                AsyncFileTransport::new(&cfg.eml_dir),
                cfg.eml_dir.clone(),
            ));
        }
        let builder = match smtp.security {
            SmtpSecurity::Plain => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
            }
            SmtpSecurity::Starttls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host)
                    .map_err(|e| MailError::Build(e.to_string()))?
            }
            SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host)
                .map_err(|e| MailError::Build(e.to_string()))?,
        };
        let mut builder = builder.port(smtp.port).timeout(Some(smtp.timeout));
        if !smtp.username.is_empty() {
            builder = builder.credentials(Credentials::new(
                smtp.username.clone(),
                smtp.password.clone(),
            ));
        }
        Ok(Mailer::Smtp(builder.build()))
    }

    /// Sends one multipart (text + HTML) email; returns where it went (an `.eml` path or the SMTP host).
    pub async fn send(
        &self,
        from: &str,
        to: &[String],
        email: &Rendered,
    ) -> Result<String, MailError> {
        let from: Mailbox = from
            .parse()
            .map_err(|e| MailError::Build(format!("from: {e}")))?;
        let mut builder = Message::builder().from(from).subject(email.subject.clone());
        for addr in to {
            builder = builder.to(addr
                .parse()
                .map_err(|e| MailError::Build(format!("{addr}: {e}")))?);
        }
        let message = builder
            .multipart(MultiPart::alternative_plain_html(
                email.text.clone(),
                email.html.clone(),
            ))
            .map_err(|e| MailError::Build(e.to_string()))?;
        match self {
            Mailer::Smtp(t) => {
                t.send(message)
                    .await
                    .map_err(|e| MailError::Send(e.to_string()))?;
                Ok("smtp".into())
            }
            Mailer::Files(t, dir) => {
                let id = t
                    .send(message)
                    .await
                    .map_err(|e| MailError::Send(e.to_string()))?;
                Ok(dir.join(format!("{id}.eml")).display().to_string())
            }
        }
    }
}
