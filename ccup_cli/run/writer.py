"""Where outputs go: the one "output exists" check, and the patched checkpoint folder.

Every folder is written through ``atomic.atomic_dir``: a failed or interrupted run leaves the
previous state untouched, and an existing output is only replaced with ``--overwrite``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import OutputError
from ..output import report as rep
from ..output.atomic import CommitReceipt, atomic_dir, os_error_to_output_error, replaced_warning, sha256_file
from ..output.portable import portable_path


def check_output(out: Path, overwrite: bool, inputs: tuple[str | None, ...] = (), what: str = "output folder") -> None:
    """Refuse an output that exists (without ``--overwrite``) or that is, or holds, an input."""
    out = Path(out).absolute()
    for given in inputs:
        if not given:
            continue
        inp = Path(given.removeprefix("local-dir:").removeprefix("transformers:")).absolute()
        if inp.exists() and (inp == out or out in inp.parents):
            raise OutputError(f"--out {out} would overwrite the input {inp}", "choose another --out")
    if out.exists() and not overwrite:
        raise OutputError(f"{what} {out} already exists", "pass --overwrite or choose another --out")
    if what != "output folder" and not out.parent.is_dir():
        raise OutputError(f"folder {out.parent} does not exist", "create it or choose another --out")


def patched_state_dict(source_state_dict: dict, replaced: dict) -> dict:
    """The source state dict with only the given tensors replaced, each kept in the source's dtype."""
    return {key: replaced[key].to(tensor.dtype) if key in replaced else tensor
            for key, tensor in source_state_dict.items()}


def _output_key(filename: str) -> str:
    """``open_clip_config.json`` -> ``open_clip_config``: the report key of a config file."""
    return filename.rsplit(".", 1)[0].replace("-", "_")


def note_replaced(report: dict, receipt: CommitReceipt) -> None:
    """Say in ``report`` (``outputs.replaced`` and a warning) which folders ``--overwrite`` replaced."""
    if receipt.replaced:
        report.setdefault("outputs", {})["replaced"] = receipt.replaced
        report.setdefault("warnings", []).extend(replaced_warning(r) for r in receipt.replaced)


def write_checkpoint_folder(out: Path, overwrite: bool, loaded, replaced: dict, method_metadata: dict[str, str],
                            spec, report: dict) -> CommitReceipt:
    """model.safetensors (the source with ``replaced`` swapped in), the backend's config files, spec.yaml,
    report.json, and README.md (a model-card summary) with small figures. An open_clip source gives an
    open_clip local-dir folder; a transformers source a folder that ``CLIPModel.from_pretrained`` loads.

    ``report["outputs"]`` is filled in with each file's path and sha256 before the report is written.
    Returns the commit's receipt: rewrite the report through it (``receipt.write_text``), which
    writes only while the folder is still this run's. ``report`` records what ``--overwrite``
    replaced (``note_replaced``) once the folder is in place.
    """
    # lazy: start-up time (torch; the door reads check_output)
    from ..audit.page import write_unlearn_summary
    from ..backends.checkpoint import save_safetensors

    out = Path(out).absolute()
    metadata = {
        "format": "pt", "ccup_version": report["ccup_version"], "method": spec.method,
        "forget": json.dumps(spec.forget), "spec_sha256": report["spec_sha256"],
        "source_sha256": loaded.checkpoint_sha256 or "random-init", "model": portable_path(loaded.model_name),
        "pretrained": str(portable_path(spec.pretrained)), "backend": loaded.backend, **method_metadata,
    }
    if spec.forget_domains:
        metadata["forget_domains"] = json.dumps(spec.forget_domains)
    receipt = CommitReceipt()
    with atomic_dir(out, overwrite, receipt) as tmp:
        try:
            ckpt_sha = save_safetensors(patched_state_dict(loaded.source_state_dict, replaced),
                                        tmp / "model.safetensors", metadata)
            configs = loaded.write_config_files(tmp)
            (tmp / "spec.yaml").write_text(spec.to_yaml(), encoding="utf-8")
            summary = write_unlearn_summary(tmp, report)
        except OSError as err:
            raise os_error_to_output_error(err, out) from err
        report["outputs"] = {
            "folder": portable_path(out),
            "checkpoint": {"path": portable_path(out / "model.safetensors"), "sha256": ckpt_sha},
            **{_output_key(name): {"path": portable_path(out / name), "sha256": sha256_file(path)}
               for name, path in configs.items()},
            "spec": {"path": portable_path(out / "spec.yaml"), "sha256": sha256_file(tmp / "spec.yaml")},
            "summary": {name: portable_path(out / name) for name in summary},
        }
        rep.write_report(tmp / "report.json", report)
    note_replaced(report, receipt)
    return receipt
