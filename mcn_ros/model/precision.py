"""The number format the forward runs in: fp32, or fp16 / bf16 / int8 where the device computes it natively.

CUDA runs fp16 or bf16 as autocast where the GPU computes it natively (:func:`cuda_native`: bf16 from
compute capability 8.0, Ampere; fp16 from 7.0 and on the 5.3 / 6.0 / 6.2 chips with fast fp16, among them
the Jetson Nano and TX2), elsewhere fp32 with a note (a GeForce 10 series GPU, 6.1, runs fp16 at 1/64 of its
fp32 rate; before Ampere bf16 is emulated). A CPU runs bf16 only when it has native bf16 dot products
(``avx512_bf16`` or ``amx_bf16``): there the inference copy of the model and its inputs are converted to
bfloat16 outright (autocast would cast the weights again on every call). Without those instructions bf16
is emulated and many times slower than fp32 (16x on an AVX2 machine), and fp16 convolutions have no fast
CPU kernels: both fall back to fp32 with a note saying why. int8 is an ONNX Runtime graph calibrated
beforehand (:mod:`mcn_ros.model.quantize`), run only with the ``onnxruntime`` backend on a CPU with int8
dot-product instructions (VNNI or AMX); elsewhere fp32 with a note (without VNNI, ONNX Runtime's uint8 x
int8 kernels can saturate). Nothing here picks a reduced precision by itself; fp32 is the default
everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
#: CPU flags (Linux /proc/cpuinfo names) meaning the CPU multiplies bfloat16 natively.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: CPU flags meaning the CPU has int8 dot products (VNNI: AVX-512 or AVX; AMX tiles).
NATIVE_INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: CUDA compute capabilities before 7.0 whose fp16 arithmetic is fast (at least the fp32 rate).
FAST_FP16_BEFORE_VOLTA = frozenset({(5, 3), (6, 0), (6, 2)})


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The flags of the first CPU in ``cpuinfo`` (default: this machine's /proc/cpuinfo; empty elsewhere)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_bf16_native(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU (``flags``, default this machine's) has native bfloat16 dot products."""
    found = cpu_flags() if flags is None else flags
    return any(flag in found for flag in NATIVE_BF16_FLAGS)


def cpu_amx_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU (``flags``, default this machine's) has AMX bf16 tiles: where bf16 was measured 3.3x
    faster than fp32 (bench/results/precision_cpu_amx.md; with AVX-512 BF16 alone it varied by CPU)."""
    found = cpu_flags() if flags is None else flags
    return "amx_bf16" in found


def cpu_int8_native(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU (``flags``, default this machine's) has int8 dot-product instructions."""
    found = cpu_flags() if flags is None else flags
    return any(flag in found for flag in NATIVE_INT8_FLAGS)


def cuda_native(precision: str, capability: tuple[int, int]) -> bool:
    """Whether a CUDA GPU of compute ``capability`` (major, minor) computes ``precision`` (fp16 / bf16) at
    least as fast as fp32."""
    if precision == "bf16":
        return capability >= (8, 0)
    return capability >= (7, 0) or capability in FAST_FP16_BEFORE_VOLTA


def parse_precision(setting: bool | str) -> str:
    """``"fp32"``, ``"fp16"``, ``"bf16"`` or ``"int8"`` from a setting (also False, "" or "none" = fp32,
    True = fp16)."""
    if setting is False or setting in ("", "none"):
        return "fp32"
    if setting is True:
        return "fp16"
    if isinstance(setting, str) and setting in PRECISIONS:
        return setting
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (or a bool), got {setting!r}")


@dataclass(frozen=True)
class Precision:
    """How the forward runs: ``name`` is the precision used (after any fallback), ``note`` why it differs."""

    name: str = "fp32"
    autocast_dtype: torch.dtype | None = None  # CUDA: autocast to this dtype
    model_dtype: torch.dtype = torch.float32  # CPU bf16: weights and inputs in this dtype
    note: str | None = None  # set when the requested precision could not be used here

    @classmethod
    def resolve(
        cls,
        setting: bool | str,
        device: torch.device,
        backend: str = "torch",
        flags: frozenset[str] | None = None,
        cuda_capability: tuple[int, int] | None = None,
    ) -> Precision:
        """What ``setting`` runs at on ``device`` with ``backend`` (``flags``: the CPU's, ``cuda_capability``:
        the GPU's compute capability; both default to the device's own, given for tests)."""
        wanted = parse_precision(setting)
        if wanted == "fp32":
            return cls()
        if wanted == "int8":
            if backend != "onnxruntime" or device.type != "cpu":
                return cls(note="int8 runs with backend onnxruntime on a CPU; running fp32")
            if not cpu_int8_native(flags):
                return cls(
                    note=f"this CPU has no int8 dot products ({' / '.join(NATIVE_INT8_FLAGS)}): int8 "
                    "would be slow or saturate; running fp32"
                )
            return cls("int8")
        if backend != "torch":
            return cls(note=f"{wanted} is not used by the {backend} backend (float32 only); running fp32")
        if device.type == "cuda":
            if cuda_capability is None:
                cuda_capability = torch.cuda.get_device_capability(device)
            if cuda_native(wanted, cuda_capability):
                return cls(wanted, autocast_dtype=_DTYPES[wanted])
            major, minor = cuda_capability
            other = "fp16" if wanted == "bf16" and cuda_native("fp16", cuda_capability) else None
            return cls(
                note=f"{wanted} on this GPU (compute capability {major}.{minor}) would be slower than fp32 "
                f"({'emulated before 8.0, Ampere' if wanted == 'bf16' else 'no fast fp16 arithmetic'})"
                + (f"; {other} is native here" if other else "")
                + "; running fp32"
            )
        if wanted == "bf16" and device.type == "cpu":
            if cpu_bf16_native(flags):
                return cls("bf16", model_dtype=torch.bfloat16)
            return cls(
                note=f"bf16 on this CPU would be emulated (it has neither {' nor '.join(NATIVE_BF16_FLAGS)}) "
                "and many times slower; running fp32"
            )
        return cls(note=f"{wanted} runs on CUDA only (a CPU: bf16 where it is native); running fp32")
