"""Keeps every stage serving: reloads a stage whose Python stub died or that fails a real request.

tritonserver 2.51 does not restart a Python stub that died (OOM kill, crash): the model stays READY while
every request to it fails with "Stub process ... is not healthy", and the dead stub stays a zombie
(tritonserver-cpu.md). So each round the supervisor counts each stage's live stub processes under the
server (a stage with two instances still answers probes with one dead stub) and sends each stage a cheap
request; a failed stage is unloaded and loaded again through the repository API (the server runs with
--model-control-mode=explicit), which starts new stubs.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import control, tensors as T
from .client import TritonClient, TritonStreamError, bytes_tensor

log = logging.getLogger("nanovl.serving.supervisor")
PROBE_REQUEST_ID = "nanovl-probe"


def probe_inputs(tile_size: int = 512) -> dict[str, dict[str, np.ndarray]]:
    """A request each stage answers without touching any user's state."""
    one, empty = np.zeros(1, np.int32), np.zeros(0, np.int32)
    return {
        "preprocessing": {T.MESSAGES.name: bytes_tensor(json.dumps([{"role": "user", "content": "ping"}]))},
        "vision_encoder": {T.TILES.name: np.zeros((1, 0, tile_size, tile_size, 3), np.uint8)},
        "llm": control.stop_inputs(PROBE_REQUEST_ID),
        "detokenizer": {T.OUTPUT_IDS.name: empty, T.NEW_OFFSET.name: one, T.FINISH_REASON.name: bytes_tensor("stop"),
                        T.PROMPT_TOKENS.name: one, T.COMPLETION_TOKENS.name: one, T.TRIM_BYTES.name: one,
                        T.TOKEN_LOGPROBS.name: np.zeros(0, np.float32),
                        T.TOP_LOGPROB_IDS.name: np.zeros((0, 0), np.int32),
                        T.TOP_LOGPROBS.name: np.zeros((0, 0), np.float32), T.SEQUENCE_INDEX.name: one,
                        T.CACHED_TOKENS.name: one},
    }


def instance_counts(repository: Path) -> dict[str, int]:
    """Stub processes each Python stage of a repository runs (instance_group counts)."""
    counts = {}
    for config in repository.glob("*/config.pbtxt"):
        text = config.read_text()
        if 'backend: "python"' in text:
            counts[config.parent.name] = sum(int(n) for n in re.findall(r"count:\s*(\d+)", text)) or 1
    return counts


def stub_processes(server_pid: int) -> list[tuple[int, str]]:
    """(pid, stage) of the live (not zombie) Python stubs under a tritonserver; the stage from the model path."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if int(stat[1]) == server_pid and stat[0] != "Z" and cmdline[0].endswith(b"triton_python_backend_stub"):
            found.append((int(entry.name), Path(cmdline[1].decode()).parent.parent.name))   # .../<stage>/1/model.py
    return found


def live_stubs(server_pid: int) -> dict[str, int]:
    live: dict[str, int] = {}
    for _, stage in stub_processes(server_pid):
        live[stage] = live.get(stage, 0) + 1
    return live


async def warm_up(client: TritonClient, *, requests: int, images: int, side: int = 640) -> None:
    """Sends the largest batch the stages take: `requests` concurrent requests of `images` images of the
    most tiles each, one token each. The Python backend's shared-memory pools grow to the largest tensors
    that passed and never shrink; growing them now means serving does not grow memory later."""
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (side, side * 3 // 4), (127, 127, 127)).save(buffer, "PNG")   # 4:3 -> 12 tiles + thumbnail
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}] * images + [{"type": "text", "text": "warm-up"}]
    inputs = {T.MESSAGES.name: bytes_tensor(json.dumps([{"role": "user", "content": content}])),
              T.MAX_TOKENS.name: np.array([1], np.int32)}

    async def one(i: int) -> None:
        async for _ in client.stream("ensemble", inputs, request_id=f"nanovl-warm-up-{i}", timeout=120):
            pass
    # Twice the batch at once: while one batch is encoded the next waits in the server, as under load.
    await asyncio.gather(*(one(i) for i in range(2 * requests)))


async def probe(client: TritonClient, stage: str, inputs, *, timeout: float = 10.0) -> str | None:
    """None if the stage answered its probe request; else why not. A server that is down is not a stage
    failure (the launcher restarts the server)."""
    try:
        async for _ in client.stream(stage, inputs, request_id=PROBE_REQUEST_ID, timeout=timeout):
            pass
    except TritonStreamError as exc:
        return str(exc)
    except Exception:
        return None
    return None


@dataclass
class Supervisor:
    grpc_url: str
    http_url: str                      # Triton's HTTP endpoint, for the repository API
    server_pid: Callable[[], int | None] = lambda: None   # tritonserver's pid now (None: not local)
    instances: dict[str, int] = field(default_factory=dict)
    interval_s: float = 2.0
    probe_timeout_s: float = 10.0
    reloads: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> "Supervisor":
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self.probe_timeout_s + self.interval_s)

    async def _run(self) -> None:
        client = TritonClient(self.grpc_url)
        try:
            while not self._stop.wait(self.interval_s):
                dead = self.dead_stubs()
                for stage, inputs in probe_inputs().items():
                    failure = dead.get(stage) or await self.probe(client, stage, inputs)
                    if failure and not self._stop.is_set():
                        log.warning("stage %s failed its probe (%s): reloading it", stage, failure)
                        await asyncio.to_thread(self.reload, stage)
        finally:
            await client.close()

    def dead_stubs(self) -> dict[str, str]:
        pid = self.server_pid()
        if pid is None or not self.instances:
            return {}
        live = live_stubs(pid)
        return {stage: f"{expected - live.get(stage, 0)} of {expected} stub processes dead"
                for stage, expected in self.instances.items() if live.get(stage, 0) < expected}

    async def probe(self, client: TritonClient, stage: str, inputs) -> str | None:
        return await probe(client, stage, inputs, timeout=self.probe_timeout_s)

    def reload(self, stage: str) -> None:
        for action in ("unload", "load"):
            request = urllib.request.Request(f"{self.http_url}/v2/repository/models/{stage}/{action}", data=b"{}",
                                             method="POST", headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=60):
                    pass
            except OSError as exc:
                log.error("%s of %s failed: %s", action, stage, exc)
                return
        self.reloads.append((time.time(), stage))
        log.warning("stage %s reloaded", stage)
