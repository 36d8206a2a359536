"""Training step time with the reconstruction branch and without it (recon_target none), side by side.

One model, one batch: steps alternate between the full batch (action CE + reconstruction diffusion
loss: VAE encode of the gaze image, denoiser forward/backward) and the same batch without the
reconstruction target (the branch is skipped: exactly what a recon_target none model computes; the
denoiser gets no gradient and the optimiser skips it). A step = forward, backward, gradient
clipping, optimiser step. The ratio with/without is the branch's cost.

    reconvla bench train --json              # tiny on CPU, plus the paper geometry when a big GPU is there
    reconvla bench train --preset paper --random-init --device cuda --dtype bf16 --json   # 7B geometry only

Paper geometry on one GPU: the VLA's weights in bf16 (the denoiser stays fp32, as the model
computes it), gradient checkpointing, a small batch, fused AdamW (``--optimizer sgd`` needs no
optimiser state if memory is short).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from typing import Any

logger = logging.getLogger(__name__)

QUICK_OVERRIDES = {"steps": 3, "warmup": 1}
PAPER_MIN_GPU_GIB = 70  # the paper geometry's step at batch 2 peaks at ~59 GiB on an H100 (bf16, AdamW)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=("auto", "tiny", "paper"), default="auto",
                        help="model geometry; auto (default): tiny on the CPU, and also paper (bf16, GPU) when a "
                        f"CUDA GPU with >= {PAPER_MIN_GPU_GIB} GiB is available")
    parser.add_argument("--random-init", action="store_true",
                        help="random weights (the only mode: no backbone weights are loaded; accepted for clarity)")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda for paper when available, else cpu)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default=None,
                        help="VLA weight dtype (default fp32 for tiny, bf16 for paper)")
    parser.add_argument("--batch-size", type=int, default=None, help="samples per step (default 8 tiny, 2 paper)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 10 tiny, 6 paper)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--gradient-checkpointing", choices=("auto", "on", "off"), default="auto",
                        help="activation checkpointing in the LLM (auto: on for paper)")
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    parser.add_argument("--recon-target", choices=("gaze", "full"), default="gaze",
                        help="the reconstruction target of the 'with' variant")
    parser.add_argument("--tf32", choices=("on", "off"), default="on",
                        help="TF32 tensor cores for fp32 matmuls/convs on CUDA (the fp32 denoiser; default on, "
                        "as train.allow_tf32)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the branch's parts alone: VAE encode of the target, denoiser loss fwd+bwd")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One preset, or (auto) tiny on the CPU with the paper geometry under "paper" when a GPU allows."""
    if args.preset != "auto":
        return run_preset(args)
    import torch

    result = run_preset(argparse.Namespace(**{**vars(args), "preset": "tiny", "device": "cpu", "dtype": None}))
    if not torch.cuda.is_available():
        result["paper"] = {"skipped": "no CUDA GPU"}
        return result
    total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    if total_gib < PAPER_MIN_GPU_GIB:
        result["paper"] = {"skipped": f"GPU has {total_gib:.0f} GiB, the paper geometry needs ~{PAPER_MIN_GPU_GIB}"}
        return result
    paper_args = argparse.Namespace(**{**vars(args), "preset": "paper", "device": "cuda", "dtype": "bf16",
                                       "batch_size": None})  # its own batch default; --steps applies to both
    try:
        result["paper"] = run_preset(paper_args)
    except torch.cuda.OutOfMemoryError as error:
        result["paper"] = {"error": f"out of GPU memory: {str(error).splitlines()[0]}"}
    return result


