"""The bare FastAPI baseline of bench/api_bench.py: the same route path, the same JSON
body (read once from the file in BENCH_BODY), no auth, no store.

    uvicorn bench.bare_app:app         # the route returns the dict (FastAPI encodes it)
    uvicorn bench.bare_app:raw_app     # the route returns the bytes as they are
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Response

BODY = Path(os.environ["BENCH_BODY"]).read_bytes() if os.environ.get("BENCH_BODY") else b"{}"
DATA = json.loads(BODY)

app = FastAPI()
raw_app = FastAPI()


@app.get("/v1/tasks/{task_id}")
async def get_task(task_id: str) -> dict[str, Any]:  # noqa: ARG001 (the path the client asks)
    got: dict[str, Any] = DATA
    return got


@raw_app.get("/v1/tasks/{task_id}")
async def get_task_raw(task_id: str) -> Response:  # noqa: ARG001
    return Response(BODY, media_type="application/json")


@app.get("/healthz")
@raw_app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
