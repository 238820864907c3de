# shellcheck shell=bash
# Load section of benches/compare.sh: the demo app direct and behind nginx,
# Caddy, the plain Pingora proxy and liveroll, keep-alive and Connection: close,
# ROUNDS interleaved rounds of wrk; one markdown table of medians. With
# BASELINE=PATH another liveroll binary (say, main's before a change) is a
# target too, so the two are compared within the same rounds.
# Method and caveats: benches/README.md.

load() {
    install_missing
    start_backend
    start_nginx
    start_caddy
    start_floor
    start_liveroll LR
    if [ -n "$BASELINE" ]; then
        [ -x "$BASELINE" ] || die "BASELINE: $BASELINE is not an executable file"
        local current=$LIVEROLL
        LIVEROLL=$BASELINE
        start_liveroll LB
        LIVEROLL=$current
        log "baseline :$LB_PORT (pid $LB_PID, $BASELINE)"
    fi
    log "backend :$BACKEND_PORT (pid $BACKEND_PID), nginx :$NGINX_PORT (pid $NGINX_PID)," \
        "caddy :$CADDY_PORT (pid $CADDY_PID), pingora :$FLOOR_PORT (pid $FLOOR_PID)," \
        "liveroll :$LR_PORT (pid $LR_PID, child $LR_CHILD)"
    log "nginx: $(nginx -v 2>&1 || /usr/sbin/nginx -v 2>&1); caddy: $(caddy version);" \
        "wrk: $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"

    local -A port=([direct]=$BACKEND_PORT [nginx]=$NGINX_PORT [caddy]=$CADDY_PORT
        [pingora]=$FLOOR_PORT [liveroll]=$LR_PORT)
    local -A proxy=([direct]=- [nginx]=$NGINX_PID [caddy]=$CADDY_PID [pingora]=$FLOOR_PID
        [liveroll]=$LR_PID)
    local -A backend=([direct]=$BACKEND_PID [nginx]=$BACKEND_PID [caddy]=$BACKEND_PID
        [pingora]=$BACKEND_PID [liveroll]=$LR_CHILD)
    local targets=(direct nginx caddy pingora liveroll) profiles=(keepalive close) t p r
    if [ -n "$BASELINE" ]; then
        targets+=(baseline)
        port[baseline]=$LB_PORT
        proxy[baseline]=$LB_PID
        backend[baseline]=$LB_CHILD
    fi

    log "warm-up: $WARMUP per target"
    for t in "${targets[@]}"; do
        wrk -t1 -c"$CONNS" -d"$WARMUP" "http://127.0.0.1:${port[$t]}/" >/dev/null
    done
    for ((r = 1; r <= ROUNDS; r++)); do
        log "round $r/$ROUNDS (DURATION=$DURATION, CONNS=$CONNS)"
        for p in "${profiles[@]}"; do
            for t in "${targets[@]}"; do
                run_wrk "$t" "$p" "${port[$t]}" "${proxy[$t]}" "${backend[$t]}"
            done
        done
    done

    echo
    echo "Median of $ROUNDS rounds, wrk -t1 -c$CONNS -d$DURATION; $(nproc) CPUs; proxies with 1 worker thread."
    echo
    echo "| target | profile | req/s | p50 | p99 | CPU µs/req | x nginx | peak RSS MiB | upstream conns/req | backend CPU µs/req |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    local k cpu rss upstream ratio
    for p in "${profiles[@]}"; do
        for t in "${targets[@]}"; do
            k="$t|$p|"
            # shellcheck disable=SC2086 # word splitting of the value lists is intended
            if [ "$t" = direct ]; then
                cpu=-
                ratio=-
                rss=-
                upstream="($(median ${RES[${k}conns]}))"
            else
                cpu=$(median ${RES[${k}cpu]})
                ratio=$(awk -v a="$cpu" -v b="$(median ${RES[nginx|$p|cpu]})" \
                    'BEGIN { printf "%.2f", a / b }')
                rss=$(median ${RES[${k}rss]})
                upstream=$(median ${RES[${k}conns]})
            fi
            # shellcheck disable=SC2086
            printf '| %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s |\n' "$t" \
                "$([ "$p" = close ] && echo 'Connection: close' || echo keep-alive)" \
                "$(median ${RES[${k}rps]})" "$(fmt_lat "$(median ${RES[${k}p50]})")" \
                "$(fmt_lat "$(median ${RES[${k}p99]})")" "$cpu" "$ratio" "$rss" "$upstream" \
                "$(median ${RES[${k}bcpu]})"
        done
    done
    echo
    echo "CPU µs/req and peak RSS: the proxy process only. upstream conns/req: backend accepts per"
    echo "request from TcpPassiveOpens deltas (see benches/README.md); for direct, in parentheses,"
    echo "the same formula where no upstream exists (the method's zero)."
}
