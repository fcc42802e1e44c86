"""Getting the diffusers components: real weights by hub id or local folder, or random ones.

- `get_pipeline`: the pipeline of the job's model family (families.py reads it from model_index.json).
- `load_pipeline` / `load_wan_pipeline`: SD-1.5-layout or Wan weights via `from_pretrained` (safetensors;
  fp16 for SD and bf16 for Wan on GPU); fails fast with a message that says how to get weights.
- `tiny_pipeline` / `wan_tiny_pipeline`: tiny random components (tests, `videograin demo`), milliseconds
  a step on CPU; `sd15_random_pipeline` / `wan_random_pipeline`: full-size shapes with random weights
  (benchmarks). Random weights produce noise-like pictures: their output is never an edit.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLWan,
    ControlNetModel,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    UNet2DConditionModel,
    WanTransformer3DModel,
    WanVACETransformer3DModel,
)
from diffusers.models.attention_processor import Attention
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5TokenizerFast, UMT5Config, UMT5EncoderModel

from videograin.engine.errors import ModelUnavailableError
from videograin.engine.families import RANDOM_MODELS, WAN, model_family
from videograin.engine.method.families.sd15.pipeline import VideoGrainPipeline
from videograin.engine.method.families.wan.pipeline import WanVideoGrainPipeline


def resolve_device(name: str) -> torch.device:
    """`auto` (the GPU when there is one), `cpu`, `cuda` or `cuda:N`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_name(device: torch.device | str) -> str:
    """What the device is, for reports: the GPU's model, or the CPU's."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()


def default_dtype(device: torch.device, family: str = "sd15") -> torch.dtype:
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if family == WAN else torch.float16  # Wan is trained and shipped in bf16


def get_pipeline(model: str, controlnet: str | None, device: torch.device, dtype: torch.dtype | None = None):
    """The pipeline a job asks for: a random-weight model by name, or real weights, of the model's family.
    `controlnet` is SD-1.5's (a Wan model takes control through VACE and ignores it)."""
    family = model_family(model)
    if family.name == WAN:
        return _wan_pipeline(model, device, dtype or default_dtype(device, WAN))
    dtype = dtype or default_dtype(device)
    if model in RANDOM_MODELS:
        build = tiny_pipeline if model == "tiny" else sd15_random_pipeline
        pipe = build(with_controlnet=controlnet is not None)
        # Built in fp32 already; casting to fp32 again would only make diffusers warn.
        pipe = pipe.to(device) if dtype == torch.float32 else pipe.to(device=device, dtype=dtype)
    else:
        pipe = load_pipeline(model, controlnet, dtype).to(device)
    # Frames above the VAE's native size (512² for SD-1.5) encode and decode in overlapping tiles, so a
    # large working size costs no more VAE memory than 512² does; at or below it tiling changes nothing.
    pipe.vae.enable_tiling()
    return pipe


# Fraction of a GPU's memory a Wan model's weights may take before its parts are offloaded to the CPU
# between uses (diffusers' model CPU offload): a 14B model on a 24 GB card.
OFFLOAD_ABOVE = 0.6


def _wan_pipeline(model: str, device: torch.device, dtype: torch.dtype) -> WanVideoGrainPipeline:
    if model in RANDOM_MODELS:
        pipe = wan_tiny_pipeline(vace=model == "wan-vace-tiny") if "tiny" in model else wan_random_pipeline()
        if dtype != torch.float32:  # built in fp32; the VAE stays there, as with real weights
            pipe.transformer.to(dtype)
            pipe.text_encoder.to(dtype)
    else:
        pipe = load_wan_pipeline(model, dtype)
    pipe.vae.enable_tiling()  # above 256² the VAE works in spatial tiles; its time axis is chunked by design
    if device.type == "cuda":
        weights = sum(p.numel() * p.element_size() for p in pipe.transformer.parameters())
        if weights > OFFLOAD_ABOVE * torch.cuda.get_device_properties(device).total_memory:
            pipe.enable_model_cpu_offload(device=device)
            return pipe
    return pipe.to(device)


