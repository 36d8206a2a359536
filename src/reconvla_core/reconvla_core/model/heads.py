"""The small modules around the ReconVLA's LLM: the parallel action head (OpenVLA-OFT), the vision
tower's instruction FiLM, the training-only gaze-colour head, and the parallel head's attention mask.
``modeling_reconvla.ReconVLA`` wires them together."""

from __future__ import annotations

import torch
from torch import nn

from reconvla_core.model.configuration_reconvla import ReconVLAConfig


class ParallelActionHead(nn.Module):
    """OpenVLA-OFT's parallel decoding: K learned action queries (one per chunk step) whose final hidden
    states an MLP maps to normalised continuous actions. The queries' input embeddings start at the
    scale of the LLM's token embeddings."""

    def __init__(self, config: ReconVLAConfig) -> None:
        super().__init__()
        d = config.llm.hidden_size
        self.queries = nn.Parameter(torch.randn(config.chunk_size, d) * 0.02)
        # action_head_state: the normalised state and the keypoint coordinates join every query's input.
        self.geometry_dim = (config.state_dim + 2 * config.spatial_keypoints) if config.action_head_state else 0
        self.mlp = build_action_mlp(config, self.geometry_dim)
        if self.geometry_dim and config.standardize_head_inputs:
            # Dataset statistics, fixed before training and saved with the weights (no batch statistics:
            # they would differ per process under DDP and between training and inference).
            self.register_buffer("geometry_shift", torch.zeros(self.geometry_dim))
            self.register_buffer("geometry_scale", torch.ones(self.geometry_dim))

    def set_geometry_stats(self, shift: torch.Tensor, scale: torch.Tensor) -> None:
        """Standardise the geometry input as (geometry - shift) / scale (standardize_head_inputs)."""
        if not hasattr(self, "geometry_shift"):
            raise ValueError("set_geometry_stats needs action_head_state and standardize_head_inputs")
        shift, scale = torch.as_tensor(shift, dtype=torch.float32), torch.as_tensor(scale, dtype=torch.float32)
        if shift.shape != (self.geometry_dim,) or scale.shape != (self.geometry_dim,):
            raise ValueError(f"geometry stats must have shape ({self.geometry_dim},), got {tuple(shift.shape)} "
                             f"and {tuple(scale.shape)}")
        if not (torch.isfinite(shift).all() and torch.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("geometry stats must be finite with a positive scale")
        self.geometry_shift.copy_(shift)
        self.geometry_scale.copy_(scale)

    def forward(self, query_hidden: torch.Tensor, geometry: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K, D_llm) query hidden states (+ (B, geometry_dim) state and keypoints) -> (B, K, action_dim)
        normalised actions."""
        if self.geometry_dim:
            if geometry is None or geometry.shape[-1] != self.geometry_dim:
                raise ValueError(f"action_head_state needs the (B, {self.geometry_dim}) normalised state and "
                                 "keypoints; build the batch with model.processor")
            if hasattr(self, "geometry_shift"):
                geometry = (geometry.float() - self.geometry_shift) / self.geometry_scale
            expanded = geometry.to(query_hidden.dtype)[:, None, :].expand(-1, query_hidden.shape[1], -1)
            return self.mlp(query_hidden, expanded)
        return self.mlp(query_hidden)

    def rebuild_mlp(self, config: ReconVLAConfig) -> None:
        """Fresh weights for the MLP that ``config.action_head_mlp`` names; the queries and the
        geometry stats stay (``reconvla fit-head``, a finetune switching ``action_head_mlp``)."""
        reference = self.queries
        self.mlp = build_action_mlp(config, self.geometry_dim).to(device=reference.device, dtype=reference.dtype)


class ConcatActionMLP(nn.Sequential):
    """``action_head_mlp: concat``: one hidden layer as wide as the query state, over the query state
    and the geometry side by side. A Sequential, so checkpoints from before the option load as they are."""

    def __init__(self, config: ReconVLAConfig, geometry_dim: int) -> None:
        d = config.llm.hidden_size
        super().__init__(nn.Linear(d + geometry_dim, d), nn.GELU(), nn.Linear(d, config.action_dim))

    def forward(self, query_hidden: torch.Tensor, geometry: torch.Tensor | None = None) -> torch.Tensor:
        x = query_hidden if geometry is None else torch.cat([query_hidden, geometry], dim=-1)
        return super().forward(x)


class BottleneckActionMLP(nn.Module):
    """``action_head_mlp: bottleneck``: the query state narrowed to ``BOTTLENECK`` numbers, then two
    ``WIDTH``-wide hidden layers over them and the geometry. In the concat MLP the 128-wide query state
    outweighs the 23 geometry numbers; here the geometry drives the chunk as the privileged MLP's
    inputs drive its own (docs/study_recon.md, fourteenth session: 1.21 -> 1.75 given the true gaze)."""

    BOTTLENECK = 32
    WIDTH = 256

    def __init__(self, config: ReconVLAConfig, geometry_dim: int) -> None:
        super().__init__()
        self.narrow = nn.Sequential(nn.LayerNorm(config.llm.hidden_size), nn.Linear(config.llm.hidden_size, self.BOTTLENECK))
        self.net = nn.Sequential(nn.Linear(self.BOTTLENECK + geometry_dim, self.WIDTH), nn.GELU(),
                                 nn.Linear(self.WIDTH, self.WIDTH), nn.GELU(), nn.Linear(self.WIDTH, config.action_dim))

    def forward(self, query_hidden: torch.Tensor, geometry: torch.Tensor | None = None) -> torch.Tensor:
        x = self.narrow(query_hidden)
        return self.net(x if geometry is None else torch.cat([x, geometry], dim=-1))


def build_action_mlp(config: ReconVLAConfig, geometry_dim: int) -> nn.Module:
    """The parallel head's MLP that ``config.action_head_mlp`` names."""
    if config.action_head_mlp == "bottleneck":
        return BottleneckActionMLP(config, geometry_dim)
    return ConcatActionMLP(config, geometry_dim)


class VisionFiLM(nn.Module):
    """Per vision block, a scale and shift of the features from the pooled instruction embedding
    (OpenVLA-OFT+). Zero-initialised: a fresh FiLM leaves the tower's features unchanged."""

    def __init__(self, config: ReconVLAConfig) -> None:
        super().__init__()
        self.num_layers = config.vision.num_layers_kept
        self.width = config.vision.hidden_size
        self.proj = nn.Linear(config.llm.hidden_size, 2 * self.num_layers * self.width)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, instruction_embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D_llm) -> scales and shifts, each (layers, B, 1, D_vision)."""
        out = self.proj(instruction_embedding).view(-1, self.num_layers, 2, 1, self.width)
        return out[:, :, 0].transpose(0, 1), out[:, :, 1].transpose(0, 1)


def mean_over_valid(per_row: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of a (B,) per-row loss over the rows with a gaze box; rows without one count zero."""
    weight = valid.float()
    return (per_row * weight).sum() / weight.sum().clamp(min=1.0)


