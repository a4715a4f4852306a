//! What a produce error means: retry it, write something else instead, or end the process. Pure.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// What a produce error means for the record that hit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProduceFault {
    /// Retry the same record later.
    Transient,
    /// The record will never be accepted as it is.
    Permanent,
    /// The producer cannot go on; the process must restart.
    Fatal,
}

impl ProduceFault {
    pub fn label(self) -> &'static str {
        match self {
            ProduceFault::Transient => "transient",
            ProduceFault::Permanent => "permanent",
            ProduceFault::Fatal => "fatal",
        }
    }
}

/// Sorts a produce error; `producer_failed` is whether librdkafka reports a fatal error on the producer
/// (an idempotent producer that lost its sequence: the error itself may carry the original broker code).
/// Pure, so every code's kind is unit-tested.
pub fn produce_fault(e: &KafkaError, producer_failed: bool) -> ProduceFault {
    use RDKafkaErrorCode as C;
    if producer_failed {
        return ProduceFault::Fatal;
    }
    let code = match e {
        KafkaError::MessageProduction(c) => *c,
        _ => return ProduceFault::Transient,
    };
    match code {
        C::Fatal | C::Fenced | C::ProducerFenced => ProduceFault::Fatal,
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::MessageBatchTooLarge
        | C::InvalidMessage
        | C::UnknownTopic
        | C::UnknownPartition
        | C::UnknownTopicOrPartition
        | C::InvalidTopic
        | C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::PolicyViolation
        | C::InvalidRecord
        | C::InvalidArgument
        | C::InvalidRequiredAcks
        | C::UnsupportedForMessageFormat => ProduceFault::Permanent,
        _ => ProduceFault::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(c: RDKafkaErrorCode) -> ProduceFault {
        produce_fault(&KafkaError::MessageProduction(c), false)
    }

    #[test]
    fn produce_errors_are_sorted_into_transient_permanent_and_fatal() {
        use RDKafkaErrorCode as C;
        for c in [
            C::MessageSizeTooLarge,
            C::UnknownTopicOrPartition,
            C::UnknownTopic,
            C::TopicAuthorizationFailed,
            C::InvalidRecord,
        ] {
            assert_eq!(fault(c), ProduceFault::Permanent, "{c:?}");
        }
        for c in [
            C::MessageTimedOut,
            C::BrokerTransportFailure,
            C::NotLeaderForPartition,
            C::LeaderNotAvailable,
            C::NotEnoughReplicas,
            C::QueueFull,
            C::RequestTimedOut,
            C::InvalidProducerEpoch,
        ] {
            assert_eq!(fault(c), ProduceFault::Transient, "{c:?}");
        }
        assert_eq!(fault(C::Fatal), ProduceFault::Fatal);
        assert_eq!(
            produce_fault(
                &KafkaError::MessageProduction(C::OutOfOrderSequenceNumber),
                true
            ),
            ProduceFault::Fatal,
            "whatever the code, a producer librdkafka declared failed is fatal"
        );
        assert_eq!(
            produce_fault(&KafkaError::Canceled, false),
            ProduceFault::Transient,
            "anything unknown is retried"
        );
    }
}
