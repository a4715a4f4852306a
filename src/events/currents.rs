//! Braze Currents' webhook events besides `Failure`: `Send`, `Abort` and `Retry`
//! (`users.messages.webhook.*`). Each schema in `schemas/` is Braze's published one (same name, namespace
//! and fields) with optional additions, so a consumer written for Braze Currents reads hookrelay's events
//! with Braze's schema as its reader schema. Pure: the dispatcher decides when one is due
//! (`dispatch::currents`), this says what it holds and how it is written.

use std::sync::OnceLock;

use apache_avro::Schema;

use super::currents_wire as wire;
use super::framing;
use super::SendRequest;
use crate::config::EventEncoding;

/// Which event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CurrentsKind {
    /// A send request's first HTTP request was made.
    Send,
    /// A send request will never be attempted, or attempted again, for a reason other than an endpoint's
    /// answer.
    Abort,
    /// A send request was deferred to a retry tier without an attempt.
    Retry,
}

impl CurrentsKind {
    pub const ALL: [CurrentsKind; 3] =
        [CurrentsKind::Send, CurrentsKind::Abort, CurrentsKind::Retry];

    /// A metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CurrentsKind::Send => "send",
            CurrentsKind::Abort => "abort",
            CurrentsKind::Retry => "retry",
        }
    }

    /// Its schema's JSON (`schemas/<kind>_event.avsc`).
    pub fn schema_json(self) -> &'static str {
        match self {
            CurrentsKind::Send => include_str!("../../schemas/send_event.avsc"),
            CurrentsKind::Abort => include_str!("../../schemas/abort_event.avsc"),
            CurrentsKind::Retry => include_str!("../../schemas/retry_event.avsc"),
        }
    }

    /// Its schema, parsed once.
    pub fn schema(self) -> &'static Schema {
        static S: [OnceLock<Schema>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
        S[self as usize].get_or_init(|| {
            Schema::parse_str(self.schema_json()).expect("the Currents event schemas are valid")
        })
    }

    fn fingerprint(self) -> [u8; 8] {
        static F: [OnceLock<[u8; 8]>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
        *F[self as usize].get_or_init(|| framing::fingerprint(self.schema()))
    }
}

/// One event about a send (borrowed: events are written as soon as they are made).
#[derive(Debug, Clone, PartialEq)]
pub struct CurrentsEvent<'a> {
    pub kind: CurrentsKind,
    /// Unique per event, and the same when the same event is written again after a crash, so consumers
    /// dedupe on it.
    pub id: String,
    /// UNIX seconds.
    pub time: i64,
    pub send: &'a SendRequest,
    pub endpoint_url: Option<&'a str>,
    pub host: Option<&'a str>,
    /// `Send`: the attempt that made the first request.
    pub attempt: Option<u32>,
    /// `Abort`, `Retry`: attempts made so far.
    pub retry_count: Option<u32>,
    /// `Retry`: UNIX milliseconds before which the send is not attempted.
    pub next_attempt_at: Option<i64>,
    /// `Abort`: `abort_type`, `abort_log`; `Retry`: `retry_type`, `retry_log`.
    pub type_: Option<&'static str>,
    pub log: Option<String>,
}

impl<'a> CurrentsEvent<'a> {
    /// An event about `send`, its id made from the kind, the send and `discriminator` (what makes this event
    /// of the send unique: the attempt, the due time).
    pub fn new(kind: CurrentsKind, send: &'a SendRequest, discriminator: i64, now_ms: i64) -> Self {
        let dispatch = send.dispatch_id.as_deref().unwrap_or(&send.id);
        Self {
            kind,
            id: format!(
                "{}-{}-{}-{discriminator}",
                kind.as_str(),
                send.workspace_id,
                dispatch
            ),
            time: now_ms.div_euclid(1000),
            send,
            endpoint_url: None,
            host: None,
            attempt: None,
            retry_count: None,
            next_attempt_at: None,
            type_: None,
            log: None,
        }
    }

