"""Hosts: the one interface through which fleetd touches a machine."""

from fleetd.hosts.base import Host, HostHealth, HostSnapshot, ObserveRequest, RunResult

__all__ = ["Host", "HostHealth", "HostSnapshot", "ObserveRequest", "RunResult"]
