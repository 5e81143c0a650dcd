"""DDPM Studio: train and explore denoising diffusion models on small images."""

__version__ = "0.1.0"
