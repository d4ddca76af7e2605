"""Fixtures of the release tests: podman settings and the project's image, built by scripts/image.sh."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/customer-worker:latest"


def podman_env() -> dict[str, str]:
    """The environment scripts/containers-env.sh sets up (CONTAINERS_CONF for this kind of sandbox)."""
    out = subprocess.run(
        ["bash", "-c", f"source {ROOT / 'scripts/containers-env.sh'} && env -0"],
        check=True,
        capture_output=True,
    ).stdout
    return dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)


@pytest.fixture(scope="session")
def podman() -> Iterator[dict[str, str]]:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (CI installs it: scripts/image.sh, as root)")
    yield podman_env()


@pytest.fixture(scope="session")
def image(podman: dict[str, str]) -> str:
    """Builds the image (layers cached after the first build) and returns its name."""
    subprocess.run([str(ROOT / "scripts/image.sh")], check=True, env={**os.environ, **podman}, timeout=1200)
    return IMAGE
