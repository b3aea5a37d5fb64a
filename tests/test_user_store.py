"""Users and tokens behind their own interfaces: both stores and a bare engine
(AdminUsers, the token commands' own) answer UserStore and TokenAdmin alike, and the
RunStore interface keeps only a task's life."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime

import pytest
from sqlalchemy.engine import Engine

from compound.api.doors.engine import Door
from compound.api.state import app_state
from compound.core.errors import NotFound, UserInputError
from compound.store import Store
from compound.store.base import RunStore
from compound.store.users import AdminUsers, TokenAdmin, UserStore
from tests.fixtures.api import Api


def abstract_names(cls: type) -> set[str]:
    return {name for name, member in inspect.getmembers(cls) if getattr(member, "__isabstractmethod__", False)}


def test_the_task_interface_has_no_user_or_token_method() -> None:
    users = abstract_names(UserStore) | abstract_names(TokenAdmin)
    assert {"principal_for_token", "record_token_use", "user_named", "create_token", "list_tokens",
            "revoke_token", "token_user_id"} == users
    assert not users & set(dir(RunStore))
    assert {"reserve", "settle", "load", "subscribe"} <= set(dir(RunStore))


async def test_each_store_is_both_interfaces(any_store: RunStore) -> None:
    assert isinstance(any_store, Store)
    row, token = any_store.create_token("ann", ["read", "admin"])
    principal = await any_store.principal_for_token(token)
    assert principal is not None
    assert (principal.user_name, principal.scopes, principal.token_id) == ("ann", frozenset({"read", "admin"}), row.id)
    assert (await any_store.user_named("ann")).id == principal.user_id == any_store.token_user_id(token)
    assert await any_store.principal_for_token(token + "x") is None
    any_store.revoke_token(row.id)
    assert await any_store.principal_for_token(token) is None
    assert any_store.token_user_id(token) is None


async def test_admin_users_over_a_bare_engine(engine: Engine) -> None:
    users = AdminUsers(engine)
    row, token = users.create_token("bea")
    principal = await users.principal_for_token(token)
    assert principal is not None and principal.user_name == "bea"
    assert principal.scopes == frozenset({"submit", "read"}) and principal.token_id == row.id
    assert await users.principal_for_token("cpd_not-a-token") is None

    at = datetime(2030, 1, 2, tzinfo=UTC)
    await users.record_token_use({row.id: at})
    (listed, name), = users.list_tokens()
    assert name == "bea" and listed.last_used_at is not None and listed.last_used_at.replace(tzinfo=UTC) == at

    assert users.revoke_token(row.id).revoked_at is not None
    assert await users.principal_for_token(token) is None
    assert (await users.user_named("bea")).id == principal.user_id


async def test_admin_users_refuse_bad_input(engine: Engine) -> None:
    users = AdminUsers(engine)
    with pytest.raises(UserInputError):
        users.create_token("cid", ["root"])
    with pytest.raises(UserInputError):
        await users.user_named("   ")
    with pytest.raises(NotFound):
        users.revoke_token("no-such-token")


async def test_a_desktop_host_is_its_local_user(api: Api) -> None:
    door = Door(app_state(api.app))
    principal = await door.local_principal("dee")
    again = await door.local_principal("dee")
    assert principal.user_name == "dee" and principal.scopes == frozenset({"submit", "read"})
    assert again.user_id == principal.user_id == (await door.users.user_named("dee")).id
    assert principal.token_id == "local:dee" and not principal.is_admin
