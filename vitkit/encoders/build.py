"""Build a preset's transformers tower: random seeded weights, or a local checkpoint. Never downloads."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers.initialization import no_init_weights
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

from vitkit.encoders.base import VisionEncoder
from vitkit.encoders.buckets import Buckets
from vitkit.encoders.fixed import FixedResolutionEncoder
from vitkit.encoders.fused import fuse_tower
from vitkit.encoders.presets import EncoderPreset, get_preset
from vitkit.encoders.qwen import QwenVisionEncoder
from vitkit.encoders.qwen3 import Qwen3VisionEncoder, qwen3_tower_weights

MODEL_CLASSES = {
    "clip": (CLIPVisionConfig, CLIPVisionModel),
    "siglip": (SiglipVisionConfig, SiglipVisionModel),
    "qwen2_5_vl": (Qwen2_5_VLVisionConfig, Qwen2_5_VisionTransformerPretrainedModel),
    "qwen3_vl": (Qwen3VLVisionConfig, Qwen3VLVisionModel),
}
ENCODER_CLASSES = {"qwen2_5_vl": QwenVisionEncoder, "qwen3_vl": Qwen3VisionEncoder}  # others: FixedResolutionEncoder
# Where each tower's weights sit inside a full (vision + language) checkpoint.
CHECKPOINT_PREFIXES = {
    "clip": ("vision_model.", "model.vision_model."),
    "siglip": ("vision_model.", "model.vision_model."),
    "qwen2_5_vl": ("visual.", "model.visual."),
    "qwen3_vl": ("visual.", "model.visual."),
}
# Config fields that fix the tower's shapes: a checkpoint must agree with its preset on these.
SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                "patch_size", "depth", "num_heads", "out_hidden_size", "window_size", "spatial_merge_size",
                "temporal_patch_size", "fullatt_block_indexes", "num_position_embeddings", "deepstack_visual_indexes")


def build_encoder(name: str | EncoderPreset, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                  checkpoint: str | Path | None = None, impl: str = "vitkit", seed: int = 0,
                  buckets: Buckets | None = None) -> VisionEncoder:
    """The preset's tower as a vitkit encoder on ``device`` in ``dtype``: random weights drawn with ``seed``
    (the global RNG is left as it was), or a local ``checkpoint`` directory of the tower or the whole model.
    ``impl``: see ``vitkit.encoders.base``. ``device="meta"`` builds the shapes without memory."""
    preset = get_preset(name)
    if checkpoint is None:
        model = _random_model(preset, torch.device(device), seed)
    else:
        model = _checkpoint_model(preset, Path(checkpoint))
    model = model.to(device=device, dtype=dtype)
    return encoder_class(preset)(preset, model, impl, fused=tower_weights(preset, model), buckets=buckets)


def tower_weights(preset: EncoderPreset, model: nn.Module) -> tuple[tuple[torch.Tensor, ...], ...]:
    """Per-layer weight tuples the encoder's fused layers take: fused anew (``fuse_tower``), or Qwen3-VL's
    own parameters (its Q/K/V are one linear already and its MLP has no gate)."""
    return qwen3_tower_weights(model) if preset.family == "qwen3_vl" else fuse_tower(preset, model)


def encoder_class(preset: EncoderPreset) -> type[VisionEncoder]:
    """The vitkit encoder class of a preset's tower."""
    return ENCODER_CLASSES.get(preset.family, FixedResolutionEncoder)


def default_buckets(name: str | EncoderPreset) -> Buckets:
    """The bucket set a preset's ``impl="vitkit"`` encoder pads to unless told otherwise."""
    preset = get_preset(name)
    return encoder_class(preset).buckets_for(preset)


def _random_model(preset: EncoderPreset, device: torch.device, seed: int) -> nn.Module:
    config_cls, model_cls = MODEL_CLASSES[preset.family]
    config = config_cls(**preset.config)
    rng_devices = ([device.index if device.index is not None else torch.cuda.current_device()]
                   if device.type == "cuda" else [])
    # Build directly on the target device: a GPU initialises the parameters quickly, with no host copy.
    with torch.random.fork_rng(devices=rng_devices), torch.device(device):
        torch.manual_seed(seed)
        return model_cls._from_config(config, attn_implementation="sdpa")


def _checkpoint_model(preset: EncoderPreset, path: Path) -> nn.Module:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ValueError(f"checkpoint {path} for preset {preset.name!r}: no config.json there")
    raw = json.loads(config_path.read_text())
    config_cls, model_cls = MODEL_CLASSES[preset.family]
    if "vision_config" not in raw:  # a tower saved on its own
        _check_config(preset, config_cls.from_pretrained(path, local_files_only=True), path)
        model, info = model_cls.from_pretrained(path, local_files_only=True, attn_implementation="sdpa",
                                                output_loading_info=True)
        # from_pretrained only warns about missing weights (and initialises them randomly).
        missing = sorted(info.get("missing_keys", [])) + sorted(str(m) for m in info.get("mismatched_keys", []))
        if missing:
            raise ValueError(f"checkpoint {path} for preset {preset.name!r}: {len(missing)} tower weights "
                             f"missing or mismatched (e.g. {missing[:3]})")
        return model
    config = config_cls(**{k: v for k, v in raw["vision_config"].items() if k != "model_type"})
    _check_config(preset, config, path)
    with no_init_weights():  # every weight is overwritten below
        model = model_cls._from_config(config, attn_implementation="sdpa")
    state = _load_tower_state(path, CHECKPOINT_PREFIXES[preset.family])
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise ValueError(f"checkpoint {path} for preset {preset.name!r}: {len(missing)} tower weights missing "
                         f"(e.g. {sorted(missing)[:3]}); looked for prefixes {CHECKPOINT_PREFIXES[preset.family]}")
    model.load_state_dict({k: state[k] for k in model.state_dict()}, strict=True)
    return model


def _load_tower_state(path: Path, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"checkpoint {path}: no *.safetensors files")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        for key, tensor in load_file(file).items():
            for prefix in prefixes:
                if key.startswith(prefix):
                    state[key[len(prefix):]] = tensor
    return state


def _check_config(preset: EncoderPreset, config, path: Path) -> None:
    wrong = {f: (getattr(config, f), preset.config[f]) for f in SHAPE_FIELDS
             if f in preset.config and getattr(config, f, None) != preset.config[f]}
    if wrong:
        detail = ", ".join(f"{f}={got!r} (preset {want!r})" for f, (got, want) in wrong.items())
        raise ValueError(f"checkpoint {path} does not match preset {preset.name!r}: {detail}")


def count_parameters(encoder: VisionEncoder) -> int:
    """Parameters of the tower (all of them, whether or not the selected rows use every layer)."""
    return sum(p.numel() for p in encoder.model.parameters())
