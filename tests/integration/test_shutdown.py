"""Graceful shutdown of the frontend: SIGTERM refuses new work with a 503, lets a running stream finish."""
import json
import signal
import subprocess
import sys
import threading
import time

import httpx

from nanovl.serving.launch import ROOT, free_port, server_env, wait_for_http
from tests.integration.conftest import MODEL


def test_sigterm_drains_running_streams_and_refuses_new_ones(stack):
    port = free_port()
    frontend = subprocess.Popen([sys.executable, "-m", "frontend", "--port", str(port)], cwd=ROOT,
                                env=server_env({"NANOVL_TRITON_URL": f"127.0.0.1:{stack.grpc_port}",
                                                "NANOVL_DRAIN_TIMEOUT_S": "30"}))
    try:
        wait_for_http(f"http://127.0.0.1:{port}/v1/health/ready", deadline_s=60, process=frontend)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 3000,
                "min_tokens": 3000, "stream": True}
        events, refused = [], {}

        def during_drain():
            time.sleep(0.3)
            refused["chat"] = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=10, json={
                "model": MODEL, "messages": [{"role": "user", "content": "new"}], "max_tokens": 2})
            refused["ready"] = httpx.get(f"http://127.0.0.1:{port}/v1/health/ready", timeout=10)

        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            events.append(next(line for line in lines if line.startswith("data: ")))
            frontend.send_signal(signal.SIGTERM)
            checker = threading.Thread(target=during_drain)
            checker.start()
            events += [line[len("data: "):] for line in lines if line.startswith("data: ")]
            checker.join()
        assert events[-1] == "[DONE]"
        finishes = [c["finish_reason"] for e in events[1:-1] for c in json.loads(e).get("choices", [])
                    if c.get("finish_reason")]
        assert finishes == ["length"]
        assert refused["chat"].status_code == 503 and refused["chat"].headers.get("retry-after")
        assert refused["ready"].status_code == 503
        # uvicorn re-raises the signal it handled once it has shut down, so "killed by SIGTERM" is a clean exit.
        assert frontend.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if frontend.poll() is None:
            frontend.kill()
