"""Checkpoint I/O and pretrained backbones. Nothing is ever downloaded.

Our checkpoint is a directory::

    config.json                  ReconVLAConfig (model_type "reconvla")
    model.safetensors            vision tower + projector + LLM
    reconstruction.safetensors   denoiser + VAE (only when the model reconstructs; inference skips it)
    norm_stats.json              the dataset statistics the actions were normalised with (or null)
    tokenizer/                   the tokenizer, saved with save_pretrained
    metadata.json                versions, creation time, training metadata

Backbones come from local HF directories: a Qwen2 directory plus a SigLIP directory, or one
LLaVA-style directory (``LlavaForConditionalGeneration`` layout), and optionally a diffusers VAE.

``PreTrainedReconVLA`` is the base class ``ReconVLA`` inherits (LeRobot's pretrained.py pattern):
loading builds ``cls(config, ...)``, so this module never imports the network module.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from reconvla_core import __version__
from reconvla_core.model.configuration_reconvla import ReconVLAConfig
from reconvla_core.model.tokenization import build_byte_tokenizer, load_tokenizer

if TYPE_CHECKING:
    from typing import Self

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
RECON_FILE = "reconstruction.safetensors"
STATS_FILE = "norm_stats.json"
TOKENIZER_DIR = "tokenizer"
METADATA_FILE = "metadata.json"
RECON_PREFIX = "reconstruction."


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt or does not fit the model; the message names the file."""


