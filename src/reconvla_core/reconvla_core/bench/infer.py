"""Action-chunk latency of the two action heads, and of our token decoder vs transformers generate().

Token head: our constrained KV-cache decoder and the naive ``generate()`` start from the same prompt
embeddings (image features spliced in) and produce one chunk of K*D tokens with the same weights.
Reported: p50/p99 of each, the speedup (naive_p50_ms / p50_ms) and whether both give the same
actions. Also the end-to-end ``predict_action`` latency (pre-processing + vision + decoding).

Parallel head: the same backbone with ``action_head="parallel"`` (the checkpoint's other head is a
random-weight twin built from its config: only its speed is measured). Per chunk, from the prepared
prompt (image features spliced in), alternating so both see the same machine load: ``tokens_p50_ms``
(our KV-cache decoder, K*D tokens), ``parallel_p50_ms`` (one pass over prompt + K queries) and
``parallel_speedup`` (tokens p50 / parallel p50); end to end (pre-processing + vision + the head),
``predict_action_tokens_p50_ms`` and ``predict_action_parallel_p50_ms``.

Without ``--checkpoint`` or ``--random-init`` the tiny model is first fitted for a few steps on the
benchmark observation, so that its unconstrained greedy output is a real action chunk and the
"identical" check means something (a random model's unconstrained argmax is rarely an action token).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from reconvla_core.policy import DTYPE_SHORT_NAMES

logger = logging.getLogger(__name__)

QUICK_OVERRIDES = {"iters": 10, "warmup": 2}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=("tiny", "paper"), default="tiny", help="model preset (default tiny)")
    parser.add_argument("--checkpoint", default=None, help="a ReconVLA checkpoint directory instead of a preset")
    parser.add_argument("--random-init", action="store_true",
                        help="random weights, no fitting (fine for speed; 'identical' is then usually false)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    parser.add_argument("--dtype", choices=sorted(DTYPE_SHORT_NAMES), default="fp32", help="weights dtype (default fp32)")
    parser.add_argument("--iters", type=int, default=30, help="timed chunks per decoder (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed chunks per decoder first (default 3)")
    parser.add_argument("--fit-steps", type=int, default=None,
                        help="training steps on the benchmark observation before timing "
                             "(default 60 for a fresh tiny model, 0 otherwise)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked but torch sees no CUDA device")
    dtype = getattr(torch, DTYPE_SHORT_NAMES[args.dtype])
    model, source = _build_model(args, device, dtype)
    obs = _observation(args.seed)
    token_model, parallel_model = _head_pair(model, device, dtype)
    model = token_model
    fit_steps = args.fit_steps
    if fit_steps is None:
        fit_steps = 60 if (args.checkpoint is None and not args.random_init and args.preset == "tiny") else 0
    fit_loss = _fit(model, obs, fit_steps) if fit_steps > 0 else None
    model.eval()

    embeds, _ = model.prepare_prompt(obs["base_image"], obs["wrist_image"], obs["instruction"], obs["state"])
    # Interleaved (ours, naive, ours, ...) so both see the same machine load.
    (ours_ms, ours_tokens), (naive_ms, naive_tokens) = _time_pair(
        lambda: model.decode_action_tokens(embeds), lambda: model.naive_decode_tokens(embeds),
        device, args.iters, args.warmup)
    prefill_ms, _ = _time(lambda: _prefill(model, embeds), device, max(3, args.iters // 3), 1)
    e2e_ms, _ = _time(lambda: model.predict_action(obs["base_image"], obs["wrist_image"], obs["instruction"],
                                                   obs["state"]), device, max(3, args.iters // 3), 1)
    def predict(head_model: Any) -> Any:
        return head_model.predict_action(obs["base_image"], obs["wrist_image"], obs["instruction"], obs["state"])

    parallel_embeds, masks = parallel_model._embed_observation(obs["base_image"], obs["wrist_image"],
                                                               obs["instruction"], obs["state"], None)

    def parallel_chunk() -> Any:
        with torch.inference_mode():
            return parallel_model.run_parallel(parallel_embeds, masks["attention_mask"], masks["action_query_mask"],
                                               geometry=masks.get("geometry"))[1]

    (tokens_ms, _), (parallel_ms, _) = _time_pair(lambda: model.decode_action_tokens(embeds), parallel_chunk,
                                                  device, args.iters, args.warmup)
    (e2e_tokens_ms, _), (e2e_parallel_ms, _) = _time_pair(lambda: predict(token_model), lambda: predict(parallel_model),
                                                          device, max(3, args.iters // 3), 1)
    tokens_p50, parallel_p50 = float(np.percentile(tokens_ms, 50)), float(np.percentile(parallel_ms, 50))
    ours_actions = model.processor.decode_actions(ours_tokens.cpu().numpy(), state=obs["state"])
    naive_actions = _try_decode(model, naive_tokens, obs["state"])
    identical = naive_actions is not None and bool(np.array_equal(ours_actions, naive_actions))
    p50, naive_p50 = float(np.percentile(ours_ms, 50)), float(np.percentile(naive_ms, 50))
    result: dict[str, Any] = {
        "p50_ms": round(p50, 3), "p99_ms": round(float(np.percentile(ours_ms, 99)), 3),
        "naive_p50_ms": round(naive_p50, 3), "naive_p99_ms": round(float(np.percentile(naive_ms, 99)), 3),
        "speedup": round(naive_p50 / p50, 3), "identical": identical,
        "predict_action_p50_ms": round(float(np.percentile(e2e_ms, 50)), 3),
        "prefill_p50_ms": round(float(np.percentile(prefill_ms, 50)), 3),
        "tokens_p50_ms": round(tokens_p50, 3), "parallel_p50_ms": round(parallel_p50, 3),
        "parallel_speedup": round(tokens_p50 / parallel_p50, 3),
        "predict_action_tokens_p50_ms": round(float(np.percentile(e2e_tokens_ms, 50)), 3),
        "predict_action_parallel_p50_ms": round(float(np.percentile(e2e_parallel_ms, 50)), 3),
        "tokens_per_chunk": model.config.answer_tokens_per_chunk,
        "prompt_tokens": int(embeds.shape[1]), "preset": model.config.preset, "weights": source,
        "fit_steps": fit_steps, "fit_final_loss": fit_loss, "device": str(device), "dtype": args.dtype,
        "iters": args.iters, "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    logger.info("ours p50 %.2f ms, naive p50 %.2f ms, identical=%s; predict_action tokens %.2f ms vs parallel "
                "%.2f ms", p50, naive_p50, identical, tokens_p50, parallel_p50)
    return result


@contextlib.contextmanager
def _default_device_dtype(device: Any, dtype: Any) -> Iterator[None]:
    """Build weights directly on the device in the target dtype (a 7B model never touches host RAM)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _build_model(args: argparse.Namespace, device: Any, dtype: Any) -> tuple[Any, str]:
    from reconvla_core.model import ReconVLA, ReconVLAConfig
    from reconvla_core.model.action_tokenizer import piper_norm_stats
    from reconvla_core.policy import load_model

    if args.checkpoint:
        model = load_model(args.checkpoint, device=device, dtype=DTYPE_SHORT_NAMES[args.dtype])
        source = f"checkpoint {args.checkpoint}"
    else:
        config = ReconVLAConfig.from_preset(args.preset)
        fits = not args.random_init and args.preset == "tiny"
        # Inference never builds the reconstruction branch; fitting (tiny only) trains actions only.
        with _default_device_dtype(device, dtype):
            model = ReconVLA(config, build_reconstruction=False)
        source = "random init" + (" + fitted on the benchmark observation" if fits else "")
    if model.norm_stats is None:
        model.set_norm_stats(piper_norm_stats())
    return model, source


