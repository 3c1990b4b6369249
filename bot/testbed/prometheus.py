"""A private Prometheus (Debian's package) on 127.0.0.1, in a folder of its own, and promtool.

Never the system service: its own config, data folder and port. Prometheus cannot take port 0,
so a free port is picked (bind, then release) and another one tried if it was taken meanwhile.
The config is written as JSON, which is YAML too: no YAML library needed here.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Any

from .sandbox import free_ports, terminate

INSTALL_HINT = (
    "run `make tools` or `apt-get install -y --no-install-recommends prometheus` "
    "(which brings promtool)"
)
READY = "Server is ready to receive web requests."
PORT_IN_USE = "address already in use"
ATTEMPTS = 5


class PrometheusNotInstalled(RuntimeError):
    """prometheus or promtool is missing on this machine."""


def check_installed() -> None:
    missing = [tool for tool in ("prometheus", "promtool") if shutil.which(tool) is None]
    if missing:
        raise PrometheusNotInstalled(f"missing {', '.join(missing)}: {INSTALL_HINT}")


def promtool(
    *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run promtool; its exit code and output are the caller's to judge."""
    check_installed()
    return subprocess.run(
        ["promtool", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class PrometheusSandbox:
    """`start()` a Prometheus with `config` (a prometheus.yml as a dict); `query` it; `stop()`."""

    def __init__(self, root: Path, config: dict[str, Any]) -> None:
        self.root = root
        self.config = config
        self.port = 0
        self._process: subprocess.Popen[str] | None = None
        self._drain: threading.Thread | None = None
        self._ready = threading.Event()  # set by the drain: ready, or the process ended
        self._output: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.root / "prometheus.yml"

    def start(self, timeout: float = 30) -> None:
        check_installed()
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config, indent=2), encoding="utf-8")
        for _attempt in range(ATTEMPTS):
            (self.port,) = free_ports(1)
            if self._launch(timeout):
                return
            if PORT_IN_USE not in self.output:
                raise RuntimeError(f"Prometheus did not start:\n{self.output}")
        raise RuntimeError(f"Prometheus found no free port in {ATTEMPTS} tries:\n{self.output}")

    def _launch(self, timeout: float) -> bool:
        """Start it on self.port; True once it says it is ready, False if it ended first."""
        self._ready.clear()
        self._output = []
        process = self._process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.root,
            start_new_session=True,  # stop() signals its group; a Ctrl-C is not meant for it
        )
        assert process.stderr is not None
        self._drain = threading.Thread(target=self._read_log, args=(process.stderr,), daemon=True)
        self._drain.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError(f"Prometheus not ready after {timeout} s:\n{self.output}")
        if process.poll() is not None or READY not in self.output:
            self.stop()
            return False
        return True

    def _read_log(self, stream: IO[str]) -> None:
        """Keep its log (a full pipe would stop it) and say when it is ready or gone."""
        for line in stream:
            self._output.append(line)
            if READY in line:
                self._ready.set()
        self._ready.set()  # the process ended

    @property
    def output(self) -> str:
        return "".join(self._output)

    def stop(self, timeout: float = 10) -> None:
        process, self._process = self._process, None
        if process is not None:
            terminate(process, timeout, whole_group=True)
        if self._drain is not None:
            self._drain.join(timeout)
            self._drain = None

    def __enter__(self) -> PrometheusSandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- its HTTP API ----------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/PATH: the `data` of a successful answer, else RuntimeError."""
        query = urllib.parse.urlencode(params)
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as exc:
            with contextlib.suppress(Exception):
                answer = json.load(exc)
                raise RuntimeError(f"{path} {params}: {answer.get('error')}") from None
            raise
        if answer.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {answer}")
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query, now: its series, each {"metric": labels, "value": [t, "v"]}."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])
