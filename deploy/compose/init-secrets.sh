#!/bin/sh
# Creates ./secrets with random values for compose.yaml (once; existing
# files are kept). The files are the only copy: back them up, especially
# credentials-key, which decrypts stored connection-request passwords.
set -eu
cd "$(dirname "$0")"
mkdir -p secrets
chmod 700 secrets
new() { [ -s "secrets/$1" ] || { printf '%s' "$2" > "secrets/$1"; echo "created secrets/$1"; }; }
rand() { head -c "$1" /dev/urandom | base64 | tr -d '\n'; }
new postgres-password "$(rand 24 | tr -d '/+=')"
new database-url "postgres://duet:$(cat secrets/postgres-password)@postgres:5432/duet?sslmode=disable"
new cwmp-password "$(rand 18 | tr -d '/+=')"
new credentials-key "$(rand 32)"
# The duet image runs as uid 65532; the secrets are bind-mounted files.
chmod 644 secrets/*