def load_wan_pipeline(model: str, dtype: torch.dtype) -> WanVideoGrainPipeline:
    """Load a Wan 2.1 / 2.2 text-to-video or VACE model folder (diffusers layout). The VAE stays in fp32,
    as diffusers' Wan examples load it: its decoder is where reduced precision shows."""
    vae = from_pretrained(AutoencoderKLWan, model, "Wan VAE", subfolder="vae", torch_dtype=torch.float32)
    return from_pretrained(WanVideoGrainPipeline, model, "Wan", vae=vae, torch_dtype=dtype)


def load_pipeline(model: str, controlnet: str | None, dtype: torch.dtype) -> VideoGrainPipeline:
    """Load SD-1.5-layout weights from a local diffusers folder or the Hugging Face cache / hub."""
    kwargs = {"torch_dtype": dtype}
    if controlnet is not None:
        kwargs["controlnet"] = from_pretrained(ControlNetModel, controlnet, "ControlNet", torch_dtype=dtype)
    elif not _is_pipeline_folder_with(model, "controlnet"):
        kwargs["controlnet"] = None
    return from_pretrained(VideoGrainPipeline, model, "Stable Diffusion", **kwargs)


def _is_pipeline_folder_with(model: str, component: str) -> bool:
    return (Path(model) / component).is_dir()


EDIT_WEIGHTS_HINT = (
    "point the job's model/controlnet at that folder, or use `--model tiny` to try the tool with random "
    "weights (not an edit)"
)


def from_pretrained(cls, name: str, what: str, *args, hint: str = EDIT_WEIGHTS_HINT, **kwargs):
    """`cls.from_pretrained`, local files first; missing weights become one actionable error whose last
    words (`hint`) say what to do with the fetched folder."""
    local = Path(name).expanduser()
    if local.exists():
        try:
            return cls.from_pretrained(str(local), *args, **kwargs)
        except (OSError, ValueError) as exc:
            raise ModelUnavailableError(f"{what} weights in '{local}' cannot be loaded: {exc}") from None
    try:
        return cls.from_pretrained(name, *args, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0"):
        raise ModelUnavailableError(_how_to_get(name, what, "HF_HUB_OFFLINE is set and it is not cached", hint))
    try:
        return cls.from_pretrained(name, *args, **kwargs)
    except Exception as exc:  # network, auth, missing repo: all mean "no weights here"
        raise ModelUnavailableError(_how_to_get(name, what, f"{type(exc).__name__}: {exc}", hint)) from None


def _how_to_get(name: str, what: str, reason: str, hint: str) -> str:
    return (
        f"{what} weights '{name}' are not available ({reason}). On a machine with network, run "
        f"`hf download {name} --local-dir models/{name.split('/')[-1]}` and {hint}."
    )


def _byte_level_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer with only the 256 byte symbols (no merges): every word splits into characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    vocab = {s: i for i, s in enumerate(symbols)} | {s + "</w>": i + 256 for i, s in enumerate(symbols)}
    vocab |= {"<|startoftext|>": 512, "<|endoftext|>": 513}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _ddim() -> DDIMScheduler:
    # SD-1.5's noise schedule, so random-weight runs exercise the same timesteps as real ones.
    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1,
    )


def _vae(channels: tuple[int, ...], layers_per_block: int, sample_size: int) -> AutoencoderKL:
    """An SD-layout VAE: four blocks, so images are 8× the latents."""
    return AutoencoderKL(
        block_out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=layers_per_block,
        sample_size=sample_size,
    )


def tiny_pipeline(with_controlnet: bool = True, seed: int = 0, attention_gain: float = 3.0) -> VideoGrainPipeline:
    """Tiny random components in the SD-1.5 layout; attention at 1/8 and 1/16 of the image size.

    Fresh random projections give nearly flat attention (score ranges well below 1), unlike a trained
    model, whose attention is sharp. Scaling the UNet's query and key projections by `attention_gain`
    widens the score ranges by its square, so that modulation acts on the tiny model as on a real one.
    Likewise the ControlNet's zero convolutions get random weights, so control maps have an effect.
    """
    torch.manual_seed(seed)
    blocks = dict(
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), **blocks
    )
    controlnet = ControlNetModel(in_channels=4, conditioning_embedding_out_channels=(16, 32, 32, 32), **blocks)
    vae = _vae((32, 32, 32, 32), layers_per_block=1, sample_size=128)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            vocab_size=1000, max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513,
        )
    )
    with torch.no_grad():
        for module in unet.modules():
            if isinstance(module, Attention):
                module.to_q.weight.mul_(attention_gain)
                module.to_k.weight.mul_(attention_gain)
        # A fresh ControlNet starts with zero convolutions, i.e. no effect at all; give them weights
        # so the control maps reach the UNet, as a trained ControlNet's do.
        zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block, controlnet.controlnet_cond_embedding.conv_out]
        for conv in zero_convs:
            torch.nn.init.normal_(conv.weight, std=0.1)
    return VideoGrainPipeline(
        vae=vae, text_encoder=text_encoder.eval(), tokenizer=_byte_level_tokenizer(), unet=unet, scheduler=_ddim(),
        controlnet=controlnet if with_controlnet else None,
    )


