"""Carry out the actions the decision core returns, on one host.

Every operation goes through the ``Host`` interface, so it works the same on the
local machine and over SSH. The executor never decides anything: whether to
respawn, when and why is ``policy``'s job. It reports back what happened
(new pid, failure reason) for the core to decide on.

Invariant: a spawn always targets the agent's own tagged pane with
``respawn-pane -k``, which replaces whatever runs there; a new window is only
created when no pane carries the agent's tag. One pane per agent means one
process per agent.
"""

from __future__ import annotations

import signal
import time

import anyio
import structlog

from fleetd import tmux
from fleetd.config import AgentSpec, Settings
from fleetd.errors import FleetError, TmuxError
from fleetd.hosts.base import Host, RunResult
from fleetd.hosts.local import LocalHost
from fleetd.tmux import Pane, PaneList, parse_panes

log = structlog.get_logger("fleetd.executor")

KILL_POLL = 0.05
KILL_POLL_REMOTE = 0.5
KILL_AFTER_GRACE = 5.0


class Executor:
    def __init__(self, host: Host, settings: Settings) -> None:
        self.host = host
        self.settings = settings
        self.local = isinstance(host, LocalHost)
        # Creating sessions/windows is serialized per host: two agents starting at
        # once must not both try to create the same tmux session.
        self._create = anyio.Lock()

    async def _tmux(self, argv: list[str], what: str) -> str:
        res = await self.host.run(argv, timeout=15.0)
        if not res.ok:
            raise TmuxError(f"tmux {what} failed: {res.stderr.strip() or res.returncode}")
        return res.stdout

    async def pane_list(self, socket: str) -> PaneList | None:
        """All agent panes of one tmux server; None if tmux could not be asked."""
        res = await self.host.run(tmux.list_panes(socket), timeout=15.0)
        if res.ok:
            return parse_panes(res.stdout)
        if tmux.is_no_server(res.stderr):
            return PaneList(server_running=False, panes={})
        return None

    async def pane_of(self, spec: AgentSpec) -> Pane | None:
        """The agent's pane right now (a targeted look, used after a death event)."""
        plist = await self.pane_list(spec.tmux_socket)
        return None if plist is None else plist.panes.get(spec.name)

    async def ensure_pane(self, spec: AgentSpec, known: Pane | None) -> str:
        """Return the id of the agent's pane, creating session/window if missing."""
        if known is not None:
            return known.pane_id
        async with self._create:
            current = await self.pane_of(spec)
            if current is not None:
                return current.pane_id
            res = await self._create_window(spec)
            pane_id = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
            if not pane_id.startswith("%"):
                raise TmuxError(f"tmux did not report a pane id (got {res.stdout!r})")
            await self._tmux(tmux.tag_pane(spec.tmux_socket, pane_id, spec.name), "set-option")
            return pane_id

    async def _create_window(self, spec: AgentSpec) -> RunResult:
        sock = spec.tmux_socket
        res = await self.host.run(tmux.new_window(sock, spec.tmux_session, spec.window))
        if res.ok:
            return res
        # No server or no session yet: start one (outside fleetd's cgroup if configured).
        argv = [
            *self.settings.tmux_launcher,
            *tmux.new_session(sock, spec.tmux_session, spec.window),
        ]
        res = await self.host.run(argv)
        if not res.ok:
            raise TmuxError(
                f"cannot create tmux session {spec.tmux_session!r} on socket "
                f"{sock!r}: {res.stderr.strip()}"
            )
        return res

    async def spawn(
        self,
        spec: AgentSpec,
        known: Pane | None,
        argv: list[str],
        workdir: str,
        env: dict[str, str],
    ) -> tuple[str, int]:
        """Start the agent in its pane; return (pane id, pid)."""
        pane_id = await self.ensure_pane(spec, known)
        try:
            out = await self._tmux(
                tmux.respawn(spec.tmux_socket, pane_id, argv, workdir, env), "respawn-pane"
            )
        except TmuxError:
            if known is None:
                raise
            # The pane we knew is gone (window closed meanwhile): create it and retry once.
            pane_id = await self.ensure_pane(spec, None)
            out = await self._tmux(
                tmux.respawn(spec.tmux_socket, pane_id, argv, workdir, env), "respawn-pane"
            )
        lines = out.strip().splitlines()
        if not lines or not lines[-1].strip().isdigit():
            raise TmuxError(f"respawn-pane did not report a pid (got {out!r})")
        return pane_id, int(lines[-1].strip())

    async def capture(self, spec: AgentSpec, pane: Pane | None) -> str:
        if pane is None:
            return ""
        try:
            text = await self._tmux(
                tmux.capture(spec.tmux_socket, pane.pane_id, spec.scrollback_lines), "capture-pane"
            )
        except FleetError as exc:
            log.warning("forensics.capture.failed", agent=spec.name, error=exc.message)
            return ""
        return tmux.last_lines(text, spec.scrollback_lines)

    async def kill(self, spec: AgentSpec, pid: int | None) -> str:
        """TERM the agent's process group, wait up to stop_timeout, then KILL.

        Returns how it ended: "gone", "terminated" or "killed".
        """
        if pid is None or not await self.host.alive(pid):
            return "gone"
        await self.host.signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + spec.stop_timeout
        # Locally a liveness check is a /proc read; remotely it is a round trip.
        poll = KILL_POLL if self.local else KILL_POLL_REMOTE
        while time.monotonic() < deadline:
            await anyio.sleep(poll)
            if not await self.host.alive(pid):
                return "terminated"
        await self.host.signal_group(pid, signal.SIGKILL)
        deadline = time.monotonic() + KILL_AFTER_GRACE
        while time.monotonic() < deadline:
            if not await self.host.alive(pid):
                break
            await anyio.sleep(poll)
        return "killed"
