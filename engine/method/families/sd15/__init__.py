"""Stable Diffusion 1.5 + ControlNet: the UNet family the paper and its reference code use."""
