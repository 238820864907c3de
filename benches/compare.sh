#!/usr/bin/env bash
# Load comparison: the demo app direct, behind nginx, behind a plain Pingora
# proxy, and behind liveroll.
#
# Usage: benches/compare.sh [all|load|rollover|scale|instructions]  (default: all)
#   DURATION=10s       length of each measured wrk run
#   ROUNDS=3           rounds; targets and profiles are interleaved inside a round
#   CONNS=64           wrk connections (load section)
#   ROLLOVERS=20       SIGHUP rollovers timed by the rollover section
#   IDLE_CONNS=10000   idle keep-alive connections held by the scale section
#   SCALE_CONNS=128    wrk connections of the scale section's thread comparison
#   IR_DURATION=8s     length of each run under callgrind (instructions section)
#   PORTS=LO-HI        ports to listen on (default: 10000 up to the ephemeral range)
# Defaults take about 7 minutes (3 rounds x 2 profiles x 4 targets x 10 s,
# plus warm-up, the rollover section, the scale section's 3 x 2 x 10 s and
# the instructions section's 3 x 11 s under valgrind).
#
# Setup. One backend: the release demo app (`liveroll-demo --port P`). Targets:
#   direct    wrk -> demo
#   nginx     wrk -> nginx -> the same demo. One process (`daemon off;
#             master_process off;`, so its PID is the worker), an `upstream`
#             with `keepalive 64`, `proxy_http_version 1.1`,
#             `proxy_set_header Connection ""`, the same X-Forwarded-For/-Proto/
#             -Host headers liveroll adds, `access_log off`. Client-side
#             `keepalive_requests` is raised so nginx never closes wrk's
#             keep-alive connections (its default closes every 1000 requests),
#             which keeps the connection accounting below exact; the upstream
#             side keeps nginx's defaults.
#   pingora   wrk -> a plain Pingora round-robin proxy -> the same demo:
#             benches/pingora_floor.rs, Pingora's defaults (allocator
#             included) and no hook but upstream_peer, with the same
#             `threads: 1` conf. The floor under liveroll: what any
#             ProxyHttp costs before it does anything of its own.
#   liveroll  wrk -> liveroll -> its own demo child (same binary) on its child
#             port; a Pingora conf with `threads: 1`.
# Everything binds 127.0.0.1 on free ports and is stopped on exit (trap).
#
# Profiles: keep-alive (`wrk -t1 -c64 -d$DURATION --latency`) and
# connection-per-request (the same plus `-H 'Connection: close'`).
#
# Figures per target and profile, median over rounds:
#   req/s, p50, p99     from wrk --latency.
#   CPU us/req          utime+stime of the proxy process (fields 14+15 of
#                       /proc/PID/stat, all its threads; CLK_TCK from
#                       `getconf CLK_TCK`) before and after the run, over the
#                       requests wrk completed. Proxy process only: for
#                       liveroll that is the liveroll process, not its child.
#                       The last column gives the same for the backend process.
#   peak RSS MiB        VmHWM of the proxy process from /proc/PID/status; the
#                       high-water mark is reset before each run (`echo 5 >
#                       /proc/PID/clear_refs`) where the kernel allows it,
#                       otherwise it is the peak since the proxy started.
#   upstream conns/req  connections the backend accepted, per request. The demo
#                       app has no counter, so this uses the machine-wide
#                       TcpPassiveOpens (`nstat -az TcpPassiveOpens`; it counts
#                       one per connection accepted by any listener). Over a
#                       run it is wrk->proxy accepts + proxy->backend accepts.
#                       wrk's own connections are known: CONNS in keep-alive
#                       (neither the demo, nginx as configured, nor Pingora
#                       closes a keep-alive client connection), and one per
#                       request plus up to CONNS still open at the end with
#                       `Connection: close`. So upstream accepts = delta - CONNS
#                       (keep-alive) or delta - requests - CONNS (close); the
#                       error of the close figure is below CONNS/requests.
#                       For `direct` the same formula has no upstream to count
#                       and shows the method's zero, in parentheses. Any other
#                       TCP accept on the machine during a run inflates it:
#                       liveroll's own active health checks of its child (one
#                       connection per --health-interval, default 2 s) add a
#                       few per run to every row, and other programs' traffic
#                       on the machine shows up in the direct row's zero.
#
#   x nginx             the proxy's CPU us/req over nginx's (both medians).
#
# Instructions (`compare.sh instructions`, also the last section of `all`):
# CPU time on a shared 2-core VM moves by 10-20% between runs; instruction
# counts do not. nginx, the plain Pingora proxy and liveroll (set up as above)
# each run under `valgrind --tool=callgrind`; after a 3 s warm-up the counters
# are dumped (`callgrind_control -d`, which also zeroes them), `wrk -t1 -c16
# -d$IR_DURATION` runs keep-alive, they are dumped again, and the second
# dump's total is divided by wrk's requests. User space only (the kernel's share, about half of the CPU time
# per request, is not counted); valgrind slows each target about 50x, so
# the counts are for comparing, not timing.
#
# Rollover (`compare.sh rollover`, the second section of `all`): a separate
# liveroll with the demo; benches/rollover.py sends SIGHUP, polls `GET /`
# through liveroll every 1 ms until X-Demo-Pid changes, waits for the old
# child to exit, and repeats ROLLOVERS times; median and max are printed.
#
# Scale (`compare.sh scale`, the third section of `all`). Raises the
# open-file limit first (`ulimit -n 65536`, else the hard limit; it must reach
# IDLE_CONNS + 1024), so every server it starts inherits it. Earlier sections'
# processes are stopped by then.
#   Idle connections: a fresh liveroll (`threads: 1`, as above), the same
#   again with MIMALLOC_ALLOW_THP=0 in its environment (mimalloc then turns
#   transparent huge pages off for the process), a fresh nginx (as above,
#   with worker_connections raised to IDLE_CONNS + 1024, in front of a fresh
#   demo) and the plain Pingora proxy (as above, in front of the same demo).
#   For each: VmRSS from /proc/PID/status, then benches/idle_conns.py
#   opens IDLE_CONNS connections, sends one `GET / HTTP/1.1` on each, reads the
#   whole 200 response and holds them all open and idle; VmRSS again (1 s after
#   the last response) and AnonHugePages from /proc/PID/smaps_rollup. KiB per
#   idle connection = (after - before) / IDLE_CONNS. While they are held the
#   script counts the server's ESTABLISHED sockets on its port (`ss`) and sends
#   5 ordinary `GET /` (a new connection each) through the server. User-space
#   memory only: kernel socket buffers are not in VmRSS.
#   Worker threads: two liverolls, Pingora conf `threads: 1` and `threads: 2`,
#   each with its own demo child; `wrk -t2 -c$SCALE_CONNS -d$DURATION
#   --latency` keep-alive, both interleaved in each of ROUNDS rounds (the order
#   alternates between rounds); req/s, latency, CPU us/req of liveroll and of
#   its child as in the load table, and the ratio of the req/s medians.

