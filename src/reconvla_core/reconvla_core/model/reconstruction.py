"""Reconstruction branch (training only): frozen VAE target, DiT denoiser, diffusion loss.

The LLM's last-layer hidden states at the image positions (h_R, after the final norm, no
stop-gradient) condition a small DiT that denoises the VAE latents of the gaze image. Latents are
packed 2x2 so there is exactly one latent token per image token. DDPM with a cosine schedule,
epsilon prediction, MSE, several noise draws per sample; the denoiser runs in fp32.

This module imports diffusers; the model imports it only when the branch is built.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler
from torch import nn

from reconvla_core.model.configuration_reconvla import DenoiserConfig, ReconVLAConfig, VAEConfig

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# VAE and latent packing
# ----------------------------------------------------------------------------------------------
def build_autoencoder(config: VAEConfig) -> AutoencoderKL:
    """A randomly initialised AutoencoderKL with the configured geometry."""
    n = len(config.block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(config.block_out_channels), layers_per_block=config.layers_per_block,
        latent_channels=config.latent_channels, norm_num_groups=config.norm_num_groups,
        sample_size=config.image_size, scaling_factor=config.scaling_factor, shift_factor=config.shift_factor,
        use_quant_conv=config.use_quant_conv, use_post_quant_conv=config.use_post_quant_conv,
    )


def load_autoencoder(path: str | Path) -> AutoencoderKL:
    """A diffusers AutoencoderKL from a local directory (config.json + weights); never downloads."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"VAE directory {path} lacks config.json (expected a diffusers AutoencoderKL)")
    return AutoencoderKL.from_pretrained(str(path), local_files_only=True)


def vae_config_from_autoencoder(vae: AutoencoderKL, image_size: int) -> dict:
    """The VAEConfig fields that describe a loaded AutoencoderKL (latent channels, scaling, shift...)."""
    cfg = vae.config
    return {
        "latent_channels": int(cfg.latent_channels), "block_out_channels": tuple(cfg.block_out_channels),
        "layers_per_block": int(cfg.layers_per_block), "norm_num_groups": int(cfg.norm_num_groups),
        "scaling_factor": float(cfg.scaling_factor),
        "shift_factor": None if cfg.get("shift_factor") is None else float(cfg.shift_factor),
        "use_quant_conv": bool(cfg.get("use_quant_conv", True)),
        "use_post_quant_conv": bool(cfg.get("use_post_quant_conv", True)), "image_size": image_size,
    }


class FrozenVAE(nn.Module):
    """AutoencoderKL in eval mode without gradients; scaling and shift come from its own config."""

    def __init__(self, autoencoder: AutoencoderKL) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.autoencoder.requires_grad_(False)
        self.autoencoder.eval()
        self.latent_channels = int(autoencoder.config.latent_channels)
        self.scaling_factor = float(autoencoder.config.scaling_factor)
        shift = autoencoder.config.get("shift_factor")
        self.shift_factor = 0.0 if shift is None else float(shift)  # an SD VAE has no shift

    def train(self, mode: bool = True) -> FrozenVAE:
        return super().train(False)  # always frozen

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels in [-1, 1] (B, 3, H, W) -> scaled latents (B, C, H/f, W/f), a posterior sample."""
        dtype = next(self.autoencoder.parameters()).dtype
        posterior = self.autoencoder.encode(pixels.to(dtype)).latent_dist
        latents = posterior.sample(generator=generator)
        return (latents.float() - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> pixels in [-1, 1]."""
        dtype = next(self.autoencoder.parameters()).dtype
        latents = latents / self.scaling_factor + self.shift_factor
        return self.autoencoder.decode(latents.to(dtype)).sample.float().clamp(-1, 1)


def pack_latents(latents: torch.Tensor, grid_size: int) -> torch.Tensor:
    """(B, C, 2g, 2g) latents -> (B, g*g, 4C) tokens, one per image token (2x2 patches)."""
    b, c, h, w = latents.shape
    if h != 2 * grid_size or w != 2 * grid_size:
        raise ValueError(f"VAE latents are {h}x{w} but the {grid_size}x{grid_size} image-token grid needs "
                         f"{2 * grid_size}x{2 * grid_size} latents for 2x2 packing; change the VAE image size")
    x = latents.view(b, c, grid_size, 2, grid_size, 2)  # (B, C, g, 2, g, 2)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, g, g, C, 2, 2)
    return x.reshape(b, grid_size * grid_size, c * 4)  # (B, N, 4C)


def unpack_latents(tokens: torch.Tensor, grid_size: int) -> torch.Tensor:
    """(B, g*g, 4C) tokens -> (B, C, 2g, 2g) latents (inverse of pack_latents)."""
    b, n, d = tokens.shape
    if n != grid_size * grid_size or d % 4:
        raise ValueError(f"cannot unpack {n} tokens of width {d} onto a {grid_size}x{grid_size} grid")
    c = d // 4
    x = tokens.view(b, grid_size, grid_size, c, 2, 2).permute(0, 3, 1, 4, 2, 5)  # (B, C, g, 2, g, 2)
    return x.reshape(b, c, 2 * grid_size, 2 * grid_size)


