"""Plug-and-play feature injection: features recorded while inverting the source, given back to the
edit's first `inject_step` steps at the same timestep, so the edit keeps the source's structure.

As the published code does it, in the UNet's up path: the output of the second convolution of three
resnets (before the residual sum) and the queries and keys of six self-attention layers (the up blocks
at 16², 32² and the first at 64² for SD-1.5). A UNet with fewer up blocks (the tiny test model) uses
the named layers it has. Resnet features are taken and replaced through forward hooks on those
convolutions; queries and keys through the attention processor (`exchange`), so no UNet code is forked.
Every recorded tensor has both guidance branches (unconditional first), one block of frames each.
"""

from __future__ import annotations

import torch

RESNETS = ("up_blocks.1.resnets.0", "up_blocks.1.resnets.1", "up_blocks.2.resnets.0")
SELF_ATTENTIONS = tuple(
    f"up_blocks.{block}.attentions.{index}.transformer_blocks.0.attn1"
    for block, index in ((1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (3, 0))
)

Features = dict[str, torch.Tensor]  # layer name (+ ".q" / ".k" for attention) -> recorded tensor


class FeatureInjection:
    """Records features into `recorded[timestep]` (mode "record") or replaces them (mode "inject")."""

    def __init__(self, unet: torch.nn.Module) -> None:
        modules = dict(unet.named_modules())
        self.attention_names = {modules[name]: name for name in SELF_ATTENTIONS if name in modules}
        self.recorded: dict[int, Features] = {}
        self.mode: str | None = None  # None (idle), "record" or "inject"
        self.timestep = 0
        self._hooks = [modules[name].conv2.register_forward_hook(self._resnet_hook(name))
                       for name in RESNETS if name in modules]

    def record(self, timestep: int) -> None:
        self.mode, self.timestep = "record", timestep
        self.recorded[timestep] = {}

    def inject(self, timestep: int) -> None:
        self.mode, self.timestep = "inject", timestep

    def idle(self) -> None:
        self.mode = None

    def _swap(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        if self.mode == "record":
            self.recorded[self.timestep][name] = tensor.detach().clone()
        elif self.mode == "inject":
            return self.recorded[self.timestep][name].to(tensor.device, tensor.dtype)
        return tensor

    def _resnet_hook(self, name: str):
        def hook(module, inputs, output):
            return self._swap(name, output)

        return hook

    def exchange(self, attention: torch.nn.Module, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A self-attention layer's query and key: recorded, injected or passed through."""
        name = self.attention_names.get(attention)
        if name is None or self.mode is None:
            return query, key
        return self._swap(f"{name}.q", query), self._swap(f"{name}.k", key)

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
