#!/bin/sh
# Container entrypoint, in the seed's layout: config in $COLLECTOR_ROOT/config/$CONFIG_FILE, certificates
# in $COLLECTOR_ROOT/certs, secret files in $COLLECTOR_ROOT/credentials or /run/secrets, state in
# $COLLECTOR_ROOT/state (the config's persistence directory "state", resolved from $COLLECTOR_ROOT).
#
#   (no arguments), or options only (--once)   qualys-collector run -c CONFIG [OPTIONS]
#   run|validate|check|state ... [OPTIONS]      that command with -c CONFIG (state show, state reset --service S)
#   anything else (--help, --version, ...)       qualys-collector with the arguments as given
#
# STOP_ON_CONFIG_ERROR=1 (set by docker-compose.yml): when `run` cannot start because of the configuration or
# of the state directory's ownership, say so and exit 0, so that `restart: on-failure` does not restart a
# container that would fail the same way; a crash (any other exit) is restarted.
set -eu
umask 077
ROOT="${COLLECTOR_ROOT:-/devo-collector}"
CONFIG="${CONFIG_FILE:-config.yaml}"
case "$CONFIG" in
  /*) path="$CONFIG" ;;
  *) path="$ROOT/config/$CONFIG" ;;
esac

command=run
if [ $# -gt 0 ]; then
  case "$1" in
    -h|--help|--version) exec qualys-collector "$@" ;;
    -*) ;;
    run|validate|check|state) command="$1"; shift ;;
    *) exec qualys-collector "$@" ;;
  esac
fi

stop() {  # stop: a problem only the operator can fix; $1 is the exit code outside STOP_ON_CONFIG_ERROR
  if [ "$command" = run ] && [ "${STOP_ON_CONFIG_ERROR:-0}" = 1 ]; then
    echo "qualys-collector: not starting, and not to be restarted until this is fixed (exit 0)" >&2
    exit 0
  fi
  exit "$1"
}

if [ ! -f "$path" ]; then
  echo "qualys-collector: CONFIG_FILE $path does not exist; mount your config directory at $ROOT/config" >&2
  stop 2
fi
cd "$ROOT"

state="$ROOT/state"
if [ -d "$state" ] && [ ! -w "$state" ]; then
  echo "qualys-collector: the state directory $state belongs to uid $(stat -c %u "$state") and is not writable" \
    "by the collector (uid $(id -u)); on the host, in the directory that holds state/, run:" \
    "sudo chown -R $(id -u):$(id -g) state && sudo chmod 700 state" >&2
  stop 2
fi
if [ -d "$state" ] && [ "$(stat -c %u "$state")" = "$(id -u)" ]; then
  chmod 0700 "$state"  # a bind-mounted directory keeps the host's 0755 otherwise
fi

if [ "$command" = run ]; then
  if [ "${STOP_ON_CONFIG_ERROR:-0}" = 1 ]; then
    rc=0
    qualys-collector validate -c "$path" >/dev/null || rc=$?
    [ "$rc" = 0 ] || stop "$rc"
  fi
  exec qualys-collector run -c "$path" "$@"
fi
exec qualys-collector "$command" "$@" -c "$path"
