#!/usr/bin/env bash
# Container smoke test (make docker-smoke): build the CPU image, run it, wait for /readyz and for Docker's own
# HEALTHCHECK to report healthy, upscale one image over HTTP, stop it with SIGTERM and check it drained and exited 0.
#
# Works on a machine without an image registry or with PyPI behind a TLS proxy that builds cannot use:
#   * the Docker engine: the running one (DOCKER_HOST or the default socket); else, as root, a private dockerd
#     started here on its own socket with no bridge and no iptables rules (containers and builds use the host
#     network), stopped again on exit;
#   * the base image: SMOKE_BASE_IMAGE if set; else the Dockerfile's python slim image if present or pullable;
#     else a minimal Debian bookworm (python3, python3-venv) made with debootstrap and `docker import`d once as
#     upscaler-smoke-base:bookworm (kept in the engine as a cache);
#   * the wheels: downloaded on the host with pip (which has the host's certificates) and served to the build from
#     127.0.0.1 by a throw-away HTTP server (build-args PIP_NO_INDEX, PIP_FIND_LINKS, PIP_TRUSTED_HOST).
# Where no engine can be had it prints SKIP and exits 0. Everything it starts is stopped and removed on exit
# (container, image unless SMOKE_KEEP_IMAGE=1, HTTP server, private dockerd); the base image and the wheel cache
# (~/.cache/upscaler-docker-smoke) stay for the next run.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"            # host Python with pip, for `pip download` and the HTTP client
IMAGE="${SMOKE_IMAGE:-upscaler:smoke}"
PORT="${SMOKE_PORT:-18080}"            # the service's port on the host network
WHEEL_PORT="${SMOKE_WHEEL_PORT:-18081}"
DEFAULT_BASE="$(sed -n 's/^ARG CPU_BASE=//p' "$ROOT/Dockerfile")"
LOCAL_BASE="upscaler-smoke-base:bookworm"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/upscaler-docker-smoke"
WORK="$(mktemp -d /tmp/upscaler-docker-smoke.XXXXXX)"
CONTAINER="upscaler-smoke-$$"
DOCKERD_PID="" WHEEL_SERVER_PID="" BUILT=""

log() { printf '[docker-smoke] %s\n' "$*" >&2; }
skip() { log "SKIP: $*"; exit 0; }
fail() { log "FAIL: $*"; exit 1; }

