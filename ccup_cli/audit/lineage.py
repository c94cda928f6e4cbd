"""Where a patched checkpoint came from: the chain of ccup output folders back to the original model.

An unlearn output folder holds ``report.json`` (and ``spec.yaml``) naming its source
(``spec.model`` / ``spec.pretrained``). When that source is itself a ccup output folder (forget A,
then forget B from the result), the chain is followed to its root: the root's source is the
original model, and the forget classes of every step add up. Torch-free: read at the door.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import CheckpointError
from ..output.portable import portable_path

MAX_STEPS = 32  # a longer chain is a loop or a mistake


@dataclass
class Step:
    """One unlearn step: its folder, resolved spec, and the sha256 of its source and of its output."""

    folder: Path
    spec: dict
    source_sha256: str | None
    output_sha256: str | None
    method: str | None = None
    alpha: float | None = None


@dataclass
class Lineage:
    """The steps from the original model (first) to the audited checkpoint (last)."""

    steps: list[Step] = field(default_factory=list)

    @property
    def root_source(self) -> tuple[str | None, str | None]:
        """``(model, pretrained)`` of the original model: the first step's source."""
        spec = self.steps[0].spec
        return spec.get("model"), spec.get("pretrained")

    @property
    def forget(self) -> list[str]:
        """Every step's forget classes, in order, without repeats."""
        return list(dict.fromkeys(c for s in self.steps for c in s.spec.get("forget", [])))

    def intact(self) -> bool:
        """Each step's source sha256 is the previous step's output sha256 (where both are recorded)."""
        return all(b.source_sha256 is None or a.output_sha256 is None or b.source_sha256 == a.output_sha256
                   for a, b in zip(self.steps, self.steps[1:]))

    def record(self) -> list[dict]:
        return [{"folder": portable_path(s.folder), "method": s.method, "alpha": s.alpha, "forget": s.spec.get("forget"),
                 "source": {"model": s.spec.get("model"), "pretrained": s.spec.get("pretrained"),
                            "sha256": s.source_sha256},
                 "output_sha256": s.output_sha256, "spec": s.spec} for s in self.steps]


def output_folder(path: str | Path | None) -> Path | None:
    """The ccup output folder behind ``path`` (the folder, or a checkpoint inside it), or None."""
    if path is None:
        return None
    p = Path(str(path).removeprefix("local-dir:"))
    folder = p if p.is_dir() else p.parent
    if p.exists() and ((folder / "report.json").is_file() or (folder / "spec.yaml").is_file()):
        return folder
    return None


def read_step(folder: Path) -> Step:
    """One step from a folder's ``report.json`` (preferred) or ``spec.yaml``."""
    report_file, spec_file = folder / "report.json", folder / "spec.yaml"
    try:
        if report_file.is_file():
            report = json.loads(report_file.read_text(encoding="utf-8"))
            spec = report.get("spec") or {}
            return Step(folder, spec, ((report.get("inputs") or {}).get("checkpoint") or {}).get("sha256"),
                        ((report.get("outputs") or {}).get("checkpoint") or {}).get("sha256"),
                        (report.get("projector") or {}).get("method", spec.get("method")),
                        (report.get("projector") or {}).get("alpha"))
        spec = yaml.safe_load(spec_file.read_text(encoding="utf-8")) or {}
    except (OSError, ValueError, RecursionError, yaml.YAMLError) as err:
        raise CheckpointError(f"{folder}: cannot read its report.json or spec.yaml ({err})",
                              "give a folder written by ccup unlearn, or a checkpoint with --model") from None
    if not isinstance(spec, dict):
        raise CheckpointError(f"{spec_file} is not a mapping", "give a folder written by ccup unlearn")
    return Step(folder, spec, None, None, spec.get("method"), spec.get("alpha"))


def trace(patched: str | Path) -> Lineage | None:
    """The chain of steps that produced ``patched``, root first; None when it is no ccup output."""
    folder = output_folder(patched)
    steps: list[Step] = []
    seen: set[Path] = set()
    while folder is not None:
        folder = folder.resolve()
        if folder in seen or len(steps) >= MAX_STEPS:
            raise CheckpointError(f"{folder}: the chain of source folders loops or exceeds {MAX_STEPS} steps",
                                  "check the pretrained field of each step's spec")
        seen.add(folder)
        step = read_step(folder)
        steps.append(step)
        folder = output_folder(step.spec.get("pretrained")) or output_folder(step.spec.get("model"))
    return Lineage(steps[::-1]) if steps else None
