"""labml.ai's annotated DDPM U-Net (the tutorial's noise predictor), plus an optional class embedding.

A faithful port of `labml_nn/diffusion/ddpm/unet.py` (annotated_deep_learning_paper_implementations):
same modules, same parameter names and counts, same computation. Three deliberate differences:

* the attention softmax runs over the keys (labml's fix of 2022-09-12; before it, the softmax ran over the
  queries). It is computed with `scaled_dot_product_attention`, which is the same formula
  softmax(Q K^T / sqrt(d_k)) V with one head, only faster and lighter on memory;
* `num_classes=K` adds an `nn.Embedding(K + 1, time_channels)` to the time embedding, the way the tutorial's
  text-to-image section conditions on a prompt; index K is the "null" class used for classifier-free
  guidance, and `y=None` means "null" for the whole batch;
* `compound=False` makes the channel multipliers relative to `n_channels` (`n_channels * mult`) instead of
  compounding (`previous * mult`, labml's rule), which gives cheap, shallow-but-wide presets. `dropout`
  is passed down to the residual blocks (labml hard-codes 0.1, the default here).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpm_gui.errors import ConfigError

N_GROUPS = 32  # GroupNorm groups in the residual and attention blocks (labml's default)


class Swish(nn.Module):
    """x * sigmoid(x). `F.silu` is the same function as one fused kernel (faster than two ops on CPU)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(x)


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of t (as in the transformer) followed by a two-layer MLP.

    `n_channels` is the output size; the sinusoid has `n_channels // 4` dimensions (half sin, half cos).
    """

    def __init__(self, n_channels: int):
        super().__init__()
        self.n_channels = n_channels
        self.lin1 = nn.Linear(n_channels // 4, n_channels)
        self.act = Swish()
        self.lin2 = nn.Linear(n_channels, n_channels)

    def forward(self, t: Tensor) -> Tensor:
        # PE_(t,i) = sin(t / 10000^(i / (d - 1))) and cos(...), with d = half_dim (labml's exact constants)
        half_dim = self.n_channels // 8
        freq = math.log(10_000) / (half_dim - 1)
        freq = torch.exp(torch.arange(half_dim, device=t.device, dtype=torch.float32) * -freq)
        emb = t.float()[:, None] * freq[None, :]
        emb = torch.cat((emb.sin(), emb.cos()), dim=1)
        return self.lin2(self.act(self.lin1(emb)))


class ResidualBlock(nn.Module):
    """GroupNorm -> Swish -> conv3x3, + projected time embedding, GroupNorm -> Swish -> dropout -> conv3x3,
    plus a (1x1-projected where the width changes) shortcut."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        time_channels: int,
        n_groups: int = N_GROUPS,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.norm1 = nn.GroupNorm(n_groups, in_channels)
        self.act1 = Swish()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=(3, 3), padding=(1, 1))
        self.norm2 = nn.GroupNorm(n_groups, out_channels)
        self.act2 = Swish()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=(3, 3), padding=(1, 1))
        if in_channels != out_channels:
            self.shortcut: nn.Module = nn.Conv2d(in_channels, out_channels, kernel_size=(1, 1))
        else:
            self.shortcut = nn.Identity()
        self.time_emb = nn.Linear(time_channels, out_channels)
        self.time_act = Swish()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h = self.conv1(self.act1(self.norm1(x)))
        h = h + self.time_emb(self.time_act(t))[:, :, None, None]
        h = self.conv2(self.dropout(self.act2(self.norm2(h))))
        return h + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Self-attention over the pixels of a feature map, with a residual connection.

    As in labml: one head with d_k = n_channels, and a GroupNorm that is created (so its 2 * n_channels
    parameters count, keeping the parameter total exact) but never applied in `forward`.
    """

    def __init__(self, n_channels: int, n_heads: int = 1, d_k: int | None = None, n_groups: int = N_GROUPS):
        super().__init__()
        if d_k is None:
            d_k = n_channels
        self.norm = nn.GroupNorm(n_groups, n_channels)  # unused in forward, as in labml
        self.projection = nn.Linear(n_channels, n_heads * d_k * 3)
        self.output = nn.Linear(n_heads * d_k, n_channels)
        self.scale = d_k**-0.5
        self.n_heads = n_heads
        self.d_k = d_k

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        _ = t  # kept so every block has the same signature
        b, c, height, width = x.shape
        x = x.reshape(b, c, -1).permute(0, 2, 1)  # [b, seq, c]
        qkv = self.projection(x).view(b, -1, self.n_heads, 3 * self.d_k)
        q, k, v = torch.chunk(qkv, 3, dim=-1)  # each [b, seq, heads, d_k]
        # softmax_j(q_i . k_j / sqrt(d_k)) v_j: the softmax runs over the keys j (labml's 2022-09-12 fix)
        res = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=self.scale
        )  # [b, heads, seq, d_k]
        res = res.transpose(1, 2).reshape(b, -1, self.n_heads * self.d_k)
        res = self.output(res) + x
        return res.permute(0, 2, 1).reshape(b, c, height, width)


class DownBlock(nn.Module):
    """A residual block, then attention where the resolution has it (first half of the U)."""

    def __init__(
        self, in_channels: int, out_channels: int, time_channels: int, has_attn: bool, dropout: float = 0.1
    ):
        super().__init__()
        self.res = ResidualBlock(in_channels, out_channels, time_channels, dropout=dropout)
        self.attn: nn.Module = AttentionBlock(out_channels) if has_attn else nn.Identity()

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.attn(self.res(x, t))


class UpBlock(nn.Module):
    """Like DownBlock, but its input is the feature map concatenated with the skip connection."""

    def __init__(
        self, in_channels: int, out_channels: int, time_channels: int, has_attn: bool, dropout: float = 0.1
    ):
        super().__init__()
        self.res = ResidualBlock(in_channels + out_channels, out_channels, time_channels, dropout=dropout)
        self.attn: nn.Module = AttentionBlock(out_channels) if has_attn else nn.Identity()

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.attn(self.res(x, t))


class MiddleBlock(nn.Module):
    """Residual, attention, residual, at the lowest resolution."""

    def __init__(self, n_channels: int, time_channels: int, dropout: float = 0.1):
        super().__init__()
        self.res1 = ResidualBlock(n_channels, n_channels, time_channels, dropout=dropout)
        self.attn = AttentionBlock(n_channels)
        self.res2 = ResidualBlock(n_channels, n_channels, time_channels, dropout=dropout)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.res2(self.attn(self.res1(x, t)), t)


class _Resample(nn.Module):
    """A resolution change; like every block of the UNet it takes the time embedding, which it ignores."""

    conv: nn.Module

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        _ = t
        return self.conv(x)


class Upsample(_Resample):
    """Doubles the resolution with a 4x4 stride-2 transposed convolution."""

    def __init__(self, n_channels: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(n_channels, n_channels, (4, 4), (2, 2), (1, 1))


class Downsample(_Resample):
    """Halves the resolution with a 3x3 stride-2 convolution."""

    def __init__(self, n_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(n_channels, n_channels, (3, 3), (2, 2), (1, 1))


def level_channels(n_channels: int, ch_mults: Sequence[int], compound: bool = True) -> list[int]:
    """Channels at each resolution: labml compounds (`previous * mult`); `compound=False` gives `n_channels * mult`."""
    out, c = [], n_channels
    for m in ch_mults:
        c = c * m if compound else n_channels * m
        out.append(c)
    return out


def _down_path(n_channels, levels, is_attn, n_blocks, time_channels, dropout) -> list[nn.Module]:
    """The first half: decreasing resolution."""
    down: list[nn.Module] = []
    in_channels = n_channels
    for i, out_channels in enumerate(levels):
        for _ in range(n_blocks):
            down.append(DownBlock(in_channels, out_channels, time_channels, is_attn[i], dropout))
            in_channels = out_channels
        if i < len(levels) - 1:
            down.append(Downsample(in_channels))
    return down


def _up_path(n_channels, levels, is_attn, n_blocks, time_channels, dropout) -> list[nn.Module]:
    """The second half: increasing resolution. The last block of each resolution narrows to the width of
    the resolution above (labml: `in_channels // ch_mults[i]`, the same thing when multipliers compound)."""
    up: list[nn.Module] = []
    in_channels = levels[-1]
    for i in reversed(range(len(levels))):
        for _ in range(n_blocks):
            up.append(UpBlock(in_channels, in_channels, time_channels, is_attn[i], dropout))
        out_channels = levels[i - 1] if i > 0 else n_channels
        up.append(UpBlock(in_channels, out_channels, time_channels, is_attn[i], dropout))
        in_channels = out_channels
        if i > 0:
            up.append(Upsample(in_channels))
    return up


class UNet(nn.Module):
    """The noise predictor eps_theta(x_t, t[, y]): returns a tensor shaped like x.

    * `image_channels`: 3 for RGB, 1 for greyscale.
    * `n_channels`: width of the first feature map; the time embedding has `4 * n_channels` dimensions.
    * `ch_mults`: one multiplier per resolution (compounding unless `compound=False`); the image side must be
      a multiple of `2 ** (len(ch_mults) - 1)`.
    * `is_attn`: whether each resolution has self-attention (the middle block always has it).
    * `n_blocks`: residual blocks per resolution (the up path has one more, which changes the width).
    * `num_classes`: K for a class-conditional model (index K is the null class), None for unconditional.
    """

    def __init__(
        self,
        image_channels: int = 3,
        n_channels: int = 64,
        ch_mults: Sequence[int] = (1, 2, 2, 4),
        is_attn: Sequence[bool] = (False, False, True, True),
        n_blocks: int = 2,
        num_classes: int | None = None,
        compound: bool = True,
        dropout: float = 0.1,
    ):
        super().__init__()
        ch_mults, is_attn = tuple(ch_mults), tuple(bool(a) for a in is_attn)
        if len(ch_mults) == 0 or len(ch_mults) != len(is_attn):
            raise ConfigError(
                f"ch_mults and is_attn need one entry per resolution, got {len(ch_mults)} and {len(is_attn)}."
            )
        if image_channels < 1 or n_blocks < 1 or any(m < 1 for m in ch_mults):
            raise ConfigError("image_channels, n_blocks and every channel multiplier must be at least 1.")
        levels = level_channels(n_channels, ch_mults, compound)
        if any(c % N_GROUPS for c in [n_channels, *levels]):
            raise ConfigError(
                f"Every feature-map width must be a multiple of {N_GROUPS} (GroupNorm groups); "
                f"n_channels={n_channels} with ch_mults={ch_mults} gives {levels}."
            )
        if num_classes is not None and num_classes < 1:
            raise ConfigError(f"num_classes must be at least 1 (or None), got {num_classes}.")

        # The architecture as plain data (ModelConfig's fields), so a built model can be described and rebuilt.
        self.hparams = dict(
            n_channels=n_channels,
            ch_mults=ch_mults,
            is_attn=is_attn,
            n_blocks=n_blocks,
            compound=compound,
            dropout=dropout,
            image_channels=image_channels,
        )
        self.image_channels = image_channels
        self.n_channels = n_channels
        self.n_resolutions = len(ch_mults)
        time_channels = n_channels * 4
        self.time_channels = time_channels
        self.num_classes = num_classes
        self.null_class = (
            num_classes  # the extra embedding row used for "no class" (classifier-free guidance)
        )

        self.image_proj = nn.Conv2d(image_channels, n_channels, kernel_size=(3, 3), padding=(1, 1))
        self.time_emb = TimeEmbedding(time_channels)
        self.class_emb: nn.Embedding | None = (
            nn.Embedding(num_classes + 1, time_channels) if num_classes is not None else None
        )

        self.down = nn.ModuleList(_down_path(n_channels, levels, is_attn, n_blocks, time_channels, dropout))
        self.middle = MiddleBlock(levels[-1], time_channels, dropout)
        self.up = nn.ModuleList(_up_path(n_channels, levels, is_attn, n_blocks, time_channels, dropout))
        self.norm = nn.GroupNorm(8, n_channels)
        self.act = Swish()
        self.final = nn.Conv2d(n_channels, image_channels, kernel_size=(3, 3), padding=(1, 1))

    def min_divisor(self) -> int:
        """The image side must be a multiple of this (one halving per resolution below the top)."""
        return 2 ** (self.n_resolutions - 1)

    def forward(self, x: Tensor, t: Tensor | int | float, y: Tensor | None = None) -> Tensor:
        """x: [B, C, H, W]; t: [B] (or [1] / a scalar, broadcast) timesteps, long or float; y: [B] class ids
        (conditional models only; None or the null class means unconditional)."""
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0 or t.numel() == 1:
            t = t.reshape(1).expand(b)
        elif t.shape != (b,):
            raise ValueError(f"t must have shape ({b},) or (1,), got {tuple(t.shape)}.")
        emb = self.time_emb(t)

        if self.class_emb is not None:
            if y is None:
                y = torch.full((b,), self.null_class, dtype=torch.long, device=x.device)
            else:
                y = torch.as_tensor(y, device=x.device).long()
                if y.ndim == 0 or y.numel() == 1:
                    y = y.reshape(1).expand(b)
            emb = emb + self.class_emb(y)
        elif y is not None:
            raise ValueError("This model is unconditional: it takes no class labels (pass y=None).")

        x = self.image_proj(x)
        skips = [x]
        for m in self.down:
            x = m(x, emb)
            skips.append(x)

        x = self.middle(x, emb)

        for m in self.up:
            if isinstance(m, Upsample):
                x = m(x, emb)
            else:
                x = m(torch.cat((x, skips.pop()), dim=1), emb)

        return self.final(self.act(self.norm(x)))
