"""What made a result: the machine and the software that decide its last bits.

Training and evaluation give the same bytes on the same machine and software; on another CPU
(other vector units, AMX or not), another GPU, another torch, another thread count or with bf16
on or off, the float sums run in another order and the results move in their last bits, and
training can drift by about a seed's spread. Each checkpoint, evaluation record and run folder
records this (`record()`), so the report and `pipeline-verify` can say "made on another machine"
instead of guessing. On one machine only the thread count can change from run to run
(`execution.threads: auto` follows the load), and with it the last bits.
"""

from __future__ import annotations

import platform
from pathlib import Path

# CPU features that choose oneDNN's kernels (and whether bf16 runs natively), as /proc/cpuinfo
# names them
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                "amx_bf16", "asimd", "sve", "bf16")
CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo() -> tuple[str | None, list[str]]:
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return None, []
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and model is None:
            model = " ".join(value.split()) or None
        elif key in ("flags", "features"):
            flags.update(value.split())
    return model, [flag for flag in KERNEL_FLAGS if flag in flags]


def record(device: str, bf16: bool, threads: int, processes: int = 1) -> dict:
    """The machine and software a result was computed with (plain values, stable per machine)."""
    import torch

    model, flags = _cpuinfo()
    found: dict = {
        "cpu": model or platform.processor() or platform.machine(),
        "cpu_flags": flags,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device": device,
        "bf16": bool(bf16),
        "threads": int(threads),
        "processes": int(processes),
        "torch": str(torch.__version__),
        "system": f"{platform.system()} {platform.machine()}",
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        found["cuda_device"] = torch.cuda.get_device_name(torch.device(device))
        found["cuda"] = str(torch.version.cuda)
        found["cudnn"] = torch.backends.cudnn.version()
    return found


def describe(made_on: dict | None) -> str:
    """One line for people: `Intel Xeon (AMX-BF16), cpu, bf16 on, 2 threads, torch 2.13.0`."""
    if not isinstance(made_on, dict):
        return "an unrecorded machine"
    where = str(made_on.get("cuda_device") or made_on.get("cpu") or "unknown CPU")
    flags = [f.upper().replace("_", "-") for f in made_on.get("cpu_flags") or []
             if f in ("amx_bf16", "avx512_bf16")] if not made_on.get("cuda_device") else []
    details = [str(made_on.get("device", "?")),
               f"bf16 {'on' if made_on.get('bf16') else 'off'}",
               f"{made_on.get('threads', '?')} threads"]
    if made_on.get("processes", 1) != 1:
        details.append(f"{made_on['processes']} processes")
    details.append(f"torch {made_on.get('torch', '?')}")
    return f"{where}{' (' + ', '.join(flags) + ')' if flags else ''}, {', '.join(details)}"


def differences(ours: dict | None, theirs: dict | None) -> list[str]:
    """What differs between two records, by key (`cpu`, `threads`, ...); empty when the same."""
    if not isinstance(ours, dict) or not isinstance(theirs, dict):
        return ["machine not recorded"]
    return [key for key in sorted(set(ours) | set(theirs)) if ours.get(key) != theirs.get(key)]
