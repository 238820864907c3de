#!/usr/bin/env python3
"""Rollover time of a running liveroll: SIGHUP to the new child serving.

Usage: rollover.py LIVEROLL_PID PROXY_PORT [COUNT]

For each of COUNT rollovers (default 20): read the serving demo's pid from
`GET /` (the `X-Demo-Pid` header), send SIGHUP to liveroll, then poll `GET /`
through liveroll every 1 ms (one keep-alive connection, reopened if needed)
until a response carries a different `X-Demo-Pid`. The time from the signal
to that response is one sample. Before the next SIGHUP it waits until the
old demo process is gone, so each update starts from one serving child.

Prints one line per sample on stderr and a summary line on stdout:
`rollover: n=20 median=... ms max=... ms min=... ms`.
"""

import http.client
import os
import signal
import statistics
import sys
import time

POLL_INTERVAL = 0.001
ROLL_TIMEOUT = 60.0
RETIRE_TIMEOUT = 60.0


class Poller:
    def __init__(self, port):
        self.port = port
        self.conn = None

    def demo_pid(self):
        """The X-Demo-Pid of one `GET /`, or None on an error or non-200."""
        for _ in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                self.conn.request("GET", "/")
                resp = self.conn.getresponse()
                resp.read()
                if resp.status != 200:
                    return None
                pid = resp.getheader("X-Demo-Pid")
                return int(pid) if pid else None
            except (OSError, http.client.HTTPException):
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
        return None


def alive(pid):
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    liveroll_pid = int(sys.argv[1])
    port = int(sys.argv[2])
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    poller = Poller(port)

    deadline = time.monotonic() + ROLL_TIMEOUT
    old = poller.demo_pid()
    while old is None:
        if time.monotonic() > deadline:
            sys.exit("rollover: liveroll never answered 200 with an X-Demo-Pid")
        time.sleep(0.05)
        old = poller.demo_pid()

    samples = []
    for i in range(count):
        start = time.monotonic()
        os.kill(liveroll_pid, signal.SIGHUP)
        while True:
            pid = poller.demo_pid()
            now = time.monotonic()
            if pid is not None and pid != old:
                break
            if now - start > ROLL_TIMEOUT:
                sys.exit(f"rollover {i + 1}: no new child within {ROLL_TIMEOUT} s")
            time.sleep(POLL_INTERVAL)
        took = (now - start) * 1000
        samples.append(took)
        print(f"rollover {i + 1}: {took:.1f} ms (pid {old} -> {pid})", file=sys.stderr)

        # Let the retirement finish: the old child gone, only the new one serving.
        retire_deadline = time.monotonic() + RETIRE_TIMEOUT
        while alive(old):
            if time.monotonic() > retire_deadline:
                sys.exit(f"rollover {i + 1}: old child {old} still running")
            time.sleep(0.01)
        # The pool may still hold a connection to the old child; a few
        # requests settle it before the next sample.
        for _ in range(3):
            poller.demo_pid()
        old = pid

    print(
        f"rollover: n={len(samples)} median={statistics.median(samples):.1f} ms "
        f"max={max(samples):.1f} ms min={min(samples):.1f} ms"
    )


if __name__ == "__main__":
    main()
