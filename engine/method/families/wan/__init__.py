"""Wan 2.1 / 2.2 (text-to-video and VACE): a video diffusion transformer whose blocks attend over all
latent frames at once (self-attention with 3D RoPE) and to umT5 text tokens (cross-attention)."""
