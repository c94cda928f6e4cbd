"""The provenance every report starts and ends with: one builder for every job.

Head: schema version, ccup version (from the installed metadata, never typed in), UTC time,
argv, the resolved spec and its sha256, the model source and its sha256, the dataset and the
sha256 of its file list. Tail: timings per phase and the environment (versions, device).
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

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


def start_report(command: str, argv: list[str] | None, loaded=None, spec=None, dataset=None,
                 feature_cache_hit: bool | None = None, **sections: Any) -> dict:
    """The head of a report: who, when, what was asked, from which model and data."""
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "ccup_version": ccup_version(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "argv": list(argv if argv is not None else sys.argv),
    }
    if spec is not None:
        report["spec"] = spec.model_dump(mode="json")
        report["spec_sha256"] = spec.sha256()
    if loaded is not None:
        report["model"] = {"name": loaded.display_name or loaded.model_name, "backend": loaded.backend,
                           "open_clip_name" if loaded.backend == "open_clip" else "source": loaded.model_name,
                           "pretrained": loaded.pretrained,
                           "checkpoint": str(loaded.checkpoint_path) if loaded.checkpoint_path else None}
        report["preprocess_cfg"] = loaded.preprocess_cfg
        report["inputs"] = {"checkpoint": {"path": str(loaded.checkpoint_path) if loaded.checkpoint_path else None,
                                           "sha256": loaded.checkpoint_sha256}}
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
