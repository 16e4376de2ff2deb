#!/usr/bin/env bash
# Start a throwaway PostgreSQL for the tests and print the URL to use:
#     eval "$(bash .ci/postgres.sh)"
# Installs Debian's postgresql if missing, initdb's a fresh cluster in a temp dir,
# listens on 127.0.0.1:55432 only. Idempotent: if a server already answers on that
# port it is reused. Everything but the final export line goes to stderr.
set -euo pipefail
exec 3>&1 1>&2  # fd 3 = the caller's stdout, reserved for the export line

PORT="${FEDMERGE_PG_PORT:-55432}"
HOST=127.0.0.1
DB=fedmerge_test
URL="postgresql+psycopg://postgres@${HOST}:${PORT}/${DB}"

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

if [ -z "$(pg_bin)" ] || [ ! -x "$(pg_bin)/pg_ctl" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "postgres.sh: PostgreSQL is not installed and we are not root to apt-get it" >&2
        exit 1
    fi
    echo "postgres.sh: installing postgresql" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
PGBIN="$(pg_bin)"

# initdb and the server refuse to run as root: run them as the postgres user.
as_pg() {
    if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi
}

if "$PGBIN/pg_isready" -q -h "$HOST" -p "$PORT"; then
    echo "postgres.sh: reusing the server already on $HOST:$PORT" >&2
else
    DATA="$(mktemp -d /tmp/fedmerge-pg.XXXXXX)"
    [ "$(id -u)" = 0 ] && chown postgres "$DATA"
    # 3>&-: the server must not inherit fd 3 (the caller's $(...) pipe), or the caller's
    # command substitution waits for it to exit, i.e. forever.
    as_pg "'$PGBIN/initdb' -D '$DATA' -A trust -U postgres" >/dev/null 3>&-
    as_pg "'$PGBIN/pg_ctl' -D '$DATA' -w -l '$DATA/log' \
        -o '-c listen_addresses=$HOST -p $PORT -k /tmp' start" >/dev/null 3>&- </dev/null
    echo "postgres.sh: started in $DATA (stop: pg_ctl -D $DATA stop)" >&2
    echo "export FEDMERGE_TEST_PG_DATA=$DATA" >&3  # we started it: the caller may stop it
fi

for _ in $(seq 1 60); do
    "$PGBIN/pg_isready" -q -h "$HOST" -p "$PORT" && break
    sleep 0.5
done
"$PGBIN/pg_isready" -h "$HOST" -p "$PORT" >&2

PSQL=("$PGBIN/psql" -h "$HOST" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA)
if [ "$("${PSQL[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
    "${PSQL[@]}" -c "CREATE DATABASE $DB" >/dev/null
fi

echo "export FEDMERGE_TEST_PG_URL=$URL" >&3
