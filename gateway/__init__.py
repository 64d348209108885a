"""xbgw: secure cross-border data exchange gateway."""

__version__ = "0.1.0"

#: Where the daemon's local socket lives under systemd (RuntimeDirectory=xbgw).
DEFAULT_SOCKET = "/run/xbgw/local.sock"
