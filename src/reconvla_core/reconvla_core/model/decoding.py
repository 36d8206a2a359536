"""Action decoding: constrained greedy decoding with a KV cache, and a naive baseline.

The fast path computes logits only for the action-token rows of the LM head, never runs a step
for end-of-sequence, keeps every step on the device (no host sync until the chunk is done) and
feeds the next token's embedding straight from the embedding rows of the action ids.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache

logger = logging.getLogger(__name__)


@torch.inference_mode()
def greedy_action_decode(llm: Any, prompt_embeds: torch.Tensor, first_token_id: int, n_bins: int,
                         num_tokens: int) -> torch.Tensor:
    """Greedy decoding restricted to the action ids; returns (num_tokens,) token ids on the device.

    prompt_embeds: (1, L, D) input embeddings of the prompt (image features already spliced in).
    """
    decoder = llm.get_decoder()
    head = llm.get_output_embeddings()
    head_weight = head.weight[first_token_id:first_token_id + n_bins]  # (n_bins, D), a view
    head_bias = None if head.bias is None else head.bias[first_token_id:first_token_id + n_bins]
    action_embeds = llm.get_input_embeddings().weight[first_token_id:first_token_id + n_bins]  # (n_bins, D)

    prompt_len = prompt_embeds.shape[1]
    device = prompt_embeds.device
    cache = DynamicCache(config=llm.config)
    positions = torch.arange(prompt_len, prompt_len + num_tokens, device=device).view(1, -1)  # (1, n)
    bins = torch.empty(num_tokens, dtype=torch.long, device=device)

    hidden = decoder(inputs_embeds=prompt_embeds, past_key_values=cache, use_cache=True).last_hidden_state
    hidden = hidden[:, -1]  # (1, D)
    for step in range(num_tokens):
        best = F.linear(hidden, head_weight, head_bias).argmax(dim=-1)  # (1,)
        bins[step] = best[0]
        if step == num_tokens - 1:
            break  # no step for end-of-sequence
        next_embeds = action_embeds[best].unsqueeze(1)  # (1, 1, D)
        hidden = decoder(inputs_embeds=next_embeds, past_key_values=cache, use_cache=True,
                         position_ids=positions[:, step:step + 1]).last_hidden_state[:, -1]
    return bins + first_token_id


@torch.inference_mode()
def naive_generate(llm: Any, prompt_embeds: torch.Tensor, num_tokens: int, pad_token_id: int) -> torch.Tensor:
    """The baseline: transformers ``generate``, greedy, unconstrained, full-vocabulary logits."""
    attention_mask = torch.ones(prompt_embeds.shape[:2], dtype=torch.long, device=prompt_embeds.device)
    out = llm.generate(inputs_embeds=prompt_embeds, attention_mask=attention_mask, max_new_tokens=num_tokens,
                       do_sample=False, pad_token_id=pad_token_id, num_beams=1)
    return out[0, -num_tokens:] if out.shape[1] >= num_tokens else out[0]
