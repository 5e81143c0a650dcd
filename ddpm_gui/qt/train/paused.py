"""The Train tab's side of a paused run: one training step at a time ("1 step"), and the settings edited
while paused. Mixed into TrainPanel, whose form, run view, trainer and stop it uses.

Edits of settings a run can take in place (engine.control.LIVE_SETTINGS: the learning rate, the EMA
decay, gradient clipping, how often it previews and saves...) go to the paused trainer and apply from its
next step, recorded in the run; other edits (the batch size, the device...) continue the run from a
checkpoint, as a resumed run, when it is resumed.
"""

from __future__ import annotations

from PySide6.QtCore import Slot

from ddpm_gui.engine.config import RESUMABLE, TrainConfig
from ddpm_gui.engine.control import live_changes
from ddpm_gui.errors import DDPMError

STEP_TIP = (
    "Make one training step now, the run staying paused, and show what it worked on (its batch, t, noise, "
    "x_t, the prediction, the loss of each image, the gradient norm of each layer) on the One step page. "
    "Settings edited while paused apply to it."
)


class PausedRunActions:
    """Step and in-place edits of a paused run (see the module's docstring)."""

    def can_step(self) -> bool:
        t = self._trainer
        return self.is_paused() and not self.train_slot.stopping() and hasattr(t, "request_step")

    @Slot()
    def step_once(self) -> bool:
        """One training step of the paused run (the edited settings first); False (message shown) when the
        run cannot take one now."""
        if not self.can_step() or not self.send_paused_edits(restart=False):
            return False
        try:
            self._trainer.request_step()
        except DDPMError as e:
            self.form.show_error(str(e))
            return False
        self.view.stats_label.setText(f"Paused: making one step after step {self._trainer.step:,}…")
        return True

    def send_paused_edits(self, restart: bool) -> bool:
        """Hand the form's edits of a paused run to it: True when the run can go on as it is (no edits, or
        all taken in place). Edits that need a restart: with `restart`, the run stops (saving a checkpoint)
        and continues from it with them; else a message says so. False either way."""
        try:
            edited = self._paused_edits()
            live = None if edited is None else live_changes(self._run_cfg, edited)
            if live:
                self._trainer.change_settings(**live)
        except DDPMError as e:
            self.form.show_error(str(e))
            return False
        if edited is None or live is not None:
            self._run_cfg = edited or self._run_cfg
            return True
        if not restart:
            self.form.show_error(
                "These changes need the run to continue from a checkpoint: press Resume to apply them, or "
                "undo them to step."
            )
            return False
        self._restart = edited  # through a checkpoint: stop (it saves one), then continue with them
        self.view.log("Continuing with the changed settings from a checkpoint…")
        self.stop()
        return False

    def _paused_edits(self) -> TrainConfig | None:
        """The paused run's config with the form's edits, or None when nothing was changed."""
        cfg = self.build_config()
        return None if all(getattr(cfg, k) == getattr(self._run_cfg, k) for k in RESUMABLE) else cfg
