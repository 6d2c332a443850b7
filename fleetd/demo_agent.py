"""A stand-in agent for the demo and the tests.

It behaves like a coding agent harness as far as fleetd can tell: it prints
progress to its pane, writes a heartbeat file (path and interval from
``FLEETD_HEARTBEAT_FILE`` / ``FLEETD_HEARTBEAT_INTERVAL``, which fleetd sets),
alternates busy and idle, and can be told to crash or hang after a while, or to
report provider trouble, so that fleetd has something to detect.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import urllib.request

from fleetd.heartbeat import format_heartbeat


def write_beat(
    path: str, status: str, busy: bool, model: str | None, provider: str | None, runtime: str
) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(
            format_heartbeat(
                time.time(),
                os.getpid(),
                status,
                model=model,
                provider=provider,
                runtime=runtime,
                busy=busy,
            )
        )
    os.replace(tmp, path)


def _provider_answers(url: str) -> bool:
    """True if the (demo) provider at ``url`` answers 200 within a second."""
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:  # noqa: S310 - roster's URL
            return int(resp.status) == 200
    except (OSError, ValueError):
        return False


def _jitter(value: float | None, spread: float) -> float | None:
    if value is None:
        return None
    return value * random.uniform(1.0 - spread, 1.0 + spread)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fleetd-demo-agent")
    p.add_argument("--crash-after", type=float, help="exit after about this many seconds")
    p.add_argument("--exit-code", type=int, default=3)
    p.add_argument("--hang-after", type=float, help="stop beating (but stay alive) after ...")
    p.add_argument("--spread", type=float, default=0.3, help="randomize the times by +/- this")
    p.add_argument("--status", default=None, help="report this heartbeat status always")
    p.add_argument("--model", default=None)
    p.add_argument("--runtime", default="demo-agent")
    p.add_argument("--interval", type=float, default=None)
    p.add_argument("--no-heartbeat", action="store_true")
    p.add_argument(
        "--status-file", help="read the status from this file at every step (tests change it)"
    )
    p.add_argument(
        "--model-file",
        help="if this file appears, switch to the model it names and delete it (like /model)",
    )
    p.add_argument("--print-env", action="append", default=[], help="print VAR=value (leaky agent)")
    p.add_argument(
        "--provider-url",
        default=os.environ.get("DEMO_PROVIDER_URL"),
        help="GET this every step; report provider_error while it fails (default: "
        "$DEMO_PROVIDER_URL, set by the demo roster's provider env)",
    )
    args = p.parse_args(argv)

    name = os.environ.get("FLEETD_AGENT", "demo")
    hb_path = None if args.no_heartbeat else os.environ.get("FLEETD_HEARTBEAT_FILE")
    interval = args.interval or float(os.environ.get("FLEETD_HEARTBEAT_INTERVAL", "2"))
    model = args.model or os.environ.get("FLEETD_MODEL") or None
    provider = os.environ.get("FLEETD_PROVIDER") or None
    crash_at = _jitter(args.crash_after, args.spread)
    hang_at = _jitter(args.hang_after, args.spread)
    start = time.monotonic()
    print(f"[{name}] starting, pid {os.getpid()}, provider={provider} model={model}", flush=True)
    for var in args.print_env:
        print(f"[{name}] {var}={os.environ.get(var, '')}", flush=True)
    step = 0
    while True:
        elapsed = time.monotonic() - start
        if crash_at is not None and elapsed >= crash_at:
            print(
                f"[{name}] something went wrong: exiting with status {args.exit_code}", flush=True
            )
            return int(args.exit_code)
        if hang_at is not None and elapsed >= hang_at:
            print(f"[{name}] waiting on a lock that never comes (hung)", flush=True)
            while True:
                time.sleep(3600)
        busy = (step // 3) % 2 == 0
        status = args.status or ("working" if busy else "idle")
        if args.status_file:
            try:
                with open(args.status_file, encoding="utf-8") as fh:
                    wanted = fh.read().strip()
            except OSError:
                wanted = ""
            if wanted:
                status, busy = wanted, wanted != "idle"
        if args.provider_url and not _provider_answers(args.provider_url):
            status, busy = "provider_error", False
            print(f"[{name}] API Error: 503 from provider {provider}", flush=True)
        if args.model_file and os.path.exists(args.model_file):
            with open(args.model_file, encoding="utf-8") as fh:
                model = fh.read().strip() or model
            os.unlink(args.model_file)
            print(f"[{name}] switched to model {model}", flush=True)
        if hb_path:
            write_beat(hb_path, status, busy, model, provider, args.runtime)
        print(f"[{name}] step {step}: {status}", flush=True)
        step += 1
        time.sleep(interval)


if __name__ == "__main__":
    sys.exit(main())