def sd15_random_pipeline(with_controlnet: bool = True, seed: int = 0) -> VideoGrainPipeline:
    """Full-size SD-1.5 + ControlNet shapes (≈860 M + 360 M parameters) with random weights."""
    torch.manual_seed(seed)
    vae = _vae((128, 256, 512, 512), layers_per_block=2, sample_size=512)
    # CLIP ViT-L/14's text tower, as SD-1.5 ships it.
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            projection_dim=768, hidden_act="quick_gelu", bos_token_id=512, eos_token_id=513, pad_token_id=513,
        )
    )
    return VideoGrainPipeline(
        vae=vae, text_encoder=text_encoder.eval(), tokenizer=_byte_level_tokenizer(),
        unet=UNet2DConditionModel(sample_size=64, cross_attention_dim=768), scheduler=_ddim(),
        controlnet=ControlNetModel(cross_attention_dim=768) if with_controlnet else None,
    )


def _piece_tokenizer(max_length: int = 512) -> T5TokenizerFast:
    """A SentencePiece-style (Unigram, `▁` word marks) tokenizer over letters, digits and a few marks, built
    here: it splits words the way umT5's does (a word's first piece carries its space), with no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    symbols = "abcdefghijklmnopqrstuvwxyz0123456789.,'-!?"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(c, -3.0) for c in symbols] + [("▁" + c, -2.5) for c in symbols]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0, model_max_length=max_length)


def _flow_scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(shift=3.0)  # Wan's flow shift at 480p


def wan_tiny_pipeline(vace: bool = False, seed: int = 0, attention_gain: float = 3.0) -> WanVideoGrainPipeline:
    """Tiny random Wan components (text-to-video, or VACE with `vace`): runs on CPU in fractions of a second.

    Wan normalises queries and keys (RMS norm) before attending, so fresh random weights attend almost
    uniformly; scaling the norms' gains by `attention_gain` widens the score ranges by its square, so that
    the modulation acts on the tiny model as on a trained one (as tiny_pipeline does for the UNet).
    """
    torch.manual_seed(seed)
    shape = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
                 text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    transformer = (WanVACETransformer3DModel(vace_layers=[0, 1], vace_in_channels=96, **shape) if vace
                   else WanTransformer3DModel(**shape))
    with torch.no_grad():
        for block in transformer.blocks:
            for attn in (block.attn1, block.attn2):
                attn.norm_q.weight.mul_(attention_gain)
                attn.norm_k.weight.mul_(attention_gain)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=1000, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                               relative_attention_num_buckets=8))
    return WanVideoGrainPipeline(tokenizer=_piece_tokenizer(), text_encoder=text_encoder.eval(), vae=vae,
                                 scheduler=_flow_scheduler(), transformer=transformer)


def wan_random_pipeline(seed: int = 0) -> WanVideoGrainPipeline:
    """Wan 2.1 T2V 1.3B's transformer and VAE shapes with random weights (benchmarks). The text encoder is
    a two-layer stand-in of umT5-XXL's width (it runs once per prompt; its 5.7 B parameters would only
    cost memory)."""
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6,
    )
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=1000, d_model=4096, d_kv=64, d_ff=10240, num_layers=2,
                                               num_heads=64))
    return WanVideoGrainPipeline(tokenizer=_piece_tokenizer(), text_encoder=text_encoder.eval(), vae=AutoencoderKLWan(),
                                 scheduler=_flow_scheduler(), transformer=transformer)