set -euo pipefail

MODE=${1:-all}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64}
ROLLOVERS=${ROLLOVERS:-20}
WARMUP=${WARMUP:-2s}
IDLE_CONNS=${IDLE_CONNS:-10000}
IR_DURATION=${IR_DURATION:-8s}
SCALE_CONNS=${SCALE_CONNS:-128}
PORTS=${PORTS:-}
WRK_THREADS=1         # wrk -t and -c of run_wrk; the scale section changes them
WRK_CONNS=$CONNS
NGINX_WORKER_CONNECTIONS=4096
LIVEROLL_ENV=()       # extra environment for liveroll (the scale section)
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

log() { printf '%s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo

# --- tools -----------------------------------------------------------------

install_missing() {
    local pkgs=()
    command -v wrk >/dev/null || pkgs+=(wrk)
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || pkgs+=(nginx-light)
    command -v nstat >/dev/null && command -v ss >/dev/null || pkgs+=(iproute2)
    [ "$MODE" = load ] || [ "$MODE" = rollover ] || [ "$MODE" = scale ] ||
        command -v callgrind_control >/dev/null || pkgs+=(valgrind)
    if ((${#pkgs[@]})); then
        log "installing ${pkgs[*]}"
        $SUDO apt-get install -y "${pkgs[@]}" ||
            { $SUDO apt-get update && $SUDO apt-get install -y "${pkgs[@]}"; }
    fi
}

# --- processes ---------------------------------------------------------------

TMP=$(mktemp -d "${TMPDIR:-/tmp}/liveroll-compare.XXXXXX")
STARTED=()    # PIDs to stop on exit, in start order
EXTRA_PIDS=() # liveroll's children: killed only if liveroll had to be killed

stop_pid() { # PID SECONDS: SIGTERM, then SIGKILL after SECONDS
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < $2 * 20; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.05
    done
    log "pid $pid did not stop within $2 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    return 1
}

stop_all() { # every process started so far, newest first
    local i killed=0
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        # liveroll drains and stops its children itself; give it time.
        stop_pid "${STARTED[i]}" 40 || killed=1
    done
    if ((killed)); then
        for i in "${EXTRA_PIDS[@]}"; do kill -KILL "$i" 2>/dev/null || true; done
    fi
    STARTED=()
    EXTRA_PIDS=()
}

cleanup() {
    stop_all
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

USED_PORTS=" "
free_port() { # VAR: a free 127.0.0.1 port in PORTS, else below the ephemeral range
    local lo=10000 hi p _
    if [ -n "$PORTS" ]; then
        if ! [[ $PORTS =~ ^([0-9]+)-([0-9]+)$ ]] || ((BASH_REMATCH[1] > BASH_REMATCH[2])); then
            die "PORTS must be LO-HI, e.g. 14000-14999"
        fi
        lo=${BASH_REMATCH[1]}
        hi=${BASH_REMATCH[2]}
    else
        hi=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range)
        ((hi > 12000)) || hi=32768
        hi=$((hi - 1))
    fi
    for _ in $(seq 500); do
        p=$((lo + RANDOM % (hi - lo + 1)))
        [[ $USED_PORTS == *" $p "* ]] && continue
        if [ -z "$(ss -Htan "( sport = :$p )")" ]; then
            USED_PORTS+="$p "
            printf -v "$1" '%s' "$p"
            return
        fi
    done
    die "no free port found"
}

# `GET /` on 127.0.0.1:PORT with bash's /dev/tcp; prints "STATUS PID" (PID
# from X-Demo-Pid, may be empty), nothing if the connection fails.
probe() (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 0
    printf 'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
    local line status="" pid=""
    IFS= read -r -t 5 line <&3 || exit 0
    status=$(printf '%s' "$line" | cut -d' ' -f2)
    while IFS= read -r -t 5 line <&3; do
        line=${line%$'\r'}
        [ -z "$line" ] && break
        case ${line,,} in x-demo-pid:*)
            pid=${line#*:}
            pid=${pid// /}
            ;;
        esac
    done
    printf '%s %s\n' "$status" "$pid"
) 2>/dev/null

wait_ready() { # NAME PORT PID LOG: until GET / answers 200
    local i
    for ((i = 0; i < 600; i++)); do
        kill -0 "$3" 2>/dev/null || {
            cat "$4" >&2
            die "$1 exited before answering"
        }
        case $(probe "$2") in 200\ *) return 0 ;; esac
        sleep 0.05
    done
    cat "$4" >&2
    die "$1 did not answer 200 on port $2 within 30 s"
}

start_backend() {
    free_port BACKEND_PORT
    "$DEMO" --port "$BACKEND_PORT" >"$TMP/backend.log" 2>&1 &
    BACKEND_PID=$!
    STARTED+=("$BACKEND_PID")
    wait_ready backend "$BACKEND_PORT" "$BACKEND_PID" "$TMP/backend.log"
}

start_nginx() {
    local nginx dir=$TMP/nginx extra=""
    nginx=$(command -v nginx || echo /usr/sbin/nginx)
    free_port NGINX_PORT
    mkdir -p "$dir"
    # Temp paths of the modules this nginx has, so it needs no /var/lib/nginx.
    for m in fastcgi uwsgi scgi; do
        "$nginx" -V 2>&1 | grep -q -- "--without-http_${m}_module" ||
            extra+="    ${m}_temp_path $dir/$m;"$'\n'
    done
    cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections $NGINX_WORKER_CONNECTIONS; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
$extra
    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        keepalive_requests 100000000;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # The same forwarding headers liveroll adds, so both do the same work.
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
        }
    }
}
EOF
    "${WRAP[@]}" "$nginx" -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/stdout.log" 2>&1 &
    NGINX_PID=$!
    STARTED+=("$NGINX_PID")
    wait_ready nginx "$NGINX_PORT" "$NGINX_PID" "$dir/error.log"
}

start_floor() { # the plain Pingora proxy in front of the backend
    free_port FLOOR_PORT
    # No grace period, so it stops at once like the others (Pingora's is 300 s).
    printf 'version: 1\nthreads: 1\ngrace_period_seconds: 0\ngraceful_shutdown_timeout_seconds: 1\n' \
        >"$TMP/floor.yaml"
    "${WRAP[@]}" "$FLOOR" serve "$TMP/floor.yaml" "127.0.0.1:$FLOOR_PORT" \
        "127.0.0.1:$BACKEND_PORT" >"$TMP/floor.log" 2>&1 &
    FLOOR_PID=$!
    STARTED+=("$FLOOR_PID")
    wait_ready pingora "$FLOOR_PORT" "$FLOOR_PID" "$TMP/floor.log"
}

start_liveroll() { # NAME [THREADS]: sets ${NAME}_PORT, ${NAME}_PID, ${NAME}_CHILD
    local name=$1 threads=${2:-1} port c1 c2 pid
    free_port port
    free_port c1
    free_port c2
    printf 'version: 1\nthreads: %s\n' "$threads" >"$TMP/$name.yaml"
    env "${LIVEROLL_ENV[@]}" RUST_LOG="${RUST_LOG:-warn}" "${WRAP[@]}" "$LIVEROLL" -c "$TMP/$name.yaml" \
        --bind 127.0.0.1 --port "$port" --child-port1 "$c1" --child-port2 "$c2" \
        --pull true --id 'echo bench' --interval 1h \
        --exec "'$DEMO' --port <<PORT>>" >"$TMP/$name.log" 2>&1 &
    pid=$!
    STARTED+=("$pid")
    wait_ready liveroll "$port" "$pid" "$TMP/$name.log"
    printf -v "${name}_PORT" '%s' "$port"
    printf -v "${name}_PID" '%s' "$pid"
    local child
    child=$(probe "$port" | cut -d' ' -f2)
    [ -n "$child" ] || die "liveroll's child sent no X-Demo-Pid"
    EXTRA_PIDS+=("$child")
    printf -v "${name}_CHILD" '%s' "$child"
}

# --- measuring ---------------------------------------------------------------

cpu_ticks() { # PID: utime + stime (all threads), in clock ticks
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

passive_opens() {
    if command -v nstat >/dev/null; then
        nstat -asz TcpPassiveOpens | awk '$1 == "TcpPassiveOpens" { print $2 }'
    else
        awk '$1 == "Tcp:" && !h { for (i = 1; i <= NF; i++) c[$i] = i; h = 1; next }
             $1 == "Tcp:" { print $c["PassiveOpens"] }' /proc/net/snmp
    fi
}

to_us() { # wrk latency like 612.00us, 1.23ms, 1.01s -> microseconds
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000
        else if (v ~ /m$/) print n * 60e6; else if (v ~ /s$/) print n * 1e6; else print n
    }'
}

median() {
    printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 }
        END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2];
              else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

