"""Starts tritonserver (from the nvidia-pytriton wheel on CPU, or the container's own) and the frontend.

    python -m nanovl.serving.launch [--checkpoint DIR] [--port 8000] [--grpc-port 8001] [--metrics-port 8002]

Used by `make serve` and by the integration tests. Ctrl-C (SIGINT) or SIGTERM stops both processes.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

from .image_io import remove_stale_records
from .parameters import CHECKPOINT_ENV
from .client import TritonClient
from .supervisor import Supervisor, instance_counts, warm_up
from .triton_config import REPOSITORY

log = logging.getLogger("nanovl.serving.launch")
ROOT = REPOSITORY.parent


def _pytriton_dir() -> Path:
    spec = importlib.util.find_spec("pytriton")   # found, never imported: its own API is not used
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nvidia-pytriton is not installed: pip install --no-deps nvidia-pytriton==0.7.0")
    return Path(list(spec.submodule_search_locations)[0])


# The frontend's drain deadline (frontend/settings.py reads the same variable); the launcher waits that long.
DRAIN_TIMEOUT_S = float(os.environ.get("NANOVL_DRAIN_TIMEOUT_S", "30"))
TRITONSERVER_ENV = "NANOVL_TRITONSERVER_DIR"   # a full install, e.g. /opt/tritonserver in NVIDIA's container


def prepare_server(workdir: Path) -> Path:
    """A tritonserver folder: $NANOVL_TRITONSERVER_DIR if set, else the wheel's bin/backends/caches plus this
    Python's backend stub beside libtriton_python.so, where the backend looks for it (reused if ready)."""
    if os.environ.get(TRITONSERVER_ENV):
        return Path(os.environ[TRITONSERVER_ENV])
    dist = workdir / "tritonserver"
    stub = dist / "backends" / "python" / "triton_python_backend_stub"
    if stub.exists():
        return dist
    source = _pytriton_dir() / "tritonserver"
    for part in ("bin", "backends", "caches"):
        shutil.copytree(source / part, dist / part, dirs_exist_ok=True, symlinks=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    shutil.copy2(source / "python_backend_stubs" / version / "triton_python_backend_stub", stub)
    return dist


# Folders the dynamic loader searches anyway (Debian and Ubuntu: ld.so.conf has /usr/local/lib and the
# multiarch folders). Exact folders: a Python installed below one of them keeps its libpython apart.
_MULTIARCH = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
SYSTEM_LIBRARY_DIRS = ("/lib", "/usr/lib", "/usr/local/lib", "/lib64", "/usr/lib64", f"/lib/{_MULTIARCH}",
                       f"/usr/lib/{_MULTIARCH}")


def library_path(environ, python_libdir: str | None) -> str:
    """LD_LIBRARY_PATH for tritonserver and its stubs. The stub links libpython: a pyenv-style Python keeps it in
    its own LIBDIR, which goes in; a system Python's LIBDIR (/usr/lib/x86_64-linux-gnu) is searched anyway, and
    naming it first would put the apt copies of cuDNN and NCCL in NVIDIA's containers ahead of the CUDA
    libraries their own LD_LIBRARY_PATH lists. With the wheel's tritonserver, its bundled libraries go first."""
    existing = [p for p in environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    libdir = [python_libdir] if python_libdir and python_libdir.rstrip("/") not in SYSTEM_LIBRARY_DIRS else []
    if environ.get(TRITONSERVER_ENV):
        return ":".join(existing + [p for p in libdir if p not in existing])
    return ":".join([str(_pytriton_dir().parent / "nvidia_pytriton.libs"), *libdir, *existing])


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = library_path(env, sysconfig.get_config_var("LIBDIR"))
    # The stub's embedded interpreter runs the first python3 on PATH: make it this environment's.
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.setdefault("PYTHONPATH", str(ROOT))
    # glibc raises its mmap threshold after freeing a large block, so later tensors of a few MB land in the
    # heap and fragment it: the server and the stubs grew round after round under load (docs/reliability.md).
    # A fixed threshold keeps large tensors in mmap, handed back to the system when freed.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "1048576")
    env.update(extra or {})
    return env


def server_command(dist: Path, repository: Path, *, grpc_port: int, http_port: int, metrics_port: int,
                   extra: tuple[str, ...] = ()) -> list[str]:
    return [
        str(dist / "bin" / "tritonserver"), f"--model-repository={repository}",
        f"--backend-directory={dist / 'backends'}", f"--cache-directory={dist / 'caches'}",
        f"--grpc-port={grpc_port}", f"--http-port={http_port}", f"--metrics-port={metrics_port}",
        "--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0",
        # Unloading four Python stubs (torch teardown each) takes ~4 s on 2 busy cores.
        "--exit-timeout-secs=15", "--log-info=false",
        # Explicit control, so that the supervisor can reload a stage whose stub died.
        "--model-control-mode=explicit", "--load-model=*",
        "--backend-config=python,shm-default-byte-size=1048576",
        "--backend-config=python,shm-growth-byte-size=1048576", *extra,
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, *, deadline_s: float, process: subprocess.Popen | None = None) -> None:
    import urllib.request

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} while starting")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {deadline_s:.0f} s")


