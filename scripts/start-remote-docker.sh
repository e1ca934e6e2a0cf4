#!/usr/bin/env bash
# Start a SECOND Docker engine that stands in for a remote one (tests/test_remote_engine.py).
#
# The engine answers on tcp://127.0.0.1:23750 ($SHADOW_REMOTE_DOCKER_ADDR) and does
# not share this machine's filesystem: dockerd runs in a private mount namespace
# (`unshare --mount --propagation private`) in which /tmp, /var/tmp, /work, /root
# and /home are covered by empty tmpfs mounts.  A bind mount of a runner path (a
# plan folder, a dump, pytest's tmp_path) then mounts an empty directory, so code
# that relies on the engine seeing this machine's files fails here as it would
# against an engine on another host.  It shares this machine's network namespace:
# its published ports on 127.0.0.1 are reachable from here, as a remote engine's
# are on the host named in DOCKER_HOST.
#
# Plain TCP without TLS is acceptable only because it listens on loopback, for
# tests.  A real remote engine is reached with TLS (DOCKER_HOST=tcp://HOST:2376,
# DOCKER_TLS_VERIFY=1, DOCKER_CERT_PATH=DIR holding ca.pem, cert.pem, key.pem) or
# over SSH (DOCKER_HOST=ssh://USER@HOST).
#
# Its own everything, so the first engine (scripts/start-docker.sh: docker0,
# /var/lib/docker, iptables) is left alone:
#   --data-root  /var/lib/shadow-remote-docker     --exec-root /var/run/shadow-remote-docker
#   --pidfile    /var/run/shadow-remote-docker.pid  log: /var/log/shadow-remote-dockerd.log
#   its default bridge `shadowr0` (10.199.0.1/24, made here with `ip link`), networks
#   it creates from 10.199.128.0/17 (--default-address-pool), --iptables=false: no
#   NAT, published ports go through docker-proxy (the userland proxy).
# One iptables rule is added, in a chain of its own (SHADOW-REMOTE-DOCKER, jumped to
# from FORWARD): traffic between the engine's own addresses (10.199.0.0/16) is
# accepted.  This host bridges through iptables (net.bridge.bridge-nf-call-iptables
# = 1) and the first engine set FORWARD's policy to DROP, so without it two
# containers of this engine on one network could not talk (a shadow and the
# isolated action beside it).
#
# Then the images the remote tests use are copied into it from the first engine
# (`docker save | docker -H … load`; there is no registry), when missing or
# different there: shadow-test/postgres:15, shadow-test/action:latest.
#
# Idempotent: when the engine already answers it is not started again (only missing
# images are copied).  Needs root, `unshare` (util-linux) and `ip` (iproute2), both
# on Debian here.  Env: SHADOW_REMOTE_DOCKER_ADDR, REMOTE_DOCKERD_LOG,
# REMOTE_DOCKER_START_TIMEOUT (s, default 60).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ADDR=${SHADOW_REMOTE_DOCKER_ADDR:-127.0.0.1:23750}
REMOTE=tcp://$ADDR
NAME=shadow-remote-docker
DATA_ROOT=/var/lib/$NAME
EXEC_ROOT=/var/run/$NAME
PIDFILE=/var/run/$NAME.pid
LOG=${REMOTE_DOCKERD_LOG:-/var/log/shadow-remote-dockerd.log}
TIMEOUT=${REMOTE_DOCKER_START_TIMEOUT:-60}
BRIDGE=shadowr0
BRIDGE_CIDR=10.199.0.1/24
RANGE=10.199.0.0/16                     # the bridge and every network this engine creates
POOL=base=10.199.128.0/17,size=24
CHAIN=SHADOW-REMOTE-DOCKER
HIDDEN=(/tmp /var/tmp /work /root /home)  # this machine's directories the engine must not see
IMAGES=(shadow-test/postgres:15 shadow-test/action:latest shadow-test/moto:latest)

log() { printf '[start-remote-docker] %s\n' "$*" >&2; }
remote_ok() { docker -H "$REMOTE" info >/dev/null 2>&1; }

for tool in unshare ip iptables dockerd docker; do
    command -v "$tool" >/dev/null 2>&1 || { log "missing: $tool"; exit 1; }
done
if [ "$(id -u)" != 0 ]; then
    log "needs root (a dockerd, a bridge, a mount namespace)"; exit 1
fi
log "log: $LOG"