# ----------------------------------------------------------------------------------------------
# DiT denoiser with per-token adaLN-Zero
# ----------------------------------------------------------------------------------------------
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_pos_embed_2d(width: int, grid_size: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (grid*grid, width), as in MAE / DiT."""
    if width % 4:
        raise ValueError(f"denoiser width {width} must be divisible by 4 for the 2-D position embedding")
    coords = torch.arange(grid_size, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(width // 4, dtype=torch.float64) / (width / 4))

    def embed(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega[None]  # (N, W/4)
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)  # (N, W/2)

    return torch.cat([embed(yy), embed(xx)], dim=1).float()  # (N, W)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int, freq_dim: int) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim))  # (B, W)


class DiTBlock(nn.Module):
    """Pre-norm transformer block whose norms are modulated per token (adaLN-Zero)."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, w // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, H, N, W/H)
        return self.proj(out.transpose(1, 2).reshape(b, n, w))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # c: (B, N, W) per-token condition
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate1 * self.attention(modulate(self.norm1(x), shift1, scale1))
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class GazeDenoiser(nn.Module):
    """Predicts the noise in packed latent tokens, conditioned per token on h_R and the timestep."""

    def __init__(self, config: DenoiserConfig, latent_dim: int, cond_dim: int, grid_size: int) -> None:
        super().__init__()
        width = config.width
        self.x_embed = nn.Linear(latent_dim, width)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(width, grid_size)[None], persistent=False)
        self.t_embed = TimestepEmbedder(width, config.timestep_freq_dim)
        self.cond_norm = nn.LayerNorm(cond_dim, elementwise_affine=False)
        self.cond_proj = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, width))
        self.blocks = nn.ModuleList(DiTBlock(width, config.num_heads, config.mlp_ratio) for _ in range(config.depth))
        self.final = FinalLayer(width, latent_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for mlp_layer in (self.t_embed.mlp[0], self.t_embed.mlp[2]):
            nn.init.normal_(mlp_layer.weight, std=0.02)
        for block in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, h_r: torch.Tensor) -> torch.Tensor:
        # x_t: (B, N, C) noisy latent tokens; t: (B,); h_r: (B, N, D_llm)
        x = self.x_embed(x_t) + self.pos_embed  # (B, N, W)
        c = self.t_embed(t)[:, None, :] + self.cond_proj(self.cond_norm(h_r))  # (B, N, W)
        for block in self.blocks:
            x = block(x, c)
        return self.final(x, c)  # (B, N, C)


# ----------------------------------------------------------------------------------------------
# The branch: target encoding + diffusion loss + (visualisation) sampling
# ----------------------------------------------------------------------------------------------
class ReconstructionBranch(nn.Module):
    """Frozen VAE + denoiser + DDPM noise schedule."""

    def __init__(self, config: ReconVLAConfig, autoencoder: AutoencoderKL | None = None) -> None:
        super().__init__()
        self.grid_size = config.grid_size
        self.num_noise_draws = config.num_noise_draws
        self.vae = FrozenVAE(autoencoder if autoencoder is not None else build_autoencoder(config.vae))
        if self.vae.latent_channels * 4 != config.latent_token_dim:
            raise ValueError(f"the VAE has {self.vae.latent_channels} latent channels but the config says "
                             f"{config.vae.latent_channels}")
        self.denoiser = GazeDenoiser(config.denoiser, config.latent_token_dim, config.llm.hidden_size,
                                     config.grid_size)
        self.scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps,
                                       beta_schedule=config.beta_schedule, prediction_type="epsilon",
                                       clip_sample=False)

    def encode_target(self, pixels: torch.Tensor) -> torch.Tensor:
        """Target pixels (B, 3, V, V) in [-1, 1] -> packed latent tokens (B, N, 4C)."""
        return pack_latents(self.vae.encode(pixels), self.grid_size)

    def loss(self, h_r: torch.Tensor, target_pixels: torch.Tensor) -> torch.Tensor:
        """Epsilon-MSE averaged over ``num_noise_draws`` noise/timestep draws per sample."""
        x0 = self.encode_target(target_pixels)  # (B, N, C), no grad
        draws = self.num_noise_draws
        dtype = self.denoiser.x_embed.weight.dtype  # fp32 unless someone cast the whole model
        with torch.autocast(device_type=h_r.device.type, enabled=False):
            x0 = x0.float().repeat_interleave(draws, dim=0)  # (B*n, N, C)
            cond = h_r.to(dtype).repeat_interleave(draws, dim=0)  # (B*n, N, D)
            t = torch.randint(0, self.scheduler.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
            noise = torch.randn_like(x0)
            x_t = self.scheduler.add_noise(x0, noise, t)
            eps = self.denoiser(x_t.to(dtype), t, cond)
            return F.mse_loss(eps.float(), noise)

    @torch.no_grad()
    def sample(self, h_r: torch.Tensor, num_steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """A few-step DDIM sample of the gaze image from h_R; pixels (B, 3, V, V) in [-1, 1]."""
        scheduler = DDIMScheduler.from_config(self.scheduler.config, timestep_spacing="trailing")
        scheduler.set_timesteps(num_steps, device=h_r.device)
        cond = h_r.to(self.denoiser.x_embed.weight.dtype)
        b, n, _ = cond.shape
        x = torch.randn((b, n, self.denoiser.final.linear.out_features), generator=generator,
                        device=cond.device if generator is None else generator.device).to(cond.device)
        with torch.autocast(device_type=h_r.device.type, enabled=False):
            for t in scheduler.timesteps:
                eps = self.denoiser(x.to(cond.dtype), t.expand(b).to(cond.device), cond)
                x = scheduler.step(eps.float(), t, x).prev_sample
        return self.vae.decode(unpack_latents(x, self.grid_size))