@dataclass
class Stack:
    """tritonserver + frontend as child processes."""

    checkpoint: Path
    port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    http_port: int = 8003          # Triton's own HTTP, kept off the OpenAI port
    workdir: Path = ROOT / ".run"
    repository: Path = REPOSITORY
    frontend_env: dict[str, str] = field(default_factory=dict)
    processes: list[subprocess.Popen] = field(default_factory=list)
    supervisor: Supervisor | None = None
    triton: subprocess.Popen | None = None

    def start(self, *, deadline_s: float = 120) -> "Stack":
        try:
            self.start_triton(deadline_s=deadline_s)
            self.warm_up()
            self._start_frontend(deadline_s)
        except BaseException:
            self.stop()
            raise
        self.supervisor = Supervisor(
            f"127.0.0.1:{self.grpc_port}", f"http://127.0.0.1:{self.http_port}",
            server_pid=lambda: self.triton.pid if self.triton and self.triton.poll() is None else None,
            instances=instance_counts(self.repository)).start()
        return self

    def start_triton(self, *, deadline_s: float = 120) -> None:
        remove_orphan_shm()   # what an earlier crash left behind
        dist = prepare_server(self.workdir)
        env = server_env({CHECKPOINT_ENV: str(self.checkpoint)})
        self.triton = subprocess.Popen(server_command(dist, self.repository, grpc_port=self.grpc_port,
                                                      http_port=self.http_port, metrics_port=self.metrics_port),
                                       env=env, start_new_session=True)
        self.processes.insert(0, self.triton)
        wait_for_http(f"http://127.0.0.1:{self.http_port}/v2/health/ready", deadline_s=deadline_s,
                      process=self.triton)

    def warm_up(self) -> None:
        """The largest vision batch of the largest requests, once, before serving (see supervisor.warm_up)."""
        from ..core.preprocess import PreprocessSettings
        from .triton_config import BATCHED

        started = time.monotonic()
        requests = BATCHED["vision_encoder"][0]
        images = PreprocessSettings().max_images

        async def run() -> None:
            client = TritonClient(f"127.0.0.1:{self.grpc_port}")
            try:
                await warm_up(client, requests=requests, images=images)
            finally:
                await client.close()
        asyncio.run(run())
        log.info("warm-up (%d requests x %d images) took %.1f s", 2 * requests, images, time.monotonic() - started)

    def restart_triton_if_dead(self) -> bool:
        """tritonserver exited on its own: clean up what it left and start it again (the frontend reconnects)."""
        if self.triton is None or self.triton.poll() is None:
            return False
        log.error("tritonserver exited with %s: restarting it", self.triton.returncode)
        self.processes.remove(self.triton)
        _kill_group(self.triton)
        log.info("removed %d shared-memory regions the dead server left", remove_orphan_shm())
        self.start_triton()
        return True

    def _start_frontend(self, deadline_s: float) -> None:
        frontend_env = {"NANOVL_TRITON_URL": f"127.0.0.1:{self.grpc_port}", CHECKPOINT_ENV: str(self.checkpoint),
                        **self.frontend_env}
        frontend = subprocess.Popen([sys.executable, "-m", "frontend", "--host", "0.0.0.0", "--port", str(self.port)],
                                    env=server_env(frontend_env), cwd=ROOT, start_new_session=True)
        self.processes.append(frontend)
        wait_for_http(f"http://127.0.0.1:{self.port}/v1/health/ready", deadline_s=deadline_s, process=frontend)
        return self

    def stop(self) -> None:
        if self.supervisor:
            self.supervisor.stop()
        # One at a time, the frontend first: it drains its running streams while tritonserver still serves them.
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=DRAIN_TIMEOUT_S + 15 if process is not self.triton else 20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            _kill_group(process)
        self.processes.clear()
        remove_orphan_shm()
        remove_stale_records()


