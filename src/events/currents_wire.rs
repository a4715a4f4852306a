//! The Currents events as their schemas lay them out, field for field and in order, borrowing from the
//! event: what the schema-aware Avro serializer writes. The round-trip tests in `currents` hold each struct
//! to its schema.

use serde::Serialize;

use super::currents::CurrentsEvent;

fn int(n: Option<u32>) -> Option<i32> {
    n.map(|n| i32::try_from(n).unwrap_or(i32::MAX))
}

fn seconds(time: i64) -> i32 {
    i32::try_from(time).unwrap_or(i32::MAX)
}

/// `schemas/send_event.avsc`.
#[derive(Serialize)]
pub(super) struct Send<'a> {
    id: &'a str,
    user_id: &'a str,
    external_user_id: Option<&'a str>,
    time: i32,
    timezone: Option<&'a str>,
    campaign_id: Option<&'a str>,
    campaign_name: Option<&'a str>,
    message_variation_id: Option<&'a str>,
    message_variation_name: Option<&'a str>,
    canvas_id: Option<&'a str>,
    canvas_name: Option<&'a str>,
    canvas_variation_id: Option<&'a str>,
    canvas_variation_name: Option<&'a str>,
    canvas_step_id: Option<&'a str>,
    canvas_step_name: Option<&'a str>,
    send_id: Option<&'a str>,
    message_extras: Option<&'a str>,
    app_group_id: Option<&'a str>,
    dispatch_id: Option<&'a str>,
    endpoint_url: Option<&'a str>,
    host: Option<&'a str>,
    workspace_name: Option<&'a str>,
    attempt: Option<i32>,
}

impl<'a> From<&'a CurrentsEvent<'a>> for Send<'a> {
    fn from(e: &'a CurrentsEvent<'a>) -> Self {
        let s = e.send;
        Self {
            id: &e.id,
            user_id: e.user_id(),
            external_user_id: s.external_user_id.as_deref(),
            time: seconds(e.time),
            timezone: None,
            campaign_id: s.campaign_id.as_deref(),
            campaign_name: s.campaign_name.as_deref(),
            message_variation_id: s.message_variation_id.as_deref(),
            message_variation_name: s.message_variation_name.as_deref(),
            canvas_id: s.canvas_id.as_deref(),
            canvas_name: s.canvas_name.as_deref(),
            canvas_variation_id: s.canvas_variation_id.as_deref(),
            canvas_variation_name: s.canvas_variation_name.as_deref(),
            canvas_step_id: s.canvas_step_id.as_deref(),
            canvas_step_name: s.canvas_step_name.as_deref(),
            send_id: s.send_id.as_deref(),
            message_extras: None,
            app_group_id: Some(&s.workspace_id),
            dispatch_id: Some(e.dispatch_id()),
            endpoint_url: e.endpoint_url,
            host: e.host,
            workspace_name: s.workspace_name.as_deref(),
            attempt: int(e.attempt),
        }
    }
}

/// `schemas/abort_event.avsc`.
#[derive(Serialize)]
pub(super) struct Abort<'a> {
    abort_log: Option<&'a str>,
    abort_type: Option<&'a str>,
    app_group_id: Option<&'a str>,
    campaign_id: Option<&'a str>,
    campaign_name: Option<&'a str>,
    canvas_id: Option<&'a str>,
    canvas_name: Option<&'a str>,
    canvas_step_id: Option<&'a str>,
    canvas_step_message_variation_id: Option<&'a str>,
    canvas_step_name: Option<&'a str>,
    canvas_variation_id: Option<&'a str>,
    canvas_variation_name: Option<&'a str>,
    device_id: Option<&'a str>,
    dispatch_id: Option<&'a str>,
    external_user_id: Option<&'a str>,
    id: &'a str,
    message_variation_id: Option<&'a str>,
    message_variation_name: Option<&'a str>,
    send_id: Option<&'a str>,
    time: i32,
    timezone: Option<&'a str>,
    user_id: &'a str,
    endpoint_url: Option<&'a str>,
    host: Option<&'a str>,
    workspace_name: Option<&'a str>,
    retry_count: Option<i32>,
}

