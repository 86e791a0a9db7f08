#!/usr/bin/env bash
# `make run`: Duet with its embedded NATS and brokers, on a fresh machine or
# on a development machine whose standard ports are already held by real
# NATS/Mosquitto/RabbitMQ. Settings you export (DUET_*) always win.
set -euo pipefail
cd "$(dirname "$0")/.."

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pick VAR standard-port fallback-port what: keep the standard port when it is
# free, else use the fallback and say so.
pick() {
	local var=$1 std=$2 alt=$3 what=$4
	if [[ -n ${!var:-} ]]; then return; fi
	if port_open "$std"; then
		echo "run: port $std is already in use (by a $what, presumably); the embedded one uses $alt ($var)" >&2
		export "$var=$alt"
	fi
}

if [[ -z ${DUET_DATABASE_URL:-} ]]; then
	scripts/services.sh db:duet
	export DUET_DATABASE_URL="postgres:///duet?host=/var/run/postgresql"
fi
[[ -n ${DUET_NATS_URL:-} ]] || pick DUET_NATS_PORT 4222 14222 "NATS server"
[[ -n ${DUET_MQTT_URL:-} ]] || pick DUET_MQTT_PORT 1883 11883 "MQTT broker"
[[ -n ${DUET_STOMP_ADDR:-} ]] || pick DUET_STOMP_PORT 61613 16613 "STOMP broker"
export DUET_DATA_DIR=${DUET_DATA_DIR:-.data}
if [[ -z ${DUET_CWMP_AUTH:-} ]]; then
	echo "run: DUET_CWMP_AUTH=none for this development run (CPEs are not authenticated); set it to shared or per-device for anything real" >&2
	export DUET_CWMP_AUTH=none
fi
export DUET_FILE_ADDR=${DUET_FILE_ADDR-:7548}
exec ./bin/duet serve "$@"
