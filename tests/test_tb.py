"""TensorBoard logs: written live by a run with the setting on, or exported afterwards from metrics.jsonl and
the preview grids; read back with tensorboard's own EventAccumulator, they hold the run's own numbers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_all, small_config
from PIL import Image

from ddpm_gui import cli
from ddpm_gui.data import load_data
from ddpm_gui.engine import events as ev
from ddpm_gui.engine.tb import PREVIEW_TAG, TAGS, TB_DIR, export_tb
from ddpm_gui.engine.trainer import Trainer
from ddpm_gui.errors import ConfigError

pytest.importorskip(
    "tensorboard", reason="the tensorboard extra is not installed (pip install 'ddpm-gui[tensorboard]')"
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def data():
    return load_data("builtin:256", image_size=16)


def config(**kw):
    base = dict(steps=8, log_every=2, val_every=4, preview_every=4, preview_n=4, preview_steps=2)
    return small_config(**{**base, **kw})


def read_log(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def scalars(acc: EventAccumulator) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def expected(run: Path) -> dict[str, list[tuple[int, float]]]:
    """What the run's metrics.jsonl says, by TensorBoard tag, as float32 (what an event holds)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for rec in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
        for key, tag in TAGS.items():
            if key in rec and "event" not in rec:
                out.setdefault(tag, []).append((rec["step"], float(np.float32(rec[key]))))
    return out


def previews(run: Path) -> dict[int, np.ndarray]:
    return {
        int(p.stem[5:]): np.asarray(Image.open(p).convert("RGB")) for p in (run / "samples").glob("*.png")
    }


def logged_images(acc: EventAccumulator) -> dict[int, np.ndarray]:
    import io

    return {
        e.step: np.asarray(Image.open(io.BytesIO(e.encoded_image_string)).convert("RGB"))
        for e in acc.Images(PREVIEW_TAG)
    }


def assert_log_is_the_run(log_dir: Path, run: Path) -> None:
    acc = read_log(log_dir)
    want = expected(run)
    assert {"loss/train", "loss/train_smoothed", "val/total", "val/low_noise", "train/lr"} <= set(want)
    assert {t: v for t, v in scalars(acc).items() if not t.startswith("quality/")} == want
    shown, saved = logged_images(acc), previews(run)
    assert sorted(shown) == sorted(saved) and {4, 8} <= set(saved)
    assert all(np.array_equal(shown[s], saved[s]) for s in saved)


def test_live_log_holds_the_runs_metrics_and_previews(tmp_path, data):
    run = tmp_path / "run"
    events = run_all(Trainer(config(tensorboard=True), run, data=data))
    assert isinstance(events[-1], ev.Finished)
    assert_log_is_the_run(run / TB_DIR, run)
    assert len(expected(run)["val/mid_noise"]) == 2 and len(expected(run)["loss/train"]) == 4


def test_export_writes_the_same_log_for_a_run_trained_without_it(tmp_path, data, capsys):
    run = tmp_path / "run"
    run_all(Trainer(config(), run, data=data))
    assert not (run / TB_DIR).exists()
    # a quality-check result the run keeps (as engine/evaluate.py record_eval writes one)
    (run / "evals").mkdir()
    quality = {
        "frechet_distance": 12.5,
        "recognisable": 0.75,
        "sampler": "ddpm",
        "model_step": 8,
        "time": 1e9,
    }
    (run / "evals" / "step_00000008.json").write_text(json.dumps(quality))
    assert cli.main(["export-tb", str(run)]) == 0
    n = sum(len(v) for v in expected(run).values())
    assert f"wrote {n + 2} scalars and 2 preview images" in capsys.readouterr().out
    quality_log = {t: v for t, v in scalars(read_log(run / TB_DIR)).items() if t.startswith("quality/")}
    assert quality_log == {"quality/frechet_distance": [(8, 12.5)], "quality/recognisable": [(8, 0.75)]}
    (run / "evals" / "step_00000008.json").unlink()  # what follows compares the metrics alone
    # a second export would show every step twice: refused, nothing written
    files = sorted((run / TB_DIR).iterdir())
    assert cli.main(["export-tb", str(run)]) == 2
    assert "already holds a TensorBoard log" in capsys.readouterr().err
    assert sorted((run / TB_DIR).iterdir()) == files
    assert cli.main(["export-tb", str(run), "--logdir", str(tmp_path / "elsewhere")]) == 0
    assert_log_is_the_run(tmp_path / "elsewhere", run)
    with pytest.raises(ConfigError, match="not a DDPM Studio run folder"):
        export_tb(tmp_path / "elsewhere")


def test_a_resumed_run_continues_its_log_without_repeating_a_step(tmp_path, data):
    """Resumed with TensorBoard on, a run trained without it gets its history first; resumed again, the new
    session's points follow without a step twice, although the first session ran past the resumed step."""
    run = tmp_path / "run"
    run_all(Trainer(config(steps=4, checkpoint_every=4), run, data=data))
    run_all(Trainer(config(steps=8, checkpoint_every=4, tensorboard=True), run, resume=True, data=data))
    assert_log_is_the_run(run / TB_DIR, run)
    # cut the run back to step 4 (as after a crash past it) and go on to 12
    (run / "checkpoints" / "step_00000008.safetensors").unlink()
    run_all(Trainer(config(steps=12, checkpoint_every=4, tensorboard=True), run, resume=True, data=data))
    want = expected(run)
    assert [s for s, _ in want["loss/train"]] == [2, 4, 6, 8, 10, 12]
    assert scalars(read_log(run / TB_DIR)) == want  # purged what the cut-back session logged after step 4


def test_without_the_package_the_setting_is_refused_before_training(tmp_path, data, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # an import of it fails
    events = run_all(Trainer(config(tensorboard=True), tmp_path / "run", data=data))
    assert isinstance(events[-1], ev.Failed) and events[-1].bad_input
    assert "pip install 'ddpm-gui[tensorboard]'" in events[-1].message
    assert not any(isinstance(e, ev.Started) for e in events)