declare -A RES # "target|profile|metric" -> space-separated per-round values

# TARGET PROFILE PORT PROXY_PID BACKEND_PID: one measured wrk run.
run_wrk() {
    local target=$1 profile=$2 port=$3 proxy=$4 backend=$5
    local hdr=() out=$TMP/wrk.out c0 c1 b0 b1 o0 o1
    [ "$profile" = close ] && hdr=(-H 'Connection: close')
    [ "$proxy" = - ] || { echo 5 >"/proc/$proxy/clear_refs"; } 2>/dev/null || true
    [ "$proxy" = - ] || c0=$(cpu_ticks "$proxy")
    b0=$(cpu_ticks "$backend")
    o0=$(passive_opens)
    wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"$DURATION" --latency "${hdr[@]}" "http://127.0.0.1:$port/" >"$out"
    o1=$(passive_opens)
    b1=$(cpu_ticks "$backend")
    [ "$proxy" = - ] || c1=$(cpu_ticks "$proxy")

    local requests rps p50 p99 wrk_conns
    requests=$(awk '/ requests in / { print $1 }' "$out")
    rps=$(awk '$1 == "Requests/sec:" { print $2 }' "$out")
    p50=$(to_us "$(awk '$1 == "50%" { print $2 }' "$out")")
    p99=$(to_us "$(awk '$1 == "99%" { print $2 }' "$out")")
    if [ -z "$requests" ] || ((requests == 0)); then
        cat "$out" >&2
        die "$target/$profile: wrk completed no request"
    fi
    if grep -qE 'Socket errors|Non-2xx' "$out"; then
        log "  warning: $target/$profile: $(grep -E 'Socket errors|Non-2xx' "$out" | tr -s ' ' | paste -sd';')"
    fi
    if [ "$profile" = close ]; then
        wrk_conns=$((requests + WRK_CONNS))
    else
        wrk_conns=$WRK_CONNS
    fi

    local key="$target|$profile|"
    RES[${key}rps]+=" $rps"
    RES[${key}p50]+=" $p50"
    RES[${key}p99]+=" $p99"
    RES[${key}conns]+=" $(awk -v d=$((o1 - o0 - wrk_conns)) -v r="$requests" 'BEGIN { printf "%.4f", d / r }')"
    RES[${key}bcpu]+=" $(awk -v t=$((b1 - b0)) -v hz="$HZ" -v r="$requests" 'BEGIN { printf "%.2f", t * 1e6 / hz / r }')"
    if [ "$proxy" != - ]; then
        RES[${key}cpu]+=" $(awk -v t=$((c1 - c0)) -v hz="$HZ" -v r="$requests" 'BEGIN { printf "%.2f", t * 1e6 / hz / r }')"
        RES[${key}rss]+=" $(awk '$1 == "VmHWM:" { printf "%.1f", $2 / 1024 }' "/proc/$proxy/status")"
    fi
    log "  $target/$profile: $rps req/s, p50 ${p50} us, p99 ${p99} us, $requests requests, accepts $((o1 - o0))"
}