cleanup() {
    local rc=$?
    set +e
    if docker container inspect "$CONTAINER" >/dev/null 2>&1; then
        [ "$rc" -ne 0 ] && { log "container log:"; docker logs "$CONTAINER" 2>&1 | tail -n 40 >&2; }
        docker rm -f "$CONTAINER" >/dev/null
    fi
    if [ -n "$BUILT" ] && [ "${SMOKE_KEEP_IMAGE:-0}" != 1 ]; then
        docker image rm "$IMAGE" >/dev/null 2>&1
        # The legacy builder keeps every other stage as an untagged image: remove those this build left.
        comm -13 <(sort "$WORK/dangling-before") <(docker images --quiet --no-trunc --filter dangling=true | sort) \
            | xargs -r docker image rm >/dev/null 2>&1
    fi
    [ -n "$WHEEL_SERVER_PID" ] && kill "$WHEEL_SERVER_PID" 2>/dev/null && wait "$WHEEL_SERVER_PID" 2>/dev/null
    if [ -n "$DOCKERD_PID" ]; then
        log "stopping the dockerd started here (pid $DOCKERD_PID)"
        kill "$DOCKERD_PID" 2>/dev/null
        for _ in $(seq 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
        kill -9 "$DOCKERD_PID" 2>/dev/null
        wait "$DOCKERD_PID" 2>/dev/null
        # dockerd leaves its network namespace bind-mounted under --exec-root (exec/netns/default): unmount,
        # deepest first, whatever is still mounted under the work folder.
        awk -v w="$WORK/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n 1 umount -l
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the engine ---------------------------------------------------------------------------------------------------
command -v docker >/dev/null || skip "no docker CLI (Debian: apt-get install docker.io)"
if ! docker info >/dev/null 2>&1; then
    [ "$(id -u)" -eq 0 ] || skip "no Docker engine answers and starting one needs root"
    command -v dockerd >/dev/null || skip "no Docker engine answers and there is no dockerd to start (apt-get install docker.io)"
    log "no engine answers: starting a private dockerd (no bridge, no iptables)"
    mkdir -p "$WORK/exec"
    dockerd --host "unix://$WORK/docker.sock" --pidfile "$WORK/dockerd.pid" --exec-root "$WORK/exec" \
        --bridge none --iptables=false --ip6tables=false --ip-masq=false >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    export DOCKER_HOST="unix://$WORK/docker.sock"
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -n 20 "$WORK/dockerd.log" >&2; DOCKERD_PID=""; skip "dockerd exited at start"; }
        sleep 1
    done
    docker info >/dev/null 2>&1 || { tail -n 20 "$WORK/dockerd.log" >&2; skip "dockerd did not answer within 60 s"; }
fi
log "engine: $(docker version --format 'server {{.Server.Version}}, client {{.Client.Version}}')"

# --- the base image -----------------------------------------------------------------------------------------------
make_local_base() {
    command -v debootstrap >/dev/null || skip "no base image (no registry reachable) and no debootstrap (apt-get install debootstrap)"
    [ "$(id -u)" -eq 0 ] || skip "no base image, and debootstrap needs root"
    log "making $LOCAL_BASE with debootstrap (a few minutes, once)"
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$WORK/rootfs" \
        "${SMOKE_DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -n 20 "$WORK/debootstrap.log" >&2; fail "debootstrap failed"; }
    rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
    tar -C "$WORK/rootfs" -c . | docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' - "$LOCAL_BASE" >/dev/null
    rm -rf "$WORK/rootfs"
}
if [ -n "${SMOKE_BASE_IMAGE:-}" ]; then
    BASE="$SMOKE_BASE_IMAGE"
elif docker image inspect "$DEFAULT_BASE" >/dev/null 2>&1 || timeout 60 docker pull -q "$DEFAULT_BASE" >/dev/null 2>&1; then
    BASE="$DEFAULT_BASE"
else
    docker image inspect "$LOCAL_BASE" >/dev/null 2>&1 || make_local_base
    BASE="$LOCAL_BASE"
fi
log "base image: $BASE"

# --- wheels for the base's Python, served from the host -----------------------------------------------------------
read -r PYVER LIBC ARCH < <(docker run --rm --network none --entrypoint python3 "$BASE" -c \
    'import platform, sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}", platform.libc_ver()[1].replace(".", "_"), platform.machine())')
WHEELS="$CACHE/wheels-cp${PYVER/./}-$ARCH"
mkdir -p "$WHEELS"
log "downloading wheels for CPython $PYVER, glibc $LIBC, $ARCH into $WHEELS"
# pip takes --platform literally: list every manylinux tag the base's glibc accepts, newest first.
platforms=()
for minor in $(seq "${LIBC#*_}" -1 5); do platforms+=(--platform "manylinux_2_${minor}_${ARCH}"); done
platforms+=(--platform "manylinux2014_${ARCH}" --platform "manylinux2010_${ARCH}" --platform "manylinux1_${ARCH}")
"$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: --dest "$WHEELS" \
    --python-version "$PYVER" "${platforms[@]}" -r "$ROOT/deploy/docker/requirements-cpu.txt" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
"$PYTHON" -m http.server --bind 127.0.0.1 --directory "$WHEELS" "$WHEEL_PORT" >"$WORK/wheels.log" 2>&1 &
WHEEL_SERVER_PID=$!

# --- build --------------------------------------------------------------------------------------------------------
log "building $IMAGE (FLAVOR=cpu)"
docker images --quiet --no-trunc --filter dangling=true >"$WORK/dangling-before"
BUILT=1
# GPU_BASE too: the legacy builder (no buildx) runs every stage, so it would try to pull the CUDA image.
docker build --network host --tag "$IMAGE" --build-arg FLAVOR=cpu \
    --build-arg CPU_BASE="$BASE" --build-arg GPU_BASE="$BASE" \
    --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS="http://127.0.0.1:$WHEEL_PORT/" \
    --build-arg PIP_TRUSTED_HOST=127.0.0.1 "$ROOT" >"$WORK/build.log" 2>&1 \
    || { tail -n 40 "$WORK/build.log" >&2; fail "docker build failed"; }
log "image size: $(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}')"

# --- run ----------------------------------------------------------------------------------------------------------
# As docker-compose.yml runs it: read-only root, /tmp a tmpfs, no capabilities. Host network: no bridge needed.
docker run --detach --name "$CONTAINER" --network host --read-only --tmpfs /tmp \
    --cap-drop ALL --security-opt no-new-privileges \
    --health-interval 2s --health-start-period 60s \
    -e UPSCALER_HOST=127.0.0.1 -e UPSCALER_PORT="$PORT" -e UPSCALER_THREADS=1 -e UPSCALER_DRAIN_SECONDS=1 \
    "$IMAGE" >/dev/null
[ "$(docker exec "$CONTAINER" id -u)" != 0 ] || fail "the service runs as root"

log "waiting for /readyz and for the HEALTHCHECK to say healthy"
"$PYTHON" "$ROOT/deploy/docker-smoke-client.py" "http://127.0.0.1:$PORT" wait-ready 120
for _ in $(seq 60); do
    health="$(docker inspect --format '{{.State.Health.Status}}' "$CONTAINER")"
    [ "$health" = healthy ] && break
    sleep 1
done
[ "$health" = healthy ] || fail "HEALTHCHECK says $health"

"$PYTHON" "$ROOT/deploy/docker-smoke-client.py" "http://127.0.0.1:$PORT" upscale
# The image compiles the PNG deflater and reader too; without them, PNGs would quietly fall back to ISA-L's level 1
# and to Pillow's reader.
for part in rle_deflate:deflater png_reader:reader; do
    built="$(docker exec "$CONTAINER" /opt/venv/bin/python -c \
        "from service.imageio import ${part%%:*} as m; print(m.unavailable() or 'built')")"
    [ "$built" = built ] || fail "the image has no PNG ${part#*:}: $built"
    log "PNG ${part#*:}: built"
done

# --- graceful stop ------------------------------------------------------------------------------------------------
log "docker stop (SIGTERM)"
docker stop --time 30 "$CONTAINER" >/dev/null
code="$(docker inspect --format '{{.State.ExitCode}}' "$CONTAINER")"
[ "$code" = 0 ] || fail "exit code $code after SIGTERM"
# Read the whole log first: with pipefail, `docker logs | grep -q` fails whenever grep stops reading before
# docker logs has written everything (SIGPIPE), even though the line is there.
container_log="$(docker logs "$CONTAINER" 2>&1)"
grep -q draining <<<"$container_log" || fail "no 'draining' in the log: SIGTERM did not reach the service"
log "PASS: built, healthy, upscaled, drained and exited 0"
