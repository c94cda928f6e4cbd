"""How to run a job (never what to do): device, batch size, output folder, caches, progress."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import SpecError
from ..presets.defaults import DECODERS
from ..runtime.precision import check_precision
from ..runtime.progress import Progress


@dataclass
class RunOptions:
    """Flags that say how to run; the spec says what to do."""

    device: str = "auto"
    batch_size: int = 256
    out: Path | None = None
    overwrite: bool = False
    use_cache: bool = True
    argv: list[str] | None = None
    progress: Progress | None = field(default=None, repr=False)
    workers: int | None = None  # image-decoding processes; None: loader.default_workers, 0: in-process
    precision: str = "fp32"  # the encoders' precision (fp32, fp16, bf16); the projector is always float64
    decode: str = "pil"  # how images become tensors (data.decode.DECODERS); pil is open_clip's own transform

    def but(self, **changes) -> RunOptions:
        return replace(self, **changes)

    def check(self) -> RunOptions:
        """Bad run flags are bad input: one line each, before any work."""
        problems = []
        if self.decode not in DECODERS:
            problems.append(f'decode: "{self.decode}" is not one of {", ".join(DECODERS)}')
        elif self.decode == "gpu" and self.device == "cpu":
            problems.append("decode: gpu decodes on a CUDA device, not with --device cpu; "
                            "use --decode tensor (or pil) on the CPU")
        if self.workers is not None and self.workers < 0:
            problems.append(f"workers: {self.workers} is negative; give 0 (decode in-process) or more")
        if self.batch_size < 1:
            problems.append(f"batch-size: {self.batch_size} must be at least 1")
        try:
            precision = check_precision(self.precision)
        except SpecError as err:
            problems += err.problems
            precision = self.precision
        if problems:
            raise SpecError(problems)
        return self.but(precision=precision)


def resolve_device(device: str, decode: str = "pil") -> str:
    """``auto`` becomes cuda where one exists, else cpu; an unavailable cuda is bad input, and so is
    ``--decode gpu`` where the device resolves to the CPU."""
    if device != "cpu" and device != "auto" and not device.startswith("cuda"):
        raise SpecError(f'device: "{device}" is not one of auto, cpu, cuda', "pass --device auto, cpu or cuda")
    if device == "cpu":
        return device
    import torch  # lazy: start-up time (asking torch about CUDA costs seconds; the door runs first)

    if device == "auto":
        resolved = "cuda" if torch.cuda.is_available() else "cpu"
        if resolved == "cpu" and decode == "gpu":
            raise SpecError("decode: gpu needs a CUDA device, and --device auto found none here",
                            "use --decode tensor (or pil) on the CPU")
        return resolved
    if not torch.cuda.is_available():
        raise SpecError(f'device: "{device}" was asked for but no CUDA device is available', "use --device cpu")
    return device
