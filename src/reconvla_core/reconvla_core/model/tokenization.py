"""Text tokenizers: a local byte-level tokenizer (tiny preset, random models) or the local Qwen2 one.

The prompt uses Qwen's chat markers and one image placeholder token; their ids are looked up from
the tokenizer, never hard-coded. Nothing is downloaded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS: tuple[str, ...] = (END_OF_TEXT, IM_START, IM_END, IMAGE_TOKEN)


def build_byte_tokenizer() -> Any:
    """A byte-level tokenizer with no merges: 256 byte tokens + the 4 special tokens (ids 256..259)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {char: index for index, char in enumerate(sorted(alphabet, key=_byte_of))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=END_OF_TEXT, pad_token=END_OF_TEXT)


def load_tokenizer(path: str | Path) -> Any:
    """A tokenizer saved with save_pretrained (ours or Qwen2's), from a local directory only."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load the tokenizer from {path}: {error}") from error
    return ensure_special_tokens(tokenizer)


def ensure_special_tokens(tokenizer: Any) -> Any:
    """Adds the chat markers / image placeholder when missing and sets eos / pad."""
    vocab = tokenizer.get_vocab()
    missing = [token for token in SPECIAL_TOKENS if token not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
        logger.info("added special tokens %s to the tokenizer", missing)
    if tokenizer.eos_token is None:
        tokenizer.eos_token = END_OF_TEXT
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _byte_of(char: str) -> int:
    """Order ByteLevel's printable alphabet by the byte each character stands for."""
    return _BYTE_OF_CHAR[char]


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable character table (used by ByteLevel pre-tokenisation).
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


_BYTE_OF_CHAR = {char: byte for byte, char in _bytes_to_unicode().items()}