fmt_lat() { # microseconds -> "612 us" / "1.23 ms"
    awk -v u="$1" 'BEGIN { if (u >= 1000) printf "%.2f ms", u / 1000; else printf "%.0f us", u }'
}

load() {
    install_missing
    HZ=$(getconf CLK_TCK)
    start_backend
    start_nginx
    start_floor
    start_liveroll LR
    log "backend :$BACKEND_PORT (pid $BACKEND_PID), nginx :$NGINX_PORT (pid $NGINX_PID)," \
        "pingora :$FLOOR_PORT (pid $FLOOR_PID), liveroll :$LR_PORT (pid $LR_PID, child $LR_CHILD)"
    log "nginx: $(nginx -v 2>&1 || /usr/sbin/nginx -v 2>&1); wrk: $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"

    local -A port=([direct]=$BACKEND_PORT [nginx]=$NGINX_PORT [pingora]=$FLOOR_PORT [liveroll]=$LR_PORT)
    local -A proxy=([direct]=- [nginx]=$NGINX_PID [pingora]=$FLOOR_PID [liveroll]=$LR_PID)
    local -A backend=([direct]=$BACKEND_PID [nginx]=$BACKEND_PID [pingora]=$BACKEND_PID [liveroll]=$LR_CHILD)
    local targets=(direct nginx pingora liveroll) profiles=(keepalive close) t p r

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
    local k cpu rss conns ratio
    for p in "${profiles[@]}"; do
        for t in "${targets[@]}"; do
            k="$t|$p|"
            # shellcheck disable=SC2086 # word splitting of the value lists is intended
            if [ "$t" = direct ]; then
                cpu=-
                ratio=-
                rss=-
                conns="($(median ${RES[${k}conns]}))"
            else
                cpu=$(median ${RES[${k}cpu]})
                ratio=$(awk -v a="$cpu" -v b="$(median ${RES[nginx|$p|cpu]})" \
                    'BEGIN { printf "%.2f", a / b }')
                rss=$(median ${RES[${k}rss]})
                conns=$(median ${RES[${k}conns]})
            fi
            # shellcheck disable=SC2086
            printf '| %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s |\n' "$t" \
                "$([ "$p" = close ] && echo 'Connection: close' || echo keep-alive)" \
                "$(median ${RES[${k}rps]})" "$(fmt_lat "$(median ${RES[${k}p50]})")" \
                "$(fmt_lat "$(median ${RES[${k}p99]})")" "$cpu" "$ratio" "$rss" "$conns" \
                "$(median ${RES[${k}bcpu]})"
        done
    done
    echo
    echo "CPU µs/req and peak RSS: the proxy process only. upstream conns/req: backend accepts per"
    echo "request from TcpPassiveOpens deltas (see the script header); for direct, in parentheses,"
    echo "the same formula where no upstream exists (the method's zero)."
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
    RES[$1|ir]=$((total / requests))
    log "  $1: $requests requests, $total instructions"
    stop_pid "$2" 60 || true
}

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