def run_preset(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    paper = args.preset == "paper"
    device = torch.device(args.device or ("cuda" if paper and torch.cuda.is_available() else "cpu"))
    dtype_name = args.dtype or ("bf16" if paper else "fp32")
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    batch_size = args.batch_size or (2 if paper else 8)
    steps = args.steps or (6 if paper else 10)
    checkpointing = args.gradient_checkpointing == "on" or (args.gradient_checkpointing == "auto" and paper)
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32 == "on"
        torch.backends.cudnn.allow_tf32 = args.tf32 == "on"

    started = time.perf_counter()
    model = build_model(args.preset, args.recon_target, device, dtype)
    build_s = time.perf_counter() - started
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    params = [p for group in model.parameter_groups().values() for p in group]
    if args.optimizer == "adamw":
        fused = device.type == "cuda"
        optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0, fused=fused, foreach=None if fused else False)
    else:
        optimizer = torch.optim.SGD(params, lr=1e-5)
    batch = synthetic_batch(model, batch_size, device, args.seed)
    without = {k: v for k, v in batch.items() if k != "recon_pixel_values"}

    variants = {"with_recon": batch, "without_recon": without}
    times: dict[str, list[float]] = {name: [] for name in variants}
    losses: dict[str, float] = {}
    for name, data in variants.items():  # warm-up (allocator, kernels) outside the timing
        for _ in range(args.warmup):
            losses[name] = train_step(model, optimizer, params, data, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(steps):
        order = list(variants) if i % 2 == 0 else list(reversed(variants))  # alternate: no drift bias
        for name in order:
            t0 = time.perf_counter()
            losses[name] = train_step(model, optimizer, params, variants[name], device)
            times[name].append(time.perf_counter() - t0)

    with_s = statistics.median(times["with_recon"])
    without_s = statistics.median(times["without_recon"])
    counts = model.parameter_counts()
    result: dict[str, Any] = {
        "preset": args.preset,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": dtype_name,
        "batch_size": batch_size,
        "gradient_checkpointing": checkpointing,
        "optimizer": args.optimizer,
        "tf32": args.tf32 == "on" and device.type == "cuda",
        "recon_target": args.recon_target,
        "steps_timed": steps,
        "step_s_with_recon": with_s,
        "step_s_without_recon": without_s,
        "ratio": with_s / without_s,
        "recon_overhead_pct": 100.0 * (with_s / without_s - 1.0),
        "samples_per_s_with_recon": batch_size / with_s,
        "samples_per_s_without_recon": batch_size / without_s,
        "step_s_with_recon_all": times["with_recon"],
        "step_s_without_recon_all": times["without_recon"],
        "loss_with_recon": losses["with_recon"],
        "loss_without_recon": losses["without_recon"],
        "params_llm": counts["params_llm"],
        "params_denoiser": counts["params_denoiser"],
        "params_total": counts["params_total"],
        "build_s": build_s,
        "without_recon_means": "same model and batch, reconstruction target dropped: the branch is skipped "
                               "as with recon_target none",
    }
    if args.breakdown and model.reconstruction is not None:
        result.update(branch_breakdown(model, batch, device, steps))
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if args.preset == "paper" and result["recon_overhead_pct"] > 15.0:
        logger.warning("reconstruction branch costs %.1f%% extra step time (target <= 15%%)",
                       result["recon_overhead_pct"])
    return result


def build_model(preset: str, recon_target: str, device: Any, dtype: Any) -> Any:
    """A random-weight ReconVLA built directly on the device; the VLA in ``dtype``, the denoiser fp32."""
    import torch

    from reconvla_core.model import ReconVLA, ReconVLAConfig

    config = ReconVLAConfig.from_preset(preset, recon_target=recon_target)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build 7B weights once, in their final dtype, on the device
    try:
        with torch.device(device):
            model = ReconVLA(config)
    finally:
        torch.set_default_dtype(previous)
    if model.reconstruction is not None:
        model.reconstruction.denoiser.float()  # the diffusion loss runs in fp32
    model.set_norm_stats(_unit_stats(config.action_dim, config.state_dim))
    return model


def _unit_stats(action_dim: int, state_dim: int) -> dict[str, Any]:
    def one(n: int) -> dict[str, list[float]]:
        return {"min": [-1.0] * n, "max": [1.0] * n, "q01": [-1.0] * n, "q99": [1.0] * n,
                "mean": [0.0] * n, "std": [0.5] * n}

    return {"action": one(action_dim), "observation.state": one(state_dim)}


def synthetic_batch(model: Any, batch_size: int, device: Any, seed: int) -> dict[str, Any]:
    """Random camera frames, state and actions through the model's own processor."""
    import numpy as np

    rng = np.random.default_rng(seed)
    config = model.config
    samples = []
    for _ in range(batch_size):
        samples.append(model.processor(
            base_image=rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),
            wrist_image=rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),
            instruction="put the red block in the blue bowl",
            state=rng.uniform(-0.9, 0.9, config.state_dim),
            actions=rng.uniform(-0.9, 0.9, (config.chunk_size, config.action_dim)),
            gaze_box=np.array([0.3, 0.3, 0.6, 0.7]),
        ))
    batch = model.processor.collate(samples)
    return {k: v.to(device) for k, v in batch.items()}


def branch_breakdown(model: Any, batch: dict[str, Any], device: Any, steps: int) -> dict[str, float]:
    """Median time of the reconstruction branch's parts alone: the frozen VAE encoding the target, and
    the denoiser's diffusion loss forward + backward on a stand-in condition h_R."""
    import torch

    recon = model.reconstruction
    pixels = batch["recon_pixel_values"]
    b, n, d = pixels.shape[0], model.config.num_image_tokens, model.config.llm.hidden_size
    h_r = torch.randn(b, n, d, device=device, dtype=model.projector[0].weight.dtype, requires_grad=True)

    def timed(fn: Any) -> float:
        times = []
        for _ in range(steps + 1):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
        return statistics.median(times[1:])

    def vae() -> None:
        with torch.no_grad():
            recon.encode_target(pixels)

    def denoiser() -> None:
        recon.loss(h_r, pixels).backward()  # includes one VAE encode
        recon.denoiser.zero_grad(set_to_none=True)

    vae_s = timed(vae)
    loss_s = timed(denoiser)
    return {"vae_encode_s": vae_s, "denoiser_fwd_bwd_s": max(0.0, loss_s - vae_s)}


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model: Any, optimizer: Any, params: list[Any], batch: dict[str, Any], device: Any) -> float:
    import torch

    out = model(batch)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss = float(out.loss.detach())  # synchronises the device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return loss
