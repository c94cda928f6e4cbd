"""The job behind ``ccup export``: an open_clip model as a transformers CLIP folder.

The source is anything ccup loads with open_clip (a name with weights, an output folder of
``ccup unlearn``, the embedded model); ``export.export_to_transformers`` maps the weights.
"""

from __future__ import annotations

from pathlib import Path

from ..backends.base import transformers_source
from ..errors import SpecError
from ..output.atomic import replaced_warning
from ..output.portable import portable_path
from ..run.door import pretrained_problems
from ..run.options import RunOptions
from ..run.provenance import PhaseTimer, finish_report, start_report
from ..run.writer import check_output

TARGETS = ("transformers",)


def resolve_export_source(source: str | None, pretrained: str | None) -> tuple[str | None, str | None]:
    """``SOURCE`` as (model, pretrained): a folder is an output folder, anything else a model name."""
    if source is not None and pretrained is None and Path(source).is_dir():
        return None, source
    return source, pretrained


def run_export(source: str | None, pretrained: str | None, to: str, options: RunOptions) -> dict:
    """Write the source model as a ``to`` folder at ``options.out``. Returns the report."""
    problems = []
    if to not in TARGETS:
        problems.append(f'to: "{to}" is not a target; use {" or ".join(TARGETS)}')
    if options.out is None:
        problems.append("out: the export needs an output folder; pass --out DIR")
    model, pretrained = resolve_export_source(source, pretrained)
    if transformers_source(model, pretrained) is not None:
        problems.append(f"source: {source or pretrained} is already a transformers folder; nothing to export")
    else:
        problems += pretrained_problems(model, pretrained)
    if problems:
        raise SpecError(problems)
    # lazy: start-up time (torch loads after the door)
    from ..backends.base import backend_for

    backend_for("transformers:", None)  # the target format needs the extra: checked here
    check_output(options.out, options.overwrite, (pretrained, model))
    timer = PhaseTimer()
    # lazy: start-up time (torch loads after the door)
    from ..backends.export import export_to_transformers
    from ..backends.open_clip import load_model

    with timer("load_model"):
        loaded = load_model(model, pretrained, "cpu")
    with timer("write"):
        written = export_to_transformers(loaded, Path(options.out), options.overwrite)
    report = start_report("export", options.argv, loaded, export={**written, "out": portable_path(written["out"])})
    if written.get("replaced"):  # what --overwrite replaced
        report["warnings"] = [replaced_warning(r) for r in written["replaced"]]
    return finish_report(report, timer, "cpu", loaded)