impl<'a> From<&'a CurrentsEvent<'a>> for Abort<'a> {
    fn from(e: &'a CurrentsEvent<'a>) -> Self {
        let s = e.send;
        Self {
            abort_log: e.log.as_deref(),
            abort_type: e.type_,
            app_group_id: Some(&s.workspace_id),
            campaign_id: s.campaign_id.as_deref(),
            campaign_name: s.campaign_name.as_deref(),
            canvas_id: s.canvas_id.as_deref(),
            canvas_name: s.canvas_name.as_deref(),
            canvas_step_id: s.canvas_step_id.as_deref(),
            canvas_step_message_variation_id: s.canvas_step_message_variation_id.as_deref(),
            canvas_step_name: s.canvas_step_name.as_deref(),
            canvas_variation_id: s.canvas_variation_id.as_deref(),
            canvas_variation_name: s.canvas_variation_name.as_deref(),
            device_id: None,
            dispatch_id: Some(e.dispatch_id()),
            external_user_id: s.external_user_id.as_deref(),
            id: &e.id,
            message_variation_id: s.message_variation_id.as_deref(),
            message_variation_name: s.message_variation_name.as_deref(),
            send_id: s.send_id.as_deref(),
            time: seconds(e.time),
            timezone: None,
            user_id: e.user_id(),
            endpoint_url: e.endpoint_url,
            host: e.host,
            workspace_name: s.workspace_name.as_deref(),
            retry_count: int(e.retry_count),
        }
    }
}

/// `schemas/retry_event.avsc`.
#[derive(Serialize)]
pub(super) struct Retry<'a> {
    app_group_id: Option<&'a str>,
    external_user_id: Option<&'a str>,
    id: &'a str,
    time: i32,
    user_id: &'a str,
    device_id: Option<&'a str>,
    dispatch_id: Option<&'a str>,
    send_id: Option<&'a str>,
    campaign_id: Option<&'a str>,
    message_variation_id: Option<&'a str>,
    canvas_id: Option<&'a str>,
    canvas_variation_id: Option<&'a str>,
    canvas_step_id: Option<&'a str>,
    canvas_step_message_variation_id: Option<&'a str>,
    gender: Option<&'a str>,
    country: Option<&'a str>,
    timezone: Option<&'a str>,
    language: Option<&'a str>,
    retry_type: Option<&'a str>,
    retry_log: Option<&'a str>,
    campaign_name: Option<&'a str>,
    message_variation_name: Option<&'a str>,
    canvas_name: Option<&'a str>,
    canvas_variation_name: Option<&'a str>,
    canvas_step_name: Option<&'a str>,
    endpoint_url: Option<&'a str>,
    host: Option<&'a str>,
    workspace_name: Option<&'a str>,
    retry_count: Option<i32>,
    next_attempt_at: Option<i64>,
}

impl<'a> From<&'a CurrentsEvent<'a>> for Retry<'a> {
    fn from(e: &'a CurrentsEvent<'a>) -> Self {
        let s = e.send;
        Self {
            app_group_id: Some(&s.workspace_id),
            external_user_id: s.external_user_id.as_deref(),
            id: &e.id,
            time: seconds(e.time),
            user_id: e.user_id(),
            device_id: None,
            dispatch_id: Some(e.dispatch_id()),
            send_id: s.send_id.as_deref(),
            campaign_id: s.campaign_id.as_deref(),
            message_variation_id: s.message_variation_id.as_deref(),
            canvas_id: s.canvas_id.as_deref(),
            canvas_variation_id: s.canvas_variation_id.as_deref(),
            canvas_step_id: s.canvas_step_id.as_deref(),
            canvas_step_message_variation_id: s.canvas_step_message_variation_id.as_deref(),
            gender: None,
            country: None,
            timezone: None,
            language: None,
            retry_type: e.type_,
            retry_log: e.log.as_deref(),
            campaign_name: s.campaign_name.as_deref(),
            message_variation_name: s.message_variation_name.as_deref(),
            canvas_name: s.canvas_name.as_deref(),
            canvas_variation_name: s.canvas_variation_name.as_deref(),
            canvas_step_name: s.canvas_step_name.as_deref(),
            endpoint_url: e.endpoint_url,
            host: e.host,
            workspace_name: s.workspace_name.as_deref(),
            retry_count: int(e.retry_count),
            next_attempt_at: e.next_attempt_at,
        }
    }
}
