#!/usr/bin/env bash
# Build the local test images without any container registry:
#
#   shadow-test/postgres:15   Debian bookworm minbase + postgresql-15
#   shadow-test/postgres:17   Debian trixie   minbase + postgresql-17
#   shadow-test/action:latest Debian bookworm minbase + python3, python3-psycopg, git,
#                             postgresql-client-15, ca-certificates
#   shadow-test/moto:latest   shadow-test/action + moto's S3 server (moto[server]
#                             installed with the host's pip into /opt/moto), on
#                             port 5000 like the motoserver/moto image
#
# Each rootfs is made with `debootstrap --variant=minbase` from the Debian
# mirror apt uses on this machine, trimmed, and turned into an image with
# `tar | docker import`.  Nothing is pulled from any registry.
#
# Usage: scripts/build-images.sh [--force] [IMAGE...]
#   --force   rebuild even when the tag already exists
#   IMAGE     any of: postgres:15 postgres:17 action moto (default: all four)
# Env: MIRROR=http://...  override the Debian mirror (default: apt's)
#      BUILD_TMP=/var/tmp where the rootfs directories are made
#
# The postgres images carry their own /usr/local/bin/docker-entrypoint.sh
# (written below) that behaves like the official postgres image's for the
# common case: POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB /
# POSTGRES_HOST_AUTH_METHOD / POSTGRES_INITDB_ARGS / PGDATA,
# /docker-entrypoint-initdb.d, arguments passed through to postgres
# (`docker run IMG -c fsync=off`), server log on stderr so `docker logs` shows
# "database system is ready to accept connections", STOPSIGNAL SIGINT (fast
# shutdown) so `docker stop` is quick.  Differences from the official image:
# no VOLUME (so no anonymous volume is left behind per container), the
# postgres OS user has Debian's uid (not 999), and the LLVM JIT is removed
# (saves ~100 MB; PostgreSQL silently runs without JIT when llvmjit.so is
# absent).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FORCE=0
WANT=()
for arg in "$@"; do
    case $arg in
        --force|-f) FORCE=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        postgres:15|postgres:17|action|action:latest|moto|moto:latest) WANT+=("${arg%:latest}") ;;
        shadow-test/*) a=${arg#shadow-test/}; WANT+=("${a%:latest}") ;;
        *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done
[ ${#WANT[@]} -gt 0 ] || WANT=(postgres:15 postgres:17 action moto)

log() { printf '[build-images] %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
    log "debootstrap needs root"; exit 1
fi

# ---------------------------------------------------------------- prerequisites
if ! docker info >/dev/null 2>&1; then
    log "docker does not answer; running start-docker.sh"
    "$HERE/start-docker.sh"
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || log "apt-get update reported errors (continuing)"
    apt-get install -y -qq --no-install-recommends debootstrap debian-archive-keyring >/dev/null
fi

# The Debian mirror apt uses here (the repository that serves the plain
# `bookworm` suite), unless MIRROR is set.
if [ -z "${MIRROR:-}" ]; then
    MIRROR=$(apt-get indextargets --format '$(RELEASE) $(REPO_URI)' 2>/dev/null \
        | awk '$1 == "bookworm" { print $2; exit }')
    MIRROR=${MIRROR:-http://deb.debian.org/debian/}
fi
MIRROR=${MIRROR%/}
log "Debian mirror: $MIRROR"

BUILD_TMP=${BUILD_TMP:-/var/tmp}
ROOTFS=""

# Unmount anything debootstrap may have left mounted below the rootfs (it
# mounts proc/sys/dev/pts while installing) before deleting it.
cleanup_rootfs() {
    local dir=$1
    [ -n "$dir" ] && [ -d "$dir" ] || return 0
    local m
    # deepest mount points first
    for m in $(awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$dir"
}
trap 'cleanup_rootfs "$ROOTFS"' EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ entrypoint
write_entrypoint() {
    local root=$1
    install -d "$root/usr/local/bin" "$root/docker-entrypoint-initdb.d"
    cat >"$root/usr/local/bin/docker-entrypoint.sh" <<'ENTRYPOINT'
#!/bin/bash
# Entrypoint of the shadow-test/postgres images, modelled on the official
# postgres image's docker-entrypoint.sh (common case only).
set -Eeo pipefail

: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
: "${PGDATA:=/var/lib/postgresql/data}"
export POSTGRES_USER POSTGRES_DB PGDATA

# `docker run IMG -c fsync=off` -> `postgres -c fsync=off`
if [ "${1:0:1}" = '-' ]; then
    set -- postgres "$@"
fi
if [ "$1" != postgres ]; then
    exec "$@"
fi

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres /var/run/postgresql
    chmod 3777 /var/run/postgresql
    # chown only what is not ours yet (a big existing PGDATA stays fast)
    find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
    chmod 700 "$PGDATA"
    export HOME=/var/lib/postgresql
    if command -v setpriv >/dev/null 2>&1; then
        exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
    fi
    exec runuser -u postgres -- "${BASH_SOURCE[0]}" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "${POSTGRES_HOST_AUTH_METHOD:-}" != trust ]; then
        cat >&2 <<'EOM'
Error: Database is uninitialized and superuser password is not specified.
       You must specify POSTGRES_PASSWORD to a non-empty value for the
       superuser. For example, "-e POSTGRES_PASSWORD=password" on "docker run".

       You may also use "POSTGRES_HOST_AUTH_METHOD=trust" to allow all
       connections without a password. This is *not* recommended.
EOM
        exit 1
    fi
    method=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}

    mkdir -p "$PGDATA"
    chmod 700 "$PGDATA" 2>/dev/null || :
    initdb_args=(--username="$POSTGRES_USER")
    if [[ " ${POSTGRES_INITDB_ARGS:-} " != *" --locale"* ]] && [[ " ${POSTGRES_INITDB_ARGS:-} " != *" -E"* ]] \
        && [[ " ${POSTGRES_INITDB_ARGS:-} " != *" --encoding"* ]]; then
        initdb_args+=(--locale=C.UTF-8 --encoding=UTF8)
    fi
    # (the <(...) must be on initdb's own command line: it is closed as soon
    # as the command that created it ends)
    # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a word list
    if [ -n "${POSTGRES_PASSWORD:-}" ]; then
        initdb "${initdb_args[@]}" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") ${POSTGRES_INITDB_ARGS:-}
    else
        initdb "${initdb_args[@]}" ${POSTGRES_INITDB_ARGS:-}
    fi

    cat >"$PGDATA/pg_hba.conf" <<EOF
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  trust
host    all          all   127.0.0.1/32   trust
host    all          all   ::1/128        trust
local   replication  all                  trust
host    replication  all   127.0.0.1/32   trust
host    replication  all   ::1/128        trust
host    all          all   0.0.0.0/0      $method
host    all          all   ::/0           $method
host    replication  all   0.0.0.0/0      $method
host    replication  all   ::/0           $method
EOF
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    if [ "$method" = md5 ]; then
        echo "password_encryption = md5" >>"$PGDATA/postgresql.conf"
    fi

    # Temporary server on the unix socket only, for CREATE DATABASE and the
    # init scripts (the official image does the same; it also logs "ready to
    # accept connections", so that line appears twice, as there).
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p ${PGPORT:-5432}" -w start
    psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password --username "$POSTGRES_USER")
    if [ "$POSTGRES_DB" != postgres ]; then
        "${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi
    for f in /docker-entrypoint-initdb.d/*; do
        case $f in
            *.sh)
                if [ -x "$f" ]; then echo "$0: running $f"; "$f"
                else echo "$0: sourcing $f"; . "$f"; fi ;;
            *.sql) echo "$0: running $f"; "${psql[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
            *.sql.gz) echo "$0: running $f"; gunzip -c "$f" | "${psql[@]}" --dbname "$POSTGRES_DB" ;;
            *) [ -e "$f" ] && echo "$0: ignoring $f" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop
    echo
    echo 'PostgreSQL init process complete; ready for start up.'
    echo
fi

# The server's log goes to stderr (logging_collector is off), so
# `docker logs` shows "database system is ready to accept connections".
exec "$@"
ENTRYPOINT
    chmod 755 "$root/usr/local/bin/docker-entrypoint.sh"
}

# --------------------------------------------------------------------- helpers
# Trim a rootfs: apt lists and caches, docs, man pages, translations, logs.
trim_rootfs() {
    local root=$1
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
        "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/debconf/*-old \
        "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
        "$root"/usr/share/locale/* "$root"/usr/share/lintian/* "$root"/usr/share/linda/* \
        "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/tmp/* "$root"/var/tmp/* \
        "$root"/etc/hostname
    find "$root"/usr/share/i18n/locales -mindepth 1 -maxdepth 1 ! -name 'C' ! -name 'en_US' \
        ! -name 'i18n*' ! -name 'iso14651_t1*' ! -name 'translit_*' -exec rm -rf {} + 2>/dev/null || true
    find "$root"/usr/share/i18n/charmaps -mindepth 1 -maxdepth 1 ! -name 'UTF-8*' \
        -exec rm -rf {} + 2>/dev/null || true
    # keep apt usable inside the image (apt-get update recreates the lists)
    mkdir -p "$root"/var/lib/apt/lists/partial
}

# Strip the LLVM JIT: PostgreSQL skips JIT silently when llvmjit.so is absent.
strip_jit() {
    local root=$1 major=$2
    rm -rf "$root/usr/lib/postgresql/$major/lib/llvmjit.so" \
        "$root/usr/lib/postgresql/$major/lib/llvmjit_types.bc" \
        "$root/usr/lib/postgresql/$major/lib/bitcode"
    rm -f "$root"/usr/lib/x86_64-linux-gnu/libLLVM*.so* "$root"/usr/lib/*/libLLVM*.so* \
        "$root"/usr/lib/llvm-*/lib/libLLVM*.so* "$root"/usr/lib/*/libz3.so*
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# debootstrap SUITE INCLUDES -> sets ROOTFS
bootstrap() {
    local suite=$1 include=$2 script=$1
    # debootstrap from bookworm ships a trixie script; fall back to sid's
    # (trixie is handled the same way) if an older one does not.
    [ -e "/usr/share/debootstrap/scripts/$suite" ] || script=/usr/share/debootstrap/scripts/sid
    ROOTFS=$(mktemp -d "$BUILD_TMP/shadow-rootfs-$suite.XXXXXX")
    chmod 755 "$ROOTFS"
    log "debootstrap $suite (+$include) into $ROOTFS"
    if ! debootstrap --variant=minbase --include="$include" \
        --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
        "$suite" "$ROOTFS" "$MIRROR" "$script" >"$ROOTFS.log" 2>&1; then
        log "debootstrap failed; last lines of $ROOTFS.log:"
        tail -n 25 "$ROOTFS.log" >&2
        [ -f "$ROOTFS/debootstrap/debootstrap.log" ] && tail -n 25 "$ROOTFS/debootstrap/debootstrap.log" >&2
        return 1
    fi
    rm -f "$ROOTFS.log"
}

# docker_import TAG CHANGE...  (rootfs in $ROOTFS)
# A change "STOPSIGNAL X" is applied by a one-line `docker build` on top of
# the imported image (FROM its local image ID, so nothing is pulled): Debian's
# docker.io 20.10 rejects STOPSIGNAL in `docker import -c` ("stopsignal is not
# a valid change command").
docker_import() {
    local tag=$1; shift
    local args=() c stopsignal="" id
    for c in "$@"; do
        case $c in
            STOPSIGNAL\ *) stopsignal=${c#STOPSIGNAL } ;;
            *) args+=(-c "$c") ;;
        esac
    done
    id=$(tar -C "$ROOTFS" --numeric-owner \
        --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
        -c . | docker import "${args[@]}" -)
    cleanup_rootfs "$ROOTFS"
    ROOTFS=""
    if [ -n "$stopsignal" ]; then
        local out
        if ! out=$(printf 'FROM %s\nSTOPSIGNAL %s\n' "$id" "$stopsignal" \
            | DOCKER_BUILDKIT=0 docker build -q -t "$tag" - 2>&1); then
            log "docker build (STOPSIGNAL) failed:"; printf '%s\n' "$out" >&2
            return 1
        fi
    else
        docker tag "$id" "$tag"
    fi
}

# ------------------------------------------------------------------- builders
build_postgres() {
    local major=$1 suite=$2 tag="shadow-test/postgres:$1"
    bootstrap "$suite" "postgresql-$major"
    # Drop the cluster the package's postinst created; our entrypoint makes
    # its own under $PGDATA.
    rm -rf "$ROOTFS/var/lib/postgresql/$major" "$ROOTFS/etc/postgresql/$major"
    install -d -o "$(chroot "$ROOTFS" id -u postgres)" -g "$(chroot "$ROOTFS" id -g postgres)" \
        -m 700 "$ROOTFS/var/lib/postgresql/data"
    install -d -o "$(chroot "$ROOTFS" id -u postgres)" -g "$(chroot "$ROOTFS" id -g postgres)" \
        -m 3777 "$ROOTFS/var/run/postgresql"
    write_entrypoint "$ROOTFS"
    trim_rootfs "$ROOTFS"
    strip_jit "$ROOTFS" "$major"
    docker_import "$tag" \
        'ENTRYPOINT ["docker-entrypoint.sh"]' \
        'CMD ["postgres"]' \
        "ENV PG_MAJOR=$major" \
        "ENV PATH=/usr/lib/postgresql/$major/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        'ENV PGDATA=/var/lib/postgresql/data' \
        'ENV LANG=C.UTF-8' \
        'EXPOSE 5432' \
        'STOPSIGNAL SIGINT'
}

build_action() {
    local tag=shadow-test/action:latest
    bootstrap bookworm "python3,python3-psycopg,postgresql-client-15,ca-certificates,git"
    trim_rootfs "$ROOTFS"
    docker_import "$tag" \
        'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        'ENV LANG=C.UTF-8' \
        'ENV PYTHONDONTWRITEBYTECODE=1' \
        'CMD ["/bin/bash"]'
}

# moto's server for S3 shadows in the docker backend: the action image plus moto
# from PyPI (the host's pip, same Python minor as bookworm's python3: 3.11).
build_moto() {
    local tag=shadow-test/moto:latest ctx
    image_exists shadow-test/action:latest || build_action
    ctx=$(mktemp -d "$BUILD_TMP/shadow-moto.XXXXXX")
    python3 -m pip install --quiet --disable-pip-version-check --no-compile --target "$ctx/moto" \
        --python-version 3.11 --only-binary=:all: --implementation cp 'moto[server]>=5'
    printf '%s\n' 'FROM shadow-test/action:latest' 'COPY moto /opt/moto' 'ENV PYTHONPATH=/opt/moto' \
        'EXPOSE 5000' 'ENTRYPOINT ["python3", "-m", "moto.server", "-H", "0.0.0.0", "-p", "5000"]' \
        >"$ctx/Dockerfile"
    DOCKER_BUILDKIT=0 docker build -q -t "$tag" "$ctx" >/dev/null
    rm -rf "$ctx"
}

# ----------------------------------------------------------------------- main
rc=0
for want in "${WANT[@]}"; do
    case $want in
        postgres:15) tag=shadow-test/postgres:15; cmd=(build_postgres 15 bookworm) ;;
        postgres:17) tag=shadow-test/postgres:17; cmd=(build_postgres 17 trixie) ;;
        action)      tag=shadow-test/action:latest; cmd=(build_action) ;;
        moto)        tag=shadow-test/moto:latest; cmd=(build_moto) ;;
    esac
    if [ "$FORCE" = 0 ] && image_exists "$tag"; then
        log "$tag exists; skipping (use --force to rebuild)"
        continue
    fi
    start=$SECONDS
    old_id=$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
    # Run the builder in a subshell with errexit really on (errexit is
    # ignored inside `if`, `||` and `&&`, subshells included) and its own
    # cleanup trap.
    set +e
    ( trap 'cleanup_rootfs "$ROOTFS"' EXIT; set -e; "${cmd[@]}" )
    r=$?
    set -e
    if [ "$r" = 0 ]; then
        size=$(docker image inspect --format '{{.Size}}' "$tag")
        log "built $tag in $((SECONDS - start)) s ($((size / 1000000)) MB)"
        # drop the image this one replaced (--force), unless something uses it
        if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect --format '{{.Id}}' "$tag")" ]; then
            docker rmi "$old_id" >/dev/null 2>&1 || true
        fi
    else
        log "FAILED to build $tag after $((SECONDS - start)) s"
        rc=1
    fi
done
exit $rc
