"""``monai-unet label`` serving a PACS: a real Orthanc (DICOMweb, credentials) and a real MONAI Label server, driven
with MONAI Label's client the way 3D Slicer drives it: next sample, infer, submit the corrected label, which must
come back in Orthanc as a DICOM-SEG of the series' study, frame for frame the label that was submitted.

Orthanc holds the T1post series of two studies (PGBM-001 1991, PGBM-003 1995); the "corrected label" is the study's
own MaskTumor series (same grid, voxel for voxel). The 3D bundle is served with its seeded initial weights.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
import SimpleITK as sitk
from dicomweb_server import USER, Orthanc, free_port, orthanc_fixture  # noqa: F401 (fixture)
from monailabel.client import MONAILabelClient
from test_server import _OFFLINE_SITECUSTOMIZE

from monai_unet.io.dicomweb import PASSWORD_ENV, DicomWebSource
from monai_unet.label.datastore import label_to_dicom_seg, parse_filter

STUDIES = (("PGBM-001", "11-19-1991*"), ("PGBM-003", "03-29-1995*"))
START_TIMEOUT_S = 180


def _read_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.fixture(scope="module")
def pacs(orthanc: Orthanc, shared_data: Path) -> dict[str, dict]:
    """The T1post series of both studies on Orthanc: ``{SeriesInstanceUID: {study, t1, mask}}`` (local folders)."""
    root = shared_data / "brain_tumor_progression_dicom"
    found = {}
    for patient, study in STUDIES:
        folder = next((root / patient).glob(study))
        t1, mask = next(folder.glob("*-T1post-*")), next(folder.glob("*-MaskTumor-*"))
        ds = pydicom.dcmread(next(t1.iterdir()), stop_before_pixels=True)
        found[str(ds.SeriesInstanceUID)] = {"study": str(ds.StudyInstanceUID), "t1": t1, "mask": mask}
    orthanc.upload([v["t1"] for v in found.values()])
    return found


class LabelServer:
    """``monai-unet label --studies dicomweb+http://...`` in a process of its own, offline except for loopback."""

    def __init__(self, root: Path, orthanc: Orthanc) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app_dir = root / "app"
        self.log_path = root / "server.log"
        offline = root / "offline"
        offline.mkdir()
        (offline / "sitecustomize.py").write_text(_OFFLINE_SITECUSTOMIZE)
        self.offline_log = root / "offline.log"
        cmd = [sys.executable, "-m", "monai_unet.cli", "label", "--studies", f"dicomweb+{orthanc.dicomweb}"]
        cmd += ["--models", "unet3d_volume", "--app-dir", str(self.app_dir), "--port", str(self.port)]
        cmd += ["--log-level", "warning", "--conf", f"dicomweb_user={USER}"]
        env = {
            **os.environ,
            PASSWORD_ENV: orthanc.users[USER],
            "PYTHONUNBUFFERED": "1",
            "MONAI_LABEL_SESSION_PATH": str(root / "sessions"),
            "PYTHONPATH": os.pathsep.join([str(offline), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "OFFLINE_LOG": str(self.offline_log),
        }
        self._log = open(self.log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.results = root / "results"
        self.results.mkdir()

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def client(self) -> MONAILabelClient:
        return MONAILabelClient(self.url, tmpdir=str(self.results))

    def stats(self) -> dict:
        """``/datastore/?output=stats``: the series to annotate and those with a final label."""
        return requests.get(f"{self.url}/datastore/?output=stats", timeout=60).json()

    def wait_ready(self) -> dict:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                return self.client().info()
            except Exception:
                time.sleep(0.5)
        raise AssertionError(f"server not answering /info after {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="module")
def server(pacs: dict, orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelServer]:
    srv = LabelServer(tmp_path_factory.mktemp("label_dicomweb"), orthanc)
    try:
        srv.info = srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_the_pacs_series_are_the_datastore(server: LabelServer, pacs: dict) -> None:
    assert set(server.info["models"]) == {"unet3d_volume"}
    assert server.stats() == {"total": len(pacs), "completed": 0, "label_tags": {}}  # what Slicer shows
    assert not server.offline_log.exists(), f"the server tried the network: {server.offline_log.read_text()}"


def _seg_frames_by_position(seg: pydicom.Dataset, t1: Path) -> dict[tuple, np.ndarray]:
    """The SEG's frames by the ImagePositionPatient of the T1post slice each one references."""
    position = {}
    for f in t1.iterdir():
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        position[str(ds.SOPInstanceUID)] = tuple(round(float(v), 2) for v in ds.ImagePositionPatient)
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    out = {}
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        source = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        out[position[str(source)]] = frame
    return out


def test_slicer_round_trip_stores_the_label_in_the_pacs_as_dicom_seg(
    server: LabelServer, pacs: dict, orthanc: Orthanc, tmp_path: Path
) -> None:
    client = server.client()
    # Next Sample
    image_id = client.next_sample("first", {})["id"]
    assert image_id in pacs
    series = pacs[image_id]

    # Run (inference): the label is on the DICOM series' grid
    path, params = client.infer("unet3d_volume", image_id, {})
    assert params["label_names"] == {"structure": 1}
    label, image = sitk.ReadImage(path), _read_series(series["t1"])
    assert label.GetSize() == image.GetSize()
    np.testing.assert_allclose(label.GetSpacing(), image.GetSpacing(), rtol=1e-4)
    np.testing.assert_allclose(label.GetOrigin(), image.GetOrigin(), atol=1e-2)
    np.testing.assert_allclose(label.GetDirection(), image.GetDirection(), atol=1e-4)

    # Submit Label: the corrected label (here the study's tumour mask) with Slicer's label_info
    mask = sitk.Cast(_read_series(series["mask"]), sitk.sitkUInt8)
    corrected = tmp_path / "corrected.nii.gz"
    sitk.WriteImage(mask, str(corrected))
    client.save_label(image_id, str(corrected), tag="final", params={"label_info": [{"name": "tumour", "idx": 1}]})

    # in Orthanc: a DICOM-SEG of the same study that references the series, holding the submitted label
    source = DicomWebSource(orthanc.dicomweb, user=USER, password=orthanc.users[USER])
    held = source.held_segmentations(series["study"])
    assert list(held) == [image_id] and len(held[image_id]) == 1, held
    (seg,) = orthanc.client().retrieve_series(series["study"], held[image_id][0])
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == series["study"]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["tumour"]
    frames = _seg_frames_by_position(seg, series["t1"])
    want = {}
    for f in series["mask"].iterdir():
        ds = pydicom.dcmread(f)
        want[tuple(round(float(v), 2) for v in ds.ImagePositionPatient)] = (ds.pixel_array > 0).astype(np.uint8)
    assert frames.keys() == want.keys()
    for pos, frame in frames.items():
        np.testing.assert_array_equal(frame, want[pos], err_msg=f"slice at {pos}")
    assert sum(int(m.sum()) for m in want.values()) > 0

    # Next Sample moves on to the series that has no label yet
    assert client.next_sample("first", {})["id"] == (set(pacs) - {image_id}).pop()
    assert server.stats() == {"total": len(pacs), "completed": 1, "label_tags": {"final": 1}}

    # what a training reads: the series with the label read back from the PACS' DICOM-SEG
    (item,) = requests.get(f"{server.url}/datastore/?output=train", timeout=120).json()
    trained_on = sitk.ReadImage(item["label"])
    assert trained_on.GetSize() == mask.GetSize()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(trained_on), sitk.GetArrayFromImage(mask))
    assert orthanc.users[USER] not in server.log_path.read_text(errors="replace")


def test_dicomweb_filter_setting() -> None:
    assert parse_filter(None) == {"Modality": "MR"}
    assert parse_filter('{"Modality": "CT", "BodyPartExamined": "HEAD"}') == {
        "Modality": "CT",
        "BodyPartExamined": "HEAD",
    }
    assert parse_filter("Modality=MR,SeriesDescription=*T1post*") == {"Modality": "MR", "SeriesDescription": "*T1post*"}
    with pytest.raises(ValueError, match="not a DICOM keyword"):
        parse_filter("modality=MR")
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_filter("{Modality: MR}")


def test_a_label_on_another_grid_is_put_on_the_series_grid(shared_data: Path, tmp_path: Path) -> None:
    """Slicer may save a label with its axes in another order: the SEG still holds it slice for slice."""
    study = next((shared_data / "brain_tumor_progression_dicom" / "PGBM-001").glob("11-19-1991*"))
    t1, mask_dir = next(study.glob("*-T1post-*")), next(study.glob("*-MaskTumor-*"))
    mask = sitk.Cast(_read_series(mask_dir), sitk.sitkUInt8)
    flipped = tmp_path / "flipped.nii.gz"
    sitk.WriteImage(sitk.Flip(mask, [True, False, True]), str(flipped))  # same voxels in space, other index order
    assert sitk.ReadImage(str(flipped)).GetOrigin() != mask.GetOrigin()

    seg = pydicom.dcmread(label_to_dicom_seg(flipped, t1, tmp_path / "seg.dcm", {1: "tumour"}))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["tumour"]
    frames = _seg_frames_by_position(seg, t1)
    for f in mask_dir.iterdir():
        ds = pydicom.dcmread(f)
        position = tuple(round(float(v), 2) for v in ds.ImagePositionPatient)
        np.testing.assert_array_equal(frames[position], (ds.pixel_array > 0).astype(np.uint8))


def test_label_studies_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from monai_unet.label.server import _studies

    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    monkeypatch.setattr("sys.stdin", io.StringIO())  # no terminal to ask the password on
    assert _studies("dicomweb+http://pacs:8042/dicom-web/", {}) == "http://pacs:8042/dicom-web"
    assert _studies(tmp_path, {}) == str(tmp_path.resolve())
    with pytest.raises(ValueError, match="--user") as e:
        _studies("http://alice:hunter2@pacs:8042/dicom-web", {})
    assert "hunter2" not in str(e.value)
    with pytest.raises(ValueError, match=PASSWORD_ENV):
        _studies("dicomweb+http://pacs:8042/dicom-web", {"dicomweb_user": "alice"})
    monkeypatch.setenv(PASSWORD_ENV, "secret")
    assert _studies("dicomweb+http://pacs:8042/dicom-web", {"dicomweb_user": "alice"}) == "http://pacs:8042/dicom-web"
