"""Neural networks: labml.ai's DDPM UNet (with an optional class embedding) and its presets. No Qt here."""

from ddpm_gui.models.presets import (
    PRESET_NOTES,
    PRESETS,
    ModelConfig,
    build_model,
    check_image_size,
    count_parameters,
    flops_per_image,
    get_preset,
)
from ddpm_gui.models.unet import UNet

__all__ = [
    "PRESETS",
    "PRESET_NOTES",
    "ModelConfig",
    "UNet",
    "build_model",
    "check_image_size",
    "count_parameters",
    "flops_per_image",
    "get_preset",
]
