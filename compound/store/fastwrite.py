"""The executor's hot-path writes on one raw DB-API connection, with SQL written
once per dialect. SQLAlchemy's statement machinery costs ~30-60 µs a statement;
these transitions run for every subtask, so they skip it (a few µs a statement).
Only used from the executor's event-loop thread."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine

_PARAM = re.compile(r"(?<![:\w]):(\w+)")
INSERT_EVENT = ("INSERT INTO task_event (task_id, seq, kind, data, created_at) "
                "VALUES (:t, :seq, :kind, {json:data}, :now)")


class FastWriter:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"
        self._raw: Any = None
        self._sql: dict[str, str] = {}
        self.commits = 0

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    def sql(self, text: str) -> str:
        """`:name` params and `{json:name}` JSON params, in this driver's dialect."""
        out = self._sql.get(text)
        if out is None:
            if self.sqlite:
                out = re.sub(r"\{json:(\w+)\}", r":\1", text)
            else:
                out = re.sub(r"\{json:(\w+)\}", r"CAST(:\1 AS JSON)", text)
                out = _PARAM.sub(r"%(\1)s", out)
            self._sql[text] = out
        return out

    def now(self) -> Any:
        now = datetime.now(UTC)
        # SQLAlchemy's SQLite DATETIME storage format (naive UTC), so ORM reads agree.
        return now.strftime("%Y-%m-%d %H:%M:%S.%f") if self.sqlite else now

    @staticmethod
    def dumps(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"))

    @contextmanager
    def tx(self) -> Iterator[Any]:
        if self._raw is None:
            self._raw = self.engine.raw_connection()
            if self.sqlite:
                # Checkpoints (which fsync) run from a background thread instead of
                # inside whichever commit crosses the WAL threshold: see checkpoint().
                self._raw.cursor().execute("PRAGMA wal_autocheckpoint=0")
        self.commits += 1
        cur = self._raw.cursor()
        try:
            yield cur
            self._raw.commit()
        except BaseException:
            self._raw.rollback()
            raise
        finally:
            cur.close()

    def run(self, cur: Any, text: str, params: dict[str, Any]) -> Any:
        cur.execute(self.sql(text), params)
        return cur

    def event(self, cur: Any, task_id: str, seq: int, kind: str, data: dict[str, Any], now: Any) -> None:
        self.run(cur, INSERT_EVENT,
                 {"t": task_id, "seq": seq, "kind": kind, "data": self.dumps(data), "now": now})


def checkpoint(engine: Engine) -> None:
    """Copy the WAL back into the database without blocking writers or readers
    (SQLite's PASSIVE checkpoint); run in a thread, off the executor's event loop."""
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
