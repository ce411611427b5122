"""Device and dtype selection shared by inference, training and the benchmark."""
from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def device_available(name: str) -> bool:
    """Whether a device type (``cpu``, ``cuda``, ``mps``; an index is allowed) can be used here."""
    kind = torch.device(name).type
    return {"cpu": True, "cuda": torch.cuda.is_available(), "mps": mps_available()}.get(kind, False)


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> cuda:LOCAL_RANK if available, else mps, else cpu. A named device must be available
    (``ValueError`` otherwise)."""
    name = (name or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if name not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device must be auto, cpu, cuda or mps, got {name!r}")
    if not device_available(name):
        raise ValueError(f"--device {name} requested but {name.upper()} is not available")
    if name == "cuda":
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device(name)


def param_dtype(module) -> torch.dtype | None:
    """The dtype of ``module``'s first parameter (None for a module without parameters)."""
    p = next(iter(module.parameters()), None) if hasattr(module, "parameters") else None
    return None if p is None else p.dtype


def cast_float(t, dtype: torch.dtype | None):
    """``t`` in ``dtype`` if it is a floating-point tensor of another dtype; anything else unchanged."""
    if dtype is not None and isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != dtype:
        return t.to(dtype)
    return t
