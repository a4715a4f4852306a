//! A small in-memory Schema Registry speaking the Confluent REST endpoints hookrelay uses, for the demo and
//! the tests (no registry server installs from the package registries): `GET /subjects`,
//! `GET /schemas/ids/{id}`, `POST /subjects/{subject}/versions` (with the default `BACKWARD` compatibility
//! check against the subject's latest version), `POST /subjects/{subject}` (look up) and
//! `GET /subjects/{subject}/versions/latest`. Errors carry Confluent's `error_code` and `message`. It can be
//! stopped and started again on the same address with what it holds, to play an outage.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Store {
    /// Schema texts by id - 1.
    schemas: Vec<String>,
    /// Ids per subject, by version - 1.
    subjects: BTreeMap<String, Vec<u32>>,
}

/// A running registry.
#[derive(Clone)]
pub struct SchemaRegistry {
    pub addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    stop: Arc<Mutex<CancellationToken>>,
    /// The `Authorization` header every request must carry, if any (`Basic …` or `Bearer …`).
    authorization: Option<Arc<str>>,
}

impl SchemaRegistry {
    /// Binds `addr` (port 0 for an ephemeral port) and serves until [`SchemaRegistry::stop`].
    pub async fn start(addr: SocketAddr) -> std::io::Result<Self> {
        Self::start_with(addr, None).await
    }

    /// As [`SchemaRegistry::start`], answering 401 to any request without `authorization` as its
    /// `Authorization` header (e.g. `Bearer token`, or `Basic ` and base64 of `user:password`).
    pub async fn start_with(
        addr: SocketAddr,
        authorization: Option<&str>,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let r = Self {
            addr: listener.local_addr()?,
            store: Arc::default(),
            stop: Arc::default(),
            authorization: authorization.map(Arc::from),
        };
        r.serve(listener);
        Ok(r)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops answering: connections are refused until [`SchemaRegistry::restart`].
    pub fn stop(&self) {
        self.stop.lock().expect("stop lock").cancel();
    }

    /// Answers again on the same address, with every schema it held.
    pub async fn restart(&self) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(self.addr).await?;
        *self.stop.lock().expect("stop lock") = CancellationToken::new();
        self.serve(listener);
        Ok(())
    }

    /// Registers `schema` under `subject` as a producer's serializer would; its id.
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, String> {
        register(&mut self.store.lock().expect("store lock"), subject, schema)
            .map_err(|(_, _, message)| message)
    }

    /// The ids registered under `subject`, oldest first.
    pub fn versions(&self, subject: &str) -> Vec<u32> {
        let store = self.store.lock().expect("store lock");
        store.subjects.get(subject).cloned().unwrap_or_default()
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/subjects", get(subjects))
            .route("/schemas/ids/{id}", get(by_id))
            .route("/subjects/{subject}", post(lookup))
            .route("/subjects/{subject}/versions", post(register_version))
            .route("/subjects/{subject}/versions/latest", get(latest))
            .layer(axum::middleware::from_fn_with_state(
                self.authorization.clone(),
                authorized,
            ))
            .with_state(self.store.clone());
        let token = self.stop.lock().expect("stop lock").clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
        });
    }
}

type Shared = Arc<Mutex<Store>>;

/// Refuses a request without the expected `Authorization` header, as Confluent's registry does.
async fn authorized(
    State(expected): State<Option<Arc<str>>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let given = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match expected {
        Some(expected) if given != Some(&*expected) => {
            error(StatusCode::UNAUTHORIZED, 40101, "Unauthorized".into())
        }
        _ => next.run(request).await,
    }
}

#[derive(Deserialize)]
struct SchemaBody {
    schema: String,
}

fn error(status: StatusCode, code: u32, message: String) -> Response {
    let body = json!({ "error_code": code, "message": message });
    (status, Json(body)).into_response()
}

