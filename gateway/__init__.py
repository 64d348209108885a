"""xbgw: secure cross-border data exchange gateway."""

__version__ = "0.1.0"
