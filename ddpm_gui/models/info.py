"""What a model preset costs: its parameter count and training FLOPs per image (the Train tab shows them)."""

from __future__ import annotations


def model_info(preset: str, image_size: int, num_classes: int | None) -> tuple[int, float | None]:
    """(parameter count, forward + backward FLOPs per image, None when it cannot be counted). Builds the
    model, so it takes seconds for the tutorial's 42M-parameter UNet: call it off the GUI thread."""
    from ddpm_gui.models.presets import build_model, count_parameters, flops_per_image, get_preset

    cfg = get_preset(preset)
    n_params = int(count_parameters(build_model(cfg, num_classes=num_classes)))
    try:
        flops = flops_per_image(cfg, image_size)["train"]
    except Exception:  # a figure for display only: an unusual size must not stop the count
        flops = None
    return n_params, (float(flops) if flops else None)
