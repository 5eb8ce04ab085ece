"""A real DICOMweb server for the tests: Orthanc with its DICOMweb plugin, on loopback, in a temporary folder.

Test modules register the fixture ``orthanc`` by importing it (``from dicomweb_server import orthanc_fixture``).
Orthanc comes from Debian's ``orthanc`` and ``orthanc-dicomweb`` packages (``scripts/setup_env.sh`` installs them);
where they are missing, the tests that need them are skipped with the command to install them, except under CI
(``CI`` set), where they fail.

Also here: :class:`FlakyServer`, a loopback HTTP server that answers an error status to its first requests (or to
all) and forwards the others to Orthanc: a PACS that is down, overloaded or recovering.
"""

from __future__ import annotations

import http.server
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import requests

PLUGIN_PATHS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
)
INSTALL_HINT = (
    "Orthanc with its DICOMweb plugin is needed: `sudo apt-get install -y orthanc orthanc-dicomweb` (Debian/Ubuntu; "
    "bash scripts/setup_env.sh does it when run as root), or set ORTHANC_BIN and ORTHANC_DICOMWEB_PLUGIN to the "
    "Orthanc executable and libOrthancDicomWeb.so"
)
START_TIMEOUT_S = 30
USER = "radiologist"
_HOP_BY_HOP = ("connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_orthanc() -> tuple[Path, Path] | None:
    """``(Orthanc, DICOMweb plugin)`` from ``$ORTHANC_BIN`` and ``$ORTHANC_DICOMWEB_PLUGIN``, or Debian's paths."""
    binary = os.environ.get("ORTHANC_BIN") or shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin")
    plugin = os.environ.get("ORTHANC_DICOMWEB_PLUGIN") or next((p for p in PLUGIN_PATHS if Path(p).is_file()), None)
    if binary and plugin and Path(binary).is_file() and Path(plugin).is_file():
        return Path(binary), Path(plugin)
    return None


def require_orthanc() -> tuple[Path, Path]:
    """Orthanc's paths; skips the test where it is missing, fails it under CI (which must run it)."""
    found = find_orthanc()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and Orthanc is missing. {INSTALL_HINT}.")
        pytest.skip(INSTALL_HINT)
    return found


class Orthanc:
    """An Orthanc process on ``127.0.0.1:<free port>`` with the DICOMweb plugin at ``/dicom-web/``.

    Args:
        root: a temporary folder for the storage, the configuration and the log.
        users: ``{user: password}`` for HTTP basic authentication (``None``: no authentication).
    """

    def __init__(self, root: Path, users: dict[str, str] | None = None) -> None:
        binary, plugin = require_orthanc()
        self.root = root
        self.users = dict(users or {})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb = f"{self.url}/dicom-web"
        config = {
            "Name": "monai-unet-tests",
            "StorageDirectory": str(root / "storage"),
            "IndexDirectory": str(root / "storage"),
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "DicomPort": free_port(),
            "RemoteAccessAllowed": False,  # loopback only
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "HttpCompressionEnabled": False,
            "Plugins": [str(plugin)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        self.config_path = root / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.log_path = root / "orthanc.log"
        self._log = open(self.log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [str(binary), str(self.config_path)], stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._wait_ready()

    @property
    def auth(self) -> tuple[str, str] | None:
        return next(iter(self.users.items())) if self.users else None

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise AssertionError(f"Orthanc exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.dicomweb}/studies", auth=self.auth, timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"Orthanc not answering after {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def client(self):
        """A plain dicomweb-client for the test's own uploads and checks (not the code under test)."""
        from dicomweb_client import DICOMwebClient

        session = requests.Session()
        session.auth = self.auth
        return DICOMwebClient(self.dicomweb, session=session)

    def upload(self, series_folders: Sequence[Path]) -> None:
        """STOW-RS every file of the folders (one request per series)."""
        import pydicom

        client = self.client()
        for folder in series_folders:
            client.store_instances([pydicom.dcmread(f) for f in sorted(folder.iterdir()) if f.is_file()])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="module", name="orthanc")
def orthanc_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """An empty Orthanc that needs credentials (user :data:`USER`, a random password); stopped after the module."""
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), users={USER: secrets.token_urlsafe(18)})
    try:
        yield server
    finally:
        server.stop()


class FlakyServer:
    """A loopback HTTP server answering ``status`` to its first ``fail`` requests, then forwarding to ``target``.

    With ``fail=None`` every request fails; with ``target=None`` (and requests left) it answers 502. ``requests``
    counts what it received, ``authorization`` the Authorization headers seen.
    """

    def __init__(self, target: str | None = None, fail: int | None = None, status: int = 503) -> None:
        self.target, self.fail, self.status = target, fail, status
        self.requests = 0
        self.authorization: list[str] = []
        lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _handle(self) -> None:
                with lock:
                    outer.requests += 1
                    n = outer.requests
                outer.authorization.append(self.headers.get("Authorization", ""))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    body = self._read_chunked()
                failing = outer.fail is None or n <= outer.fail
                if failing or outer.target is None:
                    self.send_response(outer.status if failing else 502)
                    self.send_header("Content-Length", "0")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "transfer-encoding")}
                answer = requests.request(self.command, outer.target + self.path, headers=headers, data=body)
                self.send_response(answer.status_code)
                for k, v in answer.headers.items():
                    if k.lower() not in _HOP_BY_HOP:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(answer.content)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(answer.content)

            def _read_chunked(self) -> bytes:
                data = b""
                while True:
                    size = int(self.rfile.readline().strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()

            do_GET = do_POST = do_PUT = do_DELETE = _handle

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FlakyServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
