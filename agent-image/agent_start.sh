#!/usr/bin/env bash
# Entry point of the agent container: validate the environment, start the desktop and Jupyter
# under supervisord, wait until they answer, run the agent, and exit with the agent's exit code.
# The agent writes /workspace/.codingjob/result.json and the termination message; this script
# writes them itself only when the agent cannot (invalid environment, crash).
set -uo pipefail

# PID 1 must reap the orphans of the agent's shell commands and forward signals: tini does both.
if [ "$$" = 1 ] && [ -z "${CODINGJOB_UNDER_TINI:-}" ] && command -v tini >/dev/null; then
  export CODINGJOB_UNDER_TINI=1
  exec tini -s -- "$0" "$@"
fi

started=$(date +%s.%N)
# The job's deadline counts from the container's start, not from the agent's.
export CODINGJOB_STARTED_AT="${CODINGJOB_STARTED_AT:-$(date +%s)}"

log() { printf '%s agent_start: %s\n' "$(date -u +%H:%M:%S)" "$*"; }

fail_env() {
  log "invalid environment: $*"
  codingjob-agent report --reason InvalidEnvironment --message "$*" || true
  exit 2
}

is_bool() { [ "$1" = true ] || [ "$1" = false ]; }
is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

export CODINGJOB_WORKSPACE="${CODINGJOB_WORKSPACE:-/workspace}"
export CODINGJOB_SESSION_DIR="${CODINGJOB_SESSION_DIR:-/var/run/codingjob/session}"
export CODINGJOB_GUI_ENABLED="${CODINGJOB_GUI_ENABLED:-true}"
export CODINGJOB_JUPYTER_ENABLED="${CODINGJOB_JUPYTER_ENABLED:-true}"
export CODINGJOB_SCREEN="${CODINGJOB_SCREEN:-1280x800x24}"
export DISPLAY="${DISPLAY:-:1}"

# --- validate ----------------------------------------------------------------------------------
# The sandbox never runs as root: a root agent could undo every other boundary of the pod.
[ "$(id -u)" != 0 ] || fail_env "the agent must not run as root (uid 0)"
[ -d "$CODINGJOB_WORKSPACE" ] && [ -w "$CODINGJOB_WORKSPACE" ] \
  || fail_env "workspace $CODINGJOB_WORKSPACE is missing or not writable"
is_bool "$CODINGJOB_GUI_ENABLED" || fail_env "CODINGJOB_GUI_ENABLED must be true or false"
is_bool "$CODINGJOB_JUPYTER_ENABLED" || fail_env "CODINGJOB_JUPYTER_ENABLED must be true or false"
is_uint "${CODINGJOB_MAX_STEPS:-0}" || fail_env "CODINGJOB_MAX_STEPS must be a non-negative integer"
is_uint "${CODINGJOB_DEADLINE_SECONDS:-0}" \
  || fail_env "CODINGJOB_DEADLINE_SECONDS must be a non-negative integer"
[ -n "${CODINGJOB_GATEWAY_URL:-}" ] || fail_env "CODINGJOB_GATEWAY_URL is not set"
mkdir -p /tmp/codingjob/wm-home/.fluxbox "$CODINGJOB_WORKSPACE/.codingjob" \
  || fail_env "cannot create /tmp/codingjob or $CODINGJOB_WORKSPACE/.codingjob"
# X clients look for the server's socket here; a non-root Xvfb cannot create the directory.
mkdir -p -m 1777 /tmp/.X11-unix
cp /opt/codingjob/etc/fluxbox-init /tmp/codingjob/wm-home/.fluxbox/init
cp /opt/codingjob/etc/fluxbox-overlay /tmp/codingjob/wm-home/.fluxbox/overlay
# Caches (fonts, pip, the browser) are not the user's work: keep them out of the archive.
export XDG_CACHE_HOME="${XDG_CACHE_HOME:-/tmp/codingjob/cache}"

# With a desktop, the agent mirrors its tool calls here and a terminal window shows them.
if [ "$CODINGJOB_GUI_ENABLED" = true ]; then
  export CODINGJOB_TERMINAL_DIR="${CODINGJOB_TERMINAL_DIR:-/tmp/codingjob/terminal}"
