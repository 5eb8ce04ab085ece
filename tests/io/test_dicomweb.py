"""DICOMweb against a real Orthanc: select (QIDO-RS), retrieve as a local study folder (WADO-RS), store a DICOM-SEG
(STOW-RS), resume, credentials, retries on a server that is down or answers 5xx.

Three studies of the shared data are uploaded over STOW-RS: PGBM-001 of 1991 (T1post, FLAIR), PGBM-001 of 1992 and
PGBM-003 of 1995 (T1post each).
"""

from __future__ import annotations

import logging
import shutil
import traceback
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicomweb_server import USER, FlakyServer, Orthanc, free_port, orthanc_fixture  # noqa: F401 (fixture)

from monai_unet.io import dicomweb
from monai_unet.io.dicom import find_dicom_series
from monai_unet.io.dicomweb import (
    PASSWORD_ENV,
    DicomWebError,
    DicomWebSource,
    StudyRef,
    is_dicomweb_url,
    parse_dicomweb_url,
    parse_query,
    read_password,
)

SERIES = {
    "t1_1991": ("PGBM-001", "11-19-1991*", "*-T1post-*"),
    "flair_1991": ("PGBM-001", "11-19-1991*", "*-FLAIRreg-*"),
    "t1_1992": ("PGBM-001", "04-02-1992*", "*-T1post-*"),
    "t1_003": ("PGBM-003", "03-29-1995*", "*-T1post-*"),
}


