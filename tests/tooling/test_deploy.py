"""deploy/kubernetes: every manifest valid against Kubernetes' own JSON schemas (offline, from the
kubernetes-validate package), and wired to what the stack serves: probes, ports, the gauges the HPA scales on."""
import re

import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT

DEPLOY = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"   # schemas bundled in kubernetes-validate; no network at test time


def _manifests():
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    return {name: yaml.safe_load((DEPLOY / name).read_text()) for name in kustomization["resources"]}


def _by_kind(kind):
    return next(doc for doc in _manifests().values() if doc["kind"] == kind)


def test_kustomization_lists_every_manifest():
    files = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(_manifests()) == files


@pytest.mark.parametrize("name", sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml"))
def test_manifest_is_valid(name):
    kubernetes_validate.validate(yaml.safe_load((DEPLOY / name).read_text()), KUBERNETES_VERSION, strict=True)


def test_probes_use_the_frontend_health_endpoints():
    container = _by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v1/health/live"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {p["containerPort"] for p in container["ports"]} == {8000, 8001, 8002}


def test_autoscaler_scales_on_gauges_the_llm_stage_exports():
    exported = set(re.findall(r'"(nanovl_engine_\w+)"', (ROOT / "nanovl/serving/stage_metrics.py").read_text()))
    hpa = _by_kind("HorizontalPodAutoscaler")
    scaled_on = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    ours = {name for name in scaled_on if name.startswith("nanovl_")}
    assert ours and ours <= exported
    rules = _by_kind("ConfigMap")["data"]["config.yaml"]
    assert all(re.search(name.replace("nanovl_engine_", ""), rules) for name in scaled_on)
    assert hpa["spec"]["scaleTargetRef"]["name"] == _by_kind("Deployment")["metadata"]["name"]


def test_validator_rejects_a_misspelt_field():
    deployment = yaml.safe_load((DEPLOY / "deployment.yaml").read_text())
    deployment["spec"]["replicaz"] = deployment["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError, match="replicaz"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("engine, python", [("tensorrt_llm", "system"), ("reference", "pytorch-venv")])
def test_image_entrypoint_serves_engines_with_tensorrt_llms_python(tmp_path, engine, python):
    """deploy/entrypoint.sh: a repository of TensorRT-LLM engines runs under the container's python3 (the
    transformers TensorRT-LLM pins), the PyTorch paths under the venv with transformers 5."""
    import subprocess

    from nanovl.serving.triton_config import write_repository

    write_repository(tmp_path / "repo", {"engine": engine})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, says in (("python3", "system"), ("venv-python", "pytorch-venv")):
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{says} $*"\n')
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "NANOVL_REPOSITORY": str(tmp_path / "repo"),
           "NANOVL_PYTORCH_PYTHON": str(bin_dir / "venv-python")}
    result = subprocess.run([str(ROOT / "deploy" / "entrypoint.sh"), "--port", "9000"], env=env,
                            capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout.split() == [python, "-m", "nanovl.serving.launch", "--repository", str(tmp_path / "repo"),
                                     "--port", "9000"]
