"""The MONAI Label app as a real server, driven with MONAI Label's own client the way 3D Slicer drives it.

One server (``python -m monai_unet.cli label``) on a free loopback port serves a studies folder made from
``../shared/data``: two 3D volumes as NIfTI (the NRRD brain and a DICOM T1 series, converted here) and two ISBI 2012
EM sections as PNG. The tests run in file order against it: ``/info``, inference in 3D and 2D (geometry, and the
bundle's own result), 8 concurrent requests, a corrected label stored and a short training that the next inference
uses, and a clean stop.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import psutil
import pytest
import SimpleITK as sitk
from monailabel.client import MONAILabelClient
from PIL import Image

pytestmark = pytest.mark.slow

VOLUMES = ("brain1", "pgbm001")
SECTIONS = ("isbi_00", "isbi_01")
START_TIMEOUT_S = 180


# Put first on the server's PYTHONPATH: every process of the server (training included) may connect to loopback
# only; any other connection attempt is refused and written to $OFFLINE_LOG, so the test sees the start is offline.
_OFFLINE_SITECUSTOMIZE = """
import os, socket

_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _check(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOOPBACK:
        with open(os.environ["OFFLINE_LOG"], "a") as f:
            f.write(f"{os.getpid()} {address}\\n")
        raise OSError(f"offline test: connection to {address} refused")


def connect(self, address):
    _check(self, address)
    return _connect(self, address)


def connect_ex(self, address):
    _check(self, address)
    return _connect_ex(self, address)


socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _make_studies(folder: Path, shared_data: Path) -> None:
    """2D PNG sections and 3D NIfTI volumes (converted from NRRD and from a DICOM series) in a studies folder."""
    folder.mkdir(parents=True)
    for i, name in enumerate(SECTIONS):
        Image.open(shared_data / "isbi2012" / "images" / f"train_{i:02d}.png").save(folder / f"{name}.png")
    brain = sitk.ReadImage(str(shared_data / "nrrd_brain" / "brain1_image.nrrd"))
    sitk.WriteImage(brain, str(folder / "brain1.nii.gz"))
    series = sorted((shared_data / "brain_tumor_progression_dicom" / "PGBM-001").glob("*/*T1post*"))[0]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    sitk.WriteImage(reader.Execute(), str(folder / "pgbm001.nii.gz"))


class Server:
    """The ``monai-unet label`` process, its folders and a way to stop it."""

    def __init__(self, root: Path, studies: Path, args: Sequence[str] = ()) -> None:
        self.studies = studies
        self.app_dir = root / "app"
        self.log_path = root / "server.log"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.results = root / "results"
        self.results.mkdir()
        cmd = [sys.executable, "-m", "monai_unet.cli", "label", "--studies", str(studies)]
        cmd += ["--app-dir", str(self.app_dir), "--port", str(self.port), "--log-level", "warning", *args]
        self._log = open(self.log_path, "wb")  # closed in stop()
        offline = root / "offline"
        offline.mkdir()
        (offline / "sitecustomize.py").write_text(_OFFLINE_SITECUSTOMIZE)
        self.offline_log = root / "offline.log"
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "MONAI_LABEL_SESSION_PATH": str(root / "sessions"),
            "PYTHONPATH": os.pathsep.join([str(offline), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "OFFLINE_LOG": str(self.offline_log),
        }
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.stopped = False

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def client(self) -> MONAILabelClient:
        return MONAILabelClient(self.url, tmpdir=str(self.results))

    def wait_ready(self) -> dict:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                return self.client().info()
            except Exception:
                time.sleep(1)
        raise AssertionError(f"server not answering /info after {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def stop(self) -> list[psutil.Process]:
        """SIGTERM to the server process alone (as a service manager stops it), wait; what is left of its family.

        Returns the processes of the server's process group still alive after the server exited (then killed, so
        that nothing is left behind even when the test fails).
        """
        if self.stopped:
            return []
        self.stopped = True
        family = [psutil.Process(self.proc.pid)]
        try:
            family += family[0].children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        finally:
            self._log.close()
        _, alive = psutil.wait_procs(family, timeout=10)
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) == self.proc.pid and p not in alive:
                    alive.append(p)
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass
        for p in alive:  # leave nothing behind even when the test fails
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        return alive


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, shared_data: Path):
    root = tmp_path_factory.mktemp("label")
    studies = root / "studies"
    _make_studies(studies, shared_data)
    srv = Server(root, studies)
    try:
        srv.info = srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def _bundle_membrane(image: Path, checkpoint: Path, out: Path) -> np.ndarray:
    """The 2D bundle's own ``inference.json`` result for ``image`` as a membrane class map ``(H, W)``."""
    from monai_unet.bundles import run_bundle

    run_bundle(
        "unet2d_membrane",
        "run",
        ["inference"],
        bundle_root=out,
        datalist=[str(image)],
        output_dir=str(out),
        ckpt_path=str(checkpoint),
        device="$torch.device('cpu')",
    )
    return (np.asarray(Image.open(out / f"{image.name.split('.')[0]}_seg.png")) < 128).astype(np.uint8)


def _infer_png(client: MONAILabelClient, image_id: str) -> np.ndarray:
    path, params = client.infer("unet2d_membrane", image_id, {})
    assert params["label_names"] == {"membrane": 1}
    assert path.endswith(".png"), path
    return np.asarray(Image.open(path))


def test_info_lists_both_models(server: Server) -> None:
    models = server.info["models"]
    assert models["unet2d_membrane"]["dimension"] == 2
    assert models["unet2d_membrane"]["labels"] == {"membrane": 1}
    assert models["unet3d_volume"]["dimension"] == 3
    assert models["unet3d_volume"]["labels"] == {"structure": 1}
    assert set(server.info["trainers"]) == {"unet2d_membrane", "unet3d_volume"}
    assert not server.offline_log.exists(), f"the server tried the network: {server.offline_log.read_text()}"
    images = set(server.client().datastore()["objects"])
    assert images == {*VOLUMES, *SECTIONS}


@pytest.mark.parametrize("image_id", VOLUMES)
def test_infer_3d_label_has_the_image_geometry(server: Server, image_id: str) -> None:
    path, params = server.client().infer("unet3d_volume", image_id, {})
    assert params["label_names"] == {"structure": 1}
    label = sitk.ReadImage(path)
    image = sitk.ReadImage(str(server.studies / f"{image_id}.nii.gz"))
    assert label.GetSize() == image.GetSize()
    np.testing.assert_allclose(label.GetSpacing(), image.GetSpacing(), rtol=1e-5)
    np.testing.assert_allclose(label.GetOrigin(), image.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(label.GetDirection(), image.GetDirection(), atol=1e-5)
    assert set(np.unique(sitk.GetArrayViewFromImage(label))) <= {0, 1}


def test_infer_2d_is_the_bundles_result(server: Server, tmp_path: Path) -> None:
    got = _infer_png(server.client(), "isbi_01")
    image = server.studies / "isbi_01.png"
    assert got.shape == np.asarray(Image.open(image)).shape
    want = _bundle_membrane(image, server.app_dir / "model" / "unet2d_membrane" / "models" / "model.pt", tmp_path)
    np.testing.assert_array_equal(got, want)


def test_infer_2d_image_uploaded_as_slicer_does(server: Server, tmp_path: Path) -> None:
    """Slicer uploads an image it opened itself as a single-slice NIfTI; the label comes back on its grid."""
    import nibabel as nib

    pixels = np.asarray(Image.open(server.studies / "isbi_01.png"))  # (H, W)
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    affine[:3, 3] = (10.0, -20.0, 5.0)
    upload = tmp_path / "isbi_01_slice.nii.gz"
    nib.save(nib.Nifti1Image(pixels.T[..., None], affine), upload)
    client = server.client()
    client.upload_image(str(upload), image_id="isbi_01_slice")

    path, _ = client.infer("unet2d_membrane", "isbi_01_slice", {})
    label, image = sitk.ReadImage(path), sitk.ReadImage(str(upload))
    assert label.GetSize() == image.GetSize() == (pixels.shape[1], pixels.shape[0], 1)
    np.testing.assert_allclose(label.GetSpacing(), image.GetSpacing())
    np.testing.assert_allclose(label.GetOrigin(), image.GetOrigin())
    np.testing.assert_allclose(label.GetDirection(), image.GetDirection())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label)[0], _infer_png(client, "isbi_01"))


