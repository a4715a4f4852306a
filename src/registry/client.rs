//! The Confluent Schema Registry REST calls hookrelay makes, and nothing else:
//! - `GET /schemas/ids/{id}`: a writer schema by the id a Confluent-framed record carries;
//! - `POST /subjects/{subject}/versions`: register an event schema (its id comes back);
//! - `POST /subjects/{subject}`: look one up without registering it;
//! - `GET /subjects`: whether the registry answers, at start-up.
//!
//! Why not `schema_registry_converter`: its 4.7.0 (the release on our apache-avro and reqwest) reads any
//! HTTP answer as a schema, so a registry's 404, 409 and 503 all end as one non-retriable "could not parse"
//! error with the registry's message lost; it caches errors until they are cleared by hand and schemas
//! without bound, and decodes with the writer's schema alone (no resolution to a reader schema). An outage
//! must never be told apart from a missing schema by guesswork here: the first dead-letters records, the
//! second must not. Every answer is read up to [`MAX_ANSWER_BYTES`].

use std::time::Duration;

use serde::Deserialize;

use super::RegistryError;
use crate::config::SchemaRegistryConfig;

/// The longest answer read from the registry (schemas are kilobytes).
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// A schema as the registry holds it.
#[derive(Debug, Clone, Deserialize)]
pub struct Registered {
    pub schema: String,
    /// Absent for Avro (the registry's default type).
    #[serde(rename = "schemaType", default)]
    pub schema_type: Option<String>,
    #[serde(default)]
    pub references: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Id {
    id: u32,
}

/// The registry's error body: `{"error_code": 40403, "message": "Schema 7 not found"}`.
#[derive(Deserialize)]
struct ErrorBody {
    error_code: Option<i64>,
    message: Option<String>,
}

/// A registry's HTTP client.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    auth: Auth,
}

#[derive(Clone)]
enum Auth {
    None,
    Basic(String, String),
    Bearer(String),
}

impl Client {
    /// A client for the configured registry (validated: a URL, credentials paired, a readable CA file).
    pub fn new(config: &SchemaRegistryConfig) -> Result<Self, RegistryError> {
        let unusable = |reason: String| RegistryError::Unavailable {
            url: config.url.clone(),
            reason,
        };
        let mut builder = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| unusable(format!("reading {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| unusable(format!("{}: {e}", path.display())))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| unusable(e.to_string()))?;
        let auth = if !config.bearer_token.is_empty() {
            Auth::Bearer(config.bearer_token.clone())
        } else if !config.username.is_empty() {
            Auth::Basic(config.username.clone(), config.password.clone())
        } else {
            Auth::None
        };
        Ok(Self {
            http,
            base: config.url.trim().trim_end_matches('/').to_string(),
            auth,
        })
    }

    /// The registry's base URL, for messages.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The writer schema registered under `id`.
    pub async fn schema_by_id(&self, id: u32) -> Result<Registered, RegistryError> {
        let req = self.http.get(format!("{}/schemas/ids/{id}", self.base));
        match self.call(req).await? {
            Answer::Ok(body) => {
                serde_json::from_slice(&body).map_err(|e| RegistryError::Unusable {
                    id,
                    reason: format!("the registry's answer is not a schema: {e}"),
                })
            }
            // 40403: the registry says the id does not exist. Any other 404 is a registry that is not
            // where the URL says (a missing path prefix): every id would look missing, so it is an outage.
            Answer::Err {
                code: Some(40403),
                message,
                ..
            } => Err(RegistryError::NotFound { id, message }),
            Answer::Err {
                status,
                code,
                message,
            } => Err(self.failed(status, code, message)),
        }
    }

    /// Registers `schema` under `subject` (or finds it already registered): its id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let url = format!("{}/subjects/{}/versions", self.base, encode(subject));
        self.id_for(subject, url, schema).await
    }

    /// The id of `schema` if it is registered under `subject`, without registering it.
    pub async fn lookup(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let url = format!("{}/subjects/{}", self.base, encode(subject));
        self.id_for(subject, url, schema).await
    }

    /// Whether the registry answers at all.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        let req = self.http.get(format!("{}/subjects", self.base));
        match self.call(req).await? {
            Answer::Ok(_) => Ok(()),
            Answer::Err {
                status,
                code,
                message,
            } => Err(self.failed(status, code, message)),
        }
    }

    async fn id_for(&self, subject: &str, url: String, schema: &str) -> Result<u32, RegistryError> {
        let body = serde_json::json!({ "schema": schema }).to_string();
        let req = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(body);
        match self.call(req).await? {
            Answer::Ok(body) => serde_json::from_slice::<Id>(&body)
                .map(|id| id.id)
                .map_err(|e| RegistryError::Unavailable {
                    url: self.base.clone(),
                    reason: format!("the answer for subject {subject} has no id: {e}"),
                }),
            Answer::Err {
                status,
                code,
                message,
            } if (400..500).contains(&status) && ![401, 403, 408, 429].contains(&status) => {
                Err(RegistryError::Refused {
                    subject: subject.to_string(),
                    status,
                    code,
                    message,
                })
            }
            Answer::Err {
                status,
                code,
                message,
            } => Err(self.failed(status, code, message)),
        }
    }

    /// An answer that is not a refusal of this one request: the registry cannot serve now.
    fn failed(&self, status: u16, code: Option<i64>, message: String) -> RegistryError {
        let code = code
            .map(|c| format!(", error code {c}"))
            .unwrap_or_default();
        RegistryError::Unavailable {
            url: self.base.clone(),
            reason: format!("HTTP {status}{code}: {message}"),
        }
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> Result<Answer, RegistryError> {
        let req = req.header(reqwest::header::ACCEPT, CONTENT_TYPE);
        let req = match &self.auth {
            Auth::None => req,
            Auth::Basic(user, password) => req.basic_auth(user, Some(password)),
            Auth::Bearer(token) => req.bearer_auth(token),
        };
        let unavailable = |e: reqwest::Error| RegistryError::Unavailable {
            url: self.base.clone(),
            reason: crate::dispatch::http::error_chain(&e),
        };
        let mut resp = req.send().await.map_err(unavailable)?;
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(unavailable)? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(RegistryError::Unavailable {
                    url: self.base.clone(),
                    reason: format!("an answer longer than {MAX_ANSWER_BYTES} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        if (200..300).contains(&status) {
            return Ok(Answer::Ok(body));
        }
        let parsed = serde_json::from_slice::<ErrorBody>(&body).ok();
        let code = parsed.as_ref().and_then(|b| b.error_code);
        let message = parsed
            .and_then(|b| b.message)
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
        Ok(Answer::Err {
            status,
            code,
            message,
        })
    }
}

enum Answer {
    Ok(Vec<u8>),
    Err {
        status: u16,
        code: Option<i64>,
        message: String,
    },
}

/// A subject name in a URL path (topic names are `[A-Za-z0-9._-]`, but a subject may be anything).
fn encode(subject: &str) -> String {
    url::form_urlencoded::byte_serialize(subject.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// How long to wait before asking an unavailable registry again: doubling from a quarter second to `max`.
pub fn backoff(failures: u32, max: Duration) -> Duration {
    Duration::from_millis(250)
        .saturating_mul(1u32 << failures.min(16))
        .min(max)
}
