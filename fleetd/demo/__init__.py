"""The bundled demo: a small fleet that misbehaves on purpose, supervised by fleetd.

``scripts/demo`` runs :mod:`fleetd.demo.run`, which starts :mod:`fleetd.demo.provider`
stand-ins for LLM providers and a real fleetd on a roster rendered from
``roster.toml`` in a private directory, shows ``fleetctl ps`` and the event log
while agents crash, hang, drift and lose their provider, and removes every
process it started when it ends. Nothing here is used by fleetd itself.
"""
