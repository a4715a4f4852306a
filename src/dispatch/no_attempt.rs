//! The passes of a send that end without an attempt's plan: requeued by its lane (rate limit,
//! `Retry-After`, a slow host's spill), or a scheduled retry that no longer passes validation.

use std::time::Duration;

use super::classify::{Failure, FailureSource, NO_RESPONSE};
use super::currents;
use super::lane::RequeueReason;
use super::outcome::{GiveUp, Outcome};
use super::pipeline::Pipeline;
use super::plan::Turn;
use super::publish::{Abandoned, PublishError};
use super::report::{event_for, AttemptFacts, Target};
use crate::events::send_request::{invalid, InvalidKind, InvalidSend};
use crate::events::{RetryRecord, ValidSend};
use crate::kafka::Record;

impl Pipeline {
    /// A scheduled retry that no longer passes validation (the rules changed since it was scheduled): its
    /// earlier failure events promised another attempt, so a terminal one closes the story, beside the
    /// dead letter that keeps the send for a human.
    pub(super) async fn invalid_retry(
        &self,
        record: &Record,
        retry: &RetryRecord,
        why: InvalidSend,
    ) -> Result<Outcome, Abandoned> {
        let failure = Failure {
            status: NO_RESPONSE,
            source: FailureSource::InvalidRequest,
            reason: format!("no longer valid: {why}"),
            retriable: false,
            raw_response: None,
            content_length: None,
            retry_after: None,
            requested: false,
        };
        let facts = AttemptFacts {
            attempt: retry.attempts.saturating_add(1),
            duration: Duration::ZERO,
            now_ms: self.clock.wall_ms(),
            terminal: true,
            next_attempt_at_ms: None,
            source: retry.source.as_ref(),
        };
        let id = uuid::Uuid::new_v4().to_string();
        let event = event_for(
            &retry.send,
            Target::unparsed(&retry.send),
            &failure,
            facts,
            id,
        );
        match self.publisher.failure(&event).await {
            Ok(()) | Err(PublishError::Rejected { .. }) => {}
            Err(PublishError::Abandoned(a)) => return Err(a),
        }
        let ended = self
            .dead_letter(record, why, None, Some(GiveUp::NoLongerValid))
            .await;
        let at = currents::Context {
            send: &retry.send,
            host: None,
            requested_before: true,
            attempts_before: retry.attempts,
            now_ms: 0,
        };
        self.tell(ended, at).await
    }

    /// A send held back longer than `dispatch.max_hold` goes to a retry tier with its attempt count unchanged:
    /// the hold spends none of its retry budget. If the tier refuses the record, the send is dead-lettered
    /// with that reason (as a retry the tier refuses is).
    pub(super) async fn requeue(
        &self,
        record: &Record,
        send: &ValidSend,
        turn: &Turn,
        due_ms: i64,
        reason: RequeueReason,
    ) -> Result<Outcome, Abandoned> {
        let retry = RetryRecord {
            send: send.request.clone(),
            attempts: turn.number.saturating_sub(1),
            // A send not yet attempted carries the time it was first held, which is where an earlier
            // version would start its retry window (this one starts it at the first real attempt).
            first_attempt_ms: turn.first_attempt_ms.unwrap_or(self.clock.wall_ms()),
            due_ms,
            last_status: turn.last_status,
            source: turn.source.clone(),
            requested: Some(turn.requested),
        };
        let topic = self
            .tiers
            .topic_for(due_ms, self.clock.wall_ms())
            .to_string();
        match self.publisher.retry(&topic, &retry).await {
            Ok(()) => Ok(Outcome::Requeued { reason, due_ms }),
            Err(PublishError::Abandoned(a)) => Err(a),
            Err(PublishError::Rejected { topic, reason: why }) => {
                let why = invalid(
                    InvalidKind::Unpublishable,
                    format!(
                        "{} and {topic} refused the requeue: {why}",
                        reason.describe()
                    ),
                );
                self.dead_letter(record, why, None, None).await
            }
        }
    }
}