rollover() {
    command -v python3 >/dev/null || die "the rollover section needs python3"
    start_liveroll RO
    log "rollover: liveroll :$RO_PORT (pid $RO_PID); $ROLLOVERS x SIGHUP"
    echo
    python3 "$ROOT/benches/rollover.py" "$RO_PID" "$RO_PORT" "$ROLLOVERS"
    stop_pid "$RO_PID" 40 || true
}

# --- scale -------------------------------------------------------------------

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

declare -A IDLE # "row|field" -> value
IDLE_ROWS=()

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

scale() {
    command -v python3 >/dev/null || die "the scale section needs python3"
    install_missing
    HZ=$(getconf CLK_TCK)
    raise_nofile

    # a. Memory per idle keep-alive connection.
    log "scale: $IDLE_CONNS idle keep-alive connections"
    start_liveroll SL 1
    log "  liveroll :$SL_PORT (pid $SL_PID, threads: 1)"
    idle_measure "liveroll (threads: 1)" "$SL_PORT" "$SL_PID"
    stop_all
    LIVEROLL_ENV=(MIMALLOC_ALLOW_THP=0)
    start_liveroll SL 1
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

log "building (cargo build --release; cargo bench --bench pingora_floor --no-run)"
cargo build --release >&2
FLOOR=$(cargo bench --bench pingora_floor --no-run --message-format=json |
    grep -o '"executable":"[^"]*pingora_floor[^"]*"' | cut -d'"' -f4) ||
    die "could not build benches/pingora_floor.rs"
[ -x "$FLOOR" ] || die "could not build benches/pingora_floor.rs"

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
