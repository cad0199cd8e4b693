#!/bin/sh
# Container entrypoint, in the seed's layout: config in $COLLECTOR_ROOT/config/$CONFIG_FILE, certificates
# in $COLLECTOR_ROOT/certs, state in $COLLECTOR_ROOT/state (the config's persistence directory "state",
# resolved from $COLLECTOR_ROOT). Extra arguments go to `qualys-collector run` (e.g. --once).
set -eu
ROOT="${COLLECTOR_ROOT:-/devo-collector}"
CONFIG="${CONFIG_FILE:-config.yaml}"
case "$CONFIG" in
  /*) path="$CONFIG" ;;
  *) path="$ROOT/config/$CONFIG" ;;
esac
if [ ! -f "$path" ]; then
  echo "qualys-collector: CONFIG_FILE $path does not exist; mount your config directory at $ROOT/config" >&2
  exit 2
fi
cd "$ROOT"
exec qualys-collector run -c "$path" "$@"
