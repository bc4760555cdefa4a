"""The documented direct-gRPC example runs against the real ensemble."""
import subprocess
import sys

from tests.conftest import ROOT


def test_example_client_streams_from_the_ensemble(stack, tmp_path):
    from tests.integration.conftest import data_url
    import base64

    image = tmp_path / "red.png"
    image.write_bytes(base64.b64decode(data_url(100, 80).split(",", 1)[1]))
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "grpc_stream.py"), "--url",
                             f"127.0.0.1:{stack.grpc_port}", "--image", str(image), "--max-tokens", "6",
                             "What is this?"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "[finish_reason=" in result.stdout and "completion_tokens=" in result.stdout


def test_example_client_asks_for_n_choices(stack):
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "grpc_stream.py"), "--url",
                             f"127.0.0.1:{stack.grpc_port}", "--max-tokens", "4", "--temperature", "1", "--n", "3",
                             "Hello"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(line.split(":")[0] for line in result.stdout.splitlines() if line.startswith("choice ")) == \
        ["choice 0", "choice 1", "choice 2"]
    assert result.stdout.count("[finish_reason=") == 3
