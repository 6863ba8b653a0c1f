"""Shared fixtures: real data files and a local HTTP server with scripted misbehaviour."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.params import Params, load_params
from pipeline.splits import Split

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
FASHION_SAMPLE = FIXTURES / "fashion-mnist-sample.csv"
CPU = torch.device("cpu")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]


def toy_splits(seed: int = 0) -> dict[str, Split]:
    """Two easily separable classes of 1x4x4 images: bright left half vs bright right half."""
    rng = np.random.default_rng(seed)

    def make(n: int) -> Split:
        labels = rng.integers(0, 2, n)
        images = rng.integers(0, 60, (n, 1, 4, 4)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 0, :, 2 * label : 2 * label + 2] += 180
        return Split(images, labels.astype(np.int64), ["left", "right"])

    return {"train": make(256), "valid": make(64), "test": make(64)}


def run_module(module: str, *args: str, cwd: Path | None = None,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m <module> args` the way DVC runs a stage: a fresh process, its own
    `__main__` (`env`: variables to add). Returns the finished process (stdout and stderr as
    text) for the test to check."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or ROOT,
                          env={**tool_env(), "PYTHONPATH": str(ROOT), **(env or {})},
                          capture_output=True, text=True, timeout=600)


def tool_env() -> dict[str, str]:
    """The environment commands run in: the venv's tools (dvc, rclone, ...) first on PATH."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "DVC_NO_ANALYTICS": "1"}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run a command that may fail; the test checks the result."""
    return subprocess.run(args, cwd=cwd, env=tool_env(), capture_output=True, text=True,
                          timeout=900)


def sh(args: list[str], cwd: Path) -> str:
    """Run a command; fail the test with its output."""
    result = run(args, cwd)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def dvc_status(repo: Path) -> dict:
    return json.loads(sh(["dvc", "status", "--json"], repo).strip() or "{}")


def run_slots(repo: Path) -> dict[str, str]:
    """The report's run-dependent slots, from the sidecar script beside the page."""
    text = (repo / "reports" / "run.js").read_text()
    return json.loads(text[text.index("=") + 1 :].strip().rstrip(";"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def copy_repository(target: Path, keep_lock: bool = False) -> None:
    """The project's files as a fresh clone has them (no tests; no dvc.lock unless `keep_lock`),
    in a new git repository at `target`."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        source = ROOT / name
        if source.is_file() and not name.startswith("tests/"):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    if not keep_lock:
        (target / "dvc.lock").unlink(missing_ok=True)
    sh(["git", "init", "-q"], target)


@pytest.fixture
def repo_params() -> Params:
    return load_params(ROOT / "params.yaml")


Route = Callable[[http.server.BaseHTTPRequestHandler], None]


class LocalServer:
    """A threaded HTTP server on 127.0.0.1; each path maps to a list of scripted responses
    (the last one repeats), and every request is logged."""

    def __init__(self) -> None:
        self.routes: dict[str, list[Route]] = {}
        self.log: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 10

            def do_GET(self) -> None:  # http.server's naming
                server.log.append(self.path)
                script = server.routes.get(self.path)
                if not script:
                    self.send_error(404, "Not Found")
                    return
                action = script.pop(0) if len(script) > 1 else script[0]
                action(self)

            do_HEAD = do_GET  # the client reads no body of a HEAD response

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, path: str, *actions: Route) -> str:
        self.routes[path] = list(actions)
        return self.url + path

    def hits(self, path: str) -> int:
        return self.log.count(path)


def serve_bytes(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Route:
    def action(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
    return action


def serve_error(status: int) -> Route:
    def action(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_error(status)
    return action


def serve_truncated(body: bytes, keep: int) -> Route:
    """Promise the full length, send `keep` bytes, then close the connection."""
    def action(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body[:keep])
        handler.wfile.flush()
        handler.close_connection = True
    return action


def serve_dropped() -> Route:
    """Close the socket without any response."""
    def action(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        handler.connection.close()
    return action


def serve_slow(body: bytes, delay_s: float) -> Route:
    def action(handler: http.server.BaseHTTPRequestHandler) -> None:
        time.sleep(delay_s)
        serve_bytes(body)(handler)
    return action


@pytest.fixture
def http_server() -> Iterator[LocalServer]:
    server = LocalServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


@pytest.fixture
def fashion_sample(tmp_path: Path) -> Path:
    target = tmp_path / "fashion-mnist-sample.csv"
    shutil.copyfile(FASHION_SAMPLE, target)
    return target
