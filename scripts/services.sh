#!/usr/bin/env bash
# Make sure the services Duet's tests and `make run` use are running:
#   scripts/services.sh postgres nats mosquitto rabbitmq chromium
# Each one is started if installed and down, installed with apt-get when
# missing and we are root, and otherwise named in one clear line saying what
# to install. Idempotent; safe to run on every `make test`.
set -euo pipefail

log() { printf 'services: %s\n' "$*" >&2; }
die() { printf 'services: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port name seconds
	local i
	for ((i = 0; i < $3 * 10; i++)); do
		port_open "$1" && return 0
		sleep 0.1
	done
	die "$2 did not open port $1 within $3 s"
}

APT_UPDATED=
apt_install() { # package...
	if [[ $(id -u) -ne 0 ]]; then
		die "$* is not installed; install it (e.g. sudo apt-get install $*) and rerun"
	fi
	command -v apt-get >/dev/null || die "$* is not installed and there is no apt-get; install it and rerun"
	if [[ -z $APT_UPDATED ]]; then
		log "apt-get update"
		DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
		APT_UPDATED=1
	fi
	log "installing $*"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Run a command as the postgres OS user (peer auth on the socket).
as_postgres() {
	if [[ $(id -un) == postgres ]]; then "$@"; elif [[ $(id -u) -eq 0 ]]; then su postgres -s /bin/sh -c "$(printf '%q ' "$@")"; else "$@"; fi
}

ensure_postgres() {
	if ! command -v pg_ctlcluster >/dev/null && ! command -v postgres >/dev/null; then
		apt_install postgresql
	fi
	if ! port_open 5432; then
		log "starting PostgreSQL"
		local v
		v=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
		[[ -n $v ]] || die "PostgreSQL is installed but has no cluster in /etc/postgresql"
		pg_ctlcluster --skip-systemctl-redirect "$v" main start
		wait_port 5432 PostgreSQL 30
	fi
	# A role for the current user, so the Unix socket's peer auth lets us in
	# on a fresh install (Debian's TCP default wants a password).
	local me
	me=$(id -un)
	if [[ $me != postgres ]] && ! psql -h /var/run/postgresql -d postgres -tAc 'select 1' >/dev/null 2>&1; then
		[[ $(id -u) -eq 0 ]] || die "PostgreSQL has no role for $me; run: sudo -u postgres createuser -s $me"
		log "creating PostgreSQL role $me"
		as_postgres psql -q -d postgres -c "CREATE ROLE \"$me\" SUPERUSER LOGIN" >/dev/null
	fi
}

ensure_database() { # name
	if ! psql -h /var/run/postgresql -d postgres -tAc "select 1 from pg_database where datname='$1'" | grep -q 1; then
		log "creating database $1"
		psql -h /var/run/postgresql -d postgres -qc "CREATE DATABASE \"$1\"" >/dev/null
	fi
}

ensure_nats() {
	command -v nats-server >/dev/null || [[ -x /usr/sbin/nats-server ]] || apt_install nats-server
	if ! port_open 4222; then
		log "starting NATS"
		mkdir -p /var/lib/nats-server
		start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
			-a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
		wait_port 4222 NATS 30
	fi
}

ensure_mosquitto() {
	command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] || apt_install mosquitto
	# The MQTT 3.1.1 interop test drives mosquitto_pub/mosquitto_sub.
	command -v mosquitto_pub >/dev/null || apt_install mosquitto-clients
	if ! port_open 1883; then
		log "starting Mosquitto"
		/usr/sbin/mosquitto -d -c /etc/mosquitto/mosquitto.conf
		wait_port 1883 Mosquitto 30
	fi
}

# Headless Chromium for the web console's end-to-end tests (e2e/console_test.go
# drives it with chromedp); not a service, only installed.
ensure_chromium() {
	command -v chromium >/dev/null || apt_install chromium
}

ensure_rabbitmq() {
	command -v rabbitmq-server >/dev/null || [[ -x /usr/sbin/rabbitmq-server ]] || apt_install rabbitmq-server
	if ! port_open 5672; then
		log "starting RabbitMQ"
		rabbitmq-server -detached
		wait_port 5672 RabbitMQ 120
	fi
	if ! port_open 61613; then
		log "enabling RabbitMQ's STOMP plugin"
		rabbitmq-plugins enable rabbitmq_stomp >/dev/null
		wait_port 61613 "RabbitMQ STOMP" 60
	fi
}

[[ $# -gt 0 ]] || set -- postgres nats mosquitto rabbitmq
for svc in "$@"; do
	case $svc in
	postgres) ensure_postgres ;;
	nats) ensure_nats ;;
	mosquitto) ensure_mosquitto ;;
	rabbitmq) ensure_rabbitmq ;;
	chromium) ensure_chromium ;;
	db:*) ensure_postgres && ensure_database "${svc#db:}" ;;
	*) die "unknown service $svc" ;;
	esac
done
