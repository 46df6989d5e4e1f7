"""`make run` / `make test` stop at once, with the install command, without Java 17+."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import REPO


def bin_dir(tmp_path: Path, java_version: str | None) -> Path:
    path = tmp_path / "bin"
    path.mkdir()
    for tool in ("make", "sh", "awk", "sed", "cut"):
        os.symlink(shutil.which(tool), path / tool)
    if java_version:
        java = path / "java"
        java.write_text(f"#!/bin/sh\necho 'openjdk version \"{java_version}\" 2021-01-19' >&2\n")
        java.chmod(0o755)
    return path


@pytest.mark.parametrize("target", ["run", "test"])
@pytest.mark.parametrize(
    ("java", "says"), [(None, "none is installed"), ("11.0.2", "found Java 11")]
)
def test_make_stops_without_java_17(tmp_path, target, java, says):
    env = {"PATH": str(bin_dir(tmp_path, java)), "HOME": str(tmp_path)}
    done = subprocess.run(
        ["make", "-s", target], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert says in done.stdout
    assert "apt-get install -y openjdk-17-jre-headless" in done.stdout
    # Stopped before installing or running anything.
    assert "installation time" not in done.stdout and "pipeline" not in done.stdout


def test_make_accepts_java_17(tmp_path):
    env = {"PATH": str(bin_dir(tmp_path, "17.0.15")), "HOME": str(tmp_path)}
    done = subprocess.run(
        ["make", "-s", "check-java"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout
