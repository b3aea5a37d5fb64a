"""The service on PostgreSQL: the same API flows with the store on a real server
(skipped, saying so, where none answers on loopback)."""

from __future__ import annotations

import httpx
import pytest

from compound.api.app import create_app
from compound.core.settings import Settings
from compound.llm.litellm_client import LiteLLMClient
from compound.simulator import Simulator
from compound.store.users import create_token

pytestmark = pytest.mark.postgres


async def test_submit_stream_and_costs_on_postgres(pg_url: str, sim_settings: Settings, sim: Simulator) -> None:
    settings = sim_settings.model_copy(update={"database_url": pg_url})
    app = create_app(settings, client=LiteLLMClient(settings))
    async with app.router.lifespan_context(app):
        token = create_token(app.state.store.engine, "pg-user")[1]
        auth = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            r = await http.post("/v1/tasks", json={"prompt": "look up a and look up b"}, headers=auth)
            assert r.status_code == 202
            task_id = r.json()["id"]
            async with http.stream("GET", f"/v1/tasks/{task_id}/events", headers=auth) as resp:
                body = "".join([c async for c in resp.aiter_text()])
            assert "event: task" in body and '"status": "completed"' in body
            snap = (await http.get(f"/v1/tasks/{task_id}", headers=auth)).json()
            assert snap["status"] == "completed" and len(snap["subtasks"]) == 3
            costs = (await http.get("/v1/costs?group_by=day", headers=auth)).json()
            assert costs["total_usd"] == pytest.approx(snap["total_cost_usd"])
            assert len(costs["groups"]) == 1
            page = (await http.get("/v1/tasks?limit=1", headers=auth)).json()
            assert page["tasks"][0]["id"] == task_id and page["tasks"][0]["subtasks_done"] == 3
            metrics = (await http.get("/metrics")).text
            assert 'compound_tasks{status="completed"} 1.0' in metrics
