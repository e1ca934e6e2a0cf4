#!/usr/bin/env bash
# Make sure a Docker engine answers on /var/run/docker.sock.
#
# Idempotent: if `docker info` already answers, it does nothing.  Otherwise it
# installs Debian's docker.io (+ iptables) when dockerd is missing, starts
# dockerd in the background (log: $DOCKERD_LOG, default /var/log/dockerd.log)
# and waits until `docker info` answers (timeout: $DOCKER_START_TIMEOUT s,
# default 60).  Needs root; written for Debian bookworm without systemd (CI and
# the dev sandboxes run as root with no init system, so `service`/`systemctl`
# are not usable and dockerd is started by hand).
#
# dockerd flags: on this sandbox (kernel 6.x, ext4 root, cgroup v1 hybrid,
# iptables-nft available) plain `dockerd` works with its defaults: overlay2
# storage driver, the docker0 bridge and iptables NAT for `-p` port
# publishing.  No special flag was needed.  Should a machine lack overlayfs or
# the nat table (e.g. nested inside another container), the first start fails
# fast and the script retries once with `--storage-driver=vfs --iptables=false
# --ip6tables=false`: vfs needs no kernel support at all (just slower and
# bigger), and without iptables published ports still work for connections to
# 127.0.0.1 through docker-proxy (the userland proxy).  Extra flags can be
# forced with DOCKERD_FLAGS="...".
set -euo pipefail

LOG=${DOCKERD_LOG:-/var/log/dockerd.log}
TIMEOUT=${DOCKER_START_TIMEOUT:-60}
PIDFILE=${DOCKERD_PIDFILE:-/var/run/docker.pid}
FALLBACK_FLAGS=(--storage-driver=vfs --iptables=false --ip6tables=false)

log() { printf '[start-docker] %s\n' "$*" >&2; }

docker_ok() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

if docker_ok; then
    log "docker already answers; nothing to do"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    log "not root and docker does not answer; run me as root" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1 \
    || ! command -v iptables >/dev/null 2>&1; then
    log "installing docker.io from Debian (apt-get update + install)"
    # Other sources in sources.list.d may be unreachable; only Debian's matter.
    apt-get update -qq || log "apt-get update reported errors (continuing)"
    apt-get install -y -qq --no-install-recommends docker.io iptables ca-certificates >/dev/null
    # If the package's init script managed to start the daemon, we are done.
    if docker_ok; then
        log "docker answers after install"
        exit 0
    fi
fi

# Wait up to $TIMEOUT s for `docker info`; return 1 early if dockerd ($1) died.
wait_for_docker() {
    local pid=$1 deadline=$((SECONDS + TIMEOUT))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if docker_ok; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then return 1; fi
        sleep 0.5
    done
    return 2
}

start_dockerd() {
    mkdir -p "$(dirname "$LOG")"
    # A dockerd that is alive but not answering yet (e.g. started a moment
    # ago by a concurrent run of this script) is waited for, not doubled.  A
    # stale pid file from a dead dockerd is fine: dockerd replaces it.
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        log "dockerd (pid $pid) is running but does not answer yet; waiting"
        DOCKERD_PID=$pid
        wait_for_docker "$pid"
        return
    fi
    log "starting dockerd ${*:-(default flags)} (log: $LOG)"
    printf '\n==== %s dockerd %s\n' "$(date -Is)" "$*" >>"$LOG"
    # setsid + nohup: keep dockerd alive after this script's shell exits.
    setsid nohup dockerd "$@" </dev/null >>"$LOG" 2>&1 &
    DOCKERD_PID=$!
    wait_for_docker "$DOCKERD_PID"
}

DOCKERD_PID=""
rc=0
# shellcheck disable=SC2086  # DOCKERD_FLAGS is a word list on purpose
start_dockerd ${DOCKERD_FLAGS:-} || rc=$?
if [ "$rc" = 0 ]; then
    log "docker is up (pid $DOCKERD_PID)"
    exit 0
fi
if [ "$rc" = 1 ] && [ -n "$DOCKERD_PID" ] && [ -z "${DOCKERD_FLAGS:-}" ] \
    && ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
    log "dockerd exited during start-up; last log lines:"
    tail -n 15 "$LOG" >&2 || true
    log "retrying with fallback flags: ${FALLBACK_FLAGS[*]}"
    rc=0
    start_dockerd "${FALLBACK_FLAGS[@]}" || rc=$?
    if [ "$rc" = 0 ]; then
        log "docker is up (pid $DOCKERD_PID, fallback flags)"
        exit 0
    fi
fi
log "docker did not answer within ${TIMEOUT}s; last log lines:"
tail -n 30 "$LOG" >&2 || true
exit 1
