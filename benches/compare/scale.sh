# shellcheck shell=bash
# Scale section of benches/compare.sh: user-space memory per idle keep-alive
# connection (liveroll, nginx, Caddy, the plain Pingora proxy), then liveroll's
# throughput with one and two worker threads. Method: benches/README.md.

declare -A IDLE # "row|field" -> value
IDLE_ROWS=()

scale() {
    command -v python3 >/dev/null || die "the scale section needs python3"
    install_missing
    raise_nofile

    # a. Memory per idle keep-alive connection.
    log "scale: $IDLE_CONNS idle keep-alive connections"
    # --max-connections defaults to half the descriptors liveroll may open
    # (9,904 at a hard limit of 20,000): past it connections wait in the
    # listen backlog, and idle_conns.py would wait for them until the first
    # ones reach --keepalive-timeout.
    LIVEROLL_ENV=(LIVEROLL_MAX_CONNECTIONS=$((IDLE_CONNS + 64)))
    start_liveroll SL 1
    log "  liveroll :$SL_PORT (pid $SL_PID, threads: 1)"
    idle_measure "liveroll (threads: 1)" "$SL_PORT" "$SL_PID"
    stop_all
    LIVEROLL_ENV=(LIVEROLL_MAX_CONNECTIONS=$((IDLE_CONNS + 64)) MIMALLOC_ALLOW_THP=0)
    start_liveroll SL 1
    # shellcheck disable=SC2034 # LIVEROLL_ENV is read by lib.sh's start_liveroll
    LIVEROLL_ENV=()
    log "  liveroll :$SL_PORT (pid $SL_PID, threads: 1, MIMALLOC_ALLOW_THP=0)"
    idle_measure "liveroll (threads: 1), MIMALLOC_ALLOW_THP=0" "$SL_PORT" "$SL_PID"
    stop_all
    # Local: the instructions section after this one gets the usual nginx.
    local NGINX_WORKER_CONNECTIONS=$((IDLE_CONNS + 1024))
    start_backend
    start_nginx
    log "  nginx :$NGINX_PORT (pid $NGINX_PID, worker_connections $NGINX_WORKER_CONNECTIONS)"
    idle_measure "nginx (1 worker process)" "$NGINX_PORT" "$NGINX_PID"
    start_caddy
    log "  caddy :$CADDY_PORT (pid $CADDY_PID, GOMAXPROCS=1)"
    idle_measure "caddy (GOMAXPROCS=1)" "$CADDY_PORT" "$CADDY_PID"
    start_floor
    log "  pingora :$FLOOR_PORT (pid $FLOOR_PID, threads: 1)"
    idle_measure "pingora (plain, threads: 1)" "$FLOOR_PORT" "$FLOOR_PID"
    stop_all

    # b. Throughput, 1 vs 2 worker threads.
    WRK_THREADS=2
    WRK_CONNS=$SCALE_CONNS
    start_liveroll T1 1
    start_liveroll T2 2
    log "scale: liveroll threads: 1 :$T1_PORT (pid $T1_PID), threads: 2 :$T2_PORT (pid $T2_PID)"
    local -A port=([1]=$T1_PORT [2]=$T2_PORT)
    local -A proxy=([1]=$T1_PID [2]=$T2_PID)
    local -A backend=([1]=$T1_CHILD [2]=$T2_CHILD)
    local order t r
    for t in 1 2; do
        wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"$WARMUP" "http://127.0.0.1:${port[$t]}/" >/dev/null
    done
    for ((r = 1; r <= ROUNDS; r++)); do
        log "scale round $r/$ROUNDS (DURATION=$DURATION, wrk -t$WRK_THREADS -c$WRK_CONNS)"
        order="1 2"
        ((r % 2)) || order="2 1"
        for t in $order; do
            run_wrk "threads$t" keepalive "${port[$t]}" "${proxy[$t]}" "${backend[$t]}"
        done
    done
    stop_all

    local n
    echo
    echo "Scale. $(nproc) CPUs."
    echo
    echo "Idle keep-alive connections: $IDLE_CONNS, each has served one \`GET /\` and stays open."
    echo
    echo "| server | RSS before MiB | RSS with $IDLE_CONNS idle MiB | KiB per idle conn | AnonHugePages MiB | server ESTAB | closed by server | GET / while held |"
    echo "|---|---:|---:|---:|---:|---:|---:|---|"
    for n in "${IDLE_ROWS[@]}"; do
        printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$n" \
            "$(awk -v k="${IDLE[$n|before]}" 'BEGIN { printf "%.1f", k / 1024 }')" \
            "$(awk -v k="${IDLE[$n|after]}" 'BEGIN { printf "%.1f", k / 1024 }')" \
            "$(awk -v a="${IDLE[$n|after]}" -v b="${IDLE[$n|before]}" -v n="$IDLE_CONNS" \
                'BEGIN { printf "%.2f", (a - b) / n }')" \
            "$(awk -v k="${IDLE[$n|thp]}" 'BEGIN { printf "%.1f", k / 1024 }')" \
            "${IDLE[$n|estab]}" "${IDLE[$n|closed]}" "${IDLE[$n|probe]}"
    done
    echo
    echo "KiB per idle conn = (VmRSS with them - VmRSS before) / $IDLE_CONNS: user-space memory of the"
    echo "server process only (kernel socket buffers are not in VmRSS). AnonHugePages (smaps_rollup,"
    echo "with the connections open) is the part of VmRSS in transparent huge pages: mimalloc asks"
    echo "for them (MADV_HUGEPAGE) unless MIMALLOC_ALLOW_THP=0, so a touched 2 MiB region counts whole;"
    echo "the MIMALLOC_ALLOW_THP=0 row is the same liveroll with THP off for the process (4 KiB pages)."
    echo "nginx allocates its connection and event arrays for all worker_connections ($NGINX_WORKER_CONNECTIONS)"
    echo "at start, so that part is in its \"before\". GET / while held: 5 requests, each on a new"
    echo "connection, timed by the script (bash /dev/tcp, including a subshell per request)."
    echo
    echo "Worker threads: median of $ROUNDS rounds, wrk -t$WRK_THREADS -c$WRK_CONNS -d$DURATION keep-alive."
    echo
    echo "| liveroll | req/s | p50 | p99 | CPU µs/req | peak RSS MiB | backend CPU µs/req |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    local k rps1 rps2
    for t in 1 2; do
        k="threads$t|keepalive|"
        # shellcheck disable=SC2086 # word splitting of the value lists is intended
        printf '| threads: %s | %.0f | %s | %s | %s | %s | %s |\n' "$t" \
            "$(median ${RES[${k}rps]})" "$(fmt_lat "$(median ${RES[${k}p50]})")" \
            "$(fmt_lat "$(median ${RES[${k}p99]})")" "$(median ${RES[${k}cpu]})" \
            "$(median ${RES[${k}rss]})" "$(median ${RES[${k}bcpu]})"
    done
    # shellcheck disable=SC2086
    rps1=$(median ${RES[threads1|keepalive|rps]})
    # shellcheck disable=SC2086
    rps2=$(median ${RES[threads2|keepalive|rps]})
    echo
    echo "req/s ratio, threads: 2 / threads: 1 = $(awk -v a="$rps2" -v b="$rps1" 'BEGIN { printf "%.2f", a / b }')"
    echo
    echo "On $(nproc) CPUs wrk (2 threads), liveroll and its demo child (a single-threaded app) all"
    echo "compete for the same cores, so this is not the scaling of liveroll alone: a second worker"
    echo "thread can only use CPU that wrk and the backend leave free. CPU µs/req: the liveroll"
    echo "process (all its threads); backend: its child."
}

