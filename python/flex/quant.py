"""Quantised linear layers of the causal Wan DiT, through torchao's ``quantize_``.

Modes (``QUANT_MODES``):

* ``"none"``: the model as it is;
* ``"int8"``: int8 activations (dynamic, per token) x int8 weights (per output channel),
  torchao's ``Int8DynamicActivationInt8WeightConfig``; CPU and CUDA;
* ``"int8-weight"``: int8 weights (per output channel) dequantised into the matmul, activations
  kept in the model's dtype, ``Int8WeightOnlyConfig``; CPU and CUDA;
* ``"fp8"``: float8 e4m3 activations (dynamic, per row) x float8 weights (per row),
  ``Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())``; CUDA with compute
  capability >= 8.9 (Ada, Hopper) and a bfloat16 model only (torchao's rowwise kernels).

What is quantised: every linear of the attention blocks (self-attention q, k, v, o,
cross-attention q, k, v, o, the FFN's two layers): they are nearly all of a pass's FLOPs. Kept
in the model's dtype: the patch embedding (a Conv3d), the text embedding (it runs once per
prompt, so quantising it saves nothing per frame), the time embedding and projection (per
frame, not per token, and computed in the float32 stream like Wan's modulation, which is
sensitive: it scales and gates every block) and the head (dim x 64 per token, under 1 % of the
FLOPs, and its error lands directly in the flow prediction: quantised alone in int8 (random tiny model) it cost about ten times the
error of one FFN linear).

torchao replaces each chosen ``weight`` by a tensor subclass that keeps the weight's dtype,
shape and device, so the model's forward passes, ``param_dtype``, the cache dtype checks and
torch.compile work unchanged. Quantise after the model is on its device and in its dtype
(``model.to(...)`` afterwards is not supported), and after loading weights and LoRA: a
quantised model loads no checkpoint. torchao's configs also set a few inductor options for
quantised graphs (process wide), as torchao recommends.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .checks import check_choice
from .errors import SettingsError
from .models.wan import CausalWanModel

QUANT_MODES = ("none", "int8", "int8-weight", "fp8")

# The model dtypes each mode accepts (torchao's int8 tensors refuse float64; its rowwise
# float8 weights must be bfloat16).
QUANT_DTYPES = {
    "int8": (torch.float32, torch.bfloat16, torch.float16),
    "int8-weight": (torch.float32, torch.bfloat16, torch.float16),
    "fp8": (torch.bfloat16,),
}

FP8_MIN_CAPABILITY = (8, 9)  # float8 tensor cores: Ada (sm_89) and Hopper (sm_90)


def _refused(sentence: str) -> SettingsError:
    """The error of a quant setting that cannot run here (the sentence names the mode)."""
    return SettingsError("quant", sentence, leads=False)


def _torchao(mode: str):
    try:
        import torchao.quantization as tq
    except ImportError as err:
        raise _refused(f"quant={mode!r} needs torchao: pip install torchao "
                         f"(or pip install 'flex-video[quant]'); importing it failed: {err}") from None
    return tq


def check_quant(mode: str, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                compile=False) -> str:
    """The rules of ``quant`` (one home): a known mode, torchao importable, a device and a model
    dtype the mode runs on, and a compile option it compiles under. ``device`` / ``dtype`` None
    skip their checks. Returns the mode."""
    check_choice("quant", mode, QUANT_MODES)
    if mode == "none":
        return mode
    _torchao(mode)
    if (mode == "int8" and compile and dtype == torch.bfloat16 and device is not None
            and torch.device(device).type == "cpu"):
        # Inductor's CPU code for torchao's dynamic int8 activations in bf16 does not compile
        # (torch 2.14, torchao 0.18: a duplicated declaration in the generated C++).
        raise _refused("quant='int8' with compile on a CPU needs float32 (bf16 does not compile there); "
                         "use quant='int8-weight', dtype fp32, or compile off")
    if mode == "fp8" and device is not None:
        device = torch.device(device)
        if device.type != "cuda":
            raise _refused(f"quant='fp8' needs a CUDA GPU with compute capability >= 8.9 (Ada, Hopper), "
                             f"got device {str(device)!r}; use quant='int8' or 'int8-weight' on a CPU")
        if not torch.cuda.is_available():
            raise _refused("quant='fp8' needs a CUDA GPU, but torch sees none")
        capability = torch.cuda.get_device_capability(device)
        if capability < FP8_MIN_CAPABILITY:
            raise _refused(f"quant='fp8' needs compute capability >= 8.9 (Ada, Hopper), "
                             f"{torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}; "
                             f"use quant='int8' or 'int8-weight'")
    if dtype is not None and dtype not in QUANT_DTYPES[mode]:
        allowed = ", ".join(str(d).replace("torch.", "") for d in QUANT_DTYPES[mode])
        raise _refused(f"quant={mode!r} needs a model dtype in ({allowed}), got {str(dtype).replace('torch.', '')}")
    return mode


def is_block_linear(module: nn.Module, name: str) -> bool:
    """The default choice: the linears of the attention blocks (see the module docstring)."""
    return isinstance(module, nn.Linear) and name.startswith("blocks.")


def torchao_config(mode: str):
    """The torchao config of a mode other than "none"."""
    check_choice("quant", mode, QUANT_MODES[1:])
    tq = _torchao(mode)
    if mode == "int8":
        return tq.Int8DynamicActivationInt8WeightConfig()
    if mode == "int8-weight":
        return tq.Int8WeightOnlyConfig()
    return tq.Float8DynamicActivationFloat8WeightConfig(granularity=tq.PerRow())


def quantized_linears(model: nn.Module) -> list[str]:
    """Names of the linear layers whose weight torchao has quantised."""
    try:
        from torchao.utils import TorchAOBaseTensor
    except ImportError:
        return []  # without torchao nothing can have been quantised
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and isinstance(m.weight, TorchAOBaseTensor)]


def quantize(model: CausalWanModel, mode: str, *,
             filter: Callable[[nn.Module, str], bool] | None = None) -> CausalWanModel:
    """Quantise ``model``'s linear layers in place with ``mode`` (see ``QUANT_MODES``); returns it.

    ``filter(module, name) -> bool`` (like torchao's ``filter_fn``) picks the linears among every
    ``nn.Linear`` of the model; None takes the attention blocks' (:func:`is_block_linear`).
    """
    if not isinstance(model, CausalWanModel):
        raise ValueError(f"model must be a CausalWanModel, got {type(model).__name__}")
    check_quant(mode, model.device, model.param_dtype)
    if mode == "none":
        return model
    if filter is not None and not callable(filter):
        raise ValueError(f"filter must be a callable (module, name) -> bool or None, got {filter!r}")
    done = quantized_linears(model)
    if done:
        raise ValueError(f"model is already quantised ({len(done)} linears, e.g. {done[0]}): "
                         f"quantise a fresh model")
    choose = is_block_linear if filter is None else filter
    names = {name for name, m in model.named_modules() if isinstance(m, nn.Linear) and choose(m, name)}
    if not names:
        raise ValueError("filter selected no nn.Linear of the model: nothing to quantise")
    if mode == "fp8":  # torchao would silently skip these; say so instead
        odd = sorted(n for n in names if any(s % 16 for s in model.get_submodule(n).weight.shape))
        if odd:
            raise ValueError(f"quant='fp8' needs linears whose in and out features are multiples of 16: {odd}")
    _torchao(mode).quantize_(model, torchao_config(mode), filter_fn=lambda m, name: name in names)
    return model


__all__ = ["QUANT_DTYPES", "QUANT_MODES", "check_quant", "is_block_linear", "quantize", "quantized_linears",
           "torchao_config"]