fi

readable() { [ -r "$1" ] && [ -s "$1" ]; }
export CODINGJOB_GUI_AUTOSTART="$CODINGJOB_GUI_ENABLED"
export CODINGJOB_VNC_AUTOSTART="$CODINGJOB_GUI_ENABLED"
export CODINGJOB_JUPYTER_AUTOSTART="$CODINGJOB_JUPYTER_ENABLED"
if [ "$CODINGJOB_GUI_ENABLED" = true ] && ! readable "$CODINGJOB_SESSION_DIR/vnc-password"; then
  log "no VNC password in $CODINGJOB_SESSION_DIR: VNC and noVNC stay off (the desktop still runs)"
  export CODINGJOB_VNC_AUTOSTART=false
fi
if [ "$CODINGJOB_JUPYTER_ENABLED" = true ] && ! readable "$CODINGJOB_SESSION_DIR/jupyter-token"; then
  log "no Jupyter token in $CODINGJOB_SESSION_DIR: Jupyter stays off"
  export CODINGJOB_JUPYTER_AUTOSTART=false
fi

# --- services ----------------------------------------------------------------------------------
agent_pid=
terminated=false
on_term() {
  terminated=true
  if [ -n "$agent_pid" ]; then kill -TERM "$agent_pid" 2>/dev/null; fi
}
trap on_term TERM INT
stop_services() {
  if [ -n "$supervisord_pid" ]; then
    kill -TERM "$supervisord_pid" 2>/dev/null
    wait "$supervisord_pid" 2>/dev/null
  fi
}

supervisord_pid=
if [ "$CODINGJOB_GUI_AUTOSTART" = true ] || [ "$CODINGJOB_JUPYTER_AUTOSTART" = true ]; then
  /opt/codingjob/supervisor/bin/supervisord -c /opt/codingjob/etc/supervisord.conf &
  supervisord_pid=$!
fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for() { # name timeout_s check...
  local name=$1 timeout=$2 start=$SECONDS
  shift 2
  until "$@"; do
    if [ "$terminated" = true ]; then return 1; fi
    if (( SECONDS - start >= timeout )); then
      log "$name did not come up within ${timeout}s (see /tmp/codingjob/*.log)"
      return 1
    fi
    sleep 0.1
  done
  log "$name ready"
}
if [ "$CODINGJOB_GUI_AUTOSTART" = true ]; then
  wait_for "desktop :1" 30 test -S /tmp/.X11-unix/X1
fi
if [ "$CODINGJOB_VNC_AUTOSTART" = true ]; then
  wait_for "vnc :5900" 30 port_open 5900
  wait_for "novnc :6080" 30 port_open 6080
fi
if [ "$CODINGJOB_JUPYTER_AUTOSTART" = true ]; then
  wait_for "jupyter :8888" 60 port_open 8888
fi
log "services ready in $(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')s"

# --- agent -------------------------------------------------------------------------------------
if [ "$terminated" = true ]; then
  codingjob-agent report --reason Terminated --message "stopped before the agent started" || true
  stop_services
  exit 143
fi
started_at=$(date +%s)
codingjob-agent &
agent_pid=$!
wait "$agent_pid"
code=$?
# `wait` returns early when a trapped signal arrives; wait again for the agent's own exit.
while kill -0 "$agent_pid" 2>/dev/null; do
  wait "$agent_pid"
  code=$?
done

# The agent's own record of this run: result.json, or its termination message alone when the
# workspace had no room left for result.json (reason WorkspaceFull), which must not be
# overwritten with a vaguer AgentError.
recorded() { [ -s "$1" ] && [ "$(stat -c %Y "$1")" -ge "$started_at" ]; }
if [ "$code" != 0 ] && ! recorded "$CODINGJOB_WORKSPACE/.codingjob/result.json" &&
  ! recorded "${CODINGJOB_TERMINATION_LOG:-/dev/termination-log}"; then
  codingjob-agent report --reason AgentError --message "the agent exited with code $code" || true
fi

stop_services
log "agent exited with code $code"
exit "$code"
