#!/usr/bin/env python3
"""Hold many idle keep-alive HTTP/1.1 connections open to one server.

Usage: idle_conns.py PORT COUNT [HOST]

Opens COUNT TCP connections to HOST:PORT (default 127.0.0.1), sends
`GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n` on each and reads the full response
(Content-Length or chunked), so every connection is a keep-alive connection
that has served one request and now sits idle, not merely an accepted socket.
Everything is non-blocking on one selector, with at most CONCURRENCY
connections being set up at a time, so the listen backlog never overflows.

Once all COUNT responses (status 200) are in, prints `ready COUNT SECONDS` on
stdout and holds the connections until stdin reaches EOF (or SIGTERM/SIGINT).
It keeps watching them meanwhile; a connection the server closes is counted.
On exit it closes all of them and prints `closed_by_server K` on stdout.
Errors go to stderr with exit status 1. Raises its own RLIMIT_NOFILE soft
limit up to the hard limit if needed; stdlib only.
"""

import errno
import os
import resource
import selectors
import signal
import socket
import sys
import time

CONCURRENCY = 256
SETUP_TIMEOUT = 120.0
CONNECT_RETRIES = 3
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


class Conn:
    __slots__ = ("sock", "state", "buf", "out", "retries")

    def __init__(self, retries=0):
        self.sock = None
        self.state = "connecting"  # -> "reading" -> "idle"
        self.buf = b""
        self.out = REQUEST
        self.retries = retries


def response_complete(buf):
    """None while incomplete, else the status code of the first response."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].decode("latin-1").split("\r\n")
    try:
        status = int(head[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        raise ValueError(f"bad status line {head[0]!r}")
    length = None
    chunked = False
    for line in head[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    body = buf[end + 4 :]
    if chunked:
        # Good enough for the short bodies of the demo app: the last chunk.
        return status if body.endswith(b"0\r\n\r\n") else None
    if length is None:
        raise ValueError("response has neither Content-Length nor chunked body")
    return status if len(body) >= length else None


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < need:
            sys.exit(f"idle_conns: RLIMIT_NOFILE hard limit {hard} < {need}; raise `ulimit -n`")


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    port = int(sys.argv[1])
    count = int(sys.argv[2])
    host = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
    raise_nofile(count + 64)

    def stop(_signum, _frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    sel = selectors.DefaultSelector()
    conns = []
    to_start = count
    setting_up = 0
    ready = 0
    t0 = time.monotonic()

    def start(conn):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            s.close()
            raise OSError(err, f"connect: {os.strerror(err)}")
        conn.sock = s
        sel.register(s, selectors.EVENT_WRITE, conn)

    def retry_or_fail(conn, why):
        conn.sock.close()
        if conn.retries >= CONNECT_RETRIES:
            sys.exit(f"idle_conns: {why} (after {conn.retries} retries)")
        fresh = Conn(conn.retries + 1)
        start(fresh)
        return fresh

    try:
        while ready < count:
            while to_start and setting_up < CONCURRENCY:
                conn = Conn()
                start(conn)
                conns.append(conn)
                to_start -= 1
                setting_up += 1
            if time.monotonic() - t0 > SETUP_TIMEOUT:
                sys.exit(f"idle_conns: only {ready}/{count} responses after {SETUP_TIMEOUT:.0f} s")
            for key, events in sel.select(timeout=1.0):
                conn = key.data
                s = conn.sock
                if conn.state == "connecting":
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        sel.unregister(s)
                        conns[conns.index(conn)] = retry_or_fail(conn, os.strerror(err))
                        continue
                    try:
                        sent = s.send(conn.out)
                    except BlockingIOError:
                        continue
                    except OSError as e:
                        sel.unregister(s)
                        conns[conns.index(conn)] = retry_or_fail(conn, f"send: {e}")
                        continue
                    conn.out = conn.out[sent:]
                    if not conn.out:
                        conn.state = "reading"
                        sel.modify(s, selectors.EVENT_READ, conn)
                elif conn.state == "reading":
                    try:
                        data = s.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError as e:
                        sys.exit(f"idle_conns: recv: {e}")
                    if not data:
                        sys.exit("idle_conns: server closed a connection before responding")
                    conn.buf += data
                    status = response_complete(conn.buf)
                    if status is None:
                        continue
                    if status != 200:
                        sys.exit(f"idle_conns: status {status}")
                    conn.state = "idle"
                    conn.buf = b""
                    setting_up -= 1
                    ready += 1
                else:  # idle connection readable before ready: server closed it
                    sys.exit("idle_conns: server closed an idle connection during setup")

        print(f"ready {count} {time.monotonic() - t0:.2f}", flush=True)

        # Hold them. stdin EOF ends the wait; count server-side closes.
        closed = 0
        stdin_fd = sys.stdin.fileno()
        sel.register(stdin_fd, selectors.EVENT_READ, None)
        done = False
        while not done:
            for key, _ in sel.select():
                if key.data is None:
                    if not os.read(stdin_fd, 4096):
                        done = True
                    continue
                conn = key.data
                try:
                    data = conn.sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    closed += 1
                    sel.unregister(conn.sock)
                    conn.sock.close()
                    conn.state = "closed"
                    print(f"idle_conns: server closed an idle connection ({closed})", file=sys.stderr)
        print(f"closed_by_server {closed}", flush=True)
    finally:
        for conn in conns:
            if conn.sock is not None:
                conn.sock.close()


if __name__ == "__main__":
    main()
