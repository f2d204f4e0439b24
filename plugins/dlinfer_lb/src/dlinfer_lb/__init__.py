"""Model-aware load-balancing gateway for dlinfer nodes."""

__version__ = "0.1.0"