network() {
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge
    fi
    if ! ip -4 addr show dev "$BRIDGE" | grep -q "inet ${BRIDGE_CIDR%/*}/"; then
        ip addr add "$BRIDGE_CIDR" dev "$BRIDGE"
    fi
    ip link set "$BRIDGE" up
    iptables -N "$CHAIN" 2>/dev/null || true
    iptables -C "$CHAIN" -s "$RANGE" -d "$RANGE" -j ACCEPT 2>/dev/null \
        || iptables -A "$CHAIN" -s "$RANGE" -d "$RANGE" -j ACCEPT
    iptables -C FORWARD -j "$CHAIN" 2>/dev/null || iptables -I FORWARD -j "$CHAIN"
}

# Wait up to $TIMEOUT s for the engine; 1 early when dockerd ($1) died.
wait_for_remote() {
    local pid=$1 deadline=$((SECONDS + TIMEOUT))
    while [ "$SECONDS" -lt "$deadline" ]; do
        remote_ok && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.5
    done
    return 2
}

start() {
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        log "dockerd (pid $pid) runs but does not answer yet; waiting"
        wait_for_remote "$pid"
        return
    fi
    network
    mkdir -p "$DATA_ROOT" "$EXEC_ROOT" "$(dirname "$LOG")"
    # A restart must not find its old network store: dockerd (20.10) deletes a stale default "bridge" network at
    # start and, because --default-address-pool is set, then deletes the interface named docker0 -- the FIRST
    # engine's bridge, whatever --bridge says.  Every container of the first engine then fails to start ("could
    # not find bridge docker0").  This engine's networks are throwaway, so its store starts empty every time.
    rm -rf "${DATA_ROOT:?}/network"
    local cover=""
    for dir in "${HIDDEN[@]}"; do
        if [ -d "$dir" ]; then cover+="mount -t tmpfs -o size=64m,mode=1777 $NAME-hides $dir && "; fi
    done
    local flags=(-H "$REMOTE" --tls=false --data-root "$DATA_ROOT" --exec-root "$EXEC_ROOT" --pidfile "$PIDFILE"
                 --bridge "$BRIDGE" --default-address-pool "$POOL" --iptables=false --ip6tables=false
                 --ip-masq=false --userland-proxy=true)
    printf '\n==== %s dockerd %s\n' "$(date -Is)" "${flags[*]}" >>"$LOG"
    # setsid + nohup: dockerd outlives this script.  The mounts happen inside the new namespace only.
    setsid nohup unshare --mount --propagation private -- \
        sh -c "${cover}exec dockerd \"\$@\"" dockerd "${flags[@]}" </dev/null >>"$LOG" 2>&1 &
    wait_for_remote $!
}

if remote_ok; then
    log "the engine at $REMOTE already answers"
else
    docker info >/dev/null 2>&1 || bash "$HERE/start-docker.sh"
    had_docker0=no
    ip link show docker0 >/dev/null 2>&1 && had_docker0=yes
    rc=0
    start || rc=$?
    if [ "$rc" != 0 ]; then
        log "the engine at $REMOTE did not answer within ${TIMEOUT}s; last log lines:"
        tail -n 30 "$LOG" >&2 || true
        exit 1
    fi
    log "the engine at $REMOTE answers (pid $(cat "$PIDFILE"))"
    if [ "$had_docker0" = yes ] && ! ip link show docker0 >/dev/null 2>&1; then
        # Should the cause above come back in another form: the first engine gets its bridge back by restarting.
        log "docker0 vanished while this engine started; restarting the first engine to recreate it"
        first=$(cat "${DOCKERD_PIDFILE:-/var/run/docker.pid}" 2>/dev/null || true)
        if [ -n "$first" ]; then
            kill "$first" 2>/dev/null || true
            for _ in $(seq 1 60); do kill -0 "$first" 2>/dev/null || break; sleep 0.5; done
        fi
        bash "$HERE/start-docker.sh"
        ip link show docker0 >/dev/null 2>&1 || { log "docker0 is still missing"; exit 1; }
    fi
fi

for image in "${IMAGES[@]}"; do
    here=$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
    if [ -z "$here" ]; then
        log "$image is not built here (scripts/build-images.sh); not copied"
        continue
    fi
    there=$(docker -H "$REMOTE" image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
    if [ "$here" != "$there" ]; then
        log "copying $image into the engine at $REMOTE"
        docker save "$image" | docker -H "$REMOTE" load >/dev/null
    fi
done
