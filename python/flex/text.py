"""Prompt encoding with Wan's UMT5 text encoder (transformers), from a Wan2.1 folder of either kind.

The folder is a Diffusers-format one (``text_encoder/`` = ``UMT5EncoderModel``, ``tokenizer/``)
or the original download (``models_t5_umt5-xxl-enc-bf16.pth`` in Wan's own layout, mapped onto
``UMT5EncoderModel`` by :mod:`flex.loading.wan_t5`; ``google/umt5-xxl/`` = the tokenizer); the
files tell which (:mod:`flex.loading.wan_dir`). Encoding follows Wan / Self Forcing exactly:

1. clean the prompt like Wan's tokenizer does: ftfy, HTML unescape (twice), collapse whitespace;
2. tokenize with end-of-sequence token, pad / truncate to ``text_len`` (512 for Wan2.1);
3. run the encoder with the attention mask and set every embedding past the prompt's own
   length to zero (Wan's DiT attends over all ``text_len`` positions, padding included, so
   the zeros matter).

Nothing is ever downloaded: everything is read with ``local_files_only=True``.
"""
from __future__ import annotations

import html
import re

import ftfy
import torch

from .loading.wan_dir import locate_wan_part

DEFAULT_TEXT_LEN = 512


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning: ftfy (mojibake, curly quotes), HTML unescape twice, single spaces, stripped.

    ftfy is not optional: without it curly quotes of LLM-extended prompts tokenize differently.
    """
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


def _dtype_kwarg() -> str:
    """transformers >= 4.56 takes ``dtype=``; older versions only ``torch_dtype=``."""
    import transformers
    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def load_tokenizer(wan_dir):
    from transformers import AutoTokenizer

    _, folder = locate_wan_part(wan_dir, "tokenizer")
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:
        raise RuntimeError(f"could not load the tokenizer from {str(folder)!r}: {err}") from err


def load_text_encoder(wan_dir, device="cpu", dtype=torch.float32):
    """``UMT5EncoderModel`` from ``text_encoder/`` or from the original ``models_t5_umt5-xxl-enc-bf16.pth``."""
    from transformers import UMT5EncoderModel

    from .loading.wan_t5 import load_wan_t5

    kind, path = locate_wan_part(wan_dir, "text_encoder")
    if kind == "original":
        model = load_wan_t5(path, dtype)  # CheckpointError naming the file when it does not fit
    else:
        try:
            model = UMT5EncoderModel.from_pretrained(str(path), local_files_only=True, **{_dtype_kwarg(): dtype})
        except Exception as err:
            raise RuntimeError(f"could not load the UMT5 text encoder from {str(path)!r}: {err}") from err
    return model.to(device).eval().requires_grad_(False)


class WanTextEncoder:
    """``encode(prompts) -> [B, text_len, d_model]`` with zeros past each prompt's length."""

    def __init__(self, model, tokenizer, text_len: int = DEFAULT_TEXT_LEN):
        if not (isinstance(text_len, int) and text_len > 0):
            raise ValueError(f"text_len must be an int > 0, got {text_len!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.text_len = text_len

    @classmethod
    def from_pretrained(cls, wan_dir, device="cpu", dtype=torch.float32,
                        text_len: int = DEFAULT_TEXT_LEN) -> "WanTextEncoder":
        tokenizer = load_tokenizer(wan_dir)  # the cheap part first: fail fast on a bad folder
        return cls(load_text_encoder(wan_dir, device, dtype), tokenizer, text_len)

    @property
    def d_model(self) -> int:
        return int(self.model.config.d_model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, prompts):
        """(input_ids, attention_mask), both [B, text_len] int64."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise ValueError("prompts must not be empty")
        tokens = self.tokenizer(
            [clean_prompt(p) for p in prompts], padding="max_length", max_length=self.text_len,
            truncation=True, add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )
        return tokens["input_ids"], tokens["attention_mask"]

    @torch.no_grad()
    def encode(self, prompts) -> torch.Tensor:
        ids, mask = self.tokenize(prompts)
        device = self.device
        ids, mask = ids.to(device), mask.to(device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        lengths = mask.gt(0).sum(dim=1)
        keep = torch.arange(self.text_len, device=device)[None, :] < lengths[:, None]
        return hidden.masked_fill(~keep[..., None], 0.0)

    __call__ = encode
