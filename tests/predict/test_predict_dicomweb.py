"""``monai-unet predict`` from and to a real Orthanc: select, retrieve, segment, store the DICOM-SEG, resume."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from dicomweb_server import USER, Orthanc, orthanc_fixture  # noqa: F401 (fixture)

from monai_unet.io.dicomweb import PASSWORD_ENV, DicomWebError, DicomWebSource
from monai_unet.predict import predict
from monai_unet.predict.dicomweb import DicomWebOptions


@pytest.fixture(scope="module")
def pacs(orthanc: Orthanc, shared_data: Path) -> dict:
    """One study of PGBM-003 (its T1post and MaskTumor series) on the server."""
    study = next((shared_data / "brain_tumor_progression_dicom" / "PGBM-003").glob("03-29-1995*"))
    t1 = next(study.glob("*-T1post-*"))
    orthanc.upload([t1, next(study.glob("*-MaskTumor-*"))])
    ds = pydicom.dcmread(next(t1.iterdir()), stop_before_pixels=True)
    return {"url": f"dicomweb+{orthanc.dicomweb}", "study": str(ds.StudyInstanceUID), "t1": str(ds.SeriesInstanceUID)}


def run(runners, out: Path, url: str, options: DicomWebOptions) -> tuple[list, str]:
    stream = io.StringIO()
    results = predict(
        "unet3d_volume",
        [url],
        out,
        runner=runners["unet3d_volume"],
        dicom_seg=True,
        progress=False,
        stream=stream,
        dicomweb=options,
    )
    return results, stream.getvalue()


def test_segment_from_the_pacs_store_back_and_resume(
    runners, pacs: dict, orthanc: Orthanc, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, orthanc.users[USER])
    options = DicomWebOptions(
        query=("PatientID=PGBM-003", "SeriesDescription=*T1post*"), user=USER, store_to=pacs["url"]
    )
    results, text = run(runners, tmp_path / "out", pacs["url"], options)
    assert [r.status for r in results] == ["done"], [r.reason for r in results]
    # the summary names the study on the server, not the scratch folder it was retrieved into
    assert results[0].key.startswith(f"{orthanc.dicomweb}#{pacs['study']}/") and "T1post" in results[0].key
    outs = results[0].outputs
    assert [p.name.endswith(s) for p, s in zip(outs, ("_seg.nii.gz", "_seg.dcm"))] == [True, True]
    assert "T1post" in str(outs[0]) and orthanc.users[USER] not in text
    source = DicomWebSource.from_url(pacs["url"], user=USER)
    assert source.holds_segmentation(pacs["study"], pacs["t1"])  # the SEG is in the same study, referencing T1post
    # a second run asks the server, which holds the segmentation: nothing is retrieved or segmented again
    again, _ = run(runners, tmp_path / "out2", pacs["url"], options)
    assert [r.status for r in again] == ["skipped"] and "holds its segmentation" in again[0].reason
    assert not (tmp_path / "out2").exists() or not list((tmp_path / "out2").rglob("*_seg.nii.gz"))


def test_a_failed_store_keeps_the_local_outputs_and_says_so(
    runners, pacs: dict, orthanc: Orthanc, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, orthanc.users[USER])

    def refuse(self, files) -> None:
        raise DicomWebError(
            f"DICOMweb server {self.url}: cannot store (HTTP 503); the files stay at {files[0]}.", self.url
        )

    monkeypatch.setattr(DicomWebSource, "store", refuse)
    options = DicomWebOptions(series=pacs["t1"], user=USER, store_to=pacs["url"])
    monkeypatch.setattr(DicomWebSource, "held_segmentations", lambda self, uid: {})
    results, _ = run(runners, tmp_path / "out", pacs["url"], options)
    assert [r.status for r in results] == ["failed"]
    assert "cannot store" in results[0].reason and "stay at" in results[0].reason
    assert all(p.is_file() for p in results[0].outputs)


def test_store_to_needs_dicom_seg_and_a_selector_is_required(runners, pacs: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--dicom-seg"):
        predict(
            "unet3d_volume",
            [pacs["url"]],
            tmp_path / "o",
            runner=runners["unet3d_volume"],
            progress=False,
            stream=io.StringIO(),
            dicomweb=DicomWebOptions(query=("PatientID=X",), store_to=pacs["url"]),
        )
    with pytest.raises(ValueError, match="not the whole PACS"):
        run(runners, tmp_path / "o2", pacs["url"], DicomWebOptions())


def test_a_two_sequence_study_from_the_pacs_is_one_input(
    pacs: dict, orthanc: Orthanc, shared_data: Path, tmp_path: Path, monkeypatch
) -> None:
    """With a bundle of two named channels, the retrieved study is matched by SeriesDescription and segmented as
    one input, and its SEG goes back referencing the first channel's series."""
    import torch

    from monai_unet.predict.runner import BundleRunner

    monkeypatch.setenv(PASSWORD_ENV, orthanc.users[USER])
    study = next((shared_data / "brain_tumor_progression_dicom" / "PGBM-003").glob("03-29-1995*"))
    orthanc.upload([next(study.glob("*-FLAIRreg-*"))])
    overrides = {
        "features": [4, 8, 16],
        "network_def#in_channels": 2,
        "channels": {"T1post": "*T1post*", "FLAIR": "*FLAIR*"},
    }
    from monai.bundle import ConfigParser

    from monai_unet.bundles import bundle_config, find_bundle

    parser = ConfigParser()
    parser.read_config(str(bundle_config(find_bundle("unet3d_volume"), "inference")))
    for k, v in overrides.items():
        parser[k] = v
    torch.manual_seed(0)
    ckpt = tmp_path / "two.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), ckpt)
    runner = BundleRunner("unet3d_volume", checkpoint=ckpt, device="cpu", overrides=overrides)
    store = tmp_path / "seg_store"
    options = DicomWebOptions(study=pacs["study"], user=USER)
    results = predict(
        "unet3d_volume", [pacs["url"]], store, runner=runner, dicom_seg=True, progress=False,
        stream=io.StringIO(), dicomweb=options,
    )  # fmt: skip
    assert [r.status for r in results] == ["done"], [r.reason for r in results]
    assert results[0].key == f"{orthanc.dicomweb}#{pacs['study']}"  # the study, not one of its series
    seg = next(p for p in results[0].outputs if p.suffix == ".dcm")
    assert pydicom.dcmread(seg).ReferencedSeriesSequence[0].SeriesInstanceUID == pacs["t1"]
