"""fleetd: keeps a fleet of AI coding agents alive in tmux panes, locally and over SSH."""

__version__ = "0.1.0"
