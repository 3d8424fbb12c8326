#!/usr/bin/env bash
# How to reach each region of the running deployment (docker-compose.yml) from this host.
set -euo pipefail
NET=${MIRADOR_NET:-172.31}
MIRADOR=${MIRADOR:-${CARGO_TARGET_DIR:-$HOME/.cache/mirador/target}/release/mirador}
A=$NET.11.11:7001,$NET.11.12:7001,$NET.11.13:7001
B=$NET.12.11:7001,$NET.12.12:7001,$NET.12.13:7001
cat <<TEXT
Mirador is up: regions a and b, 3 coordinators and 2 executors each.
  region a:  $MIRADOR admin --coordinators $A status
  region b:  $MIRADOR admin --coordinators $B status
  Kafka:     $NET.10.10:9092 (topics events, scored, dead-letter)
  metrics:   http://$NET.10.60:9090 (Prometheus: every node, the alert rules)
  a pipeline of examples/:
    $MIRADOR admin --coordinators $A create examples/compose.yaml
    $MIRADOR generate --events 100000 --poison-ratio 0.01 --kafka-topic events --brokers $NET.10.10:9092
    $MIRADOR admin --coordinators $A describe compose
  logs:      docker-compose -p mirador logs -f a-e1
  stop:      make down
TEXT
