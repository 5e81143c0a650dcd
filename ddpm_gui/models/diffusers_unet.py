"""A diffusers `UNet2DModel` behind this app's model calling convention, `model(x, t, y=None)`.

Timesteps need no mapping: diffusers' DDPM timestep `t` indexes `alphas_cumprod[t]` exactly as this app's
0-based `t` indexes `alpha_bars[t]` (core/schedule.py), and both networks embed the integer itself. The
adapter only broadcasts `t` over the batch, passes `y` as diffusers' `class_labels` and unwraps the output.

Class-conditional models (`num_class_embeds`): this app's own models keep one extra embedding row, the
"null" class, for classifier-free guidance. A UNet2DModel says it has one with the config key
`NULL_CLASS_KEY` (the index of that row, always the last); without it every row is a real class and the
model has no unconditional mode. diffusers itself is imported only when a model is built or loaded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ddpm_gui.errors import ConfigError

# Config key (in the UNet's config.json) naming the embedding row that means "no class". Keys that start
# with "_" are private to diffusers' ConfigMixin: kept on save, ignored without a warning when a model loads.
NULL_CLASS_KEY = "_ddpm_gui_null_class"
INSTALL_HINT = "Opening diffusers models needs the optional extra: pip install 'ddpm-gui[diffusers]'."


def import_diffusers() -> Any:
    """The diffusers module, or a ConfigError that says how to install it."""
    try:
        import diffusers
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return diffusers


class DiffusersUNet(nn.Module):
    """eps/v predictor `forward(x, t, y=None) -> tensor shaped like x` around a diffusers UNet2DModel.

    * `unet`: a `diffusers.UNet2DModel` (built with `from_config`, or loaded with `from_pretrained`).
    * `null_class`: the embedding row meaning "no class" for a class-conditional UNet, or None. Taken from
      the UNet's config (`NULL_CLASS_KEY`) when not given.
    `num_classes` counts the real classes (the rows without the null row); None for unconditional models.
    """

    def __init__(self, unet: nn.Module, null_class: int | None = None):
        super().__init__()
        self.unet = unet
        cfg = unet.config
        self.image_channels = int(cfg.in_channels)
        emb = getattr(unet, "class_embedding", None)
        if emb is not None and not isinstance(emb, nn.Embedding):
            raise ConfigError(
                f"This UNet2DModel conditions through a {cfg.class_embed_type!r} class embedding: only "
                "unconditional models and models with num_class_embeds (an embedding table) are supported."
            )
        rows = int(emb.num_embeddings) if emb is not None else None
        if null_class is None and rows is not None:
            null_class = cfg.get(NULL_CLASS_KEY) if hasattr(cfg, "get") else None
        if null_class is not None:
            if rows is None:
                raise ConfigError("An unconditional UNet2DModel has no null class.")
            null_class = int(null_class)
            if null_class != rows - 1:
                raise ConfigError(
                    f"The null class must be the last of the {rows} class embedding rows, got {null_class}."
                )
        self.null_class = null_class
        self.num_classes = None if rows is None else (rows - 1 if null_class is not None else rows)

    @classmethod
    def from_config(cls, config: dict, null_class: int | None = None) -> DiffusersUNet:
        """A freshly initialised UNet2DModel from its config (the keyword arguments of UNet2DModel)."""
        diffusers = import_diffusers()
        unet = diffusers.UNet2DModel.from_config(dict(config))
        if null_class is not None:
            unet.register_to_config(**{NULL_CLASS_KEY: int(null_class)})
        return cls(unet, null_class)

    def min_divisor(self) -> int:
        """The image side must be a multiple of this (one halving per resolution below the top)."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    def forward(self, x: Tensor, t: Tensor | int | float, y: Tensor | None = None) -> Tensor:
        """x: [B, C, H, W]; t: [B] (or [1] / a scalar) 0-based timesteps; y: [B] class ids (conditional
        models only; None means the null class, which a model without one cannot take)."""
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if not t.is_floating_point():
            t = t.long()
        if t.ndim == 0 or t.numel() == 1:
            t = t.reshape(1).expand(b)
        elif t.shape != (b,):
            raise ValueError(f"t must have shape ({b},) or (1,), got {tuple(t.shape)}.")
        if self.num_classes is None:
            if y is not None:
                raise ValueError("This model is unconditional: it takes no class labels (pass y=None).")
        elif y is None:
            if self.null_class is None:
                raise ValueError("This class-conditional model has no null class: pass class labels y.")
            y = torch.full((b,), self.null_class, dtype=torch.long, device=x.device)
        else:
            y = torch.as_tensor(y, device=x.device).long()
            if y.ndim == 0 or y.numel() == 1:
                y = y.reshape(1).expand(b)
        return self.unet(x, t, class_labels=y, return_dict=False)[0]
