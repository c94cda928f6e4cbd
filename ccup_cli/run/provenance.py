"""The provenance every report starts and ends with: one builder for every job.

Head: schema version, ccup version (from the installed metadata, never typed in), UTC time,
argv, the resolved spec and its sha256, the model source and its sha256, the dataset and the
sha256 of its file list. Tail: timings per phase and the environment (versions, device).
Paths ccup resolved are recorded portably (``portable.py``): never an absolute path of this machine.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

from ..output.portable import portable_argv, portable_path
from ..presets.defaults import EMBEDDED_MODEL, EMBEDDED_MODELS, EMBEDDED_PRETRAINED

SCHEMA_VERSION = 1


def ccup_version() -> str:
    try:
        return metadata.version("ccup")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


class PhaseTimer:
    """Wall time per named phase, in seconds; a phase entered twice adds up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, phase: str):
        timer = self

        class _Block:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[phase] = round(timer.seconds.get(phase, 0.0) + time.perf_counter() - self.start, 4)

        return _Block()


def environment(device: str, loaded=None) -> dict:
    """Python, torch and the backend's library versions, and the device."""
    import torch

    env = {"python": sys.version.split()[0], "torch": torch.__version__}
    if loaded is not None:
        env.update(loaded.provenance())
    env["device"] = device
    if device.startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(0)
    return env


def dataset_record(dataset, feature_cache_hit: bool | None = None) -> dict:
    record = {"name": dataset.name, "split": dataset.split, "n_images": len(dataset),
              "images_per_class": dataset.counts(), "file_list_sha256": dataset.file_list_sha256()}
    if feature_cache_hit is not None:
        record["feature_cache_hit"] = feature_cache_hit
    return record


def resolved_source(model: str | None, pretrained: str | None, loaded) -> tuple[str | None, str | None]:
    """``(model, pretrained)`` as the resolved spec records them: the embedded default by its name and
    ``embedded``, an open_clip name's default tag by the tag it resolved to; the rest as given.

    A folder (``local-dir:``, ``hf-hub:``, ``transformers:``, an output folder) names its own weights,
    so its ``pretrained`` stays as given.
    """
    if model is None and pretrained is None:
        return EMBEDDED_MODEL, EMBEDDED_PRETRAINED
    if model in EMBEDDED_MODELS and pretrained is None:
        return model, EMBEDDED_PRETRAINED
    if (pretrained is None and model is not None and getattr(loaded, "backend", None) == "open_clip"
            and not model.startswith(("local-dir:", "hf-hub:", "transformers:"))):
        return model, loaded.pretrained
    return model, pretrained


def resolved_fields(spec, loaded) -> dict[str, str | None]:
    """``{"model": ..., "pretrained": ...}`` of ``resolved_source``, to update a spec with."""
    model, pretrained = resolved_source(spec.model, spec.pretrained, loaded)
    return {"model": model, "pretrained": pretrained}


def start_report(command: str, argv: list[str] | None, loaded=None, spec=None, dataset=None,
                 feature_cache_hit: bool | None = None, **sections: Any) -> dict:
    """The head of a report: who, when, what was asked, from which model and data."""
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "ccup_version": ccup_version(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "argv": portable_argv(list(argv if argv is not None else sys.argv)),
    }
    if spec is not None:
        report["spec"] = spec.record()
        report["spec_sha256"] = spec.sha256()
    if loaded is not None:
        checkpoint = portable_path(loaded.checkpoint_path)
        report["model"] = {"name": portable_path(loaded.display_name or loaded.model_name), "backend": loaded.backend,
                           "open_clip_name" if loaded.backend == "open_clip" else "source":
                               portable_path(loaded.model_name),
                           "pretrained": portable_path(loaded.pretrained), "checkpoint": checkpoint}
        report["preprocess_cfg"] = loaded.preprocess_cfg
        report["inputs"] = {"checkpoint": {"path": checkpoint, "sha256": loaded.checkpoint_sha256}}
    if dataset is not None:
        report["dataset"] = dataset_record(dataset, feature_cache_hit)
    report.update(sections)
    return report


def finish_report(report: dict, timer: PhaseTimer, device: str, loaded=None, options=None) -> dict:
    """The tail of a report: how it ran, timings per phase and the environment."""
    if options is not None:
        # lazy: start-up time (torch)
        from ..data.loader import default_workers

        n_images = report.get("dataset", {}).get("n_images", 0)
        report["run"] = {"device": device, "batch_size": options.batch_size, "precision": options.precision,
                         "decode": options.decode,
                         "workers": options.workers if options.workers is not None else default_workers(n_images),
                         "cache": options.use_cache}
    report["timings"] = timer.seconds
    report["environment"] = environment(device, loaded)
    return report
