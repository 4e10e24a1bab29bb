#!/usr/bin/env bash
# Container smoke test (make docker-smoke): build both image flavours (SMOKE_FLAVORS, default "cpu gpu") from the one
# Dockerfile, and for each: run it, time its start (docker run to /readyz 200), wait for Docker's own HEALTHCHECK to
# say healthy, upscale one image over HTTP, read /v1/models, stop it with SIGTERM and check it drained and exited 0.
# On a host with no GPU (or no NVIDIA runtime in Docker) the GPU image must start anyway, log "running on the CPU"
# with the reason and say so in /v1/models (device, device_reason).
#
# Engine, base image and wheels: see deploy/docker-lib.sh (no registry needed; a private dockerd as root). Where no
# engine can be had it prints SKIP and exits 0. Everything it starts is stopped and removed on exit (containers,
# images unless SMOKE_KEEP_IMAGE=1, HTTP server, private dockerd); the base image and the wheel cache
# (~/.cache/upscaler-docker-smoke) stay for the next run. SMOKE_RESULTS=FILE writes the sizes and times as JSON,
# labelled with the machine (bench.machine.describe).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"            # host Python with pip, for `pip download` and the HTTP client
FLAVORS="${SMOKE_FLAVORS:-cpu gpu}"
PORT="${SMOKE_PORT:-18080}"            # the service's port on the host network
WORK="$(mktemp -d /tmp/upscaler-docker-smoke.XXXXXX)"
CONTAINER=""

log() { printf '[docker-smoke] %s\n' "$*" >&2; }
since() { awk -v now="$(date +%s.%N)" -v t="$1" 'BEGIN {printf "%.3f", now - t}'; }
# shellcheck source=deploy/docker-lib.sh
. "$ROOT/deploy/docker-lib.sh"

