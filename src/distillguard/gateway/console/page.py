"""What a page handler gets: the console, the request, the operator's session and, for a
change of state, the checked form. Pages are plain functions of a `Page`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from distillguard.gateway.console.auth import Session

if TYPE_CHECKING:
    from distillguard.gateway.console.console import Console

__all__ = ["PREFIX", "Handler", "Page"]

PREFIX = "/console"  # where the admin listener mounts the console


@dataclass(frozen=True)
class Page:
    console: Console
    request: Request
    session: Session
    form: dict[str, str]

    def render(self, template: str, status: int = 200, **values: Any) -> Response:
        return self.console.render(self.request, template, self.session, status, **values)


Handler = Callable[[Page], Awaitable[Response]]
