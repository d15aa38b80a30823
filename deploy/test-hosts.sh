#!/usr/bin/env bash
# The deployment of deploy/README.md, tested (`make test-hosts`): three
# "hosts" as Linux network namespaces (lc11h1..3, each reached over a veth
# pair: 10.77.N.1 in the root namespace, 10.77.N.2 in the host), each
# running bin/luv-cluster with 2 workers of examples/health_app.lua on
# port 8080; HAProxy (Debian's) in the root namespace in front, with
# deploy/haproxy.cfg itself, listening on a free 127.0.0.1 port. The
# scenario and the client load are deploy/test-hosts.lua.
#
# Needs root (ip netns) and haproxy (apt-get install -y haproxy iproute2).
# Whatever happens (failure, Ctrl-C, SIGTERM), the trap kills the
# processes this run started (HAProxy by its pid; the runners and workers
# by the pids `ip netns pids` lists for its own namespaces) and deletes
# its namespaces and veth pairs. A run killed with SIGKILL leaves them:
# the next run removes them first (they are ours by name).
#
#   deploy/test-hosts.sh            LUA=luajit deploy/test-hosts.sh
#   HAPROXY_CFG=other.cfg TH_APP=other_app.lua deploy/test-hosts.sh   (comparisons)
set -euo pipefail
cd "$(dirname "$0")/.."

LUA=${LUA:-lua5.4}
PREFIX=lc11h
N=3
LOGDIR=${TH_LOGDIR:-build/test-hosts}
HAPROXY_CFG=${HAPROXY_CFG:-deploy/haproxy.cfg} # another config to compare with

die() { echo "test-hosts: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
command -v ip >/dev/null || die "needs ip (apt-get install -y iproute2)"
command -v haproxy >/dev/null || die "needs haproxy (apt-get install -y haproxy)"
LUA_BIN=$(command -v "$LUA") || die "no interpreter '$LUA'"

# One run at a time: the namespaces and addresses are fixed. (Only this
# shell holds the lock: its children get 9>&-.)
mkdir -p "$LOGDIR"
exec 9>"$LOGDIR/.lock"
flock -n 9 || die "another run holds $LOGDIR/.lock"

HAPROXY_PID=
DRIVER_PID=
# A pid from $LOGDIR/<name>.pid (a run that was SIGKILLed), if that
# process still runs the same program.
stale_pid() { # name, program
  local pid
  pid=$(cat "$LOGDIR/$1.pid" 2>/dev/null) || return 0
  rm -f "$LOGDIR/$1.pid"
  grep -qa -- "$2" "/proc/$pid/cmdline" 2>/dev/null && echo "$pid"
  return 0
}
cleanup() {
  set +e
  [ -z "$DRIVER_PID" ] && DRIVER_PID=$(stale_pid driver deploy/test-hosts.lua)
  [ -z "$HAPROXY_PID" ] && HAPROXY_PID=$(stale_pid haproxy "$HAPROXY_CFG")
  if [ -n "$DRIVER_PID" ] && kill -0 "$DRIVER_PID" 2>/dev/null; then
    kill "$DRIVER_PID"
    wait "$DRIVER_PID" 2>/dev/null
  fi
  rm -f "$LOGDIR/driver.pid" "$LOGDIR/haproxy.pid"
  if [ -n "$HAPROXY_PID" ]; then
    kill "$HAPROXY_PID" 2>/dev/null
    wait "$HAPROXY_PID" 2>/dev/null
  fi
  for i in $(seq 1 $N); do
    local ns=$PREFIX$i pids
    if [ -e "/run/netns/$ns" ]; then
      pids=$(ip netns pids "$ns" 2>/dev/null)
      # shellcheck disable=SC2086
      [ -n "$pids" ] && kill -9 $pids 2>/dev/null
      ip netns del "$ns" 2>/dev/null
    fi
    ip link del "${PREFIX}${i}r" 2>/dev/null
  done
}
cleanup # leftovers of a run that was SIGKILLed
set -e
trap 'status=$?; trap - EXIT; cleanup; exit $status' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
rm -f "$LOGDIR"/*.log

# The hosts.
HOSTS=
for i in $(seq 1 $N); do
  ns=$PREFIX$i
  ip netns add "$ns"
  ip link add "${PREFIX}${i}r" type veth peer name eth0 netns "$ns"
  ip addr add "10.77.$i.1/24" dev "${PREFIX}${i}r"
  ip link set "${PREFIX}${i}r" up
  ip -n "$ns" addr add "10.77.$i.2/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  HOSTS="${HOSTS:+$HOSTS,}host$i=$ns=10.77.$i.2"
done

# The core for the runners' interpreter.
make --no-print-directory -s build LUA="$LUA" >/dev/null

# A free port for HAProxy's frontend.
PORT=$("$LUA_BIN" -e 'local uv = require("luv") local s = uv.new_tcp() assert(s:bind("127.0.0.1", 0))
  io.write(s:getsockname().port) s:close() uv.run()')

export HAPROXY_BIND=127.0.0.1:$PORT
export HAPROXY_ADMIN_SOCKET=$PWD/$LOGDIR/haproxy.sock
export HAPROXY_LOG=stdout HAPROXY_LOG_LEVEL=${HAPROXY_LOG_LEVEL:-err} # retries, errors, checks
haproxy -db -f "$HAPROXY_CFG" >"$LOGDIR/haproxy.log" 2>&1 9>&- &
HAPROXY_PID=$!
echo "$HAPROXY_PID" >"$LOGDIR/haproxy.pid"
for _ in $(seq 1 100); do # its admin socket, at most 5 s
  [ -S "$HAPROXY_ADMIN_SOCKET" ] && break
  kill -0 "$HAPROXY_PID" 2>/dev/null || { cat "$LOGDIR/haproxy.log" >&2; die "haproxy did not start"; }
  sleep 0.05
done
[ -S "$HAPROXY_ADMIN_SOCKET" ] || die "haproxy's admin socket did not appear"

echo "test-hosts: $N hosts ($HOSTS), HAProxy on $HAPROXY_BIND, runners under $LUA; logs in $LOGDIR/"
# In the background, so that a signal to this script runs the trap at
# once (the driver bounds its own run: 180 s at most).
TH_HOSTS=$HOSTS TH_FRONT=$HAPROXY_BIND TH_LOGDIR=$LOGDIR TH_LUA=$LUA_BIN "$LUA_BIN" deploy/test-hosts.lua 9>&- &
DRIVER_PID=$!
echo "$DRIVER_PID" >"$LOGDIR/driver.pid"
wait "$DRIVER_PID"