cleanup() {
    local rc=$?
    set +e
    if [ -n "$CONTAINER" ] && docker container inspect "$CONTAINER" >/dev/null 2>&1; then
        [ "$rc" -ne 0 ] && { log "container log:"; docker logs "$CONTAINER" 2>&1 | tail -n 40 >&2; }
        docker rm -f "$CONTAINER" >/dev/null
    fi
    lib_cleanup
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

engine_up
base_image
requirements=()
for flavor in $FLAVORS; do requirements+=("$ROOT/deploy/docker/requirements-$flavor.txt"); done
serve_wheels "${requirements[@]}"
# A GPU is used where the engine can give one (the NVIDIA runtime and a GPU); elsewhere the GPU image runs without.
GPU_ARGS=()
if nvidia-smi -L >/dev/null 2>&1 && docker info --format '{{json .Runtimes}}' | grep -q nvidia; then GPU_ARGS=(--gpus 1); fi

smoke() {  # smoke FLAVOR: build, run, check, stop; appends a line of figures to $WORK/results.jsonl
    local flavor=$1 image="upscaler:smoke-$1" started ready_s build_s size health code container_log gpu=()
    [ "$flavor" = gpu ] && gpu=("${GPU_ARGS[@]}")
    log "building $image (FLAVOR=$flavor)"
    started=$(date +%s.%N)
    build_image "$image" "$flavor"
    build_s=$(since "$started")
    size=$(docker image inspect --format '{{.Size}}' "$image")
    log "$flavor image: $(awk -v b="$size" 'BEGIN {printf "%.0f MB", b / 1e6}'), built in $(printf '%.0f' "$build_s") s"

    # As docker-compose.yml runs it: read-only root, /tmp a tmpfs, no capabilities. Host network: no bridge needed.
    CONTAINER="upscaler-smoke-$flavor-$$"
    started=$(date +%s.%N)
    docker run --detach --name "$CONTAINER" --network host --read-only --tmpfs /tmp \
        --cap-drop ALL --security-opt no-new-privileges "${gpu[@]}" \
        --health-interval 2s --health-start-period 60s \
        -e UPSCALER_HOST=127.0.0.1 -e UPSCALER_PORT="$PORT" -e UPSCALER_THREADS=1 -e UPSCALER_DRAIN_SECONDS=1 \
        "$image" >/dev/null
    log "waiting for /readyz and for the HEALTHCHECK to say healthy"
    "$PYTHON" "$ROOT/deploy/docker-smoke-client.py" "http://127.0.0.1:$PORT" wait-ready 180
    ready_s=$(since "$started")
    log "$flavor image: ready $(printf '%.1f' "$ready_s") s after docker run"
    [ "$(docker exec "$CONTAINER" id -u)" != 0 ] || fail "the service runs as root"
    for _ in $(seq 60); do
        health="$(docker inspect --format '{{.State.Health.Status}}' "$CONTAINER")"
        [ "$health" = healthy ] && break
        sleep 1
    done
    [ "$health" = healthy ] || fail "HEALTHCHECK says $health"

    "$PYTHON" "$ROOT/deploy/docker-smoke-client.py" "http://127.0.0.1:$PORT" upscale
    local want=cpu
    [ "$flavor" = gpu ] && [ "${#gpu[@]}" -gt 0 ] && want=cuda
    "$PYTHON" "$ROOT/deploy/docker-smoke-client.py" "http://127.0.0.1:$PORT" device "$want" >"$WORK/device.json"
    # The image compiles the PNG deflater and reader too; without them, PNGs would quietly fall back to ISA-L's
    # level 1 and to Pillow's reader.
    for part in rle_deflate:deflater png_reader:reader; do
        built="$(docker exec "$CONTAINER" /opt/venv/bin/python -c \
            "from service.imageio import ${part%%:*} as m; print(m.unavailable() or 'built')")"
        [ "$built" = built ] || fail "the $flavor image has no PNG ${part#*:}: $built"
    done
    log "PNG deflater and reader: built"

    log "docker stop (SIGTERM)"
    docker stop --time 30 "$CONTAINER" >/dev/null
    code="$(docker inspect --format '{{.State.ExitCode}}' "$CONTAINER")"
    [ "$code" = 0 ] || fail "exit code $code after SIGTERM"
    # Read the whole log first: with pipefail, `docker logs | grep -q` fails whenever grep stops reading before
    # docker logs has written everything (SIGPIPE), even though the line is there.
    container_log="$(docker logs "$CONTAINER" 2>&1)"
    grep -q draining <<<"$container_log" || fail "no 'draining' in the log: SIGTERM did not reach the service"
    if [ "$want" = cpu ] && [ "$flavor" = gpu ]; then
        grep "running on the CPU" <<<"$container_log" >&2 \
            || fail "the GPU image on a host without a GPU did not log 'running on the CPU'"
    fi
    docker rm "$CONTAINER" >/dev/null
    CONTAINER=""
    "$PYTHON" -c 'import json, sys
device = json.load(open(sys.argv[5]))
print(json.dumps({"flavor": sys.argv[1], "image_bytes": int(sys.argv[2]), "build_s": round(float(sys.argv[3]), 1),
                  "ready_after_docker_run_s": round(float(sys.argv[4]), 2), **device}))' \
        "$flavor" "$size" "$build_s" "$ready_s" "$WORK/device.json" >>"$WORK/results.jsonl"
    log "PASS ($flavor): built, healthy, upscaled, drained and exited 0"
}

for flavor in $FLAVORS; do smoke "$flavor"; done
if [ -n "${SMOKE_RESULTS:-}" ]; then
    (cd "$ROOT" && "$PYTHON" - "$WORK/results.jsonl" "$BASE" "$SMOKE_RESULTS" <<'PY'
import json, os, sys
from bench.machine import describe
rows = [json.loads(line) for line in open(sys.argv[1])]
result = {"machine": describe(), "what": "make docker-smoke: both image flavours built from one Dockerfile on one base, "
          "started with docker run (host network, read-only root) and timed to /readyz 200",
          "base": sys.argv[2], "load_average_1min_at_the_end": round(os.getloadavg()[0], 2),
          "flavors": {row.pop("flavor"): row for row in rows}}
open(sys.argv[3], "w").write(json.dumps(result, indent=2) + "\n")
PY
    )
    log "figures written to $SMOKE_RESULTS"
fi
log "PASS: $FLAVORS"
