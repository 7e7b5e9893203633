"""The compose stack's file is valid (no Docker engine runs here: config only)."""

import shutil
import subprocess

from tests.conftest import REPO_ROOT, missing_system_package

COMPOSE = shutil.which("docker-compose")


def test_compose_file_is_valid_with_every_profile():
    if COMPOSE is None:
        missing_system_package("docker-compose not installed (.ci/run installs the Debian package)")
    result = subprocess.run(
        [COMPOSE, "-f", "docker/docker-compose.yml", "--profile", "gpu", "--profile", "replay", "config", "-q"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    services = subprocess.run([COMPOSE, "-f", "docker/docker-compose.yml", "config", "--services"], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120).stdout.split()
    assert {"kafka", "trainer", "trainer-cuda", "prometheus", "grafana"} <= set(services)
