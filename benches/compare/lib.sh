# shellcheck shell=bash
# Shared by the sections of benches/compare.sh, which sources this file after
# setting MODE and the settings (DURATION, CONNS, PORTS, ...). Building,
# ports, starting and stopping the backend and the proxies, and the
# measurements common to the sections. benches/README.md has the method.

log() { printf '%s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo

# --- building ----------------------------------------------------------------

build() { # the release binaries; sets FLOOR to the plain Pingora proxy
    log "building (cargo build --release; cargo bench --bench pingora_floor --no-run)"
    cargo build --release >&2
    FLOOR=$(cargo bench --bench pingora_floor --no-run --message-format=json |
        grep -o '"executable":"[^"]*pingora_floor[^"]*"' | cut -d'"' -f4) ||
        die "could not build benches/pingora_floor.rs"
    [ -x "$FLOOR" ] || die "could not build benches/pingora_floor.rs"
}

# --- tools -----------------------------------------------------------------

install_missing() {
    local pkgs=()
    command -v wrk >/dev/null || pkgs+=(wrk)
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || pkgs+=(nginx-light)
    command -v nstat >/dev/null && command -v ss >/dev/null || pkgs+=(iproute2)
    case $MODE in
        rollover) ;;
        instructions) [[ " $IR_TARGETS " != *" caddy "* ]] || command -v caddy >/dev/null || pkgs+=(caddy) ;;
        *) command -v caddy >/dev/null || pkgs+=(caddy) ;;
    esac
    [ "$MODE" = load ] || [ "$MODE" = rollover ] || [ "$MODE" = scale ] ||
        command -v callgrind_control >/dev/null || pkgs+=(valgrind)
    if ((${#pkgs[@]})); then
        log "installing ${pkgs[*]}"
        $SUDO apt-get install -y "${pkgs[@]}" ||
            { $SUDO apt-get update && $SUDO apt-get install -y "${pkgs[@]}"; }
    fi
}

# --- processes ---------------------------------------------------------------

TMP=          # scratch directory, made by start_session
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
    [ -z "$TMP" ] || rm -rf "$TMP"
}

start_session() { # the scratch directory, and cleanup however the script ends
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/liveroll-compare.XXXXXX")
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

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

start_caddy() { # Caddy in front of the backend, set up like nginx
    local dir=$TMP/caddy
    free_port CADDY_PORT
    mkdir -p "$dir"
    # Admin API and automatic HTTPS off; no `log` directive, so no access log.
    # Caddy adds X-Forwarded-For/-Proto/-Host itself. Without trusted_proxies
    # it trusts no client: it replaces any X-Forwarded-* that came in (liveroll
    # and nginx append to X-Forwarded-For). `compression off` stops Go adding
    # `Accept-Encoding: gzip` to the upstream request; 64 idle upstream
    # connections kept, like nginx's `keepalive 64`.
    cat >"$dir/Caddyfile" <<EOF
{
	admin off
	auto_https off
	grace_period 1s
}
http://:$CADDY_PORT {
	bind 127.0.0.1
	reverse_proxy 127.0.0.1:$BACKEND_PORT {
		transport http {
			keepalive_idle_conns_per_host 64
			compression off
		}
	}
}
EOF
    # GOMAXPROCS=1: one thread running Go code at a time, like the others'
    # one worker. Caddy keeps its state (autosave.json, instance.uuid) in $dir.
    env GOMAXPROCS=1 XDG_CONFIG_HOME="$dir" XDG_DATA_HOME="$dir" "${CADDY_ENV[@]}" \
        "${WRAP[@]}" caddy run --config "$dir/Caddyfile" --adapter caddyfile >"$dir/caddy.log" 2>&1 &
    CADDY_PID=$!
    STARTED+=("$CADDY_PID")
    wait_ready caddy "$CADDY_PORT" "$CADDY_PID" "$dir/caddy.log"
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

HZ=$(getconf CLK_TCK) # clock ticks per second, the unit of cpu_ticks

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

    local requests rps p50 p99 client_accepts
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
        client_accepts=$((requests + WRK_CONNS))
    else
        client_accepts=$WRK_CONNS
    fi

    local key="$target|$profile|"
    RES[${key}rps]+=" $rps"
    RES[${key}p50]+=" $p50"
    RES[${key}p99]+=" $p99"
    RES[${key}conns]+=" $(awk -v d=$((o1 - o0 - client_accepts)) -v r="$requests" 'BEGIN { printf "%.4f", d / r }')"
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
