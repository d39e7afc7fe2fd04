"""Model FLOPs per row and the CPU's peak fp32 FLOP rate: rows/s as a fraction of what the cores could do.

FLOPs per row count the model as model.py defines it (the paper's function), 2 per multiply-add of every
Linear, plus the attention and sum pooling; elementwise work (Dice, sigmoid, masks) is left out, as it
is in the usual "model FLOPs utilisation". The exported graph computes the same function with fewer
FLOPs (optimize.py factors the attention's first layer), so its fraction of peak counts the work it
saved as done: the figure says how far each engine is from the compute limit of this model, not how
busy its kernels are.

Peak = cores x clock x fp32 FLOPs per cycle per core, the last from /proc/cpuinfo's flags: SIMD lanes
(AVX-512: 16 fp32, AVX2/AVX: 8, else SSE: 4) x 2 (a fused multiply-add) x 2 FMA pipes (every x86 server
core since Haswell / Zen 1 has two). AMD Zen 4 (family 25 with AVX-512) runs 512-bit operations on
256-bit pipes, so 8 lanes count there. Clock: lscpu's "CPU max MHz" where the machine reports one, else
/proc/cpuinfo's "cpu MHz" (a VM's nominal clock); turbo and AVX-512 clock offsets are not modelled.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Any

from torch import nn

from din_export.model import DIN

FMA_PIPES = 2
ZEN4_FAMILY = 25


def _linear_macs(linears: list[nn.Linear]) -> int:
    return sum(m.in_features * m.out_features for m in linears)


def model_flops_per_row(model: DIN, seq: int) -> int:
    """FLOPs of one row with a history of `seq` items (module docstring: what is counted)."""
    dim = model.cfg.embed_dim * len(model.schema.behaviour)
    mlp = [*model.mlp.linears, model.mlp.out]
    flops = 2 * _linear_macs(mlp)
    if model.attention is not None:
        unit = model.attention.unit.mlp
        flops += 2 * seq * _linear_macs([*unit.linears, unit.out])  # the activation unit at every position
        flops += 2 * seq * dim  # attention pooling: weights x keys
        if model.cfg.use_hist_sum:
            flops += seq * dim
    else:
        flops += seq * dim  # sum pooling
    return flops


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key and key not in info:
                info[key] = value.strip()
            if not line.strip() and info:
                break  # the first processor's block is enough
    return info


def _lscpu_max_mhz() -> float | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("CPU max MHz:"):
                return float(line.split(":", 1)[1])
    return None


def cpu_peak(cores: int) -> dict[str, Any] | None:
    """Peak fp32 FLOP/s of `cores` cores and how it was derived; None where /proc/cpuinfo is unreadable."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    if not flags:
        return None
    max_mhz = _lscpu_max_mhz()
    mhz = max_mhz or float(info.get("cpu MHz", "0") or 0)
    if not mhz:
        return None
    if "avx512f" in flags:
        lanes, isa = 16, "AVX-512"
        if info.get("vendor_id") == "AuthenticAMD" and info.get("cpu family") == str(ZEN4_FAMILY):
            lanes, isa = 8, "AVX-512 on 256-bit pipes (Zen 4)"
    elif "avx2" in flags or "avx" in flags:
        lanes, isa = 8, "AVX2" if "avx2" in flags else "AVX"
    else:
        lanes, isa = 4, "SSE"
    per_cycle = lanes * 2 * FMA_PIPES
    return {"flops_per_s": cores * mhz * 1e6 * per_cycle, "cores": cores, "mhz": mhz,
            "mhz_source": "lscpu CPU max MHz" if max_mhz else "/proc/cpuinfo cpu MHz", "isa": isa,
            "fp32_flops_per_cycle": per_cycle, "fma_pipes": FMA_PIPES,
            "formula": f"{cores} cores x {mhz / 1e3:.2f} GHz x {per_cycle} FLOPs/cycle "
                       f"({isa}: {lanes} fp32 lanes x 2 (FMA) x {FMA_PIPES} pipes)"}
