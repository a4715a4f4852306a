//! Property: a send written with any writer schema that Avro's resolution lets hookrelay read — ours, an
//! older version without an optional field, a newer one with a field added with a default, fields reordered,
//! a `created_at` written as a plain `long` — decodes through [`SendRequest::from_writer`] to the same send
//! as hookrelay's own encoding of it (less what the writer could not carry).

use std::collections::BTreeMap;

use apache_avro::types::Value;
use apache_avro::Schema;
use proptest::prelude::*;
use serde_json::Value as Json;

use super::avro_guard::Names;
use super::send_request::{SendRequest, Webhook};
use super::SEND_REQUEST_SCHEMA_JSON;

/// The ways a producer's schema may differ from ours.
#[derive(Debug, Clone, Copy)]
enum Writer {
    Ours,
    WithoutCampaignName,
    WithPriority,
    Reordered,
    PlainLongCreatedAt,
}

fn schema(writer: Writer) -> Schema {
    let mut s: Json = serde_json::from_str(SEND_REQUEST_SCHEMA_JSON).unwrap();
    let fields = s["fields"].as_array_mut().unwrap();
    match writer {
        Writer::Ours => {}
        Writer::WithoutCampaignName => fields.retain(|f| f["name"] != "campaign_name"),
        Writer::WithPriority => fields.insert(
            2,
            serde_json::json!({"name": "priority", "type": "int", "default": 0}),
        ),
        Writer::Reordered => fields.reverse(),
        Writer::PlainLongCreatedAt => {
            for f in fields.iter_mut().filter(|f| f["name"] == "created_at") {
                f["type"] = serde_json::json!(["null", "long"]);
            }
        }
    }
    Schema::parse_str(&s.to_string()).unwrap()
}

fn written(send: &SendRequest, writer: &Schema) -> Vec<u8> {
    let Value::Record(mut fields) = apache_avro::to_value(send).unwrap() else {
        unreachable!()
    };
    fields.push(("priority".into(), Value::Int(3)));
    let value = Value::Record(fields).resolve(writer).unwrap();
    apache_avro::to_avro_datum(writer, value).unwrap()
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,16}"
}

fn sends() -> impl Strategy<Value = SendRequest> {
    (
        (
            text(),
            text(),
            proptest::option::of(text()),
            proptest::option::of(text()),
        ),
        (proptest::option::of(text()), proptest::option::of(text())),
        (
            text(),
            prop::sample::select(vec!["POST", "PUT", "GET", "DELETE"]),
            proptest::option::of(proptest::collection::btree_map(text(), text(), 0..4)),
            proptest::option::of(text()),
            proptest::option::of(0i64..4_000_000_000_000),
        ),
    )
        .prop_map(
            |((id, ws, campaign_name, canvas_name), (user_id, step), w)| {
                let (url, method, headers, body, created_at) = w;
                SendRequest {
                    id,
                    workspace_id: ws,
                    workspace_name: None,
                    user_id,
                    external_user_id: None,
                    dispatch_id: None,
                    send_id: None,
                    campaign_id: None,
                    campaign_name,
                    message_variation_id: None,
                    message_variation_name: None,
                    canvas_id: None,
                    canvas_name,
                    canvas_variation_id: None,
                    canvas_variation_name: None,
                    canvas_step_id: None,
                    canvas_step_name: step,
                    canvas_step_message_variation_id: None,
                    webhook: Webhook {
                        url,
                        request_method: method.to_string(),
                        request_headers: headers.map(|h: BTreeMap<String, String>| h),
                        body,
                    },
                    created_at,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn a_send_written_with_any_readable_writer_schema_decodes_as_ours_does(
        send in sends(),
        writer in prop::sample::select(vec![
            Writer::Ours, Writer::WithoutCampaignName, Writer::WithPriority, Writer::Reordered,
            Writer::PlainLongCreatedAt,
        ]),
    ) {
        let ours = SendRequest::decode(&[&[0u8, 0, 0, 0, 1][..], &send.to_avro()].concat(), false).unwrap();
        let writer_schema = schema(writer);
        let decoded = SendRequest::from_writer(&written(&send, &writer_schema), &writer_schema, &Names::new())
            .unwrap();
        let mut expected = ours;
        if matches!(writer, Writer::WithoutCampaignName) {
            expected.campaign_name = None;
        }
        prop_assert_eq!(decoded, expected);
    }
}
