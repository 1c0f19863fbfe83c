#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests: the machine's own packages
# (installed with apt if missing), a fresh cluster in a temporary folder, run
# by an unprivileged user, on a free loopback port.
#   start: prints the URL for OUTREACH_TEST_POSTGRES_URL on stdout
#   stop DIR: stops the server and removes its folder
set -euo pipefail

find_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/pg_ctl" ] && { echo "$dir"; return 0; }
  done
  return 1
}

start() {
  local bin
  if ! bin=$(find_bin); then
    echo "postgres: installing the Debian packages" >&2
    if [ "$(id -u)" -eq 0 ]; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) >&2
    else
      echo "postgres: not installed and not root; skipping" >&2; return 1
    fi
    bin=$(find_bin)
  fi
  local dir port user runas=()
  dir=$(mktemp -d /tmp/outreach-pg.XXXXXX)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  user=$(id -un)
  if [ "$(id -u)" -eq 0 ]; then
    user=postgres
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown "$user" "$dir"
    runas=(runuser -u "$user" --)
  fi
  "${runas[@]}" "$bin/initdb" -D "$dir/data" -U outreach --auth=trust -E UTF8 >/dev/null
  "${runas[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null
  "$bin/createdb" -h 127.0.0.1 -p "$port" -U outreach outreach_test
  echo "$dir" > "$dir/.dir"
  echo "postgresql+psycopg://outreach@127.0.0.1:$port/outreach_test $dir"
}

stop() {
  local dir=$1 bin
  bin=$(find_bin) || return 0
  if [ -d "$dir/data" ]; then
    if [ "$(id -u)" -eq 0 ]; then
      runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
    else
      "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
    fi
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  start) start ;;
  stop) stop "$2" ;;
  *) echo "usage: $0 start | stop DIR" >&2; exit 2 ;;
esac
