"""Where and in which precision a stage computes: `experiment.device` and `experiment.precision` resolved
against the machine, and the autocast context of a precision. Every stage that runs a model imports these
from here (not from the training loop), so evaluating, interpreting or exporting depends on no training code.
"""

from __future__ import annotations

import torch

from .errors import ConfigError


def resolve_device(name: str, key: str = "experiment.device") -> torch.device:
    """`auto` (CUDA when present), `cpu` or `cuda`; `key` names where the setting came from, for the message."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key} is 'cuda' but no CUDA device is available; set it to auto or cpu.")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto`: bf16 on a CUDA device that supports it, fp32 otherwise (CPU). (config.py checks the name.)"""
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("experiment.precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU.")
    return name


def autocast(device: torch.device, precision: str):
    """Autocast of the trunk and ASPP for bf16/fp16 (the prototype head and the losses stay float32: they
    disable it themselves); a disabled context for fp32."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