    /// Avro binary with the kind's schema, framed as `encoding` says. Serialised straight from borrowed
    /// fields by the schema-aware serializer, as failure events are: no value tree, no copy of the send.
    pub fn encode(&self, encoding: EventEncoding, schema_id: Option<u32>) -> Vec<u8> {
        let mut body = Vec::with_capacity(384);
        let schema = self.kind.schema();
        let written = match self.kind {
            CurrentsKind::Send => {
                apache_avro::write_avro_datum_ref(schema, &wire::Send::from(self), &mut body)
            }
            CurrentsKind::Abort => {
                apache_avro::write_avro_datum_ref(schema, &wire::Abort::from(self), &mut body)
            }
            CurrentsKind::Retry => {
                apache_avro::write_avro_datum_ref(schema, &wire::Retry::from(self), &mut body)
            }
        };
        written.expect("a Currents event always matches its schema");
        framing::frame(encoding, schema_id, self.kind.fingerprint(), &body)
    }

    /// Braze requires `user_id`: the send's, else its `external_user_id`, else empty (as in failure events).
    pub(super) fn user_id(&self) -> &'a str {
        let s = self.send;
        s.user_id
            .as_deref()
            .or(s.external_user_id.as_deref())
            .unwrap_or_default()
    }

    pub(super) fn dispatch_id(&self) -> &'a str {
        self.send.dispatch_id.as_deref().unwrap_or(&self.send.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value;

    fn braze(kind: CurrentsKind) -> Schema {
        let text = match kind {
            CurrentsKind::Send => {
                include_str!("../../schemas/reference/users.messages.webhook.Send.avsc")
            }
            CurrentsKind::Abort => {
                include_str!("../../schemas/reference/users.messages.webhook.Abort.avsc")
            }
            CurrentsKind::Retry => {
                include_str!("../../schemas/reference/users.messages.webhook.Retry.avsc")
            }
        };
        Schema::parse_str(text).unwrap()
    }

    #[test]
    fn each_schema_is_a_compatible_superset_of_braze_s() {
        use apache_avro::schema_compatibility::SchemaCompatibility;
        for kind in CurrentsKind::ALL {
            SchemaCompatibility::can_read(kind.schema(), &braze(kind))
                .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        }
    }

    #[test]
    fn each_event_reads_back_with_braze_s_schema() {
        let send = crate::tools::examples::ExampleSend::new("s1", "ws", "https://h.example/p")
            .every_identifier()
            .build();
        for kind in CurrentsKind::ALL {
            let mut e = CurrentsEvent::new(kind, &send, 1, 1_767_000_000_500);
            e.type_ = Some("rate_limit");
            e.log = Some("held back".into());
            e.next_attempt_at = Some(1_767_000_060_000);
            let bytes = e.encode(EventEncoding::Binary, None);
            let back =
                apache_avro::from_avro_datum(kind.schema(), &mut &bytes[..], Some(&braze(kind)))
                    .unwrap();
            let Value::Record(fields) = back else {
                panic!("a record")
            };
            let get = |n: &str| fields.iter().find(|(f, _)| f == n).map(|(_, v)| v.clone());
            assert_eq!(get("id"), Some(Value::String(e.id.clone())), "{kind:?}");
            assert_eq!(get("time"), Some(Value::Int(1_767_000_000)));
            assert_eq!(
                get("campaign_name"),
                Some(Value::Union(
                    1,
                    Box::new(Value::String("Campaign name-s1".into()))
                ))
            );
            if kind != CurrentsKind::Send {
                let field = if kind == CurrentsKind::Abort {
                    "abort_type"
                } else {
                    "retry_type"
                };
                assert_eq!(
                    get(field),
                    Some(Value::Union(
                        1,
                        Box::new(Value::String("rate_limit".into()))
                    ))
                );
            }
        }
    }
}
