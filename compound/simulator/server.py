"""Serving the simulator: in a background thread (tests, benchmarks) or as
`compound sim`."""

from __future__ import annotations

import socket
import threading
import time

from compound.simulator.app import Simulator
from compound.simulator.script import Script

# Idle connections stay open as long as a provider keeps them (uvicorn's 5 s default
# races a loaded client reusing a connection the server is closing: a spurious error).
KEEP_ALIVE_S = 75


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SimulatorThread:
    """A simulator served by uvicorn in a background thread (tests, benchmarks)."""

    def __init__(self, script: Script | None = None, *, port: int | None = None) -> None:
        import uvicorn

        self.sim = Simulator(script)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.sim.app, host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="off", timeout_keep_alive=KEEP_ALIVE_S)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> SimulatorThread:
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("simulator did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


def run_simulator(host: str, port: int, script: Script | None = None) -> None:
    import importlib

    import uvicorn

    # Answers are built with the SDKs' own types: imported before the first request, which
    # would otherwise hold every request of the simulator's loop for the seconds they take.
    for module in ("anthropic.types", "openai.types.chat"):
        importlib.import_module(module)

    uvicorn.run(Simulator(script).app, host=host, port=port, log_level="warning", timeout_keep_alive=KEEP_ALIVE_S)