async fn subjects(State(store): State<Shared>) -> Response {
    let store = store.lock().expect("store lock");
    Json(store.subjects.keys().cloned().collect::<Vec<_>>()).into_response()
}

async fn by_id(State(store): State<Shared>, Path(id): Path<String>) -> Response {
    let store = store.lock().expect("store lock");
    let found = id
        .parse::<usize>()
        .ok()
        .and_then(|i| i.checked_sub(1))
        .and_then(|i| store.schemas.get(i));
    match found {
        Some(schema) => Json(json!({ "schema": schema })).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            40403,
            format!("Schema {id} not found"),
        ),
    }
}

async fn register_version(
    State(store): State<Shared>,
    Path(subject): Path<String>,
    Json(body): Json<SchemaBody>,
) -> Response {
    let mut store = store.lock().expect("store lock");
    match register(&mut store, &subject, &body.schema) {
        Ok(id) => Json(json!({ "id": id })).into_response(),
        Err((status, code, message)) => error(status, code, message),
    }
}

async fn lookup(
    State(store): State<Shared>,
    Path(subject): Path<String>,
    Json(body): Json<SchemaBody>,
) -> Response {
    let store = store.lock().expect("store lock");
    let Ok(canonical) = Schema::parse_str(&body.schema).map(|s| s.canonical_form()) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            "Invalid schema".into(),
        );
    };
    let Some(ids) = store.subjects.get(&subject) else {
        return error(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{subject}' not found."),
        );
    };
    let found = ids.iter().enumerate().find(|(_, id)| {
        Schema::parse_str(&store.schemas[**id as usize - 1])
            .is_ok_and(|s| s.canonical_form() == canonical)
    });
    match found {
        Some((version, id)) => Json(json!({
            "subject": subject, "id": id, "version": version + 1,
            "schema": store.schemas[*id as usize - 1],
        }))
        .into_response(),
        None => error(StatusCode::NOT_FOUND, 40403, "Schema not found".into()),
    }
}

async fn latest(State(store): State<Shared>, Path(subject): Path<String>) -> Response {
    let store = store.lock().expect("store lock");
    match store.subjects.get(&subject).and_then(|ids| ids.last()) {
        Some(id) => Json(json!({
            "subject": subject, "id": id,
            "version": store.subjects[&subject].len(),
            "schema": store.schemas[*id as usize - 1],
        }))
        .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{subject}' not found."),
        ),
    }
}

/// Registers `text` under `subject`: the id of the same schema if it is there already; refused if it
/// cannot read what the subject's latest version wrote (`BACKWARD`, Confluent's default).
fn register(
    store: &mut Store,
    subject: &str,
    text: &str,
) -> Result<u32, (StatusCode, u32, String)> {
    let schema = Schema::parse_str(text).map_err(|e| {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            format!("Invalid schema: {e}"),
        )
    })?;
    let canonical = schema.canonical_form();
    let same = |t: &String| Schema::parse_str(t).is_ok_and(|s| s.canonical_form() == canonical);
    let ids = store.subjects.get(subject).cloned().unwrap_or_default();
    if let Some(id) = ids
        .iter()
        .find(|id| same(&store.schemas[**id as usize - 1]))
    {
        return Ok(*id);
    }
    if let Some(latest) = ids.last() {
        let latest =
            Schema::parse_str(&store.schemas[*latest as usize - 1]).expect("stored parses");
        if let Err(e) = SchemaCompatibility::can_read(&latest, &schema) {
            return Err((
                StatusCode::CONFLICT,
                409,
                format!(
                    "Schema being registered is incompatible with an earlier schema for subject \"{subject}\": {e}"
                ),
            ));
        }
    }
    let id = match store.schemas.iter().position(same) {
        Some(i) => i as u32 + 1,
        None => {
            store.schemas.push(text.to_string());
            store.schemas.len() as u32
        }
    };
    store
        .subjects
        .entry(subject.to_string())
        .or_default()
        .push(id);
    Ok(id)
}