def test_8_concurrent_inferences_all_succeed(server: Server) -> None:
    jobs = [("unet2d_membrane", "isbi_01")] * 6 + [("unet3d_volume", "pgbm001")] * 2
    results: list = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def run(i: int, model: str, image_id: str) -> None:
        client = server.client()
        start.wait()
        try:
            path, _ = client.infer(model, image_id, {})
            results[i] = sitk.GetArrayFromImage(sitk.ReadImage(path))
        except Exception as e:  # reported below with the request that failed
            results[i] = e

    threads = [threading.Thread(target=run, args=(i, *job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    failed = [(jobs[i], r) for i, r in enumerate(results) if not isinstance(r, np.ndarray)]
    assert not failed, f"{failed}\n{server.log_tail()}"
    for i in range(1, 6):
        np.testing.assert_array_equal(results[i], results[0])
    np.testing.assert_array_equal(results[7], results[6])


def _train(server: Server, model: str, epoch_length: int) -> None:
    """``POST /train/<model>`` with tiny settings, then wait for the training to finish."""
    client = server.client()
    client.train_start(model, {"max_epochs": 1, "epoch_length": epoch_length})
    deadline = time.monotonic() + 300
    status = client.train_status()
    while status.get("status") in ("SUBMITTED", "QUEUED", "RUNNING") and time.monotonic() < deadline:
        time.sleep(1)
        status = client.train_status()
    details = "\n".join(status.get("details", []))
    assert status.get("status") == "DONE", f"{status.get('status')}\n{details}\n{server.log_tail()}"


def test_corrected_2d_labels_train_the_model_the_next_inference_uses(
    server: Server, tmp_path: Path, shared_data: Path
) -> None:
    client = server.client()
    model_pt = server.app_dir / "model" / "unet2d_membrane" / "models" / "model.pt"
    before_model = _sha1(model_pt)
    before = _infer_png(client, "isbi_00")

    # corrections in the model's classes (1 = membrane): one as a PNG, one as 3D Slicer saves a labelmap of a
    # 2D image (a single-slice NIfTI, x first)
    import nibabel as nib

    for i, name in enumerate(SECTIONS):
        isbi = np.asarray(Image.open(shared_data / "isbi2012" / "labels" / f"train_{i:02d}.png"))
        classes = (isbi < 128).astype(np.uint8)
        if i == 0:
            path = tmp_path / f"{name}_label.png"
            Image.fromarray(classes).save(path)
        else:
            path = tmp_path / f"{name}_label.nii.gz"
            nib.save(nib.Nifti1Image(classes.T[..., None], np.eye(4)), path)
        client.save_label(name, str(path), tag="final")
    labelled = {k for k, v in client.datastore()["objects"].items() if "final" in v["labels"]}
    assert labelled == set(SECTIONS)

    _train(server, "unet2d_membrane", epoch_length=2)
    assert _sha1(model_pt) != before_model, "training did not publish a new models/model.pt"

    after = _infer_png(client, "isbi_00")
    want = _bundle_membrane(server.studies / "isbi_00.png", model_pt, tmp_path / "bundle")
    np.testing.assert_array_equal(after, want)  # the server now serves the new weights
    assert not np.array_equal(after, before)


def test_corrected_3d_label_trains_the_3d_model(server: Server, shared_data: Path, tmp_path: Path) -> None:
    client = server.client()
    model_pt = server.app_dir / "model" / "unet3d_volume" / "models" / "model.pt"
    before_model = _sha1(model_pt)
    label = tmp_path / "brain1_label.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(shared_data / "nrrd_brain" / "brain1_label.nrrd")), str(label))
    client.save_label("brain1", str(label), tag="final")

    _train(server, "unet3d_volume", epoch_length=1)
    assert _sha1(model_pt) != before_model, "training did not publish a new models/model.pt"
    path, _ = client.infer("unet3d_volume", "brain1", {})
    assert sitk.ReadImage(path).GetSize() == sitk.ReadImage(str(label)).GetSize()


def test_server_stops_cleanly_even_while_training(server: Server) -> None:
    assert not server.offline_log.exists(), f"the server tried the network: {server.offline_log.read_text()}"
    client = server.client()
    client.train_start("unet3d_volume", {"max_epochs": 50, "epoch_length": 40})
    deadline = time.monotonic() + 60
    while not psutil.Process(server.proc.pid).children() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert psutil.Process(server.proc.pid).children(), "the training did not start a process"
    alive = server.stop()
    # 128 + SIGTERM: the server ran its clean-up and exited as stopped by the signal (not killed by it, -15; not a
    # crash, 1), so a service manager sees a normal stop
    assert server.proc.returncode == 128 + signal.SIGTERM, f"exit status {server.proc.returncode}\n{server.log_tail()}"
    assert re.search(r"stopped \d+ process\(es\) the server had started", server.log_tail(200)), server.log_tail()
    assert not alive, f"processes left behind: {[p.pid for p in alive]}"
