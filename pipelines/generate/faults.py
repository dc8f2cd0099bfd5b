"""Which errors are whose: a sample's input, the batch's size (out of memory), or the device.

- ``SampleInputError`` (and unreadable inputs caught in the fetch stage): that sample fails alone.
- out of memory: the batch is retried at half the size (``generate_unit``).
- a lost device (CUDA error other than OOM, device-side assert, ECC): the process's CUDA context
  is unusable, so the actor must exit; Ray restarts it and retries the unit (``DeviceLostError``).
- anything else is a bug or a bad model: the unit fails loudly, never turned into holes.
"""

from __future__ import annotations

import torch

OOM_ERRORS: tuple[type[BaseException], ...] = tuple(
    {getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)} - {None}
)  # type: ignore[arg-type]
_DEVICE_LOST = ("cuda error", "device-side assert", "cudnn_status", "cublas_status", "uncorrectable ecc",
                "illegal memory access", "unspecified launch failure", "no cuda gpus are available",
                "device not ready", "hip error", "xpu error")


class DeviceLostError(RuntimeError):
    """The accelerator failed under this actor: the unit must run again in a fresh process."""


def is_oom(e: BaseException) -> bool:
    return isinstance(e, OOM_ERRORS)


def is_device_lost(e: BaseException) -> bool:
    if is_oom(e):
        return False
    accel = getattr(torch, "AcceleratorError", None)
    if accel is not None and isinstance(e, accel):
        return True
    return isinstance(e, RuntimeError) and any(m in str(e).lower() for m in _DEVICE_LOST)


def release_memory() -> None:
    """After an OOM: free the cached blocks the failed batch left, so the smaller one fits."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
