#!/usr/bin/env bash
# Creates hookrelay's topics on a real Kafka cluster (hookrelay never creates topics itself).
# Needs Kafka's kafka-topics.sh (any Kafka distribution or the apache/kafka image).
#
#   BOOTSTRAP=kafka:9092 REPLICATION=3 deploy/create-topics.sh
#
# Environment (defaults in brackets):
#   BOOTSTRAP [localhost:9092]   REPLICATION [3]   SEND_PARTITIONS [12]   FAILURE_PARTITIONS [12]
#   KAFKA_TOPICS [kafka-topics.sh on PATH, else /opt/kafka/bin/kafka-topics.sh]
#   COMMAND_CONFIG [none]: a client properties file for SASL/TLS clusters
# Topic names are hookrelay's defaults; change them here if you change [topics] in the config.
set -euo pipefail

bootstrap=${BOOTSTRAP:-localhost:9092}
replication=${REPLICATION:-3}
sends=${SEND_PARTITIONS:-12}
failures=${FAILURE_PARTITIONS:-12}
kt=${KAFKA_TOPICS:-$(command -v kafka-topics.sh || echo /opt/kafka/bin/kafka-topics.sh)}
extra=()
[ -n "${COMMAND_CONFIG:-}" ] && extra+=(--command-config "$COMMAND_CONFIG")

create() {
  local topic=$1 partitions=$2
  shift 2
  "$kt" --bootstrap-server "$bootstrap" ${extra[@]+"${extra[@]}"} --create --if-not-exists \
    --topic "$topic" --partitions "$partitions" --replication-factor "$replication" "$@"
}

# Send requests in: partitions bound how many dispatchers can share the work.
create webhook-sends "$sends"
# Failure events out, keyed by workspace. The aggregator replays 24 hours of them after every restart or
# rebalance, so keep at least that (3 days here); partitions bound how many aggregators can share the work.
create webhook-failures "$failures" --config retention.ms=259200000
# Undecodable or invalid send requests, unchanged, with the reason in headers: keep them long enough to look.
create webhook-dead-letters 3 --config retention.ms=1209600000
# Alert decisions, one per workspace and window: compacted, so the latest decision per workspace stays.
create webhook-alerts 3 --config cleanup.policy=compact
# The aggregator's checkpoints: compacted, so the latest state per partition and workspace stays. Records
# are placed by failure-topic partition, so as many partitions as the failure topic spreads the restore.
create webhook-aggregate-state "$failures" --config cleanup.policy=compact
# Retry tiers ([topics].retry_tiers): consumed by the dispatchers; records wait here until due. Retention
# must comfortably exceed the longest tier (2h).
for tier in 10s 1m 5m 30m 2h; do
  create "webhook-retries-$tier" "$sends" --config retention.ms=86400000
done
# What dispatchers see of hosts (unhealthy answers, pauses, Retry-After holds), shared: compacted, so the latest
# report of each dispatcher, host and workspace stays; a restart reads it back. Small: a report per change.
create webhook-host-state 3 --config cleanup.policy=compact
# Braze Currents' Send, Abort and Retry events, written when [events] enables them; keyed by workspace.
create webhook-send-events "$failures" --config retention.ms=259200000
create webhook-abort-events "$failures" --config retention.ms=259200000
create webhook-retry-events "$failures" --config retention.ms=259200000
echo "hookrelay topics ready on $bootstrap"
