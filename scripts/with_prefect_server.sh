#!/usr/bin/env bash
# Run a command with one local Prefect server shared by all its processes (each DVC stage is a
# process; without this each would start and stop a temporary server: ~8-12 s per stage), and
# a warm stage runner (flows/warm.py: torch, transformers, Prefect and MLflow imported once,
# one forked child per stage; DEPT_NO_WARM=1 turns it off).
#   scripts/with_prefect_server.sh dvc repro
# If PREFECT_API_URL is already set, the command just runs against that server.
set -euo pipefail
if [ -n "${PREFECT_API_URL:-}" ]; then exec "$@"; fi
export PREFECT_HOME="${PREFECT_HOME:-$PWD/.prefect}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$PREFECT_HOME"
# The server `prefect server` would start (Prefect's app under uvicorn, UI on this port),
# wrapped by flows/prefect_app.py: a write that loses a SQLite race with Prefect's own
# task-run recorder is replayed at once instead of costing the stage a 2 s client back-off.
# The server and the warm runner get sessions of their own (setsid): the terminal's Ctrl-C
# reaches the command (DVC and its stage), which stops and says where; they are stopped
# afterwards, here, explicitly.
PREFECT__SERVER_FINAL=1 PREFECT_SERVER_API_HOST=127.0.0.1 PREFECT_SERVER_API_PORT="$port" \
  setsid python -m uvicorn --factory flows.prefect_app:create_app --host 127.0.0.1 \
  --port "$port" --timeout-graceful-shutdown 5 > "$PREFECT_HOME/server.log" 2>&1 &
server=$!
warm=""
trap 'kill $warm $server 2>/dev/null; wait $warm $server 2>/dev/null || true' EXIT
# A signal to this script waits for the command to finish (it stops within seconds, see
# dept_core/interrupt.py); then the script exits 130 (SIGINT) or 143 (SIGTERM).
interrupted=""
trap 'interrupted=130' INT
trap 'interrupted=143' TERM
if [ -z "${DEPT_NO_WARM:-}" ]; then  # imports while the Prefect server boots
  export DEPT_WARM_SOCKET="${TMPDIR:-/tmp}/dept-warm-$$.sock"
  PREFECT_API_URL="http://127.0.0.1:$port/api" \
    setsid python -m flows.warm --socket "$DEPT_WARM_SOCKET" > "$PREFECT_HOME/warm.log" 2>&1 &
  warm=$!
fi
for _ in $(seq 1 240); do
  if [ -n "$interrupted" ]; then exit "$interrupted"; fi
  if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/api/health', timeout=2)" 2>/dev/null; then
    break
  fi
  kill -0 $server 2>/dev/null || { echo "prefect server failed; see $PREFECT_HOME/server.log" >&2; exit 1; }
  sleep 0.5
done
export PREFECT_API_URL="http://127.0.0.1:$port/api"
echo "Prefect server (UI and API) at http://127.0.0.1:$port for this run" >&2
status=0
"$@" || status=$?
if [ -n "$interrupted" ]; then exit "$interrupted"; fi
exit "$status"
