"""fleetd against supervisord, side by side, in one run (see ``scripts/bench``).

The package lives under ``scripts/`` because it is a tool for people choosing
fleetd, not part of the daemon: nothing in ``fleetd/`` imports it.
"""
