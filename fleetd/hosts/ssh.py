"""A remote host reached over SSH (asyncssh): the SSH implementation of ``Host``.

One persistent connection per host, opened lazily by :meth:`SshHost.ensure_connected`
and reused by every call. The rules that make it safe to run unattended:

* **Strict host keys.** The roster's ``known_hosts`` file is read at every connect
  attempt; a host whose key is missing from it or differs is refused with
  :class:`~fleetd.errors.HostKeyRejected` before any command is sent. There is no
  "accept new key" path. ``~/.ssh/config`` is not read: the roster is the only source.
* **Dead links are noticed.** SSH keepalives (``keepalive_interval`` /
  ``keepalive_count``) close a blackholed connection after at most
  ``interval * (count + 1)`` seconds of silence; a TCP connect or login that hangs
  is cut at ``connect_timeout``.
* **Reconnect with backoff.** After a failed or lost connection the next attempt is
  allowed only after an exponential delay with jitter, between ``reconnect_initial``
  and ``reconnect_cap``. A call made during the backoff raises
  :class:`~fleetd.errors.HostUnreachable` at once, without touching the network, so
  a supervision loop can keep its cadence while a host is down.
* **Bounded channels.** At most ``max_channels`` exec channels are open at once
  (sshd's ``MaxSessions`` defaults to 10; going over makes sshd refuse channels).
* **One boundary for errors.** Every asyncssh error and ``OSError`` is translated
  here into ``HostUnreachable`` / ``HostKeyRejected`` / ``CommandTimeout`` /
  ``CommandFailed``; cancellation passes through untouched.

SSH exec hands one command *string* to the remote login shell, so every argv is
joined with :func:`shlex.join`; each argument reaches the remote program exactly
as given. The remote login shell must be POSIX-like (sh, dash, bash, zsh, ksh).

No background task is started: reconnection happens on the next call, so
:meth:`close` leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import shlex
import signal as _signal
import time
from collections.abc import Callable, Sequence
from typing import Literal

import asyncssh

from fleetd.config import HostSpec
from fleetd.errors import (
    CommandFailed,
    CommandTimeout,
    HostKeyRejected,
    HostUnreachable,
    RemoteOutputInvalid,
)
from fleetd.hosts.base import HostSnapshot, ObserveRequest, RunResult
from fleetd.hosts.remote_batch import build_observe_script, parse_observe_output

HostState = Literal["connected", "connecting", "unreachable", "key_rejected"]
# Jitter takes up to this fraction off a backoff delay, so hosts that failed
# together (the hub's own uplink went down) do not all retry in the same instant.
JITTER = 0.25
CLOSE_TIMEOUT = 5.0


def reconnect_delay(failures: int, initial: float, cap: float, rand: float) -> float:
    """Seconds to wait after the ``failures``-th consecutive failure (1-based).

    Exponential from ``initial``, capped at ``cap``, minus up to JITTER of itself;
    never below ``initial``. ``rand`` is uniform in [0, 1).
    """
    base = min(cap, initial * 2.0 ** max(0, failures - 1))
    return max(initial, min(cap, base * (1.0 - JITTER * rand)))


class _Client(asyncssh.SSHClient):
    """Reports the loss of the connection (keepalive timeout, reset) to its host."""

    def __init__(self, on_lost: Callable[[asyncssh.SSHClientConnection, Exception | None], None]):
        self._on_lost = on_lost
        self._conn: asyncssh.SSHClientConnection | None = None

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self._conn = conn

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._on_lost(self._conn, exc)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class SshHost:
    """``Host`` over one kept-alive asyncssh connection. See the module docstring."""

    name: str

    def __init__(
        self,
        spec: HostSpec,
        *,
        observe_timeout: float | None = None,
        rand: Callable[[], float] = random.random,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if spec.kind != "ssh" or not spec.address or not spec.known_hosts:
            raise ValueError(f"host {spec.name!r} is not an ssh host with address and known_hosts")
        self.name = spec.name
        self.spec = spec
        # Longer than keepalive detection, so a dead link reads as HostUnreachable
        # and only a command that really hangs on a live host as CommandTimeout.
        self.observe_timeout = (
            observe_timeout
            if observe_timeout is not None
            else spec.connect_timeout + spec.keepalive_interval * (spec.keepalive_count + 2)
        )
        self._rand = rand
        self._monotonic = monotonic
        self._wall = wall
        self._conn: asyncssh.SSHClientConnection | None = None
        self._connect_lock = asyncio.Lock()
        self._channels = asyncio.Semaphore(spec.max_channels)
        self._failures = 0
        self._retry_at = 0.0  # monotonic; no connect attempt before this
        self._home: str | None = None
        self._closed = False
        # Public state, read by `fleetctl hosts`.
        self.state: HostState = "unreachable"
        self.last_error: str = "not connected yet"
        self.last_contact: float | None = None  # wall time of the last successful exchange
        self.connected_since: float | None = None  # wall time
        self.round_trips = 0  # exec round trips (one per run/observe/read_files call)
        self.connects = 0  # successful connections made

    # --- connection ---------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def retry_in(self) -> float:
        """Seconds until a reconnect attempt is allowed (0 when it is)."""
        return max(0.0, self._retry_at - self._monotonic())

    async def ensure_connected(self) -> asyncssh.SSHClientConnection:
        """The live connection, connecting first if needed and allowed.

        Raises HostUnreachable (or HostKeyRejected) at once, with no network
        traffic, while the reconnect backoff runs.
        """
        if self._closed:
            raise HostUnreachable(f"host {self.name}: closed", host=self.name)
        if self._conn is not None:
            return self._conn
        async with self._connect_lock:
            if self._conn is not None:
                return self._conn
            wait = self.retry_in()
            if wait > 0:
                raise self._error_in_backoff(wait)
            return await self._connect()

    async def connect(self) -> None:
        """Connect now (respecting the backoff); an alias used by tests and the CLI."""
        await self.ensure_connected()

    def _error_in_backoff(self, wait: float) -> HostUnreachable | HostKeyRejected:
        msg = f"host {self.name}: {self.last_error}; next connection attempt in {wait:.1f}s"
        if self.state == "key_rejected":
            return HostKeyRejected(msg, host=self.name)
        return HostUnreachable(msg, host=self.name, retry_in=round(wait, 3))

    def _failed(self, state: HostState, message: str) -> None:
        self._failures += 1
        delay = reconnect_delay(
            self._failures, self.spec.reconnect_initial, self.spec.reconnect_cap, self._rand()
        )
        self._retry_at = self._monotonic() + delay
        self.state = state
        self.last_error = message

    async def _connect(self) -> asyncssh.SSHClientConnection:
        spec = self.spec
        assert spec.address is not None and spec.known_hosts is not None
        self.state = "connecting"
        try:
            # Read at every attempt: an operator's fix to the file takes effect
            # without a reload. A file that cannot be read refuses the host.
            known = asyncssh.read_known_hosts(spec.known_hosts)
        except (OSError, ValueError, asyncssh.Error) as exc:
            msg = f"cannot read known_hosts file {spec.known_hosts}: {_describe(exc)}"
            self._failed("key_rejected", msg)
            raise HostKeyRejected(f"host {self.name}: {msg}", host=self.name) from None
        options: dict[str, object] = {}
        if spec.user:
            options["username"] = spec.user  # else asyncssh uses the local user name
        if spec.client_keys:
            # Explicit keys only: no agent, no ~/.ssh/id_* guessing.
            options["client_keys"] = list(spec.client_keys)
            options["agent_path"] = None
        conn: asyncssh.SSHClientConnection | None = None
        try:
            async with asyncio.timeout(spec.connect_timeout + 1.0):
                conn = await asyncssh.connect(
                    spec.address,
                    client_factory=lambda: _Client(self._on_lost),
                    port=spec.port,
                    known_hosts=known,
                    config=[],
                    connect_timeout=spec.connect_timeout,
                    login_timeout=spec.connect_timeout,
                    keepalive_interval=spec.keepalive_interval,
                    keepalive_count_max=spec.keepalive_count,
                    **options,
                )
                # HOME, learned once per connection, for expand_path (which is sync).
                res = await conn.run('printf "%s" "$HOME"', check=False, encoding="utf-8")
        except asyncssh.HostKeyNotVerifiable as exc:
            msg = (
                f"host key for {spec.address}:{spec.port} is not in {spec.known_hosts} "
                f"or does not match it ({exc.reason}); refusing to connect. Verify the key "
                "out of band and update the file."
            )
            self._failed("key_rejected", msg)
            raise HostKeyRejected(f"host {self.name}: {msg}", host=self.name) from None
        except (TimeoutError, asyncssh.Error, OSError) as exc:
            if conn is not None:
                conn.abort()
            msg = f"cannot connect to {spec.address}:{spec.port}: {_describe(exc)}"
            self._failed("unreachable", msg)
            raise HostUnreachable(f"host {self.name}: {msg}", host=self.name) from None
        home = res.stdout if isinstance(res.stdout, str) else ""
        self._home = home.strip() or None
        self._conn = conn
        self._failures = 0
        self._retry_at = 0.0
        self.connects += 1
        self.state = "connected"
        self.last_error = ""
        self.connected_since = self.last_contact = self._wall()
        return conn

    def _on_lost(self, conn: asyncssh.SSHClientConnection, exc: Exception | None) -> None:
        """The connection went away (keepalive timeout, reset, server closed it)."""
        if self._conn is not conn or self._closed:
            return
        self._conn = None
        self.connected_since = None
        self._failed("unreachable", f"connection lost: {_describe(exc) if exc else 'closed'}")

    def _drop(self, conn: asyncssh.SSHClientConnection, exc: BaseException) -> HostUnreachable:
        """Give up on ``conn`` after an error that shows it is unusable."""
        if self._conn is conn:
            self._conn = None
            self.connected_since = None
            self._failed("unreachable", f"connection lost: {_describe(exc)}")
        conn.abort()
        return HostUnreachable(f"host {self.name}: {self.last_error}", host=self.name)

    # --- commands -----------------------------------------------------------------

    async def _exec(
        self, argv: Sequence[str], *, timeout: float, stdin: bytes | None = None
    ) -> RunResult:
        if not argv:
            raise CommandFailed("empty command", host=self.name)
        conn = await self.ensure_connected()
        command = shlex.join(argv)
        async with self._channels:
            self.round_trips += 1
            try:
                done = await conn.run(
                    command, input=stdin, encoding=None, check=False, timeout=timeout
                )
            except asyncssh.TimeoutError:
                raise CommandTimeout(
                    f"host {self.name}: {argv[0]} did not finish within {timeout:g}s",
                    host=self.name,
                    argv=list(argv),
                ) from None
            except asyncssh.ChannelOpenError as exc:
                if conn.is_closed():
                    raise self._drop(conn, exc) from None
                # The server refused a channel (MaxSessions, a forced command...).
                raise CommandFailed(
                    f"host {self.name}: cannot open a channel: {exc.reason}",
                    host=self.name,
                    argv=list(argv),
                ) from None
            except (asyncssh.Error, OSError) as exc:
                raise self._drop(conn, exc) from None
        if done.returncode is None or conn.is_closed():
            # The channel ended without an exit status: the connection died under it.
            raise self._drop(conn, ConnectionError("channel closed without exit status"))
        self.last_contact = self._wall()
        return RunResult(
            tuple(argv),
            done.returncode,
            _text(done.stdout),
            _text(done.stderr),
        )

    async def run(
        self, argv: Sequence[str], *, timeout: float = 10.0, stdin: bytes | None = None
    ) -> RunResult:
        """Run ``argv`` on the host, every argument quoted for the remote login shell."""
        return await self._exec(argv, timeout=timeout, stdin=stdin)

    async def observe(self, request: ObserveRequest) -> HostSnapshot:
        """tmux panes, files, clock and health in exactly one exec round trip."""
        expanded = dataclasses.replace(
            request, files=tuple(self.expand_path(p) for p in request.files)
        )
        res = await self._exec(build_observe_script(expanded), timeout=self.observe_timeout)
        try:
            snap = parse_observe_output(res.stdout, expanded)
        except RemoteOutputInvalid as exc:
            detail = f" (exit {res.returncode}: {res.stderr.strip()[:200]})" if res.stderr else ""
            raise RemoteOutputInvalid(f"host {self.name}: {exc.message}{detail}") from None
        files = {
            orig: snap.files[exp] for orig, exp in zip(request.files, expanded.files, strict=True)
        }
        return dataclasses.replace(snap, files=files)

    async def read_files(self, paths: Sequence[str]) -> dict[str, bytes | None]:
        """Several small files in one round trip (the observe script, files only)."""
        snap = await self.observe(ObserveRequest(sockets=(), files=tuple(paths), health_path=None))
        return snap.files

    async def signal_group(self, pid: int, signum: int) -> bool:
        name = _signal.Signals(signum).name.removeprefix("SIG")
        res = await self._exec(["kill", "-s", name, "--", f"-{int(pid)}"], timeout=10.0)
        return res.ok

    async def alive(self, pid: int) -> bool:
        # kill -0 also succeeds for a zombie; /proc (where there is one) tells them apart.
        script = (
            'kill -0 "$1" 2>/dev/null || exit 1\n'
            's=$(cat "/proc/$1/stat" 2>/dev/null) || exit 0\n'
            "s=${s##*) }\n"
            "case $s in Z*|X*) exit 1;; esac\n"
            "exit 0\n"
        )
        res = await self._exec(["sh", "-c", script, "fleetd-alive", str(int(pid))], timeout=10.0)
        return res.ok

    def expand_path(self, path: str) -> str:
        """Expand a leading ``~`` with the remote HOME (learned at connect).

        ``~user`` forms are left alone. Before the first connection the path is
        returned unchanged.
        """
        if self._home is None:
            return path
        if path == "~":
            return self._home
        if path.startswith("~/"):
            return self._home.rstrip("/") + path[1:]
        return path

    # --- federated mode -----------------------------------------------------------

    async def unix_connection(
        self, remote_path: str
    ) -> tuple[asyncssh.SSHReader[bytes], asyncssh.SSHWriter[bytes]]:
        """A byte stream to a Unix socket on the host (direct-streamlocal channel).

        Used to talk to a remote fleetd's control socket. The channel is not
        counted against ``max_channels`` (it may be long-lived, e.g. an event
        follow; sshd's MaxSessions does not count forwards either). Close it with
        ``writer.close()``.
        """
        conn = await self.ensure_connected()
        try:
            reader, writer = await conn.open_unix_connection(remote_path)
        except asyncssh.ChannelOpenError as exc:
            if conn.is_closed():
                raise self._drop(conn, exc) from None
            raise CommandFailed(
                f"host {self.name}: cannot open Unix socket {remote_path}: {exc.reason}",
                host=self.name,
                path=remote_path,
            ) from None
        except (asyncssh.Error, OSError) as exc:
            raise self._drop(conn, exc) from None
        self.last_contact = self._wall()
        return reader, writer

    open_unix_forward = unix_connection

    async def close(self) -> None:
        """Close the connection and wait (bounded) until asyncssh has let go of it."""
        self._closed = True
        conn, self._conn = self._conn, None
        self.connected_since = None
        self.state = "unreachable"
        self.last_error = "closed"
        if conn is None:
            return
        conn.close()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await conn.wait_closed()
        except TimeoutError:
            conn.abort()


def _text(data: object) -> str:
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data if isinstance(data, str) else ""
