"""fleetctl: the operator's command line for a running fleetd.

Output is a table for people; ``--json`` prints the daemon's reply unchanged,
which is the stable contract for scripts. Errors print ``fleetctl: <message>
[<code>]`` on stderr and exit with the error family's status (1 generic, 2
config, 3 request, 4 permission, 5 daemon unreachable).

Imports are kept light (no anyio, no pydantic) so that a ``fleetctl ps`` costs
little more than a Python start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from fleetd.control.client import Client
from fleetd.errors import FleetError

DEFAULT_SOCKET = "/run/fleetd/control.sock"

AGENT_VERBS = ("start", "stop", "restart", "pause", "resume")


def _age(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    from fleetd.durations import format_duration

    return format_duration(max(0.0, now - ts))


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    from fleetd.durations import format_duration

    return format_duration(value)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    return "\n".join(lines)


def render_ps(result: dict[str, Any]) -> str:
    now = time.time()
    rows = []
    for a in result["agents"]:
        # Why it is in its state; a healthy RUNNING agent needs no note.
        note = "" if a["state"] == "RUNNING" else a.get("reason") or ""
        if a["state"] == "BACKOFF" and a.get("retry_in") is not None:
            note = f"retry in {_secs(a['retry_in'])}: {note}"
        if a.get("heartbeat_problem"):
            note = f"heartbeat {a['heartbeat_problem']}; {note}"
        if a.get("drift"):
            note = f"DRIFT {a['drift']}; {note}"
        note = note.strip().rstrip(";").rstrip(":")
        rows.append(
            [
                a["name"],
                _host_cell(a),
                a["state"],
                _age(a["since"], now),
                str(a["pid"] or "-"),
                str(a["restarts"]),
                _secs(a.get("heartbeat_age")),
                a.get("provider") or "-",
                note,
            ]
        )
    header = ["AGENT", "HOST", "STATE", "FOR", "PID", "RESTARTS", "BEAT", "PROVIDER", "NOTE"]
    counts = ", ".join(f"{n} {s}" for s, n in sorted(result.get("counts", {}).items()))
    return table(rows, header) + (f"\n\n{counts}" if counts else "")


def render_providers(result: dict[str, Any]) -> str:
    now = time.time()
    rows = [
        [
            p["name"],
            p["state"] + (" (manual)" if p.get("manual") else ""),
            _age(p.get("since"), now),
            str(p.get("outages", 0)),
            _secs(p.get("hold_down")),
            p.get("model") or "-",
            ",".join(p.get("agents") or []) or "-",
            p.get("reason") or "",
        ]
        for p in result["providers"]
    ]
    header = ["PROVIDER", "STATE", "FOR", "OUTAGES", "HOLD-DOWN", "MODEL", "AGENTS", "REASON"]
    out = table(rows, header)
    down = result.get("all_down")
    if down:
        out += (
            f"\n\nNO HEALTHY PROVIDER for {', '.join(down['agents'])} "
            f"(incident {down.get('incident')})"
        )
    return out


def _host_cell(a: dict[str, Any]) -> str:
    state = a.get("host_state", "reachable")
    return a["host"] if state == "reachable" else f"{a['host']}({state})"


def render_show(a: dict[str, Any]) -> str:
    now = time.time()
    lines = [
        f"agent      {a['name']} on {a['host']}",
        f"state      {a['state']} for {_age(a['since'], now)} ({a.get('reason') or '-'})",
        f"pid        {a['pid'] or '-'}",
        f"restarts   {a['restarts']} in the intensity window",
        f"heartbeat  {_secs(a.get('heartbeat_age'))} ago, status {a.get('heartbeat_status')}"
        + (f", problem: {a['heartbeat_problem']}" if a.get("heartbeat_problem") else ""),
        f"reports    runtime={a.get('runtime')} model={a.get('model')} "
        f"provider={a.get('reported_provider', a.get('provider'))} busy={a.get('busy')}",
        f"provider   {a.get('provider') or '-'} (fleetd's choice)"
        + (f"; DRIFT {a['drift']}" if a.get("drift") else ""),
        f"incident   {a.get('incident') or '-'}",
        f"tmux       -L {a['tmux']['socket']} {a['tmux']['session']}:{a['tmux']['window']}",
    ]
    events = a.get("recent_events") or []
    if events:
        lines.append("recent events:")
        lines += [f"  {_stamp(e['ts'])}  {e['kind']:<24} {e['message']}" for e in events]
    return "\n".join(lines)


def _stamp(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def render_logs(result: dict[str, Any]) -> str:
    out = []
    for f in result["forensics"]:
        how = (
            f"signal {f['signal']}"
            if f.get("signal") is not None
            else f"exit status {f['exit_status']}"
            if f.get("exit_status") is not None
            else "no exit status"
        )
        out.append(f"=== {_stamp(f['ts'])}  {f['agent']}  {f['reason']}  ({how}, pid {f['pid']})")
        if f.get("heartbeat"):
            out.append("--- last heartbeat")
            out.append(f["heartbeat"].rstrip())
        out.append("--- last lines of the pane")
        out.append(f["scrollback"] or "(empty)")
    return "\n".join(out) if out else f"no forensics recorded for {result['agent']}"


def render_event(e: dict[str, Any]) -> str:
    who = e.get("agent") or e.get("host") or "fleetd"
    mark = "!" if e.get("alert") else " "
    return f"{_stamp(e['ts'])} {mark} {e['kind']:<22} {who:<16} {e['message']}"


def render_hosts(result: dict[str, Any]) -> str:
    now = time.time()
    rows = []
    for h in result["hosts"]:
        hl = h.get("health") or {}
        rows.append(
            [
                h["name"],
                h.get("mode") or h["kind"],
                h["state"],
                h.get("connection") or "-",
                _age(h.get("last_contact"), now),
                str(h["agents"]),
                f"{hl['disk_free_pct']:.0f}%" if hl else "-",
                f"{hl['mem_available_pct']:.0f}%" if hl else "-",
                f"{hl['load1']:.2f}" if hl else "-",
                _host_note(h),
            ]
        )
    header = ["HOST", "MODE", "STATE", "CONN", "CONTACT", "AGENTS", "DISK FREE", "MEM AVAIL"]
    return table(rows, [*header, "LOAD", "NOTE"])


def _host_note(h: dict[str, Any]) -> str:
    """Open incidents and the last connection error, for people (JSON has them all)."""
    notes = []
    if h.get("host_incident"):
        notes.append(f"incident {h['host_incident']}")
    if h.get("health_problems"):
        notes.append("UNHEALTHY: " + "; ".join(h["health_problems"]))
    if h.get("fleetd_down"):
        notes.append("remote fleetd down, hub polling")
    if h.get("state") != "reachable" and h.get("last_error"):
        notes.append(str(h["last_error"])[:80])
    return ", ".join(notes) or "-"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fleetctl", description="Control a running fleetd.")
    p.add_argument(
        "--socket",
        default=os.environ.get("FLEETD_SOCKET", DEFAULT_SOCKET),
        help=f"control socket (default: $FLEETD_SOCKET or {DEFAULT_SOCKET})",
    )
    p.add_argument("--json", action="store_true", help="print the daemon's JSON reply")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a reply")
    # --json is accepted after the command too (`fleetctl ps --json`); SUPPRESS keeps
    # a command's parser from resetting a --json given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    common.add_argument("--socket", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="verb", required=True, metavar="COMMAND")
    sub.add_parser("ps", parents=[common], help="list agents and their state").add_argument(
        "--host"
    )
    sub.add_parser("show", parents=[common], help="one agent in detail").add_argument("agent")
    for verb in AGENT_VERBS:
        sub.add_parser(verb, parents=[common], help=f"{verb} an agent").add_argument("agent")
    logs = sub.add_parser("logs", parents=[common], help="forensics captured before restarts")
    logs.add_argument("agent")
    logs.add_argument("--limit", type=int, default=3)
    ev = sub.add_parser("events", parents=[common], help="the event log")
    ev.add_argument("--agent")
    ev.add_argument("--limit", type=int, default=50)
    ev.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    rep = sub.add_parser("report", parents=[common], help="uptime, capacity and the phase report")
    rep.add_argument("--days", type=int, default=30)
    rep.add_argument(
        "--format",
        choices=("md", "json"),
        default=None,
        help="md (default) or json (same as --json)",
    )
    rep.add_argument("--output", "-o", help="write the report to this file")
    up = sub.add_parser("uptime", parents=[common], help="uptime of the fleet or one agent")
    up.add_argument("agent", nargs="?")
    up.add_argument("--days", type=int, default=30)
    dm = sub.add_parser(
        "deadman",
        parents=[common],
        help="exit non-zero if fleetd is not running, not answering or stale",
    )
    dm.add_argument("--max-age", default="60s", help="heartbeat age limit (default 60s)")
    dm.add_argument("--heartbeat", help="fleetd's heartbeat file (default: next to the socket)")
    dm.add_argument("--ping-timeout", default="3s", help="control socket answer limit")
    dm.add_argument(
        "--journal-socket",
        default="/run/systemd/journal/socket",
        help="where to write the crit entry when the check fails",
    )
    sub.add_parser("reload", parents=[common], help="re-read the roster")
    sub.add_parser("hosts", parents=[common], help="hosts and their health")
    sub.add_parser("ping", parents=[common], help="check that fleetd answers")
    sub.add_parser("providers", parents=[common], help="provider health and who runs on each")
    fo = sub.add_parser(
        "failover", parents=[common], help="move an agent to another provider of its chain"
    )
    fo.add_argument("agent")
    fo.add_argument("--to", help="provider (default: the next healthy one in its chain)")
    fb = sub.add_parser(
        "failback", parents=[common], help="move an agent back to its first healthy provider"
    )
    fb.add_argument("agent")
    pv = sub.add_parser("provider", parents=[common], help="mark a provider down (held) or up")
    pv.add_argument("action", choices=("down", "up"))
    pv.add_argument("provider")
    return p


def deadman(args: argparse.Namespace) -> int:
    """Checks that work when fleetd is gone: for cron or a timer on another host."""
    from pathlib import Path

    from fleetd.deadman import check, report_to_journal
    from fleetd.durations import parse_duration
    from fleetd.journal import JournalWriter

    socket_path = Path(args.socket)
    hb = Path(args.heartbeat) if args.heartbeat else socket_path.parent / "fleetd.heartbeat"
    result = check(
        socket_path,
        hb,
        parse_duration(args.max_age),
        time.time(),
        timeout=parse_duration(args.ping_timeout),
    )
    if args.json:
        print(
            json.dumps(
                {
                    "ok": result.ok,
                    "problems": list(result.problems),
                    "heartbeat_age": result.heartbeat_age,
                    "pid": result.pid,
                }
            )
        )
    if result.ok:
        if not args.json:
            print(result.summary())
        return 0
    report_to_journal(result, JournalWriter(args.journal_socket))
    if not args.json:
        for problem in result.problems:
            print(f"fleetctl deadman: {problem}", file=sys.stderr)
    return 1


def render_uptime(result: dict[str, Any]) -> str:
    def pct(v: Any) -> str:
        return "-" if v is None else f"{v:.2f}%"

    rows = []
    for a in result.get("agents") or ([result["agent"]] if "agent" in result else []):
        rows.append(
            [
                a["name"],
                pct(a.get("uptime_pct")),
                pct(a.get("utilization_pct")),
                str(a.get("restarts", "-")),
                str(a.get("hangs", "-")),
            ]
        )
    fleet = result.get("fleet")
    head = ""
    if fleet:
        head = f"fleet uptime {pct(fleet.get('uptime_pct'))} over the window\n\n"
    return head + table(rows, ["AGENT", "UPTIME", "BUSY", "RESTARTS", "HANGS"])


def run(args: argparse.Namespace) -> int:
    if args.verb == "deadman":
        return deadman(args)
    with Client(args.socket, timeout=args.timeout) as client:
        if args.verb == "events" and args.follow:
            req: dict[str, Any] = {}
            if args.agent:
                req["agent"] = args.agent
            try:
                for event in client.follow(req):
                    print(json.dumps(event) if args.json else render_event(event), flush=True)
            except KeyboardInterrupt:
                return 0
            return 0
        call_args: dict[str, Any] = {}
        if args.verb in (*AGENT_VERBS, "show", "logs", "failover", "failback"):
            call_args["agent"] = args.agent
        if args.verb == "failover" and args.to:
            call_args["to"] = args.to
        if args.verb == "provider":
            call_args.update(provider=args.provider, action=args.action)
        if args.verb == "logs":
            call_args["limit"] = args.limit
        if args.verb == "events":
            call_args["limit"] = args.limit
            if args.agent:
                call_args["agent"] = args.agent
        if args.verb == "ps" and args.host:
            call_args["host"] = args.host
        if args.verb in ("report", "uptime"):
            call_args["days"] = args.days
        if args.verb == "uptime" and args.agent:
            call_args["agent"] = args.agent
        result = client.call(args.verb, call_args)
    if args.verb == "report":
        as_json = args.json or args.format == "json"
        text = (
            json.dumps(result["report"], indent=2, sort_keys=True)
            if as_json
            else result["markdown"]
        )
        if args.output:
            with open(args.output, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
            print(f"report written to {args.output}")
        else:
            print(text)
        return 0
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    if args.verb == "ps":
        print(render_ps(result))
    elif args.verb == "show":
        print(render_show(result))
    elif args.verb == "logs":
        print(render_logs(result))
    elif args.verb == "events":
        for e in result["events"]:
            print(render_event(e))
    elif args.verb == "hosts":
        print(render_hosts(result))
    elif args.verb in AGENT_VERBS:
        print(
            f"{result['name']}: {result['state']}"
            + (f" (pid {result['pid']})" if result.get("pid") else "")
        )
    elif args.verb == "reload":
        print(
            "roster reloaded: "
            + "; ".join(f"{k}: {', '.join(v) or '-'}" for k, v in result.items())
        )
    elif args.verb == "uptime":
        print(render_uptime(result))
    elif args.verb == "providers":
        print(render_providers(result))
    elif args.verb in ("failover", "failback"):
        moved = f"moved from {result.get('from')} to" if result.get("moved") else "stays on"
        print(f"{result['agent']}: {moved} {result['provider']}")
    elif args.verb == "provider":
        held = " (held by operator)" if result.get("manual") else ""
        print(f"{result['name']}: {result['state']}{held}")
    elif args.verb == "ping":
        print(f"fleetd {result['version']} pid {result['pid']}: {result['status']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except FleetError as exc:
        print(f"fleetctl: {exc.message} [{exc.code}]", file=sys.stderr)
        return exc.exit_status
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
