"""The application's state, typed: what create_app hangs on `app.state` and the
routes and doors read (`app_state(request.app).host`, never an untyped attribute)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.datastructures import State
from starlette.types import ASGIApp

if TYPE_CHECKING:
    from compound.api.auth import TokenCache
    from compound.api.ratelimit import RateLimiter
    from compound.api.snapshots import SnapshotCache
    from compound.core.settings import Settings
    from compound.executor.host import ExecutorHost
    from compound.store import Store
    from compound.tools.servers import ToolServers


class AppState(State):
    """Set by create_app (settings, ratelimit) and its lifespan (the rest)."""

    settings: Settings
    ratelimit: RateLimiter
    store: Store
    executor: ExecutorHost
    tokens: TokenCache
    snapshots: SnapshotCache
    tool_servers: ToolServers


def app_state(app: ASGIApp) -> AppState:
    """The app's typed state (create_app made it)."""
    state = getattr(app, "state", None)
    if not isinstance(state, AppState):
        raise TypeError("not an app made by compound.api.app.create_app")
    return state


__all__ = ["AppState", "app_state"]
