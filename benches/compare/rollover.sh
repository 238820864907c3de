# shellcheck shell=bash
# Rollover section of benches/compare.sh: time from SIGHUP to the new demo
# child serving, ROLLOVERS times (benches/rollover.py does the timing).

rollover() {
    command -v python3 >/dev/null || die "the rollover section needs python3"
    start_liveroll RO
    log "rollover: liveroll :$RO_PORT (pid $RO_PID); $ROLLOVERS x SIGHUP"
    echo
    python3 "$ROOT/benches/rollover.py" "$RO_PID" "$RO_PORT" "$ROLLOVERS"
    stop_pid "$RO_PID" 40 || true
}
