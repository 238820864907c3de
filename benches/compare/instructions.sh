# shellcheck shell=bash
# Instructions section of benches/compare.sh: user-space instructions per
# keep-alive request of nginx, the plain Pingora proxy and liveroll, each run
# under callgrind. Method and caveats: benches/README.md.

instructions() {
    install_missing
    start_backend
    local t
    log "instructions: callgrind, wrk -t1 -c16 -d$IR_DURATION keep-alive"
    WRAP=(valgrind --tool=callgrind --callgrind-out-file="$TMP/callgrind.nginx.%p")
    start_nginx
    count_instructions nginx "$NGINX_PID" "$NGINX_PORT"
    WRAP=(valgrind --tool=callgrind --callgrind-out-file="$TMP/callgrind.pingora.%p")
    start_floor
    count_instructions pingora "$FLOOR_PID" "$FLOOR_PORT"
    WRAP=(valgrind --tool=callgrind --callgrind-out-file="$TMP/callgrind.liveroll.%p")
    start_liveroll IR
    count_instructions liveroll "$IR_PID" "$IR_PORT"
    # shellcheck disable=SC2034 # WRAP is read by lib.sh's start_* functions
    WRAP=()
    echo
    echo "User-space instructions per keep-alive request (callgrind; wrk -t1 -c16 -d$IR_DURATION)."
    echo
    echo "| target | instructions/req | x nginx |"
    echo "|---|---:|---:|"
    for t in nginx pingora liveroll; do
        printf '| %s | %s | %s |\n' "$t" "${RES[$t|ir]}" \
            "$(awk -v a="${RES[$t|ir]}" -v b="${RES[nginx|ir]}" 'BEGIN { printf "%.2f", a / b }')"
    done
}

# TARGET PID PORT: user-space instructions per keep-alive request, under callgrind.
count_instructions() {
    # callgrind_control exits 0 even when it reaches nobody, so each dump is
    # checked by its file (valgrind names them OUT.1, OUT.2; %p in OUT is
    # the PID, as valgrind runs in the started process itself).
    local out=$TMP/wrk.out base=$TMP/callgrind.$1.$2 requests total
    wrk -t1 -c16 -d3s "http://127.0.0.1:$3/" >/dev/null
    callgrind_control -d "$2" >/dev/null 2>&1 # start, warm-up: dump 1, discarded
    [ -s "$base.1" ] || die "instructions: callgrind_control did not reach $1 (pid $2)"
    wrk -t1 -c16 -d"$IR_DURATION" "http://127.0.0.1:$3/" >"$out"
    callgrind_control -d "$2" >/dev/null 2>&1
    requests=$(awk '/ requests in / { print $1 }' "$out")
    total=$(callgrind_annotate "$base.2" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
    if [ -z "$requests" ] || ((requests == 0)) || [ -z "$total" ]; then
        die "instructions: no count for $1 (${requests:-no} requests, ${total:-no} instructions)"
    fi
    RES["$1|ir"]=$((total / requests))
    log "  $1: $requests requests, $total instructions"
    stop_pid "$2" 60 || true
}
