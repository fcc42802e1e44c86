"""CLIP-T and CLIP-F of an edit, as video-editing papers report them (VideoGrain's Table 1 among them).

- CLIP-T: text-frame alignment, the mean over frames of 100 · cos(CLIP image embedding of the frame,
  CLIP text embedding of the target prompt).
- CLIP-F: frame consistency, the mean over neighbouring frames of 100 · cos(image embedding of frame t,
  image embedding of frame t + 1).
The CLIP model comes from a local folder or a hub id (transformers `CLIPModel` + its processor);
papers use ViT-L/14 (`openai/clip-vit-large-patch14`).
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoProcessor, CLIPModel

from videograin.engine.models import from_pretrained

CLIP_HINT = "pass that folder to `videograin eval --clip`"
FRAMES_PER_BATCH = 16


def _embedding(output) -> torch.Tensor:
    # transformers 5 returns an output whose pooler_output is the projected embedding; 4.x the tensor.
    embedding = output.pooler_output if hasattr(output, "pooler_output") else output
    return torch.nn.functional.normalize(embedding.float(), dim=-1)


class ClipScorer:
    """A CLIP model and its processor, loaded once, scoring any number of edits."""

    def __init__(self, model: str, device: torch.device) -> None:
        self.model = from_pretrained(CLIPModel, model, "CLIP", hint=CLIP_HINT).to(device).eval()
        self.processor = from_pretrained(AutoProcessor, model, "CLIP processor", hint=CLIP_HINT)
        self.device = device

    @torch.no_grad()
    def image_embeddings(self, frames: np.ndarray) -> torch.Tensor:
        """(F, D) unit embeddings of RGB uint8 frames (F, H, W, 3)."""
        embeddings = []
        for start in range(0, len(frames), FRAMES_PER_BATCH):
            pixels = self.processor(images=list(frames[start : start + FRAMES_PER_BATCH]), return_tensors="pt")
            output = self.model.get_image_features(pixel_values=pixels["pixel_values"].to(self.device))
            embeddings.append(_embedding(output))
        return torch.cat(embeddings)

    @torch.no_grad()
    def text_embedding(self, text: str) -> torch.Tensor:
        tokens = self.processor(text=[text], return_tensors="pt", padding="max_length", truncation=True)
        output = self.model.get_text_features(
            input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)
        )
        return _embedding(output)[0]

    def scores(self, frames: np.ndarray, prompt: str) -> dict[str, float]:
        """{"clip_t": ..., "clip_f": ...} of an edit's frames and its target prompt (CLIP-F needs 2 frames)."""
        images = self.image_embeddings(frames)
        result = {"clip_t": float(100 * (images @ self.text_embedding(prompt)).mean())}
        if len(images) > 1:
            result["clip_f"] = float(100 * (images[:-1] * images[1:]).sum(-1).mean())
        return result
