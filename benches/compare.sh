#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Load comparison: the demo app direct, behind nginx, behind Caddy, behind a
# plain Pingora proxy, and behind liveroll. What each section measures, how,
# and the caveats: benches/README.md.
#
# Usage: benches/compare.sh [all|load|rollover|scale|instructions]  (default: all)
#   DURATION=10s       length of each measured wrk run
#   ROUNDS=3           rounds; targets and profiles are interleaved inside a round
#   CONNS=64           wrk connections (load section)
#   ROLLOVERS=20       SIGHUP rollovers timed by the rollover section
#   IDLE_CONNS=10000   idle keep-alive connections held by the scale section
#   SCALE_CONNS=128    wrk connections of the scale section's thread comparison
#   IR_REQUESTS=5000   keep-alive requests per target under callgrind (instructions)
#   IR_DURATION=       if set (e.g. 8s), run that long instead of IR_REQUESTS
#   IR_WARMUP=1000     requests per target before the instructions are counted
#   IR_TARGETS="nginx caddy pingora liveroll"  the instructions section's targets
#   IR_KEEP=DIR        keep each target's callgrind profile in DIR (callgrind.TARGET.out)
#   BASELINE=PATH      another liveroll binary, a target of the load section too
#   PORTS=LO-HI        ports to listen on (default: 10000 up to the ephemeral range)
# Defaults take about 8 minutes (3 rounds x 2 profiles x 5 targets x 10 s,
# plus warm-up, the rollover section, the scale section's 3 x 2 x 10 s and
# the instructions section's 4 x 5000 requests under valgrind, about 45 s).
#
# The sections live in benches/compare/: lib.sh (building, ports, starting
# and stopping the servers, measuring) and one file per section.

set -euo pipefail

MODE=${1:-all}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64}
ROLLOVERS=${ROLLOVERS:-20}
WARMUP=${WARMUP:-2s}
IDLE_CONNS=${IDLE_CONNS:-10000}
IR_REQUESTS=${IR_REQUESTS:-5000}
IR_DURATION=${IR_DURATION:-}
IR_WARMUP=${IR_WARMUP:-1000}
IR_TARGETS=${IR_TARGETS:-nginx caddy pingora liveroll}
IR_KEEP=${IR_KEEP:-}
BASELINE=${BASELINE:-}
SCALE_CONNS=${SCALE_CONNS:-128}
PORTS=${PORTS:-}
WRK_THREADS=1         # wrk -t and -c of run_wrk; the scale section changes them
WRK_CONNS=$CONNS
NGINX_WORKER_CONNECTIONS=4096
LIVEROLL_ENV=()       # extra environment for liveroll (the scale section)
CADDY_ENV=()          # extra environment for Caddy (the instructions section)
WRAP=()               # command prefix for the proxies (the instructions section)
case $MODE in
    all | load | rollover | scale | instructions) ;;
    *)
        echo "usage: $0 [all|load|rollover|scale|instructions]" >&2
        exit 2
        ;;
esac

cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
DEMO=$BIN/liveroll-demo
LIVEROLL=$BIN/liveroll

# shellcheck source=compare/lib.sh
source "$ROOT/benches/compare/lib.sh"
# shellcheck source=compare/load.sh
source "$ROOT/benches/compare/load.sh"
# shellcheck source=compare/rollover.sh
source "$ROOT/benches/compare/rollover.sh"
# shellcheck source=compare/scale.sh
source "$ROOT/benches/compare/scale.sh"
# shellcheck source=compare/instructions.sh
source "$ROOT/benches/compare/instructions.sh"

start_session
build

case $MODE in
    load) load ;;
    rollover) rollover ;;
    scale) scale ;;
    instructions) instructions ;;
    all)
        load
        stop_all
        rollover
        stop_all
        scale
        stop_all
        instructions
        ;;
esac
