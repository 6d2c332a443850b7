"""A stand-in for an LLM provider: a tiny HTTP server on 127.0.0.1 that goes down on a schedule.

The demo (and anyone trying provider failover by hand) needs a provider whose
outages are predictable. This server answers ``200 ok`` on every path while it
is *up* and ``503 down`` while it is *down*; it is up for ``--up`` seconds, then
down for ``--down`` seconds, and repeats (``--down 0``: never down). ``/status``
always answers 200 with JSON ``{"name", "up", "changes_in"}`` so a watcher can
show the schedule without counting as traffic.

Only the standard library: it must start fast on a fresh machine, and it is not
part of fleetd.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import ClassVar


class Schedule:
    """Up for ``up`` seconds, then down for ``down`` seconds, from ``start`` (monotonic)."""

    def __init__(self, up: float, down: float, start: float) -> None:
        self.up = up
        self.down = down
        self.start = start

    def at(self, now: float) -> tuple[bool, float | None]:
        """(is up, seconds until the next change; None if it never changes)."""
        if self.down <= 0:
            return True, None
        phase = (now - self.start) % (self.up + self.down)
        if phase < self.up:
            return True, self.up - phase
        return False, self.up + self.down - phase


class Handler(BaseHTTPRequestHandler):
    schedule: ClassVar[Schedule]
    name: ClassVar[str]

    def _answer(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self) -> None:
        up, changes_in = self.schedule.at(time.monotonic())
        if self.path.startswith("/status"):
            doc = {"name": self.name, "up": up, "changes_in": changes_in}
            self._answer(200, json.dumps(doc).encode(), "application/json")
        elif up:
            self._answer(200, b"ok\n")
        else:
            self._answer(503, b"down\n")

    do_GET = _serve
    do_HEAD = _serve
    do_POST = _serve

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per probe would drown the transitions worth reading


def _announce(name: str, schedule: Schedule, stop: threading.Event) -> None:
    """Print each up/down transition, so the provider's log tells the outage story."""
    last: bool | None = None
    while not stop.is_set():
        up, changes_in = schedule.at(time.monotonic())
        if up != last:
            nxt = "" if changes_in is None else f" for {changes_in:.0f} s"
            stamp = time.strftime("%H:%M:%S")
            print(f"{stamp} provider {name}: {'UP' if up else 'DOWN (503)'}{nxt}", flush=True)
            last = up
        stop.wait(0.2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fleetd-demo-provider", description=__doc__)
    p.add_argument("--name", default="provider")
    p.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free)")
    p.add_argument("--port-file", type=Path, help="write the port here once listening")
    p.add_argument("--up", type=float, default=30.0, help="seconds up per cycle")
    p.add_argument("--down", type=float, default=0.0, help="seconds down per cycle (0: never)")
    args = p.parse_args(argv)

    schedule = Schedule(args.up, args.down, time.monotonic())
    handler = type("DemoHandler", (Handler,), {"schedule": schedule, "name": args.name})
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    server.daemon_threads = True
    port = server.server_address[1]
    if args.port_file is not None:
        # Written atomically: the runner polls for the file and must never read half a number.
        tmp = args.port_file.with_name(args.port_file.name + f".{os.getpid()}")
        tmp.write_text(f"{port}\n")
        os.replace(tmp, args.port_file)
    print(f"provider {args.name} listening on http://127.0.0.1:{port}/", flush=True)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Only record it; serve_forever is stopped from another thread (it would deadlock here).
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    announcer = threading.Thread(target=_announce, args=(args.name, schedule, stop), daemon=True)
    announcer.start()

    def shut_down_on_stop() -> None:
        stop.wait()
        server.shutdown()

    threading.Thread(target=shut_down_on_stop, daemon=True).start()
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