def _head_pair(model: Any, device: Any, dtype: Any) -> tuple[Any, Any]:
    """(token-head model, parallel-head model) on the same backbone config: the given model is one of
    them, the other a random-weight twin (built without the reconstruction branch) for timing."""
    from reconvla_core.model import ReconVLA

    twin_head = "tokens" if model.config.action_head == "parallel" else "parallel"
    twin_config = model.config.replace(action_head=twin_head, answer_box=False)
    with _default_device_dtype(device, dtype):
        twin = ReconVLA(twin_config, tokenizer=model.tokenizer, build_reconstruction=False)
    twin.set_norm_stats(model.norm_stats)
    twin.eval()
    return (twin, model) if twin_head == "tokens" else (model, twin)


def _observation(seed: int) -> dict[str, Any]:
    from reconvla_core import piper

    rng = np.random.default_rng(seed)
    low, high = np.array(piper.JOINT_LOWER + (piper.GRIPPER_MIN,)), np.array(piper.JOINT_UPPER + (piper.GRIPPER_MAX,))
    state = low + (high - low) * rng.uniform(0.2, 0.8, size=7)
    actions = state + (high - low) * 0.02 * np.cumsum(rng.normal(size=(5, 7)), axis=0)
    return {"base_image": rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),
            "wrist_image": rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),
            "instruction": "put the red block in the blue bowl", "state": state,
            "actions": np.clip(actions, low, high)}


def _fit(model: Any, obs: dict[str, Any], steps: int) -> float:
    """A few Adam steps on one observation so the model emits its action chunk (tiny preset only)."""
    import torch

    k = model.config.chunk_size
    sample = model.processor(base_image=obs["base_image"], wrist_image=obs["wrist_image"],
                             instruction=obs["instruction"], state=obs["state"], actions=obs["actions"][:k])
    batch = model.processor.collate([sample])
    params = [p for group in model.parameter_groups().values() for p in group]
    optimizer = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    model.train()
    loss = float("nan")
    for _ in range(steps):
        out = model(batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = float(out.loss.detach())
    model.eval()
    logger.info("fitted %d steps, final loss %.4f", steps, loss)
    return round(loss, 5)


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Any, device: Any, iters: int, warmup: int) -> tuple[np.ndarray, Any]:
    """Milliseconds per call of ``fn`` (device-synchronised) and its last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    _sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        result = fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1000.0)
    return np.asarray(times), result


def _time_pair(first: Any, second: Any, device: Any, iters: int, warmup: int) -> tuple[tuple[np.ndarray, Any], ...]:
    """Times two functions alternately, one call each per round."""
    rounds = [(_time(first, device, 1, warmup if i == 0 else 0), _time(second, device, 1, warmup if i == 0 else 0))
              for i in range(iters)]
    return tuple((np.concatenate([r[j][0] for r in rounds]), rounds[-1][j][1]) for j in range(2))


def _prefill(model: Any, embeds: Any) -> Any:
    """The prompt pass alone (shared by both decoders): what the per-token work adds to."""
    import torch

    with torch.inference_mode():
        return model.llm.get_decoder()(inputs_embeds=embeds, use_cache=False).last_hidden_state


def _try_decode(model: Any, tokens: Any, state: Any) -> np.ndarray | None:
    try:
        return model.processor.decode_actions(tokens.cpu().numpy(), state=state)
    except ValueError as error:  # the unconstrained baseline emitted a non-action token or stopped early
        logger.info("naive baseline output is not an action chunk: %s", error)
        return None
