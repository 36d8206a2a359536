"""Action decoding: constrained greedy decoding over preallocated KV buffers, and a naive baseline.

The fast path (``ActionDecoder``):
- prefill: one pass of the transformers decoder over the prompt (exact HF maths), whose keys and
  values are copied into preallocated buffers;
- per token: a lean step over the same Qwen2 modules (norms, projections, MLP; LoRA-wrapped modules
  work too) that writes one KV slot, attends over the buffer with a validity mask, and computes
  logits only for the action-token rows of the LM head; the next input embedding is gathered from
  the action ids' embedding rows. No end-of-sequence step, no host sync until the chunk is done.
- on CUDA the step is captured once in a CUDA graph and replayed per token (re-captured when the
  weights change in place, e.g. after an optimiser step).

The baseline is plain ``transformers`` ``generate`` (greedy, unconstrained, full-vocabulary logits).
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

logger = logging.getLogger(__name__)


class _FusedLayer(NamedTuple):
    qkv_weight: torch.Tensor  # (H*hd + 2*KV*hd, D), input RMSNorm weight and attention scale folded in
    qkv_bias: torch.Tensor | None
    o_weight: torch.Tensor
    gate_up_weight: torch.Tensor | None  # (2*I, D), post-attention RMSNorm weight folded in (eager path)
    gate_weight: torch.Tensor  # the module weights (CUDA graph path)
    up_weight: torch.Tensor
    mlp_norm_weight: torch.Tensor
    down_weight: torch.Tensor
    eps_attn: float
    eps_mlp: float


class ActionDecoder:
    """Greedy decoding of ``num_tokens`` action tokens for prompts of up to ``capacity - num_tokens``."""

    def __init__(self, llm: Any, first_token_id: int, n_bins: int, num_tokens: int, capacity: int,
                 use_cuda_graph: bool | None = None, fixed_shapes: bool | None = None) -> None:
        decoder = llm.get_decoder()
        config = decoder.config
        if "sliding_attention" in getattr(config, "layer_types", []):
            raise ValueError("ActionDecoder does not support sliding-window attention layers")
        self.llm = llm
        self.decoder = decoder
        self.layers = list(decoder.layers)
        self.num_tokens = num_tokens
        self.capacity = capacity
        self.first_token_id = first_token_id
        head = llm.get_output_embeddings()
        self.head_weight = head.weight[first_token_id:first_token_id + n_bins]  # (n_bins, D), a view
        self.head_bias = None if head.bias is None else head.bias[first_token_id:first_token_id + n_bins]
        embedding = llm.get_input_embeddings().weight
        self._embedding_ptr = embedding.data_ptr()
        self.action_embeds = embedding[first_token_id:first_token_id + n_bins]  # (n_bins, D), a view
        weight = self.action_embeds
        device, dtype = weight.device, weight.dtype
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.hidden_size = config.hidden_size
        kv_shape = (1, self.num_kv_heads, capacity, self.head_dim)
        self.keys = [torch.zeros(kv_shape, device=device, dtype=dtype) for _ in self.layers]
        self.values = [torch.zeros(kv_shape, device=device, dtype=dtype) for _ in self.layers]
        positions = torch.arange(capacity, device=device)
        with torch.inference_mode():
            cos, sin = decoder.rotary_emb(weight[:1][None], positions[None])  # (1, capacity, head_dim)
        self.cos = cos[0]  # (capacity, hd)
        half = self.head_dim // 2
        self.sin_signed = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)  # rotate_half's sign folded in
        self.slots = positions  # (capacity,)
        self.token = torch.zeros(1, dtype=torch.long, device=device)  # current bin index (graph input/output)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)  # position of the current token
        self.graph = None
        self.use_cuda_graph = device.type == "cuda" if use_cuda_graph is None else use_cuda_graph
        # Fixed shapes (masked attention over the whole buffer, separate gate/up): what a CUDA graph
        # captures; selectable without a graph so CPU tests exercise the same code.
        self.fixed_shapes = self.use_cuda_graph if fixed_shapes is None else fixed_shapes or self.use_cuda_graph
        self._fused = self._fuse()
        self._version = self._weights_version()
        if self.use_cuda_graph:
            self._capture()

    def matches(self, llm: Any, prompt_len: int) -> bool:
        """Whether this decoder can serve ``llm`` for a prompt of ``prompt_len`` tokens (same module,
        same weight storage: a move or cast of the model needs a new decoder)."""
        weight = llm.get_input_embeddings().weight
        return (llm is self.llm and prompt_len + self.num_tokens <= self.capacity
                and weight.data_ptr() == self._embedding_ptr and weight.dtype == self.action_embeds.dtype)

    @torch.no_grad()
    def _fuse(self) -> list[_FusedLayer | None]:
        """Folded weights per layer, None where a projection is wrapped (LoRA): then the modules run.

        Q, K and V are concatenated into one GEMV with the input RMSNorm weight and the attention
        scale folded in (folded in fp32, then cast). On the eager path (CPU, where kernel launches
        dominate) gate and up are concatenated too, with the post-attention norm weight folded in;
        on the CUDA graph path they stay separate, as a folded copy of Qwen2-7B's MLP would cost
        about 7.6 GB.
        """
        fused: list[_FusedLayer | None] = []
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            projections = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj,
                           mlp.down_proj)
            is_silu = isinstance(mlp.act_fn, nn.SiLU) or type(mlp.act_fn).__name__ == "SiLUActivation"
            if not is_silu or not all(type(m) is nn.Linear for m in projections):
                fused.append(None)
                continue
            dtype = attn.q_proj.weight.dtype
            scale = torch.ones(self.num_heads + 2 * self.num_kv_heads, self.head_dim, device=self.slots.device)
            scale[:self.num_heads] = attn.scaling
            scale = scale.reshape(-1, 1)  # (rows, 1), fp32
            qkv_weight = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).float()
            qkv_weight = (qkv_weight * layer.input_layernorm.weight.float()[None, :] * scale).to(dtype)
            biases = [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]
            qkv_bias = (torch.cat(biases).float() * scale[:, 0]).to(dtype) if all(b is not None for b in biases) else None
            mlp_norm = layer.post_attention_layernorm.weight
            gate_up = None
            if not self.fixed_shapes:
                gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).float() * mlp_norm.float()[None, :]
                gate_up = gate_up.to(dtype)
            fused.append(_FusedLayer(qkv_weight, qkv_bias, attn.o_proj.weight, gate_up, mlp.gate_proj.weight,
                                     mlp.up_proj.weight, mlp_norm, mlp.down_proj.weight,
                                     layer.input_layernorm.variance_epsilon,
                                     layer.post_attention_layernorm.variance_epsilon))
        return fused

    def _weights_version(self) -> int:
        """Sum of the parameters' in-place version counters: changes after any optimiser step."""
        return sum(p._version for p in self.llm.parameters())

    def _refresh(self) -> None:
        """Re-fuse when any weight changed in place since the last fusion (e.g. an optimiser step)."""
        version = self._weights_version()
        if version != self._version:
            self._fused = self._fuse()
            self._version = version
            if self.graph is not None:
                self._capture()

    def _step(self, length: int | None = None) -> None:
        """One token: embed ``token`` at ``pos``, run the layers, write the argmax bin into ``token``.

        ``length`` (eager mode) is pos + 1, the number of filled KV slots; None inside the CUDA graph.
        """
        h_q, h_kv, hd = self.num_heads, self.num_kv_heads, self.head_dim
        x = self.action_embeds[self.token].view(1, 1, self.hidden_size)  # (1, 1, D)
        cos = self.cos[self.pos].view(1, 1, 1, hd)
        sin = self.sin_signed[self.pos].view(1, 1, 1, 2, hd // 2)
        invalid = (self.slots > self.pos).view(1, 1, 1, self.capacity) if length is None else None
        for index, (layer, fused) in enumerate(zip(self.layers, self._fused)):
            attn = layer.self_attn
            if fused is not None:
                h = F.rms_norm(x, (self.hidden_size,), None, fused.eps_attn)
                qkv = F.linear(h, fused.qkv_weight, fused.qkv_bias)  # scaled queries, keys, values
            else:
                h = layer.input_layernorm(x)
                qkv = torch.cat([attn.q_proj(h) * attn.scaling, attn.k_proj(h), attn.v_proj(h)], dim=-1)
            qkv = qkv.view(1, h_q + 2 * h_kv, 1, hd)  # one token: heads can go first without a transpose
            qk = qkv[:, :h_q + h_kv]
            # Rotary on queries and keys at once: x * cos + rotate_half(x) * sin, with the half swap
            # done by a flip and the sign folded into sin_signed.
            halves = qk.view(1, h_q + h_kv, 1, 2, hd // 2)
            qk = qk * cos + (halves.flip(3) * sin).view(1, h_q + h_kv, 1, hd)
            q, k, v = qk[:, :h_q], qk[:, h_q:], qkv[:, h_q + h_kv:]
            self.keys[index].index_copy_(2, self.pos, k)
            self.values[index].index_copy_(2, self.pos, v)
            keys, values = self.keys[index], self.values[index]
            if length is not None:  # eager: attend to the filled slots by slicing
                keys, values = keys[:, :, :length], values[:, :, :length]
            # Grouped-query attention for one query: (1, KV, G, hd) @ (1, KV, hd, T) -> (1, KV, G, T)
            scores = torch.matmul(q.reshape(1, h_kv, h_q // h_kv, hd), keys.transpose(2, 3))
            if length is None:  # CUDA graph: fixed shapes, mask the empty slots
                scores = scores.masked_fill(invalid, float("-inf"))
            weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(values.dtype)
            out = torch.matmul(weights, values)  # (1, KV, G, hd)
            out = out.reshape(1, 1, h_q * hd)
            if fused is not None:
                x = x + F.linear(out, fused.o_weight)
                if fused.gate_up_weight is not None:  # norm weight folded into the concatenated gate/up
                    h = F.rms_norm(x, (self.hidden_size,), None, fused.eps_mlp)
                    gate, up = F.linear(h, fused.gate_up_weight).chunk(2, dim=-1)
                else:
                    h = F.rms_norm(x, (self.hidden_size,), fused.mlp_norm_weight, fused.eps_mlp)
                    gate, up = F.linear(h, fused.gate_weight), F.linear(h, fused.up_weight)
                x = x + F.linear(F.silu(gate) * up, fused.down_weight)
            else:
                x = x + attn.o_proj(out)
                x = x + layer.mlp(layer.post_attention_layernorm(x))
        norm = self.decoder.norm
        hidden = F.rms_norm(x, (self.hidden_size,), norm.weight, norm.variance_epsilon)[:, 0]  # (1, D)
        self.token.copy_(F.linear(hidden, self.head_weight, self.head_bias).argmax(dim=-1))

    def _capture(self) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(2):
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph):
            self._step()
        logger.debug("captured the decoding step in a CUDA graph (capacity %d)", self.capacity)

    @torch.inference_mode()
    def __call__(self, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """(1, L, D) prompt embeddings -> (num_tokens,) action token ids on the device."""
        prompt_len = prompt_embeds.shape[1]
        if prompt_len + self.num_tokens > self.capacity:
            raise ValueError(f"prompt of {prompt_len} tokens exceeds the decoder capacity {self.capacity}")
        self._refresh()
        cache = DynamicCache(config=self.llm.config)
        hidden = self.decoder(inputs_embeds=prompt_embeds, past_key_values=cache, use_cache=True).last_hidden_state
        for index, layer_cache in enumerate(cache.layers):
            self.keys[index][:, :, :prompt_len].copy_(layer_cache.keys)
            self.values[index][:, :, :prompt_len].copy_(layer_cache.values)
        logits = F.linear(hidden[:, -1], self.head_weight, self.head_bias)  # (1, n_bins)
        self.token.copy_(logits.argmax(dim=-1))
        self.pos.fill_(prompt_len)
        bins = torch.empty(self.num_tokens, dtype=torch.long, device=prompt_embeds.device)
        bins[0:1].copy_(self.token)
        for step in range(1, self.num_tokens):
            if self.graph is not None:
                self.graph.replay()
            else:
                self._step(None if self.fixed_shapes else prompt_len + step)
            bins[step:step + 1].copy_(self.token)
            self.pos.add_(1)
        return bins + self.first_token_id


@torch.inference_mode()
def naive_generate(llm: Any, prompt_embeds: torch.Tensor, num_tokens: int, pad_token_id: int) -> torch.Tensor:
    """The baseline: transformers ``generate``, greedy, unconstrained, full-vocabulary logits."""
    attention_mask = torch.ones(prompt_embeds.shape[:2], dtype=torch.long, device=prompt_embeds.device)
    out = llm.generate(inputs_embeds=prompt_embeds, attention_mask=attention_mask, max_new_tokens=num_tokens,
                       do_sample=False, pad_token_id=pad_token_id, num_beams=1)
    return out[0, -num_tokens:] if out.shape[1] >= num_tokens else out[0]