class PreTrainedReconVLA(torch.nn.Module):
    """Save and load for the model class that inherits it (``ReconVLA``): our checkpoint directories,
    LLaVA-style directories and separate local backbones. Subclasses are built as
    ``cls(config, tokenizer=..., build_reconstruction=...)`` and provide ``build_projector_modules``."""

    config: ReconVLAConfig

    @classmethod
    def from_pretrained(cls, path: str | Path, load_reconstruction: bool = False,
                        device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                        config: ReconVLAConfig | None = None) -> Self:
        """Our checkpoint directory, or a LLaVA-style directory (vision + projector + Qwen2 LLM)."""
        return _from_pretrained(cls, path, load_reconstruction=load_reconstruction, device=device, dtype=dtype,
                                config=config)

    @classmethod
    def from_backbones(cls, config: ReconVLAConfig, llm_path: str | Path | None = None,
                       vision_path: str | Path | None = None, llava_path: str | Path | None = None,
                       vae_path: str | Path | None = None, tokenizer_path: str | Path | None = None,
                       build_reconstruction: bool = True, dtype: torch.dtype | None = None) -> Self:
        """Pretrained parts from local HF directories (paths default to the config's *_path fields)."""
        return _from_backbones(cls, config, llm_path=llm_path, vision_path=vision_path, llava_path=llava_path,
                               vae_path=vae_path, tokenizer_path=tokenizer_path,
                               build_reconstruction=build_reconstruction, dtype=dtype)

    def save_pretrained(self, path: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
        """Write the checkpoint directory (layout in this module's docstring)."""
        return _save(self, path, metadata=metadata)


# ----------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------
def _save(model: PreTrainedReconVLA, path: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    main, recon = {}, {}
    tied = model.config.llm.tie_word_embeddings
    for name, tensor in model.state_dict().items():
        if tied and name == "llm.lm_head.weight":
            continue  # restored by tie_weights at load
        target = recon if name.startswith(RECON_PREFIX) else main
        target[name] = tensor.detach().contiguous().cpu()
    save_file(main, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
    if recon:
        save_file(recon, str(path / RECON_FILE), metadata={"format": "pt"})
    elif (path / RECON_FILE).exists():
        (path / RECON_FILE).unlink()  # a stale file from an older save would not match this model
    model.config.to_json_file(path / CONFIG_FILE)
    (path / STATS_FILE).write_text(json.dumps(model.norm_stats, indent=2) + "\n")
    model.tokenizer.save_pretrained(str(path / TOKENIZER_DIR))
    info = {"reconvla_version": __version__, "torch_version": torch.__version__,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "preset": model.config.preset,
            "recon_target": model.config.recon_target, "has_reconstruction": bool(recon),
            "parameters": model.parameter_counts()}
    info.update(dict(metadata or {}))
    (path / METADATA_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
    logger.info("saved checkpoint to %s", path)
    return path


LINEAGE_KEYS = ("training", "fit_gaze", "fit_head", "init_lineage")  # how a checkpoint's weights were made


def inherited_lineage(source: str | Path) -> dict[str, Any]:
    """The training record of checkpoint ``source`` (its ``metadata.json``: ``training``, ``fit_gaze``,
    ``fit_head``, ``init_lineage``), for a checkpoint derived from it to carry on; {} when it has none."""
    path = Path(source) / METADATA_FILE
    if not path.is_file():
        return {}
    recorded = _read_json(path)
    return {key: recorded[key] for key in LINEAGE_KEYS if recorded.get(key) is not None}


# ----------------------------------------------------------------------------------------------
# Loading our checkpoints
# ----------------------------------------------------------------------------------------------
def is_reconvla_checkpoint(path: Path) -> bool:
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        return False
    return _read_json(config_file).get("model_type") == "reconvla"


def _from_pretrained(cls: type[PreTrainedReconVLA], path: str | Path, load_reconstruction: bool = False,
                     device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                     config: ReconVLAConfig | None = None) -> PreTrainedReconVLA:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} is missing: {path} is not a ReconVLA checkpoint or HF model "
                                "directory (was it written by ReconVLA.save_pretrained / `reconvla train`?)")
    raw = _read_json(config_file)
    if raw.get("model_type") == "llava":
        model = _from_backbones(cls, config or ReconVLAConfig.from_preset("paper"), llava_path=path,
                                build_reconstruction=load_reconstruction, dtype=dtype)
        return model.to(device) if device is not None else model
    if raw.get("model_type") != "reconvla":
        raise CheckpointError(f"{config_file} has model_type {raw.get('model_type')!r}; expected a ReconVLA "
                              "checkpoint or a LLaVA directory (for separate Qwen2 / SigLIP directories use "
                              "ReconVLA.from_backbones)")
    try:
        config = ReconVLAConfig.from_dict(raw)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{config_file} is not a valid ReconVLA config: {error}") from error
    return _load_checkpoint(cls, path, config, load_reconstruction, device, dtype)


def _load_checkpoint(cls: type[PreTrainedReconVLA], path: Path, config: ReconVLAConfig, load_reconstruction: bool,
                     device: str | torch.device | None, dtype: torch.dtype | None) -> PreTrainedReconVLA:
    from accelerate import init_empty_weights


    for name in (WEIGHTS_FILE, STATS_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"checkpoint file {path / name} is missing")
    if not (path / TOKENIZER_DIR).is_dir():
        raise FileNotFoundError(f"checkpoint tokenizer directory {path / TOKENIZER_DIR} is missing")
    tokenizer = load_tokenizer(path / TOKENIZER_DIR)
    with_recon = load_reconstruction and config.builds_reconstruction
    if with_recon and not (path / RECON_FILE).is_file():
        raise FileNotFoundError(f"checkpoint file {path / RECON_FILE} is missing (needed for "
                                "load_reconstruction=True)")
    with init_empty_weights(include_buffers=False):
        model = _build(cls, config, tokenizer, with_recon)
    target = "cpu" if device is None else str(device)
    state = _read_safetensors(path / WEIGHTS_FILE, target)
    # A removed training-only head (grounding_box_weight, REMOVED_TRAINING_OPTIONS): inference never used it.
    state = {k: v for k, v in state.items() if not k.startswith("grounding_head.")}
    if with_recon:
        state.update(_read_safetensors(path / RECON_FILE, target))
    expected = set(model.state_dict())
    if config.llm.tie_word_embeddings:
        expected.discard("llm.lm_head.weight")
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(f"{path / WEIGHTS_FILE}: weights do not match the config (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    try:
        model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path / WEIGHTS_FILE}: {error}") from error
    if config.llm.tie_word_embeddings:
        model.llm.tie_weights()
    stats = _read_json(path / STATS_FILE)
    if stats is not None:
        model.set_norm_stats(stats)
    model.set_vision_trainable(model.config.train_vision)
    if model.reconstruction is not None:
        model.reconstruction.vae.autoencoder.requires_grad_(False)
    _finish(model, device, dtype)
    logger.info("loaded %s (reconstruction %s)", path, "loaded" if with_recon else "skipped")
    return model


def _finish(model: PreTrainedReconVLA, device: str | torch.device | None, dtype: torch.dtype | None) -> None:
    """Moves to the device; casts the VLA (not the fp32 reconstruction branch) to dtype."""
    if device is not None:
        model.to(device)
    if dtype is not None:
        for part in (model.vision, model.projector_norm, model.projector, model.llm):
            part.to(dtype)
    model.eval()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint file {path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is corrupt (not valid JSON: {error})") from error


def _read_safetensors(path: Path, device: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=device)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint file {path} is missing") from None
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"{path} is corrupt or truncated ({error})") from error


# ----------------------------------------------------------------------------------------------
# Pretrained backbones from HF directories
# ----------------------------------------------------------------------------------------------
def _from_backbones(cls: type[PreTrainedReconVLA], config: ReconVLAConfig, llm_path: str | Path | None = None,
                    vision_path: str | Path | None = None, llava_path: str | Path | None = None,
                    vae_path: str | Path | None = None, tokenizer_path: str | Path | None = None,
                    build_reconstruction: bool = True, dtype: torch.dtype | None = None) -> PreTrainedReconVLA:
    """A ReconVLA whose sizes follow the given directories' configs and whose weights come from them."""
    from accelerate import init_empty_weights
    from transformers import LlavaForConditionalGeneration, Qwen2ForCausalLM, SiglipVisionModel


    llm_path = llm_path or config.llm_path
    vision_path = vision_path or config.vision_path
    llava_path = llava_path or config.llava_path
    vae_path = vae_path or config.vae_path
    tokenizer_path = tokenizer_path or config.tokenizer_path
    kwargs = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    projector_state = None
    if llava_path is not None:
        llava_dir = _hf_dir(llava_path, "LLaVA")
        llava = LlavaForConditionalGeneration.from_pretrained(str(llava_dir), **kwargs)
        vision_module = llava.model.vision_tower
        language = llava.model.language_model
        projector = llava.model.multi_modal_projector
        projector_state = {"0.weight": projector.linear_1.weight, "0.bias": projector.linear_1.bias,
                           "2.weight": projector.linear_2.weight, "2.bias": projector.linear_2.bias}
        llm_state = {f"model.{k}": v for k, v in language.state_dict().items()}
        llm_state["lm_head.weight"] = llava.lm_head.weight
        llm_hf_config, vision_hf_config = llava.config.text_config, llava.config.vision_config
        feature_layer = int(llava.config.vision_feature_layer)
        tokenizer_path = tokenizer_path or (llava_dir if (llava_dir / "tokenizer_config.json").is_file() else None)
    else:
        if llm_path is None or vision_path is None:
            raise ValueError("give llava_path, or both llm_path (Qwen2) and vision_path (SigLIP)")
        llm_dir, vision_dir = _hf_dir(llm_path, "Qwen2"), _hf_dir(vision_path, "SigLIP")
        llm_module = Qwen2ForCausalLM.from_pretrained(str(llm_dir), **kwargs)
        vision_module = SiglipVisionModel.from_pretrained(str(vision_dir), **kwargs)
        llm_state = llm_module.state_dict()
        llm_hf_config, vision_hf_config = llm_module.config, vision_module.config
        feature_layer = config.vision.feature_layer
        tokenizer_path = tokenizer_path or (llm_dir if (llm_dir / "tokenizer_config.json").is_file() else None)
    if getattr(vision_hf_config, "model_type", "siglip_vision_model") not in ("siglip_vision_model", "siglip"):
        raise ValueError(f"the vision tower is {vision_hf_config.model_type!r}; ReconVLA uses SigLIP")

    autoencoder = None
    overrides: dict[str, Any] = {"llm": _llm_fields(llm_hf_config),
                                 "vision": _vision_fields(vision_hf_config, feature_layer)}
    if vae_path is not None and build_reconstruction and config.builds_reconstruction:
        from reconvla_core.model.reconstruction import load_autoencoder, vae_config_from_autoencoder

        autoencoder = load_autoencoder(vae_path)
        overrides["vae"] = vae_config_from_autoencoder(autoencoder, config.vae.image_size)
    config = config.replace(**overrides)
    tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path is not None else None
    if tokenizer is None:
        logger.warning("no tokenizer directory found; using the local byte-level tokenizer")
        tokenizer = build_byte_tokenizer()

    config = config.replace(llm_path=_str(llm_path), vision_path=_str(vision_path), llava_path=_str(llava_path),
                            vae_path=_str(vae_path), tokenizer_path=_str(tokenizer_path))  # provenance
    with init_empty_weights(include_buffers=False):
        model = _build(cls, config, tokenizer, False)
    vision_state = vision_module.state_dict()
    wanted = model.vision.state_dict()
    _assign(model.vision, {k: vision_state[k] for k in wanted if k in vision_state}, f"vision weights ({vision_path or llava_path})")
    _assign(model.llm, llm_state, f"LLM weights ({llm_path or llava_path})")
    if config.llm.tie_word_embeddings:
        model.llm.tie_weights()
    fresh_projector, fresh_norm = model.build_projector_modules(config)  # real (not meta) weights
    if projector_state is not None:
        _assign(model.projector, projector_state, f"projector weights ({llava_path})")
    else:
        model.projector = fresh_projector.to(model.llm.get_input_embeddings().weight.dtype)
    model.projector_norm = fresh_norm.to(model.llm.get_input_embeddings().weight.dtype)
    if build_reconstruction and config.builds_reconstruction:
        from reconvla_core.model.reconstruction import ReconstructionBranch

        model.reconstruction = ReconstructionBranch(config, autoencoder=autoencoder)
    model.set_vision_trainable(model.config.train_vision)
    model.vision.eval()
    return model


def _build(cls: type[PreTrainedReconVLA], config: ReconVLAConfig, tokenizer: Any,
           build_reconstruction: bool) -> PreTrainedReconVLA:
    """The model skeleton; the weight directories named in the config are what is being loaded."""
    paths = {name: None for name in ("llm_path", "vision_path", "llava_path", "vae_path")}
    model = cls(config.replace(**paths), tokenizer=tokenizer, build_reconstruction=build_reconstruction)
    model.config = model.processor.config = config
    return model


def _str(path: str | Path | None) -> str | None:
    return None if path is None else str(path)


def _assign(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    expected = set(module.state_dict())
    missing = sorted(expected - set(state))
    if missing:
        raise CheckpointError(f"{what}: missing {len(missing)} tensors, e.g. {missing[:5]}")
    try:
        module.load_state_dict({k: state[k] for k in expected}, strict=True, assign=True)
    except RuntimeError as error:
        raise CheckpointError(f"{what}: {error}") from error


def _hf_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{what} directory {path} lacks config.json (expected a local HF model directory)")
    return path


def _llm_fields(hf: Any) -> dict[str, Any]:
    rope = getattr(hf, "rope_parameters", None) or {}
    return {"hidden_size": hf.hidden_size, "intermediate_size": hf.intermediate_size,
            "num_hidden_layers": hf.num_hidden_layers, "num_attention_heads": hf.num_attention_heads,
            "num_key_value_heads": hf.num_key_value_heads, "vocab_size": hf.vocab_size,
            "max_position_embeddings": hf.max_position_embeddings,
            "rope_theta": float(rope.get("rope_theta", getattr(hf, "rope_theta", 10000.0))),
            "rms_norm_eps": hf.rms_norm_eps, "tie_word_embeddings": bool(hf.tie_word_embeddings)}


def _vision_fields(hf: Any, feature_layer: int) -> dict[str, Any]:
    return {"hidden_size": hf.hidden_size, "intermediate_size": hf.intermediate_size,
            "num_hidden_layers": hf.num_hidden_layers, "num_attention_heads": hf.num_attention_heads,
            "image_size": hf.image_size, "patch_size": hf.patch_size, "layer_norm_eps": hf.layer_norm_eps,
            "feature_layer": feature_layer}
