# shellcheck shell=bash
# Shared by deploy/docker-smoke.sh and deploy/docker-faults.sh (sourced, not run): a Docker engine, a base image and
# the wheels for a build, on a machine without an image registry or with PyPI behind a TLS proxy that builds cannot use.
#   * the engine: the running one (DOCKER_HOST or the default socket); else, as root, a private dockerd started here
#     on its own socket with no default bridge and no iptables rules (builds use the host network; compose projects
#     get their own bridge network, reached from the host through docker-proxy on 127.0.0.1), stopped on exit;
#   * the base image: SMOKE_BASE_IMAGE if set; else the Dockerfile's python slim image if present or pullable; else a
#     minimal Debian bookworm (python3, python3-venv) made with debootstrap and `docker import`ed once as
#     upscaler-smoke-base:bookworm (kept in the engine as a cache);
#   * the wheels: downloaded on the host with pip (which has the host's certificates) and served to the build from
#     127.0.0.1 by a throw-away HTTP server (build-args PIP_NO_INDEX, PIP_FIND_LINKS, PIP_TRUSTED_HOST).
# The caller sets ROOT, PYTHON, WORK and a log() function, calls lib_cleanup from its EXIT trap, and may call skip.
# lib_cleanup removes the images built here (unless SMOKE_KEEP_IMAGE=1), stops what was started and removes WORK.

LOCAL_BASE="upscaler-smoke-base:bookworm"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/upscaler-docker-smoke"
WHEEL_PORT="${SMOKE_WHEEL_PORT:-18081}"
DOCKERD_PID="" WHEEL_SERVER_PID="" BUILT_IMAGES=()

skip() { log "SKIP: $*"; exit 0; }
fail() { log "FAIL: $*"; exit 1; }

lib_cleanup() {
    if [ "${#BUILT_IMAGES[@]}" -gt 0 ] && [ "${SMOKE_KEEP_IMAGE:-0}" != 1 ]; then
        docker image rm "${BUILT_IMAGES[@]}" >/dev/null 2>&1
        # The legacy builder keeps every other stage as an untagged image: remove those these builds left.
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
        # dockerd leaves its network namespaces bind-mounted under --exec-root (exec/netns/...): unmount, deepest
        # first, whatever is still mounted under the work folder.
        awk -v w="$WORK/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n 1 umount -l
    fi
    rm -rf "$WORK"
}

# An engine that answers, exported as DOCKER_HOST where one was started here; SKIP where none can be had.
engine_up() {
    command -v docker >/dev/null || skip "no docker CLI (Debian: apt-get install docker.io)"
    if ! docker info >/dev/null 2>&1; then
        [ "$(id -u)" -eq 0 ] || skip "no Docker engine answers and starting one needs root"
        command -v dockerd >/dev/null \
            || skip "no Docker engine answers and there is no dockerd to start (apt-get install docker.io)"
        log "no engine answers: starting a private dockerd (no default bridge, no iptables)"
        mkdir -p "$WORK/exec"
        dockerd --host "unix://$WORK/docker.sock" --pidfile "$WORK/dockerd.pid" --exec-root "$WORK/exec" \
            --bridge none --iptables=false --ip6tables=false --ip-masq=false >"$WORK/dockerd.log" 2>&1 &
        DOCKERD_PID=$!
        export DOCKER_HOST="unix://$WORK/docker.sock"
        for _ in $(seq 60); do
            docker info >/dev/null 2>&1 && break
            if ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
                tail -n 20 "$WORK/dockerd.log" >&2
                DOCKERD_PID=""
                skip "dockerd exited at start"
            fi
            sleep 1
        done
        docker info >/dev/null 2>&1 || { tail -n 20 "$WORK/dockerd.log" >&2; skip "dockerd did not answer within 60 s"; }
    fi
    log "engine: $(docker version --format 'server {{.Server.Version}}, client {{.Client.Version}}')"
}

make_local_base() {
    command -v debootstrap >/dev/null \
        || skip "no base image (no registry reachable) and no debootstrap (apt-get install debootstrap)"
    [ "$(id -u)" -eq 0 ] || skip "no base image, and debootstrap needs root"
    log "making $LOCAL_BASE with debootstrap (a few minutes, once)"
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$WORK/rootfs" \
        "${SMOKE_DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -n 20 "$WORK/debootstrap.log" >&2; fail "debootstrap failed"; }
    rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
    tar -C "$WORK/rootfs" -c . | docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' - "$LOCAL_BASE" >/dev/null
    rm -rf "$WORK/rootfs"
}

# Sets BASE: the image both flavours are built on.
base_image() {
    local default
    default="$(sed -n 's/^ARG BASE=//p' "$ROOT/Dockerfile")"
    if [ -n "${SMOKE_BASE_IMAGE:-}" ]; then
        BASE="$SMOKE_BASE_IMAGE"
    elif docker image inspect "$default" >/dev/null 2>&1 || timeout 60 docker pull -q "$default" >/dev/null 2>&1; then
        BASE="$default"
    else
        docker image inspect "$LOCAL_BASE" >/dev/null 2>&1 || make_local_base
        BASE="$LOCAL_BASE"
    fi
    log "base image: $BASE"
}

# serve_wheels REQUIREMENTS...: the wheels for the base's Python, served on 127.0.0.1:$WHEEL_PORT.
serve_wheels() {
    local pyver libc arch wheels requirements
    read -r pyver libc arch < <(docker run --rm --network none --entrypoint python3 "$BASE" -c \
        'import platform, sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}", platform.libc_ver()[1].replace(".", "_"), platform.machine())')
    wheels="$CACHE/wheels-cp${pyver/./}-$arch"
    mkdir -p "$wheels"
    # pip takes --platform literally: list every manylinux tag the base's glibc accepts, newest first.
    local platforms=()
    for minor in $(seq "${libc#*_}" -1 5); do platforms+=(--platform "manylinux_2_${minor}_${arch}"); done
    platforms+=(--platform "manylinux2014_${arch}" --platform "manylinux2010_${arch}" --platform "manylinux1_${arch}")
    for requirements in "$@"; do
        log "downloading wheels of $(basename "$requirements") for CPython $pyver, glibc $libc, $arch into $wheels"
        "$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: --dest "$wheels" \
            --python-version "$pyver" "${platforms[@]}" -r "$requirements" 2>&1 \
            | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
    done
    "$PYTHON" -m http.server --bind 127.0.0.1 --directory "$wheels" "$WHEEL_PORT" >"$WORK/wheels.log" 2>&1 &
    WHEEL_SERVER_PID=$!
}

# build TAG DOCKER-BUILD-ARGS...: with the host's network (the wheels are served on 127.0.0.1); quiet, but fails
# with the end of the build's log. The image is removed again by lib_cleanup.
build() {
    local tag=$1 name=${1//[:\/]/-}
    shift
    [ -f "$WORK/dangling-before" ] || docker images --quiet --no-trunc --filter dangling=true >"$WORK/dangling-before"
    BUILT_IMAGES+=("$tag")
    docker build --network host --tag "$tag" "$@" >"$WORK/build-$name.log" 2>&1 \
        || { tail -n 40 "$WORK/build-$name.log" >&2; fail "docker build of $tag failed"; }
}

# build_image TAG FLAVOR: the Dockerfile, with the wheels served here.
build_image() {
    build "$1" --build-arg FLAVOR="$2" --build-arg BASE="$BASE" --build-arg PIP_NO_INDEX=1 \
        --build-arg PIP_FIND_LINKS="http://127.0.0.1:$WHEEL_PORT/" --build-arg PIP_TRUSTED_HOST=127.0.0.1 "$ROOT"
}
