"""The node's network frontends: the aiohttp application and its V2 endpoints."""

from .app import CONFIG, PLUGINS, REPOSITORY, STATE, TLS, create_app, serve

__all__ = ["CONFIG", "PLUGINS", "REPOSITORY", "STATE", "TLS", "create_app", "serve"]
