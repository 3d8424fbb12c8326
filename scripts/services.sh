#!/usr/bin/env bash
# Development services on loopback: the Pub/Sub emulator, the Bigtable emulator and a
# Kafka-protocol broker (tansu), with the demo's topics, subscriptions and tables.
#   scripts/services.sh up     start what is not running, create what is missing
#   scripts/services.sh down   stop exactly what `up` started (by the pids it recorded)
set -euo pipefail

CACHE=${CACHE:-$HOME/.cache/mirador}
STATE=${MIRADOR_SERVICES_DIR:-$CACHE/services}
TANSU=${MIRADOR_TANSU:-$CACHE/tansu-0.6.0-sqlite/bin/tansu}
MIRADOR=${MIRADOR:-${CARGO_TARGET_DIR:-$CACHE/target}/release/mirador}
PUBSUB_EMULATOR=/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator
CBTEMULATOR=/usr/lib/google-cloud-sdk/platform/bigtable-emulator/cbtemulator
PUBSUB_PORT=${PUBSUB_PORT:-8085}
BIGTABLE_PORT=${BIGTABLE_PORT:-8086}
KAFKA_PORT=${KAFKA_PORT:-9092}
PROJECT=test-project

need() {
  [ -x "$1" ] || { echo "missing: $1 ($2)" >&2; exit 1; }
}

wait_port() {
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$2 did not listen on 127.0.0.1:$1" >&2
  exit 1
}

running() {
  [ -f "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null
}

start() {
  local name=$1 port=$2; shift 2
  if running "$name"; then
    echo "$name already running (pid $(cat "$STATE/$name.pid"))"
    return
  fi
  setsid "$@" >"$STATE/$name.log" 2>&1 &
  echo $! >"$STATE/$name.pid"
  wait_port "$port" "$name"
  echo "$name listening on 127.0.0.1:$port (pid $(cat "$STATE/$name.pid"), log $STATE/$name.log)"
}

up() {
  need "$PUBSUB_EMULATOR" "google-cloud-cli's Pub/Sub emulator"
  need "$CBTEMULATOR" "google-cloud-cli's Bigtable emulator"
  need "$TANSU" "make tansu builds it"
  need "$MIRADOR" "make build builds it"
  mkdir -p "$STATE"
  start pubsub "$PUBSUB_PORT" "$PUBSUB_EMULATOR" --host=127.0.0.1 --port="$PUBSUB_PORT"
  start bigtable "$BIGTABLE_PORT" "$CBTEMULATOR" -host 127.0.0.1 -port "$BIGTABLE_PORT"
  start kafka "$KAFKA_PORT" "$TANSU" broker \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine memory://tansu/

  for topic in events:4 scored:4 dead-letter:1; do
    "$TANSU" topic create "${topic%%:*}" --partitions "${topic##*:}" \
      --broker "tcp://127.0.0.1:$KAFKA_PORT" >/dev/null 2>&1 || true
  done
  echo "kafka topics: events (4 partitions), scored (4), dead-letter (1)"

  local rest="http://127.0.0.1:$PUBSUB_PORT/v1/projects/$PROJECT"
  for topic in events scored dead-letter; do
    curl -s -o /dev/null -X PUT "$rest/topics/$topic"
  done
  curl -s -o /dev/null -X PUT "$rest/subscriptions/events-sub" \
    -H 'content-type: application/json' \
    -d "{\"topic\": \"projects/$PROJECT/topics/events\", \"ackDeadlineSeconds\": 30}"
  echo "pub/sub ($PROJECT): topics events, scored, dead-letter; subscription events-sub"

  "$MIRADOR" bigtable-load --endpoint "127.0.0.1:$BIGTABLE_PORT" --table features \
    --csv examples/features.csv
  "$MIRADOR" bigtable-load --endpoint "127.0.0.1:$BIGTABLE_PORT" --table scores
  echo
  echo "export PUBSUB_EMULATOR_HOST=127.0.0.1:$PUBSUB_PORT BIGTABLE_EMULATOR_HOST=127.0.0.1:$BIGTABLE_PORT"
}

down() {
  for name in kafka bigtable pubsub; do
    if running "$name"; then
      local pid
      pid=$(cat "$STATE/$name.pid")
      # setsid made it a process-group leader: stop the group (the emulator's JVM too).
      kill -- "-$pid" 2>/dev/null || kill "$pid"
      echo "stopped $name (pid $pid)"
    fi
    rm -f "$STATE/$name.pid"
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
