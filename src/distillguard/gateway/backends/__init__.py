"""Backends behind the gateway's one request flow: the local engine and an upstream server."""

from distillguard.gateway.backends.base import Backend, Failure, Finish, Reply
from distillguard.gateway.backends.local import LocalBackend
from distillguard.gateway.backends.upstream import UpstreamBackend, UpstreamClient

__all__ = [
    "Backend",
    "Failure",
    "Finish",
    "LocalBackend",
    "Reply",
    "UpstreamBackend",
    "UpstreamClient",
]