SHM_PREFIX = "triton_python_backend_shm_region_"


def remove_orphan_shm() -> int:
    """Deletes the Python backend's shared-memory regions that no live process maps: what a SIGKILLed
    tritonserver or stub leaves in /dev/shm (each region is RAM). -> how many were removed."""
    shm = Path("/dev/shm")
    regions = {path.name for path in shm.glob(SHM_PREFIX + "*")}
    if not regions:
        return 0
    mapped: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:
            continue
        if SHM_PREFIX in text:
            mapped.update(re.findall(re.escape(SHM_PREFIX) + r"[\w-]+", text))
    orphans = regions - mapped
    for name in orphans:
        (shm / name).unlink(missing_ok=True)
    return len(orphans)


def _kill_group(process: subprocess.Popen) -> None:
    """Whatever is left of a child's session (a Python stub outliving a failed tritonserver): killed."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the stack: tritonserver + the OpenAI frontend")
    parser.add_argument("--checkpoint", type=Path, default=Path(os.environ.get(CHECKPOINT_ENV, "")))
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--triton-http-port", type=int, default=8003)
    parser.add_argument("--repository", type=Path, default=REPOSITORY,
                        help="model repository (default: model_repository/, configs read $NANOVL_CHECKPOINT)")
    args = parser.parse_args()
    if not (args.checkpoint / "config.json").is_file():
        parser.error(f"--checkpoint {args.checkpoint}: no config.json there (or set ${CHECKPOINT_ENV})")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    checkpoint = args.checkpoint.resolve()
    if json.loads((checkpoint / "config.json").read_text()).get("nanovl_tiny_random_weights"):
        log.warning("%s is the TINY TEST checkpoint with RANDOM weights: the stack runs for real, the answers "
                    "are gibberish by design. CHECKPOINT=/path/to/Llama-3.1-Nemotron-Nano-VL-8B-V1 serves the model.",
                    checkpoint)
    stack = Stack(checkpoint, args.port, args.grpc_port, args.metrics_port, args.triton_http_port,
                  repository=args.repository.resolve())
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        stack.start()
        log.info("serving %s: OpenAI API on http://0.0.0.0:%d/v1, Triton gRPC on %d, metrics on %d",
                 checkpoint, args.port, args.grpc_port, args.metrics_port)
        while not stopping:
            if not stack.restart_triton_if_dead() and any(p.poll() is not None for p in stack.processes):
                break   # the frontend died: stop everything rather than serve half a stack
            time.sleep(0.5)
    finally:
        log.info("stopping")
        stack.stop()


if __name__ == "__main__":
    main()