class GazeColourHead(nn.Module):
    """Training only (``gaze_colour_weight``): from the pooled instruction embedding, two guesses of the
    gaze region's mean RGB (the object, then its destination); inference never runs it."""

    GUESSES = 2

    def __init__(self, config: ReconVLAConfig) -> None:
        super().__init__()
        width = config.llm.hidden_size
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, self.GUESSES * 3))

    def forward(self, instruction_embedding: torch.Tensor) -> torch.Tensor:
        """(B, D_llm) -> (B, GUESSES, 3) colours in [0, 1] units."""
        return self.mlp(instruction_embedding).view(-1, self.GUESSES, 3)

    @staticmethod
    def loss(guesses: torch.Tensor, colour: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """L1 of the nearer guess to the gaze region's colour; frames without a box count zero."""
        error = (guesses.float() - colour.float()[:, None]).abs().sum(dim=-1).min(dim=1).values  # (B,)
        return mean_over_valid(error, valid)


def chunk_attention_mask(attention_mask: torch.Tensor, query_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive (B, 1, L, L) mask of the parallel head: causal over the prompt, the action queries
    see the whole prompt and each other (bidirectionally); padding is never attended to."""
    length = attention_mask.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
    between_queries = query_mask[:, :, None] & query_mask[:, None, :]  # (B, L, L)
    allowed = (causal[None] | between_queries) & attention_mask.bool()[:, None, :]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]
