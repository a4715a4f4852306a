//! Example send requests, for the demo, the load harness, the traffic generator and the tests: one builder
//! instead of the twenty-field literal written out in each.

use std::collections::BTreeMap;

use crate::events::send_request::Webhook;
use crate::events::SendRequest;

/// Builds a [`SendRequest`]: `POST` to a URL, with only `id` and `workspace_id` set until told otherwise.
#[derive(Debug, Clone)]
pub struct ExampleSend(SendRequest);

impl ExampleSend {
    pub fn new(
        id: impl Into<String>,
        workspace: impl Into<String>,
        url: impl Into<String>,
    ) -> Self {
        Self(SendRequest {
            id: id.into(),
            workspace_id: workspace.into(),
            workspace_name: None,
            user_id: None,
            external_user_id: None,
            dispatch_id: None,
            send_id: None,
            campaign_id: None,
            campaign_name: None,
            message_variation_id: None,
            message_variation_name: None,
            canvas_id: None,
            canvas_name: None,
            canvas_variation_id: None,
            canvas_variation_name: None,
            canvas_step_id: None,
            canvas_step_name: None,
            canvas_step_message_variation_id: None,
            webhook: Webhook {
                url: url.into(),
                request_method: "POST".into(),
                request_headers: None,
                body: None,
            },
            created_at: None,
        })
    }

    /// Every optional identifier and name filled in, derived from the id (`campaign-<id>`, …): for checks
    /// that each is copied onto failure events.
    pub fn every_identifier(mut self) -> Self {
        let id = self.0.id.clone();
        let f = |field: &str| Some(format!("{field}-{id}"));
        let r = &mut self.0;
        r.workspace_name = Some(format!("Workspace <{}> & co", r.workspace_id));
        r.user_id = f("user");
        r.external_user_id = f("ext");
        r.dispatch_id = f("dispatch");
        r.send_id = f("send");
        r.campaign_id = f("campaign");
        r.campaign_name = f("Campaign name");
        r.message_variation_id = f("mv");
        r.message_variation_name = f("MV name");
        r.canvas_id = f("canvas");
        r.canvas_name = f("Canvas name");
        r.canvas_variation_id = f("cv");
        r.canvas_variation_name = f("CV name");
        r.canvas_step_id = f("step");
        r.canvas_step_name = f("Step name");
        r.canvas_step_message_variation_id = f("smv");
        self
    }

    pub fn workspace_name(mut self, name: impl Into<String>) -> Self {
        self.0.workspace_name = Some(name.into());
        self
    }

    pub fn user(mut self, user_id: impl Into<String>) -> Self {
        self.0.user_id = Some(user_id.into());
        self
    }

    pub fn dispatch_id(mut self, id: impl Into<String>) -> Self {
        self.0.dispatch_id = Some(id.into());
        self
    }

    /// A campaign send (with its first message variation).
    pub fn campaign(mut self, id: impl Into<String>, name: impl Into<String>) -> Self {
        self.0.campaign_id = Some(id.into());
        self.0.campaign_name = Some(name.into());
        self.0.message_variation_id = Some("variant_a".into());
        self.0.message_variation_name = Some("Variant A".into());
        self
    }

    /// A Canvas send (from its first step).
    pub fn canvas(mut self, id: impl Into<String>, name: impl Into<String>) -> Self {
        self.0.canvas_id = Some(id.into());
        self.0.canvas_name = Some(name.into());
        self.0.canvas_step_id = Some("step_1".into());
        self.0.canvas_step_name = Some("Day 1".into());
        self
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.0
            .webhook
            .request_headers
            .get_or_insert_with(BTreeMap::new)
            .insert(name.into(), value.into());
        self
    }

    /// A JSON body, with its content type.
    pub fn json_body(self, body: impl Into<String>) -> Self {
        let mut s = self.header("content-type", "application/json");
        s.0.webhook.body = Some(body.into());
        s
    }

    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.0.webhook.body = Some(body.into());
        self
    }

    pub fn created_at(mut self, unix_ms: i64) -> Self {
        self.0.created_at = Some(unix_ms);
        self
    }

    pub fn build(self) -> SendRequest {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Rules;

    #[test]
    fn every_example_is_a_valid_send() {
        let examples = [
            ExampleSend::new("a", "ws", "https://h.example/p").build(),
            ExampleSend::new("b", "ws", "https://h.example/p")
                .every_identifier()
                .json_body("{}")
                .created_at(1)
                .build(),
            ExampleSend::new("c", "ws", "https://h.example/p")
                .campaign("cmp_1", "Spring")
                .canvas("cnv_1", "Onboarding")
                .user("u1")
                .dispatch_id("d1")
                .workspace_name("Acme")
                .header("x-trace", "t")
                .body("b")
                .build(),
        ];
        for s in examples {
            s.validate(&Rules::default()).expect("valid");
        }
    }
}
