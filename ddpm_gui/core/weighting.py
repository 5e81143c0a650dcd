"""Loss weighting over the timesteps: Min-SNR-gamma (Hang et al. 2023, "Efficient Diffusion Training via
Min-SNR Weighting Strategy").

The paper weights the loss of each timestep, written as an x_0 error, by min(SNR(t), gamma), with
SNR(t) = alpha_bar_t / (1 - alpha_bar_t): the nearly clean timesteps (huge SNR) stop dominating the
gradient, and the noisy ones, where the image is decided, get their share. The network's own loss is an
eps or v error, which already carries a factor of the x_0 error: ||eps - eps_hat||^2 = SNR ||x0 - x0_hat||^2
and ||v - v_hat||^2 = (SNR + 1) ||x0 - x0_hat||^2. Dividing by that factor gives the weights the paper uses
(its section 3.4, and diffusers' training scripts):

    eps-prediction:  min(SNR, gamma) / SNR          = min(1, gamma / SNR)
    v-prediction:    min(SNR, gamma) / (SNR + 1)

Both are at most 1, so the learning rate of an unweighted run still fits. gamma = 5 is the paper's choice.
"""

from __future__ import annotations

import torch


def loss_weight(snr: torch.Tensor, gamma: float, prediction: str) -> torch.Tensor:
    """The Min-SNR-gamma weight of each element of `snr` (the SNR of each example's timestep) for a network
    that predicts `prediction` ("eps" or "v"); gamma 0 means no weighting (ones). Finite for every SNR in
    [0, inf]: an eps weight is 1 where SNR = 0 (its limit), and both are 0 where SNR = inf."""
    if gamma <= 0:
        return torch.ones_like(snr)
    if prediction == "eps":
        return (gamma / snr).clamp(max=1.0)
    if prediction == "v":
        return snr.clamp(max=gamma) / (snr + 1)
    raise ValueError(f"Unknown prediction {prediction!r}: expected 'eps' or 'v'.")
