"""A batch that never loses work: resume after a kill, skip finished inputs, split over shards without overlap."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_unet.io.atomic import is_temporary
from monai_unet.predict import discover_inputs, predict, resolve_shard, shard_items


def run(runner, inputs, out, **kwargs):
    return predict(
        runner.bundle, [str(i) for i in inputs], out, runner=runner, progress=False, stream=io.StringIO(), **kwargs
    )


def predict_command(checkpoints, src: Path, out: Path) -> list[str]:
    """``monai-unet predict`` of the narrow 2D model on ``src`` into ``out``, as a subprocess command."""
    args = ["--bundle", "unet2d_membrane", "--checkpoint", str(checkpoints["unet2d_membrane"]), "--device", "cpu"]
    args += ["--no-progress", "--set", "features=[4,8,16,32,64]", "--input", str(src), "--output", str(out)]
    return [sys.executable, "-m", "monai_unet.cli", "predict", *args]


@pytest.fixture(scope="module")
def pngs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(0)
    for k in range(8):
        Image.fromarray(rng.integers(0, 255, (120, 100), dtype=np.uint8)).save(root / f"img{k}.png")
    return root


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*_seg.png")}


def test_rerun_skips_finished_inputs_and_overwrite_redoes_them(runners, pngs, tmp_path):
    runner = runners["unet2d_membrane"]
    first = run(runner, [pngs], tmp_path)
    assert [r.status for r in first] == ["done"] * 8
    before = mtimes(tmp_path)
    (tmp_path / "img3_seg.png").unlink()
    second = run(runner, [pngs], tmp_path)
    assert [r.status for r in second] == ["skipped"] * 3 + ["done"] + ["skipped"] * 4
    after = mtimes(tmp_path)
    assert {k: v for k, v in after.items() if k != "img3_seg.png"} == {
        k: v for k, v in before.items() if k != "img3_seg.png"
    }
    third = run(runner, [pngs / "img0.png"], tmp_path, overwrite=True)
    assert third[0].status == "done" and mtimes(tmp_path)["img0_seg.png"] != before["img0_seg.png"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_batch_resumes(checkpoints, runners, pngs, tmp_path, sig):
    """Kill a running batch after four outputs; the rerun keeps those outputs and does the rest.

    The fifth input is a named pipe: reading it blocks until someone writes, so the batch is always stopped
    at the same place, however fast the machine. SIGKILL may leave a hidden temporary (removed by the rerun);
    SIGTERM ends the batch cleanly (exit 143, 128 + SIGTERM; Ctrl-C gives 130) with a summary that counts the
    inputs never started.
    """
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for p in sorted(pngs.glob("*.png")):
        (src / p.name).write_bytes(p.read_bytes())
    blocker = src / "img4.png"
    blocker.unlink()
    os.mkfifo(blocker)
    cmd = predict_command(checkpoints, src, out)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        deadline = time.monotonic() + 300
        while len(mtimes(out)) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the batch ended before reaching the blocking input"
        proc.send_signal(sig)
    finally:
        stdout, _ = proc.communicate()
    done_before = mtimes(out)
    if sig == signal.SIGTERM:
        assert proc.returncode == 143 and "run the same command to resume" in stdout
        assert "8 input(s): 4 done, 0 skipped, 0 failed, 4 not started" in stdout
        assert not [p for p in out.rglob("*") if is_temporary(p)]
    assert sorted(done_before) == [f"img{k}_seg.png" for k in range(4)]
    for name in done_before:  # what exists is complete
        assert np.asarray(Image.open(out / name)).shape == (120, 100)
    blocker.unlink()
    blocker.write_bytes((pngs / "img4.png").read_bytes())
    results = run(runners["unet2d_membrane"], [src], out)
    assert all(r.status in ("done", "skipped") for r in results)
    skipped = {Path(r.outputs[0]).name for r in results if r.status == "skipped"}
    assert skipped == set(done_before)
    assert {k: v for k, v in mtimes(out).items() if k in done_before} == done_before  # not rewritten
    assert len(mtimes(out)) == 8
    assert not [p for p in out.rglob("*") if is_temporary(p)]


def test_shards_split_the_batch_without_overlap(runners, pngs, tmp_path, monkeypatch):
    items = discover_inputs([pngs])
    parts = [shard_items(items, i, 3) for i in range(3)]
    keys = [{it.key for it in p} for p in parts]
    assert sum(len(k) for k in keys) == len(items) == 8
    assert set().union(*keys) == {it.key for it in items}
    runner = runners["unet2d_membrane"]
    a = run(runner, [pngs], tmp_path, shard="0/2")
    b = run(runner, [pngs], tmp_path, shard="1/2")
    assert len(a) == len(b) == 4
    assert not {r.key for r in a} & {r.key for r in b}
    assert all(r.status == "done" for r in a + b) and len(mtimes(tmp_path)) == 8
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_shard() == (1, 2)  # torchrun's variables
    assert resolve_shard("0/4") == (0, 4)  # --shard wins
    assert [r.key for r in run(runner, [pngs], tmp_path / "env")] == [r.key for r in b]
    for bad in ("2/2", "1", "-1/3", "a/b", "0/0"):
        with pytest.raises(ValueError, match="shard"):
            resolve_shard(bad)


def test_outputs_inside_the_input_folder_are_not_inputs(runners, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for k in range(2):
        Image.fromarray(np.full((40, 30), 60 * k, np.uint8)).save(src / f"s{k}.png")
    runner = runners["unet2d_membrane"]
    assert [r.status for r in run(runner, [src], src / "pred")] == ["done", "done"]
    assert [r.status for r in run(runner, [src], src / "pred")] == ["skipped", "skipped"]


def test_a_claimed_input_is_left_to_its_holder_and_a_dead_holder_is_taken_over(runners, pngs, tmp_path):
    import socket
    import subprocess as sp

    from monai_unet.io.atomic import _HOST, lock_path

    out = tmp_path / "out"
    out.mkdir()
    alive = sp.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = sp.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        lock_path(out / "img1_seg.png").write_text(f"{_HOST} {alive.pid}\n")  # another run is on img1
        lock_path(out / "img2_seg.png").write_text(f"{_HOST} {dead.pid}\n")  # a killed run's lock
        results = run(runners["unet2d_membrane"], [pngs], out)
    finally:
        alive.kill()
        alive.wait()
    status = {Path(r.key).name: (r.status, r.reason) for r in results}
    assert status["img1.png"] == ("skipped", f"being segmented by process {alive.pid} on {_HOST}")
    assert status["img2.png"] == ("done", "")
    assert sorted(mtimes(out)) == [f"img{k}_seg.png" for k in range(8) if k != 1]
    assert lock_path(out / "img1_seg.png").exists() and not lock_path(out / "img2_seg.png").exists()
    assert socket.gethostname()  # the host part of a lock is this machine's name


def test_two_runs_on_one_folder_share_the_work(checkpoints, pngs, tmp_path):
    out = tmp_path / "out"
    cmd = predict_command(checkpoints, pngs, out)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True) for _ in "ab"]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    done = [sum(" done " in line for line in o.splitlines()) for o in outputs]
    assert sum(done) == 8, outputs  # every input segmented once, by one of the two runs
    assert len(mtimes(out)) == 8 and not list(out.glob(".*.lock"))


def test_a_cohort_with_the_same_inner_layout_runs_in_one_command(runners, shared_data, tmp_path):
    study = next((shared_data / "brain_tumor_progression_dicom" / "PGBM-001").iterdir())
    series = next(study.glob("*-T1post-*"))
    cohort = tmp_path / "cohort"
    for patient in ("pA", "pB"):
        (cohort / patient).mkdir(parents=True)
        os.symlink(series, cohort / patient / "T1post")
    runner = runners["unet3d_volume"]
    results = run(runner, [cohort / "pA" / "T1post", cohort / "pB" / "T1post"], tmp_path / "out")
    assert [r.status for r in results] == ["done", "done"], [r.reason for r in results]
    assert [r.outputs[0].relative_to(tmp_path / "out") for r in results] == [
        Path("pA/T1post_seg.nii.gz"),
        Path("pB/T1post_seg.nii.gz"),
    ]
    by_dicom = run(runner, [cohort / "pA" / "T1post"], tmp_path / "dicom", naming="dicom")
    assert by_dicom[0].outputs[0] == tmp_path / "dicom" / "PGBM-001" / "19911119" / "11_T1post_seg.nii.gz"
