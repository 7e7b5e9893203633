"""The compose stack's file is valid (no Docker engine runs here: config only)."""

import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO_ROOT

COMPOSE = shutil.which("docker-compose")


def test_compose_file_is_valid_with_every_profile():
    if COMPOSE is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed (.ci/run installs the Debian package)")
        pytest.skip("docker-compose not installed")
    result = subprocess.run(
        [COMPOSE, "-f", "docker/docker-compose.yml", "--profile", "gpu", "--profile", "replay", "config", "-q"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    services = subprocess.run([COMPOSE, "-f", "docker/docker-compose.yml", "config", "--services"], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120).stdout.split()
    assert {"kafka", "trainer", "trainer-cuda", "prometheus", "grafana"} <= set(services)
