"""Federated hosts: a VPS that runs its own fleetd, seen and backed up by the hub.

A federated host's agents are supervised by the fleetd on that host; it keeps
doing so through a network partition. The hub talks to that fleetd's control
socket through the SSH connection (a direct-streamlocal channel, the same
newline-JSON protocol as ``fleetctl``) and:

* shows its agents in ``ps`` (one ``ps`` request per cycle is the cycle's one
  round trip), tagged with the host;
* forwards agent commands (start/stop/restart/pause/resume/show/logs) to it;
* follows its events (``events --follow``, resumed with ``after_id`` after a
  break, so nothing is lost or repeated) into the hub's event bus, tagged with
  the host;
* when SSH works but the remote fleetd does not answer: one alert
  (``host_fleetd_down``), ``remote_restart_command`` through SSH, and agentless
  supervision of that host's agents by the hub until the remote fleetd answers
  again (``host_fleetd_up``).

The rule that keeps the two daemons from both acting on an agent: **the hub acts
on a federated host's agents only in a cycle in which the remote fleetd did not
answer while SSH did.** In every other cycle the hub's per-agent workers receive
no observation (so policy never decides anything for them); on the first cycle
the remote answers again they are set to UNKNOWN, and the next fallback, if
any, starts by adopting what runs. And because both daemons address an agent by
its tagged tmux pane and start it only with ``respawn-pane -k`` on that pane, a
race at a hand-over can cost a restart, never a second copy of the agent.
When SSH itself fails, the host is unreachable as in agentless mode: its agents
are UNKNOWN on the hub and the remote fleetd keeps supervising them.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

import anyio
import structlog
from anyio.abc import TaskStatus

from fleetd.control.protocol import make_request
from fleetd.errors import (
    CommandFailed,
    FleetError,
    HostError,
    HostUnreachable,
    ProtocolError,
    error_class_for,
)
from fleetd.hosts.base import HostSnapshot
from fleetd.model import HostDown, State
from fleetd.supervisor import AgentRuntime, HostSupervisor

if TYPE_CHECKING:  # asyncssh is imported only when an SSH host is configured
    from fleetd.hosts.ssh import SshHost

log = structlog.get_logger("fleetd.federation")

MAX_LINE = 16 * 1024 * 1024
FORWARDED = ("start", "stop", "restart", "pause", "resume", "show", "logs")
# After a restart attempt, the next one waits at least this long.
RESTART_RETRY = 30.0


class RemoteFleetdDown(HostError):
    """SSH works, but the fleetd on the host does not answer on its socket."""

    code = "host.fleetd_down"


class RemoteNoAnswer(RemoteFleetdDown):
    """The request was sent but no reply came: the remote may have acted on it."""


class RemoteFleetd:
    """A control-socket client of the fleetd on an SSH host (one channel per call)."""

    def __init__(self, host: SshHost, path: str, timeout: float) -> None:
        self.host = host
        self.path = path
        self.timeout = timeout
        self._id = 0

    async def call(
        self, cmd: str, args: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """One request, one reply. Raises RemoteFleetdDown (nothing was sent),
        RemoteNoAnswer (sent, no reply), HostUnreachable, or the remote's own error
        (same class and code as fleetctl would see)."""
        import asyncssh  # loaded only for SSH hosts; its errors are translated here

        try:
            reader, writer = await self.host.unix_connection(self.path)
        except CommandFailed as exc:
            raise RemoteFleetdDown(exc.message, host=self.host.name) from None
        self._id += 1
        try:
            with anyio.fail_after(timeout or self.timeout):
                writer.write(make_request(self._id, cmd, args))
                line = await reader.readline()
        except TimeoutError:
            raise RemoteNoAnswer(
                f"host {self.host.name}: fleetd did not answer {cmd} within {self.timeout:g}s",
                host=self.host.name,
            ) from None
        except (OSError, EOFError, asyncssh.Error) as exc:
            raise HostUnreachable(f"host {self.host.name}: {exc}", host=self.host.name) from None
        finally:
            writer.close()
        if not line:
            raise RemoteNoAnswer(
                f"host {self.host.name}: fleetd closed the connection", host=self.host.name
            )
        return _result(line)


def _result(line: bytes) -> Any:
    try:
        reply = json.loads(line)
    except ValueError:
        raise ProtocolError("remote fleetd sent a line that is not JSON") from None
    if not isinstance(reply, dict):
        raise ProtocolError("remote fleetd sent a malformed reply")
    if reply.get("ok"):
        return reply.get("result")
    err = reply.get("error") or {}
    cls = error_class_for(str(err.get("code", "internal")))
    raise cls(str(err.get("message", "remote fleetd error")), remote=True)


class FederatedSupervisor(HostSupervisor):
    """``HostSupervisor`` for ``mode = "federated"``: see the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not hasattr(self.host, "unix_connection"):
            raise TypeError("a federated host must be an SSH host")
        self.ssh = cast("SshHost", self.host)
        spec = self.roster.hosts[self.host.name]
        self.remote = RemoteFleetd(self.ssh, spec.remote_socket, self.settings.request_timeout)
        self.remote_ok = False  # the remote fleetd answered the last cycle
        self.remote_rows: dict[str, dict[str, Any]] = {}
        self.fleetd_incident: str | None = None
        self._restart_after = 0.0
        self._after_id: int | None = None  # last remote event id followed
        self.followed = 0

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._follow_events)
            await tg.start(super().run)
            task_status.started()

    # --- the cycle -------------------------------------------------------------

    async def cycle(self) -> None:
        started = self.clock()
        try:
            if self.watch.in_backoff():
                self._maybe_escalate()
                return
            result = await self.remote.call("ps", {})
        except RemoteFleetdDown as exc:
            self.remote_ok = False
            await self._fleetd_down(exc)
            # SSH works: the hub supervises the agents itself until the remote is back.
            await super().cycle()
            return
        except HostError as exc:
            self.remote_ok = False
            self.watch.down(exc)
            self._host_down(exc.message)
            self._maybe_escalate()
            return
        finally:
            if self.on_progress is not None:
                self.on_progress()
        self.cycles += 1
        self.reachable = True
        self.watch.up(HostSnapshot(panes={}, files={}, health=None, wall=self.wall()))
        rows = result.get("agents", []) if isinstance(result, dict) else []
        self.remote_rows = {str(r.get("name")): r for r in rows if isinstance(r, dict)}
        self.remote_ok = True
        self._fleetd_up()
        self.last_cycle = self.wall()
        self.last_cycle_duration = self.clock() - started

    def _take_over_holds(self) -> None:
        """The hub supervises the agents from here: an agent the operator stopped or
        paused over there stays so (the remote's holds live in the remote's store)."""
        holds = {"STOPPED": State.STOPPED, "PAUSED": State.PAUSED, "FATAL": State.FATAL}
        for name, row in self.remote_rows.items():
            rt = self.agents.get(name)
            state = holds.get(str(row.get("state")))
            if rt is not None and state is not None and rt.agent.state is State.UNKNOWN:
                rt.agent = replace(
                    rt.agent, state=state, since=self.clock(), reason=f"held on {self.host.name}"
                )

    async def _fleetd_down(self, exc: RemoteFleetdDown) -> None:
        if self.fleetd_incident is None:
            self._take_over_holds()
            self.fleetd_incident = f"{self.host.name}-fleetd-{uuid.uuid4().hex[:8]}"
            self.store.open_incident(
                self.fleetd_incident, "host", self.host.name, "host_fleetd_down", self.wall()
            )
            self.bus.publish(
                "host_fleetd_down",
                f"fleetd on {self.host.name} does not answer ({exc.message}); restarting it "
                "and supervising its agents from the hub meanwhile",
                host=self.host.name,
                incident=self.fleetd_incident,
                alert=True,
                data={"error": exc.message},
            )
        if self.clock() < self._restart_after:
            return
        self._restart_after = self.clock() + RESTART_RETRY
        argv = list(self.roster.hosts[self.host.name].remote_restart_command)
        try:
            res = await self.ssh.run(argv, timeout=30.0)
            rc: int | None = res.returncode
            detail = (res.stderr or res.stdout).strip()[-500:]
        except FleetError as err:
            rc, detail = None, err.message
        self.bus.publish(
            "host_fleetd_restart",
            f"ran {' '.join(argv)} on {self.host.name} (exit status {rc})",
            host=self.host.name,
            incident=self.fleetd_incident,
            data={"argv": argv, "exit_status": rc, "output": detail},
        )

    def _fleetd_up(self) -> None:
        if self.fleetd_incident is None:
            return
        self.store.close_incident(self.fleetd_incident, self.wall())
        self.bus.publish(
            "host_fleetd_up",
            f"fleetd on {self.host.name} answers again; it supervises its agents, the hub "
            "stops acting on them",
            host=self.host.name,
            incident=self.fleetd_incident,
        )
        self.fleetd_incident = None
        self._restart_after = 0.0
        # Hand over: the hub's workers forget what they knew (UNKNOWN, no deadline).
        for rt in self.agents.values():
            self.post(rt, HostDown(f"supervised by the fleetd on {self.host.name}"), None)

    # --- views and commands ------------------------------------------------------

    def describe(self, rt: AgentRuntime) -> dict[str, Any]:
        row = self.remote_rows.get(rt.name) if self.remote_ok else None
        if row is None:
            out = super().describe(rt)
            out["managed_by"] = "hub" if self.fleetd_incident is not None else "remote"
            return out
        out = dict(row)
        out["host"] = self.host.name
        out["host_state"] = self.host_state()
        out["managed_by"] = "remote"
        return out

    async def command(
        self, name: str, verb: str, uid: int | None, reason: str = ""
    ) -> dict[str, Any]:
        if self.remote_ok:
            result = await self.forward(verb, {"agent": name})
            if result is not None:
                return result
        return await super().command(name, verb, uid, reason)

    async def forward(self, cmd: str, args: dict[str, Any]) -> dict[str, Any] | None:
        """Send an agent command to the remote fleetd; None if it should run on the hub
        (the remote fleetd is not answering: fallback mode)."""
        if cmd not in FORWARDED or not self.remote_ok:
            return None
        agent = self.agents.get(str(args.get("agent")))
        # An agent verb may kill and respawn over there: allow for its stop timeout.
        timeout = self.remote.timeout + (agent.spec.stop_timeout + 15.0 if agent else 0.0)
        try:
            result = await self.remote.call(cmd, args, timeout=timeout)
        except RemoteNoAnswer as exc:
            if cmd in ("show", "logs"):
                return None
            # It may have acted: doing it again here could kill a fresh agent twice.
            raise RemoteFleetdDown(
                f"the fleetd on {self.host.name} did not confirm '{cmd}' ({exc.message}); "
                "check `fleetctl ps` before trying again",
                host=self.host.name,
            ) from None
        except RemoteFleetdDown:
            return None
        if isinstance(result, dict) and "host" in result:
            result = {**result, "host": self.host.name}
        return result if isinstance(result, dict) else {"result": result}

    # --- events -------------------------------------------------------------------

    async def _follow_events(self) -> None:
        """Republish the remote fleetd's events on the hub's bus, tagged with the host."""
        import asyncssh  # loaded only for SSH hosts; its errors are translated here

        while True:
            try:
                await self._follow_once()
            except FleetError as exc:
                log.debug("federation.follow.broken", host=self.host.name, error=exc.message)
            except (OSError, EOFError, ValueError, TimeoutError, asyncssh.Error) as exc:
                log.debug("federation.follow.broken", host=self.host.name, error=str(exc))
            await anyio.sleep(self.settings.poll_interval)

    async def _follow_once(self) -> None:
        if self._after_id is not None:
            # A remote store that was recreated numbers its events from 1 again:
            # resuming after the old high-water mark would skip all of them.
            newest = await self.remote.call("events", {"limit": 1})
            ids = [e.get("id") for e in (newest or {}).get("events", []) if isinstance(e, dict)]
            top = max((i for i in ids if isinstance(i, int)), default=0)
            if top < self._after_id:
                log.warning(
                    "federation.follow.reset",
                    host=self.host.name,
                    remote_newest=top,
                    followed=self._after_id,
                )
                self._after_id = None
        reader, writer = await self.ssh.unix_connection(self.remote.path)
        try:
            args: dict[str, Any] = {"follow": True}
            if self._after_id is not None:
                args["after_id"] = self._after_id
            writer.write(make_request("follow", "events", args))
            with anyio.fail_after(self.remote.timeout):
                first = await reader.readline()
            if not first:
                return
            _result(first)
            while True:
                line = await reader.readline()
                if not line:
                    return
                obj = json.loads(line)
                event = obj.get("event") if isinstance(obj, dict) else None
                if isinstance(event, dict):
                    self._republish(event)
        finally:
            writer.close()

    def _republish(self, ev: dict[str, Any]) -> None:
        eid = ev.get("id")
        if isinstance(eid, int):
            if self._after_id is not None and eid <= self._after_id:
                return
            self._after_id = eid
        data = dict(ev.get("data") or {})
        data["remote_event_id"] = eid
        data["origin"] = "remote"
        ts = ev.get("ts")
        self.followed += 1
        self.bus.publish(
            str(ev.get("kind", "remote_event")),
            f"[{self.host.name}] {ev.get('message', '')}",
            host=self.host.name,
            agent=ev.get("agent"),
            state=ev.get("state"),
            incident=ev.get("incident"),
            alert=bool(ev.get("alert")),
            data=data,
            ts=float(ts) if isinstance(ts, int | float) else None,
        )

    def fed_row(self) -> dict[str, Any]:
        """Federated part of ``fleetctl hosts --json``."""
        return {
            "remote_fleetd": "up" if self.remote_ok else "down" if self.fleetd_incident else None,
            "fleetd_down": self.fleetd_incident is not None,
            "fleetd_incident": self.fleetd_incident,
            "events_followed": self.followed,
        }


def supervisor_class(mode: str) -> type[HostSupervisor]:
    return FederatedSupervisor if mode == "federated" else HostSupervisor
