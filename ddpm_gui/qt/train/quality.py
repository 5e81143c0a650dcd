"""The Train tab's quality check: sample from the current weights and score the samples with a small
classifier trained on the real images (ddpm_gui.engine.evaluate), beside training or after it. A result is
kept in the run it scored (RUN/evals/, engine.evaluate.record_eval), where the Runs tab shows it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtWidgets import QCheckBox, QGridLayout, QGroupBox, QLabel, QPushButton, QSpinBox, QWidget

from ddpm_gui.qt.style import INFO_STYLE
from ddpm_gui.qt.workers import JobSlot

EVAL_TEXT = "Evaluate &quality"


class QualityBox(QGroupBox):
    """The button, the sample count and "at each checkpoint"; `label` (placed by the panel) shows the
    progress and the result. `source()` gives what to score: a running Trainer or a ModelBundle (None:
    nothing yet); `data()` the labelled ImageData to score against (None: reloaded from the checkpoint)."""

    def __init__(
        self,
        source: Callable[[], object],
        data: Callable[[], object],
        log: Callable[[str, bool], None],
        dialogs: Callable[[], bool],
        parent: QWidget | None = None,
    ):
        super().__init__("Quality check", parent)
        self._source, self._data, self._log = source, data, log
        self.last_result = None  # the last EvalResult
        self._unfinished = False  # a check is under way: its progress, not a result, is shown
        self.slot = JobSlot(
            self,
            on_event=self._on_event,
            on_failed=self._on_failed,
            on_done=self._on_done,
            error_title=None,
            dialogs=dialogs,
        )
        self.slot.busyChanged.connect(lambda _busy: self.refresh())
        self.eval_btn = QPushButton(EVAL_TEXT)
        self.eval_btn.setToolTip(
            "Sample images from the current weights and score them with a small classifier trained on the\n"
            "real images (trained once per dataset, then cached): the share of recognisable samples (for a\n"
            "class-conditional model, the accuracy on the class asked for) and the Fréchet distance of the\n"
            "classifier's features. Needs a labelled dataset. Runs beside training, which it slows a little."
        )
        self.eval_btn.clicked.connect(self.evaluate)
        self.n_spin = QSpinBox()
        self.n_spin.setRange(10, 5000)
        self.n_spin.setValue(100)
        self.n_spin.setSuffix(" samples")
        self.n_spin.setToolTip("How many samples the quality check draws (DDPM, the full chain)")
        self.auto_check = QCheckBox("at each checkpoint")
        self.auto_check.setToolTip("Evaluate again whenever training saves a checkpoint")
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setStyleSheet(INFO_STYLE)
        self.label.hide()
        lay = QGridLayout(self)
        lay.addWidget(self.eval_btn, 0, 0)
        lay.addWidget(self.n_spin, 0, 1)
        lay.addWidget(self.auto_check, 1, 0, 1, 2)

    def is_busy(self) -> bool:
        return self.slot.is_busy()

    def refresh(self) -> None:
        self.eval_btn.setEnabled(not self.slot.is_busy() and self._source() is not None)

    def evaluate(self) -> bool:
        """Score the current weights in a worker (the classifier is trained and cached on first use)."""
        source = self._source()
        if source is None or self.slot.is_busy():
            return False
        data, n, stop = self._data(), self.n_spin.value(), threading.Event()
        if not self.slot.start(
            lambda report: evaluate_iter(source, data, n, report, stop), report=True, on_stop=stop.set
        ):
            return False
        self.label.setText("Quality check: preparing…")
        self.label.show()
        self._unfinished = True
        return True

    def on_checkpoint(self) -> None:
        """A checkpoint was saved: check again when asked to."""
        if self.auto_check.isChecked() and not self.slot.is_busy():
            self.evaluate()

    def _on_event(self, e: object) -> None:
        if isinstance(e, tuple):  # (done, total, what)
            done, total, what = e
            self.label.setText(f"Quality check: {what} {done:,}/{total:,}…")
            return
        if isinstance(e, Kept):
            if e.error:
                self._log(f"The quality result was not kept in the run: {e.error}", True)
            elif e.path is not None:
                self._log(f"Quality result kept in {e.path}", False)
            return
        self.last_result, self._unfinished = e, False
        self.label.setText(result_text(e))
        self._log(result_text(e), False)

    def _on_failed(self, message: str) -> None:
        self._unfinished = False
        self.label.setText(f"Quality check failed: {message}")
        self.label.show()
        self._log(f"Quality check failed: {message}", True)

    def _on_done(self) -> None:
        if self._unfinished:  # stopped: its last progress line would stay for good
            self._unfinished = False
            self.label.setText("Quality check stopped before it finished.")

    def forget(self) -> None:
        """A new run starts: the last result was another model's."""
        if not self.slot.is_busy():
            self.label.hide()


def result_text(res) -> str:
    """One line about an EvalResult."""
    pct = lambda v: f"{100 * v:.0f}%"  # noqa: E731
    if res.conditional:
        head = f"{pct(res.accuracy)} of samples are the class asked for"
    else:
        head = (
            f"{pct(res.recognisable)} of samples are recognisable (real images: {pct(res.real_recognisable)})"
        )
    floor = res.frechet_distance_real
    return (
        f"Quality at step {res.model_step:,}: {head} · Fréchet distance {res.frechet_distance:.2f}"
        + (f" (real vs real: {floor:.2f})" if floor is not None else "")
        + f" · {res.n} samples, classifier {pct(res.classifier_accuracy)} accurate on real images"
    )


@dataclass
class Kept:
    """Where the worker kept a result: its file in the run (None: the model is not a run's), or why not."""

    path: Path | None
    error: str = ""


def evaluate_iter(source, data, n: int, report: Callable[[object], None], stop):
    """Worker: the quality check. `source` is a running Trainer (a snapshot of its EMA weights) or a
    ModelBundle; `data` the labelled ImageData to score against (reloaded from the checkpoint's own config
    when missing or of another size). Progress goes to `report` as (done, total, what); yields the
    EvalResult, then Kept: the result recorded in the run it scored (the Trainer's, or the checkpoint's)."""
    from ddpm_gui.engine.evaluate import evaluate_bundle, record_eval
    from ddpm_gui.engine.runs import run_of_checkpoint
    from ddpm_gui.errors import DDPMError

    bundle = source.bundle() if callable(getattr(source, "bundle", None)) else source
    run_dir = getattr(source, "run_dir", None) or run_of_checkpoint(bundle.source)
    if data is None or getattr(data, "size", None) != bundle.image_size:
        data = _training_data(bundle)
    res = evaluate_bundle(
        bundle,
        data,
        n=n,
        sampler="ddpm",  # the full chain: DDIM with 20 steps scores much lower (docs/benchmarks.md)
        progress=lambda d, t, w: report((d, t, w)),
        stop=stop,
    )
    yield res
    try:
        yield Kept(record_eval(run_dir, res))
    except DDPMError as exc:
        yield Kept(None, str(exc))


def _training_data(bundle):
    """The dataset a checkpoint was trained on, at its image size, from the checkpoint's own config."""
    from ddpm_gui.data import load_data
    from ddpm_gui.engine.checkpoint import read_meta
    from ddpm_gui.errors import ConfigError

    try:
        spec = read_meta(bundle.source).get("config", {}).get("data")
    except Exception:  # not a checkpoint file (the snapshot of a running training): no spec
        spec = None
    if not spec:
        raise ConfigError(
            "Load the dataset this model was trained on in the Data tab (at the model's image size) first."
        )
    return load_data(spec, image_size=bundle.image_size)