rss_kib() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status"; }
thp_kib() { awk '$1 == "AnonHugePages:" { s += $2 } END { print s + 0 }' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }

raise_nofile() { # the open-file limit for this shell and everything it starts
    local need=$((IDLE_CONNS + 1024)) cur
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    cur=$(ulimit -n)
    [ "$cur" = unlimited ] || ((cur >= need)) ||
        die "open-file limit $cur < IDLE_CONNS + 1024 = $need (hard limit $(ulimit -Hn))"
    log "scale: open-file limit $cur"
}

# ROW PORT PID: hold IDLE_CONNS idle keep-alive connections to PORT and
# measure PID's VmRSS growth; ROW names the table row.
idle_measure() {
    local row=$1 lport=$2 pid=$3 fifo=$TMP/idle.in out=$TMP/idle.out err=$TMP/idle.err
    local fd ipid i before after thp estab t0 t1 reply ok=0 times=() closed
    rm -f "$fifo"
    mkfifo "$fifo"
    sleep 1
    before=$(rss_kib "$pid")
    python3 "$ROOT/benches/idle_conns.py" "$lport" "$IDLE_CONNS" <"$fifo" >"$out" 2>"$err" &
    ipid=$!
    exec {fd}>"$fifo" # idle_conns.py holds its connections until this closes
    for ((i = 0; ; i++)); do
        grep -q '^ready' "$out" && break
        if ! kill -0 "$ipid" 2>/dev/null || ((i >= 3000)); then
            exec {fd}>&-
            cat "$err" >&2
            die "$row: idle_conns.py did not get $IDLE_CONNS responses"
        fi
        sleep 0.05
    done
    sleep 1
    after=$(rss_kib "$pid")
    thp=$(thp_kib "$pid")
    estab=$(ss -Htn state established "( sport = :$lport )" | wc -l)
    # Ordinary requests (a new connection each) while all of them are held.
    for ((i = 0; i < 5; i++)); do
        t0=$EPOCHREALTIME
        reply=$(probe "$lport")
        t1=$EPOCHREALTIME
        case $reply in 200\ *) ok=$((ok + 1)) ;; esac
        times+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) * 1000 }')")
    done
    exec {fd}>&-
    wait "$ipid" || {
        cat "$err" >&2
        die "$row: idle_conns.py failed"
    }
    closed=$(awk '$1 == "closed_by_server" { print $2 }' "$out")
    log "  $row: VmRSS $before -> $after KiB (AnonHugePages $thp KiB) with $IDLE_CONNS idle" \
        "connections ($(awk '$1 == "ready" { print $3 }' "$out") s to open); ESTAB $estab;" \
        "GET / while held: $ok/5 x 200, ${times[*]} ms; closed by server: ${closed:-?}"
    IDLE_ROWS+=("$row")
    IDLE[$row|before]=$before
    IDLE[$row|after]=$after
    IDLE[$row|thp]=$thp
    IDLE[$row|estab]=$estab
    IDLE[$row|closed]=${closed:-?}
    IDLE[$row|probe]="$ok/5 x 200, median $(median "${times[@]}") ms"
}
