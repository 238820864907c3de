# shellcheck shell=bash
# Instructions section of benches/compare.sh: user-space instructions per
# keep-alive request of nginx, Caddy, the plain Pingora proxy and liveroll
# (IR_TARGETS), each run under callgrind for IR_REQUESTS requests (or
# IR_DURATION). Method and caveats: benches/README.md.

instructions() {
    install_missing
    local t run
    for t in $IR_TARGETS; do
        case $t in
            nginx | caddy | pingora | liveroll) ;;
            *) die "IR_TARGETS: unknown target '$t' (nginx, caddy, pingora, liveroll)" ;;
        esac
    done
    if [ -n "$IR_DURATION" ]; then run="-d$IR_DURATION"; else run="$IR_REQUESTS requests"; fi
    log "instructions: callgrind, wrk -t1 -c16 keep-alive, warm-up $IR_WARMUP requests, then $run"
    # nginx, Caddy and the plain Pingora proxy share a backend; liveroll runs its own.
    case " $IR_TARGETS " in *" nginx "* | *" caddy "* | *" pingora "*) start_backend ;; esac
    for t in $IR_TARGETS; do
        WRAP=(valgrind --tool=callgrind --callgrind-out-file="$TMP/callgrind.$t.%p")
        case $t in
            nginx)
                start_nginx
                count_instructions nginx "$NGINX_PID" "$NGINX_PORT"
                ;;
            caddy)
                # Go preempts goroutines with signals (SIGURG), which callgrind
                # does not survive for long; the scheduler's other preemption
                # (at function calls) stays.
                CADDY_ENV=(GODEBUG=asyncpreemptoff=1)
                start_caddy
                # shellcheck disable=SC2034 # read by lib.sh's start_caddy
                CADDY_ENV=()
                count_instructions caddy "$CADDY_PID" "$CADDY_PORT"
                ;;
            pingora)
                start_floor
                count_instructions pingora "$FLOOR_PID" "$FLOOR_PORT"
                ;;
            liveroll)
                start_liveroll IR
                count_instructions liveroll "$IR_PID" "$IR_PORT"
                ;;
        esac
    done
    # shellcheck disable=SC2034 # WRAP is read by lib.sh's start_* functions
    WRAP=()

    echo
    echo "User-space instructions per keep-alive request (callgrind; wrk -t1 -c16, $run)."
    echo
    echo "| target | instructions/req | x nginx |"
    echo "|---|---:|---:|"
    for t in $IR_TARGETS; do
        printf '| %s | %s | %s |\n' "$t" "${RES[$t|ir]}" \
            "$(awk -v a="${RES[$t|ir]}" -v b="${RES[nginx|ir]:-}" \
                'BEGIN { if (b) printf "%.2f", a / b; else print "-" }')"
    done
}

# TARGET PID PORT: user-space instructions per keep-alive request, under callgrind.
count_instructions() {
    # callgrind_control exits 0 even when it reaches nobody, so each dump is
    # checked by its file (valgrind names them OUT.1, OUT.2; %p in OUT is
    # the PID, as valgrind runs in the started process itself).
    local out=$TMP/wrk.out base=$TMP/callgrind.$1.$2 requests total
    wrk_counted "$3" "$IR_WARMUP" "$2" >/dev/null
    settle "$2"
    callgrind_control -d "$2" >/dev/null 2>&1 # start, warm-up: dump 1, discarded
    [ -s "$base.1" ] || die "instructions: callgrind_control did not reach $1 (pid $2)"
    if [ -n "$IR_DURATION" ]; then
        wrk -t1 -c16 -d"$IR_DURATION" "http://127.0.0.1:$3/" >"$out"
    else
        wrk_counted "$3" "$IR_REQUESTS" "$2" >"$out"
    fi
    settle "$2"
    callgrind_control -d "$2" >/dev/null 2>&1
    requests=$(awk '/ requests in / { print $1 }' "$out")
    total=$(callgrind_annotate "$base.2" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
    if [ -z "$requests" ] || ((requests == 0)) || [ -z "$total" ]; then
        die "instructions: no count for $1 (${requests:-no} requests, ${total:-no} instructions)"
    fi
    RES["$1|ir"]=$((total / requests))
    # IR_KEEP=DIR keeps the profile for callgrind_annotate.
    [ -z "${IR_KEEP:-}" ] || cp "$base.2" "$IR_KEEP/callgrind.$1.out"
    log "  $1: $requests requests in $(awk '/ requests in / { sub(",", "", $4); print $4 }' "$out")," \
        "$total instructions"
    stop_pid "$2" 60 || true
}

# PORT COUNT TARGET_PID: `wrk -t1 -c16` keep-alive until COUNT responses are
# in (see stop_after.lua); wrk's summary on stdout. -d is only a limit.
wrk_counted() {
    local flag=$TMP/wrk.done pid
    rm -f "$flag"
    wrk -t1 -c16 -d300s -s "$ROOT/benches/compare/stop_after.lua" \
        "http://127.0.0.1:$1/" -- "$2" "$flag" &
    pid=$!
    while [ ! -e "$flag" ] && kill -0 "$pid" 2>/dev/null; do
        kill -0 "$3" 2>/dev/null || {
            kill -INT "$pid"
            wait "$pid" || true
            die "instructions: the target (pid $3) exited during the run"
        }
        sleep 0.02
    done
    # Again until it ends, in case the first came before wrk's handler was set.
    while kill -0 "$pid" 2>/dev/null; do
        kill -INT "$pid" 2>/dev/null || true
        sleep 0.1
    done
    wait "$pid"
}

# PID: until the process has used no CPU for 0.2 s (at most 5 s), so the
# requests still in flight when wrk stopped are finished before a dump.
settle() {
    local i before after
    after=$(cpu_ticks "$1")
    for ((i = 0; i < 25; i++)); do
        sleep 0.2
        before=$after
        after=$(cpu_ticks "$1")
        ((before != after)) || return 0
    done
    log "  pid $1 still busy after 5 s; dumping anyway"
}
