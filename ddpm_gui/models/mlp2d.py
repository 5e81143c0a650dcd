"""The denoiser of the 2D mode: a small MLP over (x, y) and a sinusoidal embedding of the timestep.

It takes points shaped as the core's math shapes images, (B, 2, 1, 1), or plain (B, 2), and returns its
prediction (eps or v) in the same shape, so `core.diffusion` runs on it unchanged. About 30k parameters at
the defaults: two thousand steps train it on one CPU core.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """The Transformer's sinusoidal position code of each timestep, as DDPM uses it: (B,) -> (B, dim),
    cosines of the first half of the frequencies then their sines; the frequencies fall geometrically from
    1 to 1/max_period, so both neighbouring and distant timesteps stay distinguishable."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float().reshape(-1, 1) * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return torch.nn.functional.pad(emb, (0, dim % 2))  # an odd dim gets one zero column


class MLP2D(nn.Module):
    """x_t and the timestep in, eps (or v) out. The time embedding goes through its own small MLP and is
    added to every hidden layer (as the U-Net adds it to every block), so each layer knows the noise level."""

    def __init__(self, hidden: int = 64, depth: int = 3, time_dim: int = 32):
        super().__init__()
        self.hidden, self.depth, self.time_dim = hidden, depth, time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(2, hidden)
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.time_proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, 2)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        h = self.inp(x.reshape(shape[0], 2))
        temb = self.act(self.time_mlp(timestep_embedding(t, self.time_dim)))
        for layer, proj in zip(self.layers, self.time_proj, strict=True):
            h = h + layer(self.act(h + proj(temb)))  # a residual block: keeps deep stacks trainable
        return self.out(self.act(h)).reshape(shape)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
