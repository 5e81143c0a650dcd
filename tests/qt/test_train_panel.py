"""Train panel against the real engine (tiny model, built-in data, a few steps); what its run view shows
without training is in test_run_view.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from ddpm_gui.engine import events as ev
from ddpm_gui.engine.events import coalesce_progress
from ddpm_gui.engine.text import fmt_duration
from ddpm_gui.qt.panels import train_panel as tp
from ddpm_gui.qt.state import AppState

pytestmark = pytest.mark.qt


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread while these tests train: on a busy 2-core machine two OpenMP threads stall
    on each other (a 30-step run measured 68 s with 2 threads, 9 s with 1)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def state(settings):
    return AppState(settings)


@pytest.fixture
def panel(qtbot, state, monkeypatch):
    monkeypatch.setattr(tp, "SHOW_DIALOGS", False)
    p = tp.TrainPanel(state)
    qtbot.addWidget(p)
    p.resize(1280, 800)
    p.show()
    # the start-up jobs (device detection, parameter/FLOP count) end by themselves
    qtbot.waitUntil(lambda: not p.device_slot.is_busy() and not p.model_size.slot.is_busy(), timeout=30000)
    yield p
    p.shutdown(60000)
    qtbot.waitUntil(lambda: not p.is_busy(), timeout=10000)


def configure(
    p: tp.TrainPanel, run_dir: Path, steps: int, batch: int = 16, preview: int = 0, **overrides
) -> None:
    p.data_edit.setText("builtin:256")
    p.preset_combo.setCurrentIndex(p.preset_combo.findData("tiny"))
    p.batch_spin.setValue(batch)
    p.steps_spin.setValue(steps)
    p.preview_spin.setValue(preview)
    p.set_run_dir(run_dir)
    p.set_overrides(
        **{"preview_steps": 3, "preview_n": 4, "log_every": 2, "checkpoint_minutes": 0, **overrides}
    )


# ----------------------------------------------------------------------------- pure helpers


def test_coalesce_progress_concatenates_points_and_keeps_newest_scalars():
    a = ev.Progress(
        2, 10, 0.5, 0.6, 10.0, 8.0, 1.0, 16, 1e-4, np.array([1, 2]), np.array([0.7, 0.5], np.float32)
    )
    b = ev.Progress(
        4, 10, 0.3, 0.55, 12.0, 6.0, 2.0, 16, 2e-4, np.array([3, 4]), np.array([0.4, 0.3], np.float32)
    )
    m = coalesce_progress(a, b)
    assert isinstance(m, ev.Progress)
    assert m.step == 4 and m.loss == 0.3 and m.img_per_s == 12.0 and m.lr == 2e-4
    np.testing.assert_array_equal(m.steps, [1, 2, 3, 4])
    np.testing.assert_allclose(m.losses, [0.7, 0.5, 0.4, 0.3])
    assert coalesce_progress(a, ev.Notice("hi")) is None
    assert coalesce_progress(ev.Preview(1, np.zeros((1, 8, 8, 3), np.uint8)), b) is None


def test_fmt_duration():
    assert fmt_duration(5) == "5s"
    assert fmt_duration(125) == "2m 05s"
    assert fmt_duration(3 * 3600 + 60) == "3h 01m"
    assert fmt_duration(float("nan")) == "–"


# ----------------------------------------------------------------------------- the panel


def test_invalid_lr_disables_start(panel):
    assert panel.start_btn.isEnabled()
    panel.lr_edit.setText("abc")
    assert not panel.start_btn.isEnabled()
    assert not panel.config_error.isHidden()
    assert "learning rate" in panel.config_error.text().lower()
    assert panel.start() is False
    panel.lr_edit.setText("0")
    assert not panel.start_btn.isEnabled()
    assert "from 1e-08 to 1" in panel.config_error.text()
    panel.lr_edit.setText("3e-4")
    assert panel.start_btn.isEnabled()
    assert panel.config_error.isHidden()


def test_image_size_the_unet_cannot_halve_disables_start(panel):
    assert panel.start_btn.isEnabled()
    panel.size_spin.setValue(12)  # tiny halves the image 3 times: the size must be a multiple of 8
    assert panel.size_spin.value() == 12
    assert not panel.start_btn.isEnabled() and not panel.config_error.isHidden()
    assert "Image size 12" in panel.config_error.text() and "multiple of 8" in panel.config_error.text()
    assert panel.start() is False
    panel.size_spin.setValue(16)
    assert panel.start_btn.isEnabled() and panel.config_error.isHidden()
    # a batch size or a step count of 0 cannot be entered at all (T comes with the chosen schedule)
    for spin in (panel.batch_spin, panel.steps_spin):
        spin.setValue(0)
        assert spin.value() == 1
    assert panel.start_btn.isEnabled()


def test_amp_disabled_on_cpu_and_model_info_shown(panel):
    if panel.form.device_is_cuda():
        pytest.skip("a CUDA device is present")
    assert not panel.amp_check.isEnabled()
    assert not panel.amp_check.isChecked()
    assert "CUDA" in panel.amp_check.toolTip()
    assert "parameters" in panel.model_info_label.text()
    assert panel.device_combo.findData("cpu") >= 0


# ----------------------------------------------------------------------------- what the tab says


def test_threads_row_shows_auto_and_says_what_it_does(panel):
    spin = panel.form.widget("threads")
    assert spin.value() == 0 and spin.text() == "auto"
    tip = spin.toolTip()
    assert "auto" in tip and "free" in tip and "--threads" in tip, tip
    spin.setValue(2)
    assert spin.text() == "2" and panel.build_config().threads == 2
    spin.setValue(0)
    assert panel.build_config().threads == 0


def test_a_run_shows_one_smoothed_loss_its_threads_and_a_true_status(qtbot, panel, state, tmp_path):
    """The stats line and the plot show the same smoothed loss, the trainer's own series (its
    metrics.jsonl); the stats line names the CPU threads used; the status bar drops "Loading data…"."""
    from ddpm_gui.engine.device import usable_cpus

    run_dir = tmp_path / "said"
    configure(panel, run_dir, steps=12, batch=4)
    statuses = []
    state.statusFor.connect(lambda text, ms: statuses.append((text, ms)))
    assert panel.start()
    seen = []  # (event, stats line, plot header) right after the panel showed the event
    panel.train_slot.job.event.connect(
        lambda e: seen.append((e, panel.stats_label.text(), panel.loss_plot.header()))
    )
    qtbot.waitUntil(lambda: not panel.is_busy(), timeout=120_000)
    assert panel.last_finished is not None and panel.last_finished.reason == "completed"
    progress = [(e, text, header) for e, text, header in seen if isinstance(e, ev.Progress)]
    assert progress
    for e, text, header in progress:
        smoothed = f"smoothed {e.loss_smooth:.4f}"
        assert smoothed in text and smoothed in header, (text, header)
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in logged if "loss_smooth" in r]
    steps, smooth = panel.loss_plot.steps(), panel.loss_plot.smoothed()
    assert len(logged) >= 2 and len(steps) == 12
    for r in logged:
        assert smooth[np.flatnonzero(steps == r["step"])[0]] == pytest.approx(r["loss_smooth"], rel=1e-9)
    started = next(e for e, _t, _h in seen if isinstance(e, ev.Started))
    if started.device.startswith("cpu"):
        m = re.search(r"· cpu \((\d+) of (\d+) threads?, auto\)$", progress[-1][1])
        assert m, progress[-1][1]
        assert int(m.group(2)) == usable_cpus() and 1 <= int(m.group(1)) <= usable_cpus()
    # the status bar: what the run loads holds until training starts; then only passing news, until the end
    texts = [t for t, _ms in statuses]
    first = next(i for i, t in enumerate(texts) if t.startswith("Training started on"))
    assert statuses[first][1] > 0 and any(ms == 0 for _t, ms in statuses[:first])
    lasting = [t for t, ms in statuses[first:] if ms == 0]
    assert all(t.startswith(("Training finished", "Sample and Denoise now use")) for t in lasting), lasting


def test_short_training_run(qtbot, panel, state, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    configure(panel, run_dir, steps=30, batch=16, preview=10)
    trainings = []
    state.trainingChanged.connect(trainings.append)
    assert panel.start() is True
    assert panel.is_busy() and state.training
    seen = []  # (event, the stats text and whether the CPU estimate shows, right after the panel handled it)
    panel.train_slot.job.event.connect(  # emitted in the GUI thread, after the panel's own slot
        lambda e: seen.append((e, panel.stats_label.text(), panel.estimate_label.isVisible()))
    )
    qtbot.waitUntil(lambda: not panel.is_busy(), timeout=120_000)
    assert panel.error_label.isHidden(), panel.error_label.text()
    assert panel.last_finished is not None and panel.last_finished.reason == "completed"
    assert panel.last_step == 30
    assert panel.loss_plot.n_points >= 10
    assert panel.preview_grid.count() == 4  # at least one Preview arrived
    assert "step 30" in panel.preview_label.text()
    assert panel.progress.value() == 30
    ckpts = list((run_dir / "checkpoints").glob("step_*.safetensors"))
    assert ckpts and Path(panel.last_checkpoint).exists()
    qtbot.waitUntil(lambda: state.bundle is not None, timeout=10_000)
    assert state.bundle.step == 30 and state.bundle.preset == "tiny"
    assert trainings == [True, False] and not state.training
    assert str(panel.last_checkpoint) in state.recent()
    assert panel.start_btn.isEnabled() and not panel.stop_btn.isEnabled()
    assert panel.log_list.count() > 0
    # live stats while it ran: throughput and ETA, one curve point per loss point sent, loss by timestep
    progress = [(e, text, est) for e, text, est in seen if isinstance(e, ev.Progress)]
    assert progress
    assert any(re.search(r"[\d.,]+ img/s · ETA \d", text) for _e, text, _est in progress), progress[-1][1]
    assert panel.loss_plot.n_points == sum(len(e.steps) for e, _t, _s in progress) == 30  # every step
    assert any(isinstance(e, ev.TimestepLoss) for e, _t, _s in seen)
    assert len(panel.t_plot.values) == 100 and np.isfinite(panel.t_plot.values).any()
    started = next(e for e, _t, _s in seen if isinstance(e, ev.Started))
    if started.device.startswith("cpu"):
        assert any(est for _e, _t, est in progress)  # the CPU time estimate was shown
        assert "Training on the CPU" in panel.estimate_label.text()
    assert len([e for e, _t, _s in seen if isinstance(e, ev.Preview)]) == 3  # steps 10, 20, 30
    # the quality check on the finished run's weights: classifier trained on the run's data, 10 samples
    assert panel.quality.eval_btn.isEnabled()
    panel.quality.n_spin.setValue(10)
    import threading

    threads = []  # the check runs in its job's QThread: it starts no thread of its own
    real_start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: threads.append(self.name) or real_start(self))
    assert panel.evaluate_quality() is True
    assert not panel.quality.eval_btn.isEnabled()  # one at a time
    qtbot.waitUntil(lambda: not panel.quality.is_busy(), timeout=900_000)  # a classifier is trained first
    q = panel.last_quality
    assert q is not None, panel.quality.label.text()
    assert q.n == 10 and q.model_step == 30 and q.dataset_images == 256
    assert 0.0 <= q.recognisable <= 1.0 and q.frechet_distance >= 0.0
    assert "Quality at step 30" in panel.quality.label.text() and panel.quality.eval_btn.isEnabled()
    assert threads == []


def test_pause_resume_stop(qtbot, panel, state, tmp_path):
    run_dir = tmp_path / "long"
    configure(panel, run_dir, steps=100_000, batch=4, log_every=1)
    assert panel.start()
    qtbot.waitUntil(lambda: panel.last_step >= 2, timeout=60_000)
    assert panel.use_btn.isEnabled()
    panel.pause()
    assert "Paus" in panel.stats_label.text()  # at once: "Pausing after the current step…", or paused
    qtbot.waitUntil(lambda: "Paused" in panel.stats_label.text(), timeout=30_000)
    assert panel.pause_btn.text() == tp.TEXTS["resume"] and panel.resume_btn.text() == tp.TEXTS["saved_run"]
    s1 = panel.trainer.step
    qtbot.wait(600)
    assert panel.trainer.step == s1  # no steps while paused
    panel.use_current_weights()  # sample from the model being trained
    qtbot.waitUntil(lambda: state.bundle is not None, timeout=30_000)
    assert state.bundle.step == s1 and "training run" in state.bundle.source
    panel.resume()
    qtbot.waitUntil(lambda: "Paused" not in panel.stats_label.text(), timeout=30_000)
    assert panel.pause_btn.text() == tp.TEXTS["pause"]
    qtbot.waitUntil(lambda: panel.trainer.step > s1, timeout=30_000)
    panel.stop()
    qtbot.waitUntil(lambda: not panel.is_busy(), timeout=60_000)
    assert panel.last_finished is not None and panel.last_finished.reason == "stopped"
    assert panel.last_finished.step < 100_000
    assert Path(panel.last_checkpoint).exists()
    assert not state.training


def test_resume_run(qtbot, panel, tmp_path):
    run_dir = tmp_path / "resumable"
    configure(panel, run_dir, steps=6, batch=4)
    assert panel.start()
    qtbot.waitUntil(lambda: not panel.is_busy(), timeout=60_000)
    assert panel.last_finished.reason == "completed"
    # starting a new run in the same folder is refused with a message
    assert panel.start() is False
    assert "already holds a run" in panel.error_label.text()
    # extend the run's config, then resume it from the folder
    from ddpm_gui.engine.config import RUN_CONFIG, config_toml, load_run_config

    (run_dir / RUN_CONFIG).write_text(config_toml(load_run_config(run_dir).replace(steps=10)))
    assert panel.resume_run(run_dir) is True
    qtbot.waitUntil(lambda: not panel.is_busy(), timeout=60_000)
    assert panel.last_finished is not None and panel.last_finished.step == 10, panel.error_label.text()
    assert panel.steps_spin.value() == 10  # the form shows the resumed run's settings


def test_resume_run_rejects_a_non_run_folder(panel, tmp_path):
    assert panel.resume_run(tmp_path) is False
    assert "not a DDPM Studio run folder" in panel.error_label.text()
    assert not panel.is_busy()


def test_failed_run_shows_message_and_reenables(qtbot, panel, tmp_path):
    panel.set_run_dir(tmp_path / "bad")
    panel.data_edit.setText(str(tmp_path / "no-such-folder"))
    panel.steps_spin.setValue(5)
    assert panel.start()
    qtbot.waitUntil(lambda: not panel.is_busy(), timeout=60_000)
    assert not panel.error_label.isHidden() and panel.error_label.text()
    assert panel.start_btn.isEnabled()


def test_conditional_run_on_data_panel_data(qtbot, panel, state, builtin_data, tmp_path, monkeypatch):
    """Data from the Data tab (labelled): class-conditional training, then guided sampling of one class."""
    from ddpm_gui.qt.panels import sample_panel as sp

    state.set_data(builtin_data)
    assert not panel.data_edit.isEnabled() and panel.data_edit.text() == builtin_data.source
    assert not panel.size_spin.isEnabled() and panel.size_spin.value() == builtin_data.size
    assert panel.cond_check.isEnabled()
    assert "10 classes" in panel.data_note.text()
    panel.cond_check.setChecked(True)
    panel.batch_spin.setValue(4)
    panel.steps_spin.setValue(4)
    panel.preview_spin.setValue(0)
    panel.set_run_dir(tmp_path / "cond")
    panel.set_overrides(log_every=1, checkpoint_minutes=0)
    assert panel.start()
    qtbot.waitUntil(lambda: not panel.is_busy(), timeout=60_000)
    assert panel.last_finished is not None and panel.last_finished.reason == "completed"
    qtbot.waitUntil(lambda: state.bundle is not None, timeout=10_000)
    assert state.bundle.num_classes == 10

    monkeypatch.setattr(sp, "SHOW_DIALOGS", False)
    s = sp.SamplePanel(state)
    qtbot.addWidget(s)
    assert s.class_combo.isEnabled() and s.class_combo.count() == 11
    assert not s.guidance_spin.isEnabled()  # "any class" selected
    s.class_combo.setCurrentIndex(s.class_combo.findData(2))
    assert s.guidance_spin.isEnabled()
    s.sampler_form.set_key("ddim")
    s.sampler_form.steps_spin.setValue(3)
    s.n_spin.setValue(2)
    assert s.sample_config().class_label == 2 and s.sample_config().guidance == 3.0
    assert s.generate()
    qtbot.waitUntil(lambda: not s.is_busy(), timeout=60_000)
    assert s.error_label.isHidden(), s.error_label.text()
    assert s.frames()[-1].final and s.xt_grid.count() == 2


def test_recipes_fill_the_form_and_edits_make_it_custom(panel):
    from ddpm_gui.engine.recipes import RECIPES

    panel.apply_recipe("tutorial")
    cfg = panel.build_config()
    want = RECIPES["tutorial"].changes
    assert (cfg.preset, cfg.batch_size, cfg.steps, cfg.lr, cfg.ema_decay) == (
        "tutorial", want["batch_size"], want["steps"], want["lr"], want["ema_decay"]
    )  # fmt: skip
    assert cfg.schedule.kind == "linear" and cfg.schedule.beta_end == 0.04 and cfg.prediction == "eps"
    panel.recipe_combo.setCurrentIndex(panel.recipe_combo.findData("quick-cpu"))  # as a user picks it
    cfg = panel.build_config()
    assert (cfg.preset, cfg.batch_size, cfg.schedule.kind, cfg.prediction) == ("tiny", 64, "cosine", "v")
    assert cfg.warmup_steps == RECIPES["quick-cpu"].changes["warmup_steps"]
    assert "10 minutes" in panel.recipe_note.text()
    panel.batch_spin.setValue(32)  # a hand edit
    assert panel.recipe_combo.currentData() == "custom"
    panel.batch_spin.setValue(64)  # back to the recipe's value: the recipe again
    assert panel.recipe_combo.currentData() == "quick-cpu"


def test_new_user_gets_the_quick_cpu_recipe(panel):
    assert panel.recipe_combo.currentData() == tp.DEFAULT_RECIPE == "quick-cpu"
    assert panel.build_config().preset == "tiny"


def test_zero_snr_schedule_forces_v_prediction(panel):
    panel.schedule_combo.setCurrentIndex(panel.schedule_combo.findData("tutorial-zero-snr"))
    assert panel.prediction_combo.currentData() == "v" and not panel.prediction_combo.isEnabled()
    assert panel.build_config().prediction == "v"
    panel.schedule_combo.setCurrentIndex(panel.schedule_combo.findData("tutorial"))
    assert panel.prediction_combo.isEnabled()
    panel.prediction_combo.setCurrentIndex(panel.prediction_combo.findData("eps"))
    assert panel.build_config().prediction == "eps"


# ----------------------------------------------------------------------------- the settings form


def test_form_rows_come_from_the_settings(qtbot, settings):
    """One widget per TrainConfig setting, with its help as tooltip; a fresh form shows TrainConfig()'s
    own defaults; a paused run or a run folder being continued offers only the RESUMABLE rows."""
    from ddpm_gui.engine.config import RESUMABLE, SETTINGS, TrainConfig
    from ddpm_gui.qt.train.form import SettingsForm, setting_values

    form = SettingsForm(settings)
    qtbot.addWidget(form)
    assert set(form.fields) == set(SETTINGS)
    for name, s in SETTINGS.items():
        assert s.help in form.widget(name).toolTip(), name
    shown = form.values()
    defaults = setting_values(TrainConfig())
    assert {k: v for k, v in shown.items() if k != "amp"} == {k: v for k, v in defaults.items() if k != "amp"}
    assert shown["amp"] == (defaults["amp"] and form.device_is_cuda())  # bf16 only on CUDA
    for mode in ("paused", "resume"):
        form.set_mode(mode)
        enabled = {n for n in SETTINGS if form.widget(n).isEnabled()}
        assert enabled == set(RESUMABLE) - {n for n in RESUMABLE if form.is_locked(n)}, mode
    form.set_mode("running")
    assert not any(form.widget(n).isEnabled() for n in SETTINGS)
    form.set_mode("new")
    assert form.widget("preset").isEnabled() and form.widget("seed").isEnabled()


def test_settings_files_save_and_load(panel, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    from ddpm_gui.engine.config import read_config_toml

    panel.apply_recipe("tutorial")
    panel.batch_spin.setValue(48)
    panel.set_overrides(warmup_steps=7, weight_decay=0.02)
    path = tmp_path / "mine" / "settings.toml"
    assert panel.form.save_file(path) is True
    saved = read_config_toml(path)
    assert saved["batch_size"] == 48 and saved["warmup_steps"] == 7 and saved["weight_decay"] == 0.02
    assert saved["preset"] == "tutorial" and saved["schedule"].kind == "linear"
    assert str(path) in panel.form.file_label.text()
    # another form state, then the file back
    panel.apply_recipe("quick-cpu")
    assert panel.build_config().batch_size == 64
    assert panel.form.load_file(path) is True
    cfg = panel.build_config()
    assert (cfg.preset, cfg.batch_size, cfg.warmup_steps, cfg.weight_decay) == ("tutorial", 48, 7, 0.02)
    # bad files: a one-line message, the form unchanged
    (tmp_path / "bad.toml").write_text("batch_size = [1,\n")
    (tmp_path / "typo.toml").write_text("batch_sise = 3\n")
    (tmp_path / "deep.toml").write_text("batch_size = " + "[" * 100_000 + "]" * 100_000 + "\n")
    (tmp_path / "folder.toml").mkdir()
    for name, words in (
        ("bad.toml", "not valid TOML"),
        ("typo.toml", "batch_sise"),
        ("deep.toml", "deep.toml"),
        ("folder.toml", "folder"),
    ):
        assert panel.form.load_file(tmp_path / name) is False, name
        text = panel.form.file_label.text()
        assert words in text and "\n" not in text and "Traceback" not in text, text
        assert panel.build_config().batch_size == 48
    # the dialogs open in the folder last used
    seen = []
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: seen.append(a[2]) or ("", ""))
    panel.form.save_btn.click()
    assert seen and Path(seen[0]).parent == path.parent


def _broken_run(tmp_path, kind: str, monkeypatch) -> Path:
    """A run folder whose config.json is a folder, cannot be read, or is nested 100,000 levels deep."""
    import pathlib

    run = tmp_path / kind
    (run / "checkpoints").mkdir(parents=True)
    cfg = run / "config.json"
    if kind == "folder":
        cfg.mkdir()
    elif kind == "deep":
        cfg.write_text("[" * 100_000 + "]" * 100_000)
    else:  # no permission (simulated: the tests may run as root, who reads anything)
        cfg.write_text("{}")
        real_open = pathlib.Path.open

        def no_permission(self, *a, **k):
            if self == cfg:
                raise PermissionError(13, "Permission denied", str(self))
            return real_open(self, *a, **k)

        monkeypatch.setattr(pathlib.Path, "open", no_permission)
    return run


@pytest.mark.parametrize("kind", ["folder", "unreadable", "deep"])
def test_resume_run_with_a_bad_config_shows_one_line(panel, tmp_path, monkeypatch, kind):
    from PySide6.QtWidgets import QFileDialog

    run = _broken_run(tmp_path, kind, monkeypatch)
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(run))
    panel.resume_btn.click()  # as a user does: the slot must not raise
    text = panel.error_label.text()
    assert not panel.error_label.isHidden() and "config.json" in text and "\n" not in text, text
    assert (
        not panel.is_busy() and panel.resume_btn.text() == tp.TEXTS["saved_run"] == "Co&ntinue a saved run…"
    )
    assert panel.resume_run(run) is False


def test_resume_uses_the_edited_resumable_settings(qtbot, panel, tmp_path):
    from ddpm_gui.engine.config import load_run_config

    run_dir = tmp_path / "more"
    configure(panel, run_dir, steps=4, batch=4)
    assert panel.start()
    qtbot.waitUntil(lambda: not panel.is_busy(), timeout=60_000)
    assert panel.last_finished.step == 4
    panel.apply_recipe("tutorial")  # the form shows something else now
    assert panel.resume_run(run_dir, start=False) is True
    assert panel.preset_combo.currentData() == "tiny" and panel.start_btn.text() == tp.TEXTS["continue"]
    assert not panel.preset_combo.isEnabled() and not panel.seed_spin.isEnabled()  # fixed by the run
    assert panel.steps_spin.isEnabled() and panel.lr_edit.isEnabled()  # resumable
    panel.steps_spin.setValue(7)
    panel.lr_edit.setText("0.002")
    panel.start_btn.click()
    qtbot.waitUntil(lambda: not panel.is_busy(), timeout=60_000)
    assert panel.error_label.isHidden(), panel.error_label.text()
    assert panel.last_finished.reason == "completed" and panel.last_finished.step == 7
    saved = load_run_config(run_dir)
    assert saved.steps == 7 and saved.lr == 0.002 and saved.preset == "tiny"
    assert panel.preset_combo.isEnabled() and panel.start_btn.text() == tp.TEXTS["start"]  # a new run again


def test_paused_run_continues_with_the_edited_settings(qtbot, panel, state, tmp_path):
    run_dir = tmp_path / "paused"
    configure(panel, run_dir, steps=100_000, batch=4, log_every=1, checkpoint_every=0)
    assert panel.start()
    assert not panel.steps_spin.isEnabled() and not panel.lr_edit.isEnabled()  # running: nothing to edit
    qtbot.waitUntil(lambda: panel.last_step >= 2, timeout=60_000)
    panel.pause()
    qtbot.waitUntil(lambda: "Paused" in panel.stats_label.text(), timeout=30_000)
    assert panel.steps_spin.isEnabled() and panel.lr_edit.isEnabled()
    assert panel.batch_spin.isEnabled() and panel.device_combo.isEnabled()  # resumable too
    assert not panel.preset_combo.isEnabled() and not panel.size_spin.isEnabled()  # fixed by the run
    step = panel.trainer.step
    panel.steps_spin.setValue(step + 3)
    panel.resume()
    qtbot.waitUntil(
        lambda: panel.last_finished is not None and panel.last_finished.reason == "completed", timeout=90_000
    )
    qtbot.waitUntil(lambda: not panel.is_busy(), timeout=30_000)
    assert panel.error_label.isHidden(), panel.error_label.text()
    assert panel.last_finished.step == step + 3 and panel.trainer.config.steps == step + 3
    assert not state.training


def test_several_gpus_offer_a_multi_gpu_run(panel, tmp_path, monkeypatch):
    """With more than one CUDA device the Train tab offers a run on several GPUs (torchrun, followed through
    its run folder), and none otherwise; pausing is not offered for it."""
    from ddpm_gui.qt.train import form as form_module
    from ddpm_gui.qt.train.multi_gpu import MultiGpuRun, gpus_offered

    assert gpus_offered(1) == 0 and gpus_offered(4) == 4
    assert panel.gpus_spin is None  # this machine: no choice to offer
    spin = form_module.gpus_row(panel.form, count=4)
    assert spin is not None and (spin.minimum(), spin.maximum()) == (1, 4)
    label = panel.form.page_forms["Device, validation"].labelForField(spin)
    assert label is not None and "GPUs" in label.text().replace("&", "")
    panel.gpus_spin = spin
    spin.setValue(2)
    started = []
    monkeypatch.setattr(panel.train_slot, "start", lambda *a, **k: started.append(k) or True)
    from ddpm_gui.engine.config import TrainConfig

    assert panel._start_trainer(TrainConfig(steps=2), tmp_path / "run", resumed=False)
    assert isinstance(panel._trainer, MultiGpuRun) and panel._trainer.nproc == 2
    panel._update_buttons()
    assert not panel.pause_btn.isEnabled()
    panel.state.set_training(False)


def test_step_while_paused_shows_the_step_and_takes_an_lr_edit(qtbot, panel, state, tmp_path):
    run_dir = tmp_path / "stepped"
    configure(
        panel, run_dir, steps=100_000, batch=4, log_every=1, checkpoint_every=0, warmup_steps=0, lr=0.001
    )
    assert panel.start()
    qtbot.waitUntil(lambda: panel.last_step >= 2, timeout=60_000)
    assert not panel.step_btn.isEnabled()  # running: no single steps
    panel.pause()
    qtbot.waitUntil(lambda: "Paused" in panel.stats_label.text(), timeout=30_000)
    assert panel.step_btn.isEnabled() and panel.step_btn.text() == tp.TEXTS["step"]
    s = panel.trainer.step
    # a setting that needs a restart: Step refuses it with a message and makes no step
    panel.batch_spin.setValue(2)
    assert panel.step_once() is False and "continue from a checkpoint" in panel.form.config_error.text()
    panel.batch_spin.setValue(4)
    panel.lr_edit.setText("0.0005")
    panel.step_btn.click()
    qtbot.waitUntil(lambda: panel.view.step_view.last is not None, timeout=60_000)
    e = panel.view.step_view.last
    assert e.step == s + 1 and panel.trainer.step == s + 1 and panel.last_step == s + 1
    assert e.lr == 0.0005 and panel.trainer.optim.param_groups[0]["lr"] == 0.0005  # the edit took effect
    assert panel.view.pages.currentWidget() is panel.view.step_view
    assert panel.view.step_view.rows["xt"].count() == 4 and len(e.t) == 4
    assert panel.view.step_view.table.rowCount() == len(e.grad_norms) > 0
    assert panel.view.step_view.grouped() and "Paused at step" in panel.stats_label.text()
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"step": s, "event": "settings", "changed": {"lr": [0.001, 0.0005]}} in records
    from ddpm_gui.engine.config import load_run_config

    assert load_run_config(run_dir).lr == 0.0005
    panel.step_once()
    qtbot.waitUntil(lambda: panel.view.step_view.last.step == s + 2, timeout=60_000)
    assert panel.is_paused()  # still paused after its steps
    panel.resume()  # nothing left to change: the same run goes on
    qtbot.waitUntil(lambda: panel.trainer.step > s + 3, timeout=60_000)
    assert panel.trainer.config.lr == 0.0005 and panel.trainer.optim.param_groups[0]["lr"] == 0.0005
    panel.stop()
    qtbot.waitUntil(lambda: not panel.is_busy(), timeout=60_000)
    assert panel.last_finished is not None and panel.last_finished.reason == "stopped"
    assert panel.error_label.isHidden(), panel.error_label.text()


def test_a_schedule_from_the_forward_tab_trains_the_next_run(qtbot, panel, state, tmp_path, monkeypatch):
    import torch

    from ddpm_gui.core.schedule import SCHEDULE_PRESETS, NoiseSchedule, ScheduleConfig
    from ddpm_gui.engine.config import load_run_config
    from ddpm_gui.qt.panels import forward_panel as fp

    monkeypatch.setattr(fp, "SHOW_DIALOGS", False)
    fwd = fp.ForwardPanel(state)
    qtbot.addWidget(fwd)
    try:
        custom = ScheduleConfig(kind="linear", T=50, beta_start=2e-4, beta_end=0.05, rescale_zero_snr=True)
        fwd.set_schedule(custom)
        assert panel.schedule_row.schedule() != custom
        fwd.train_btn.click()  # one click
        sent = fwd.schedule().betas.clone()
        assert panel.schedule_row.schedule() == fwd.schedule().config == custom
        assert panel.prediction_combo.currentData() == "v"  # zero terminal SNR trains with v-prediction
        assert "T=50" in panel.schedule_combo.currentText() and "keeps 0%" in panel.schedule_row.label.text()
        shown = panel.schedule_row.plots.curves["beta"].getData()[1]  # the Forward tab's plots, on the form
        np.testing.assert_array_equal(shown, fwd.schedule().betas.double().numpy())
        run_dir = tmp_path / "sched"
        configure(panel, run_dir, steps=2, batch=4)
        assert panel.start()
        # sent while a run goes on: it waits for the next new run, the run's own schedule stays shown
        fwd.set_schedule("cosine")
        fwd.use_for_training()
        assert panel.schedule_row.pending == SCHEDULE_PRESETS["cosine"]
        assert panel.schedule_row.schedule() == custom
        qtbot.waitUntil(lambda: not panel.is_busy(), timeout=60_000)
        assert panel.last_finished is not None and panel.last_finished.reason == "completed"
        trained = load_run_config(run_dir)
        assert trained.schedule == custom and trained.prediction == "v"
        assert torch.equal(NoiseSchedule(trained.schedule).betas, sent)  # the same beta sequence
        assert panel.schedule_row.schedule() == SCHEDULE_PRESETS["cosine"]  # the next run's
    finally:
        fwd.shutdown()