@pytest.fixture(scope="module")
def pacs(orthanc: Orthanc, shared_data: Path) -> dict:
    """Upload the series; ``{name: (folder, StudyInstanceUID, SeriesInstanceUID)}`` and the server."""
    root = shared_data / "brain_tumor_progression_dicom"
    found = {}
    for name, (patient, study, series) in SERIES.items():
        folder = next((root / patient).glob(f"{study}/{series}"))
        ds = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
        found[name] = (folder, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
    orthanc.upload([f for f, _, _ in found.values()])
    return {"server": orthanc, **found}


def _source(pacs: dict, **kwargs) -> DicomWebSource:
    server = pacs["server"]
    return DicomWebSource(f"dicomweb+{server.dicomweb}", user=USER, password=server.users[USER], **kwargs)


def test_parse_dicomweb_url() -> None:
    assert parse_dicomweb_url("dicomweb+http://127.0.0.1:8042/dicom-web/") == "http://127.0.0.1:8042/dicom-web"
    assert parse_dicomweb_url("dicomweb+https://pacs.example.org/dicom-web") == "https://pacs.example.org/dicom-web"
    assert parse_dicomweb_url("HTTP://pacs:8042/dicom-web") == "http://pacs:8042/dicom-web"
    assert is_dicomweb_url("dicomweb+https://pacs/dicom-web") and is_dicomweb_url("DICOMWEB+http://pacs/dw")
    assert not is_dicomweb_url("/data/studies") and not is_dicomweb_url("http://pacs/dicom-web")
    with pytest.raises(ValueError, match="not a DICOMweb URL"):
        parse_dicomweb_url("dicomweb+ftp://pacs/dicom-web")
    with pytest.raises(ValueError, match="without a query"):
        parse_dicomweb_url("dicomweb+http://pacs/dicom-web?PatientID=1")
    with pytest.raises(ValueError, match="--user") as e:
        parse_dicomweb_url("dicomweb+http://alice:hunter2@pacs:8042/dicom-web")
    assert "hunter2" not in str(e.value)


def test_parse_query() -> None:
    assert parse_query(["PatientID=PGBM-001", "StudyDate=19910101-19921231"]) == {
        "PatientID": "PGBM-001",
        "StudyDate": "19910101-19921231",
    }
    assert parse_query("SeriesDescription=*T1post*") == {"SeriesDescription": "*T1post*"}
    assert parse_query({"00100020": "X"}) == {"00100020": "X"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_query(["PGBM-001"])
    with pytest.raises(ValueError, match="not a DICOM keyword"):
        parse_query(["patientid=PGBM-001"])
    with pytest.raises(ValueError, match="given twice"):
        parse_query(["PatientID=a", "PatientID=b"])


def test_read_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    assert read_password("alice", "given") == "given"
    with pytest.raises(ValueError, match=PASSWORD_ENV):
        read_password("alice", prompt=False)
    monkeypatch.setattr(dicomweb.getpass, "getpass", lambda prompt: "typed" if "alice" in prompt else "")
    assert read_password("alice", prompt=True) == "typed"
    monkeypatch.setenv(PASSWORD_ENV, "from-env")
    assert read_password("alice") == "from-env"


def test_select_by_query_study_and_series(pacs: dict) -> None:
    source = _source(pacs)
    _, study_1991, t1_1991 = pacs["t1_1991"]
    studies = source.select(query=["PatientID=PGBM-001"])
    assert [(s.patient_id, s.study_date) for s in studies] == [("PGBM-001", "19911119"), ("PGBM-001", "19920402")]
    assert [r.description for r in studies[0].series] == ["T1post", "FLAIR_reg"]  # by series number
    assert studies[0].series[0].series_uid == t1_1991 and studies[0].series[0].instances == 25

    assert [len(s.series) for s in source.select(study=study_1991)] == [2]
    (only,) = source.select(series=pacs["flair_1991"][2])
    assert only.study_uid == study_1991 and [r.description for r in only.series] == ["FLAIR_reg"]
    t1 = source.select(query={"SeriesDescription": "*T1post*"})  # a series attribute, across patients
    assert [s.patient_id for s in t1] == ["PGBM-001", "PGBM-001", "PGBM-003"]
    assert all([r.description for r in s.series] == ["T1post"] for s in t1)
    assert source.select(query=["PatientID=PGBM-003", "StudyDate=19950101-19951231"])[0].study_uid == pacs["t1_003"][1]
    assert source.select(query=["PatientID=nobody"]) == []
    with pytest.raises(ValueError, match="not the whole PACS"):
        source.select()


def test_retrieve_gives_a_study_folder_the_local_dicom_path_segments(pacs: dict, tmp_path: Path) -> None:
    from monai_unet.predict.inputs import discover_inputs

    source = _source(pacs)
    (study,) = source.select(study=pacs["t1_1991"][1])
    folder = source.retrieve(study, tmp_path / "in")
    assert folder.parent == tmp_path / "in"
    assert sorted(p.name for p in folder.iterdir()) == ["11-T1post-03326", "35637-FLAIR_reg-16386"]
    for name in ("t1_1991", "flair_1991"):
        original, _, series_uid = pacs[name]
        local = next(p for p in folder.iterdir() if p.name.endswith(series_uid[-5:]))
        (series,) = find_dicom_series(local)
        assert len(series.files) == len(list(original.iterdir()))
        want = {str(d.SOPInstanceUID): d.PixelData for d in map(pydicom.dcmread, original.iterdir())}
        got = {str(d.SOPInstanceUID): d.PixelData for d in map(pydicom.dcmread, series.files)}
        assert got == want  # every instance, bit for bit

    # the predict path: the study's series are the channels of one input, matched by their folder names
    (item,) = discover_inputs([folder], channels={"T1post": "*T1post*", "FLAIR": "*FLAIR*"})
    assert item.kind == "dicom" and [c.path.name for c in item.channels] == [
        "11-T1post-03326",
        "35637-FLAIR_reg-16386",
    ]

    # a retrieved series is not fetched again: a second retrieve works with the server gone
    down = DicomWebSource(f"http://127.0.0.1:{free_port()}/dicom-web", retries=0)
    assert down.retrieve(study, tmp_path / "in") == folder
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no partial download left


def test_store_seg_lands_in_its_study_and_resume_sees_it(pacs: dict, tmp_path: Path) -> None:
    from monai_unet.io.dicom_seg import write_dicom_seg

    source = _source(pacs)
    _, study_uid, t1_uid = pacs["t1_1991"]
    assert source.held_segmentations(study_uid) == {}
    (study,) = source.select(study=study_uid)
    folder = source.retrieve(study, tmp_path / "in")
    (series,) = find_dicom_series(folder / study.series[0].folder_name)
    first = pydicom.dcmread(series.files[0], stop_before_pixels=True)
    label = np.zeros((first.Columns, first.Rows, len(series.files)), np.uint8)
    label[100:140, 120:150, 8:12] = 1
    seg = write_dicom_seg(label, series.files, tmp_path / "out" / "T1post_seg.dcm")

    source.store([seg])
    held = source.held_segmentations(study_uid)
    seg_uid = str(pydicom.dcmread(seg, stop_before_pixels=True).SeriesInstanceUID)
    assert held == {t1_uid: (seg_uid,)}
    assert source.holds_segmentation(study_uid, t1_uid)
    assert not source.holds_segmentation(study_uid, pacs["flair_1991"][2])
    assert not source.holds_segmentation(pacs["t1_1992"][1], pacs["t1_1992"][2])
    # the SEG is in the same study on the server, and is not an input to segment
    on_server = pacs["server"].client().search_for_series(study_uid, search_filters={"Modality": "SEG"})
    assert [s["0020000E"]["Value"][0] for s in on_server] == [seg_uid]
    assert [r.description for r in source.select(study=study_uid)[0].series] == ["T1post", "FLAIR_reg"]
    stored = pacs["server"].client().retrieve_instance(study_uid, seg_uid, str(pydicom.dcmread(seg).SOPInstanceUID))
    assert int(np.count_nonzero(stored.pixel_array)) == int(label.sum())


def _texts(error: BaseException) -> str:
    return f"{error}\n{error!r}\n" + "".join(traceback.format_exception(error))


def test_credentials_refused_named_and_never_shown(
    pacs: dict, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    server = pacs["server"]
    password = server.users[USER]
    query = ["PatientID=PGBM-003"]
    with pytest.raises(DicomWebError, match=r"HTTP 401.*--user NAME") as anonymous:
        DicomWebSource(server.dicomweb).select(query=query)
    assert anonymous.value.status == 401 and server.dicomweb in str(anonymous.value)
    wrong = password[::-1]
    with pytest.raises(DicomWebError, match=rf"HTTP 401.*user '{USER}'.*{PASSWORD_ENV}") as refused:
        DicomWebSource(server.dicomweb, user=USER, password=wrong).select(query=query)

    monkeypatch.setenv(PASSWORD_ENV, password)
    source = DicomWebSource.from_url(f"dicomweb+{server.dicomweb}", user=USER)
    assert [s.patient_id for s in source.select(query=query)] == ["PGBM-003"]
    with FlakyServer(target=server.url) as flaky:  # the password goes to a server that fails: still not shown
        failing = DicomWebSource(flaky.url + "/dicom-web", user=USER, password=password, retries=1, backoff=0.01)
        with pytest.raises(DicomWebError) as down:
            failing.select(query=query)
        assert flaky.requests == 2 and all(a.startswith("Basic ") for a in flaky.authorization)
    import base64

    texts = _texts(anonymous.value) + _texts(refused.value) + _texts(down.value) + caplog.text + repr(source)
    for secret in (password, wrong, base64.b64encode(f"{USER}:{password}".encode()).decode()):
        assert secret not in texts


def test_a_5xx_is_retried_and_the_request_then_succeeds(pacs: dict, caplog: pytest.LogCaptureFixture) -> None:
    server = pacs["server"]
    with FlakyServer(target=server.url, fail=2, status=503) as flaky:
        source = DicomWebSource(flaky.url + "/dicom-web", user=USER, password=server.users[USER], backoff=0.01)
        with caplog.at_level(logging.WARNING, logger="monai_unet.io.dicomweb"):
            studies = source.select(query=["PatientID=PGBM-003"])
        assert [s.study_uid for s in studies] == [pacs["t1_003"][1]]
        assert flaky.requests == 4  # 503, 503, the search, and the empty page that ends it
    assert "HTTP 503" in caplog.text and "retry 1 of 3" in caplog.text and "retry 2 of 3" in caplog.text


def test_a_server_down_gets_backoff_then_one_error_naming_server_and_study(
    pacs: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    waits: list[float] = []
    monkeypatch.setattr(dicomweb, "_sleep", waits.append)
    url = f"http://127.0.0.1:{free_port()}/dicom-web"  # nothing listens there
    study_uid = pacs["t1_1991"][1]
    with pytest.raises(DicomWebError, match=rf"{url}.*study {study_uid}.*no answer.*after 4 tries") as e:
        DicomWebSource(url, retries=3, backoff=0.5).select(study=study_uid)
    assert waits == [0.5, 1.0, 2.0] and e.value.status is None and e.value.study_uid == study_uid

    with FlakyServer(status=500) as always:  # answers 500 to everything
        source = DicomWebSource(always.url + "/dicom-web", retries=2, backoff=0)
        study = StudyRef(study_uid, series=_source(pacs).select(study=study_uid)[0].series)
        with pytest.raises(DicomWebError, match=rf"study {study_uid}.*HTTP 500") as e:
            source.retrieve(study, tmp_path)
        assert always.requests == 3 and e.value.status == 500


def test_a_failed_store_leaves_the_file_and_says_where(pacs: dict, tmp_path: Path) -> None:
    seg = tmp_path / "out" / "T1post_seg.dcm"  # any DICOM file: a slice stands in for the SEG
    seg.parent.mkdir()
    shutil.copy(next(pacs["t1_003"][0].iterdir()), seg)
    with FlakyServer(status=503) as always:
        with pytest.raises(DicomWebError, match=rf"the local file\(s\) stay at {seg}") as e:
            DicomWebSource(always.url + "/dicom-web", retries=1, backoff=0).store([seg])
    assert seg.is_file() and e.value.path == (seg,) and e.value.study_uid == pacs["t1_003"][1]
