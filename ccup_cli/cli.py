"""``ccup``: thin Typer commands that parse, call the library, and render.

Exit codes: 0 success; 1 a threshold failed (``ccup eval``) or an unexpected error;
2 bad input (one line on stderr naming the problem and the fix); 130 interrupted.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import sys
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import click
import typer
import typer.core
from rich.console import Console

from .data.catalog import DATASET_NAMES
from .errors import CcupError


class _HelpFormatter(click.HelpFormatter):
    """click's help layout, with help text never split inside a hyphenated value (retain-mean-orthogonal)."""

    def write_dl(self, rows, col_max: int = 30, col_spacing: int = 2) -> None:
        rows = list(rows)
        first_col = min(max((len(first) for first, _ in rows), default=0), col_max) + col_spacing
        indent = " " * (first_col + self.current_indent)
        for first, second in rows:
            self.write(f"{'':>{self.current_indent}}{first}")
            if not second:
                self.write("\n")
                continue
            self.write(" " * (first_col - len(first)) if len(first) <= first_col - col_spacing else "\n" + indent)
            lines = textwrap.wrap(second, max(self.width - first_col - 2, 10), break_on_hyphens=False,
                                  break_long_words=False) or [""]
            self.write(lines[0] + "\n" + "".join(f"{indent}{line}\n" for line in lines[1:]))


class _Context(click.Context):
    formatter_class = _HelpFormatter


class _Command(typer.core.TyperCommand):
    context_class = _Context


class _Group(typer.core.TyperGroup):
    context_class = _Context


# rich_markup_mode=None: click's plain help, whose option column never cuts a name at 80 columns
app = typer.Typer(
    name="ccup",
    cls=_Group,
    help="Make a CLIP model forget chosen classes: closed-form, no retraining, no images of those classes.",
    epilog="\b\nThe real job, in two commands (ccup COMMAND --help for more):\n"
           "  ccup unlearn --model ViT-B-32 --pretrained model.safetensors \\\n"
           "      --eval images/ --forget dog --out out/\n"
           "  ccup audit out/ --check --probe-shots ''",
    pretty_exceptions_show_locals=False,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


@contextlib.contextmanager
def _boundary(debug: bool):
    """Map exceptions to exit codes: CcupError -> 2, Ctrl-C -> 130, anything else -> 1."""
    try:
        yield
    except CcupError as err:
        if debug:
            raise
        for line in err.one_line().splitlines():
            stderr.print(f"[bold red]error:[/] {line}", highlight=False, markup=True)
        raise typer.Exit(err.exit_code) from None
    except KeyboardInterrupt:
        stderr.print("interrupted; nothing was written", highlight=False)
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except Exception as err:  # noqa: BLE001 - the one place that catches everything
        if debug:
            raise
        first = str(err).splitlines()[0] if str(err) else ""
        stderr.print(f"[bold red]error:[/] unexpected {type(err).__name__}: {first} (run again with --debug for "
                     "the traceback, and please report it)", highlight=False)
        raise typer.Exit(1) from None


def _quiet_libraries(verbose: bool) -> None:
    # open_clip logs through the root logger (e.g. "initialized randomly" before ccup loads
    # the weights itself); keep that for -v
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR, format="%(levelname)s %(message)s")
    logging.getLogger().setLevel(logging.INFO if verbose else logging.ERROR)
    if not verbose:
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)


@contextlib.contextmanager
def _progress(enabled: bool):
    """A rich progress callback on stderr, or None when off (--json, -q, not a terminal)."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=stderr, transient=True) as bar:
        tasks: dict[str, int] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        yield update


def _rank() -> int:
    """This process's rank under torchrun (0 without it)."""
    import os

    return int(os.environ.get("RANK", "0") or 0)


def _warn(report: dict) -> None:
    for warning in report.get("warnings", []):
        stderr.print(f"[yellow]warning:[/] {warning}", highlight=False)


def _spec_from(spec_file: Optional[Path], flags: dict, ignore_file_keys: tuple[str, ...] = ()):
    """The spec file (if any) with the given flags over it, validated at once."""
    # lazy: start-up time (the CLI answers --help and door errors without torch)
    from .spec.schema import build_spec, read_spec_file

    file_values = read_spec_file(spec_file) if spec_file is not None else {}
    for key in ignore_file_keys:
        file_values.pop(key, None)
    return build_spec(file_values, flags)


SPEC_FILE = typer.Argument(None, metavar="[SPEC.yaml]", help="YAML spec; flags override it.")


@dataclass
class RunFlags:
    """The how-to-run flags every job command shares (the spec says what to do)."""

    device: str
    batch_size: int
    json_out: bool
    overwrite: bool
    no_cache: bool
    quiet: bool
    verbose: bool
    debug: bool
    workers: Optional[int]
    precision: str
    decode: str

    @property
    def tables(self) -> bool:
        return not (self.json_out or self.quiet)

    @contextlib.contextmanager
    def options(self, out: Optional[Path] = None):
        """``RunOptions`` for the job, with a progress bar on stderr while it runs."""
        # lazy: start-up time (the CLI answers --help and door errors without torch)
        from .run.options import RunOptions

        with _progress(self.tables) as progress:
            yield RunOptions(device=self.device, batch_size=self.batch_size, out=out, overwrite=self.overwrite,
                             use_cache=not self.no_cache, argv=sys.argv, progress=progress, workers=self.workers,
                             precision=self.precision, decode=self.decode)


_RUN_FLAGS = {
    "device": (str, typer.Option("auto", "--device", help="auto, cpu or cuda.")),
    "batch_size": (int, typer.Option(256, "--batch-size", min=1, help="Images / prompts per batch.")),
    "workers": (Optional[int], typer.Option(None, "--workers", help="Image-decoding processes (0: in-process); "
                                            "default: one per core, at most 16; 0 below 512 images.")),
    "decode": (str, typer.Option("pil", "--decode", help="pil (open_clip's transform, exact), pil-draft (JPEGs "
                                 "decoded smaller), tensor (torchvision.io) or gpu (nvJPEG); all but pil change "
                                 "pixels slightly.")),
    "precision": (str, typer.Option("fp32", "--precision", help="Encoders' precision: fp32, fp16 or bf16 "
                                    "(the projector is always float64).")),
    "json_out": (bool, typer.Option(False, "--json", help="Print only the JSON report on stdout.")),
    "overwrite": (bool, typer.Option(False, "--overwrite", help="Replace an existing --out.")),
    "no_cache": (bool, typer.Option(False, "--no-cache", help="Do not read or write ~/.cache/ccup.")),
    "quiet": (bool, typer.Option(False, "-q", "--quiet", help="No progress bars or tables; errors only.")),
    "verbose": (bool, typer.Option(False, "-v", "--verbose", help="Log what open_clip does.")),
    "debug": (bool, typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors.")),
}

# flags that set a field of the spec, by field name; None means "not given" (the spec file decides)
_SPEC_FLAGS = {
    "model": (Optional[str], typer.Option(None, "--model", help="An open_clip name (ccup models lists them), "
                                          "local-dir:PATH, hf-hub:ORG/REPO, a config .json or transformers:PATH; "
                                          "default: the embedded ccup-tiny-fashion.")),
    "pretrained": (Optional[str], typer.Option(None, "--pretrained", help="A checkpoint file (.safetensors, .pt, "
                                               ".pth, .bin), a model folder, a tag (needs the network), or none.")),
    "forget": (Optional[str], typer.Option(None, "--forget", help="Classes to forget, comma-separated.")),
    "retain": (Optional[str], typer.Option(None, "--retain", help="Classes to keep, comma-separated.")),
    "forget_domains": (Optional[str], typer.Option(None, "--forget-domains", help="Forget only in these domains, "
                                                   "comma-separated (e.g. sketch); alone: the whole domain.")),
    "forget_concepts": (Optional[str], typer.Option(None, "--forget-concepts", help="Words wider than a class "
                                                    "(e.g. footwear), comma-separated: each forgets the eval classes "
                                                    "it covers by text similarity (docs/concepts.md).")),
    "concept_classes": (Optional[str], typer.Option(None, "--concept-classes", help="The classes a concept covers, "
                                                    "decided by you: footwear=sandal+sneaker,tops=shirt "
                                                    "(footwear= covers none).")),
    "concept_threshold": (Optional[float], typer.Option(None, "--concept-threshold", help="A concept covers a "
                                                        "class at this standardised similarity (z) or above.")),
    "near_retain_threshold": (Optional[float], typer.Option(None, "--near-retain-threshold", help="No eval "
                                                            "dataset: leave out default names at this z to a "
                                                            "forget name or above.")),
    "keep_near_retain": (Optional[bool], typer.Option(None, "--keep-near-retain/--drop-near-retain",
                                                      help="No eval dataset: keep the default-vocabulary names near "
                                                      "a forget name on the retain side (default: drop, listed in "
                                                      "the report).")),
    "domains": (Optional[str], typer.Option(None, "--domains", help="Domain -> templates: a YAML file, or the "
                                            "preset fashion-mnist-domains.")),
    "domain_images": (Optional[str], typer.Option(None, "--domain-images", help="domain-edit: unlabelled images "
                                                  "of every domain: sketch=DIR,photo=DIR or one folder of "
                                                  "<domain>/ folders.")),
    "reference_images": (Optional[str], typer.Option(None, "--reference-images", help="ccup: a folder of unlabelled "
                                                     "images from where the model is deployed (any classes, searched "
                                                     "recursively, a few hundred to a few thousand): the sink is "
                                                     "calibrated on them to put each forgotten class at chance in "
                                                     "search (reference-chance).")),
    "erase": (Optional[str], typer.Option(None, "--erase", help="probe: also erase the forget classes linearly "
                                          "(LEACE on the references' zero-shot pseudo-labels), folded into the same "
                                          "final map; needs --reference-images. none (default).")),
    "alpha": (Optional[str], typer.Option(None, "--alpha", help="Strength in [0, 1] (default 1), or 'auto'.")),
    "max_forget_acc": (Optional[float], typer.Option(None, "--max-forget-acc",
                                                     help="--alpha auto: the forget top-1 to reach, e.g. 0.05.")),
    "max_forget_retrieval": (Optional[float], typer.Option(
        None, "--max-forget-retrieval", help="--alpha auto: each forget class's search P@10, P@100 and "
        "R-precision at most this (default 0.2; 1: off).")),
    "max_forget_auc_gap": (Optional[float], typer.Option(
        None, "--max-forget-auc-gap", help="--alpha auto: each forget class's search |AUC - 0.5| at most this "
        "(at chance at both ends).")),
    "method": (Optional[str], typer.Option(None, "--method", help="ccup (default), nullspace, domain-edit "
                                           "(needs --domain-images), finetune (the gradient baseline) or "
                                           "ccup-proto (experimental).")),
    "sink": (Optional[str], typer.Option(None, "--sink", help="ccup: where forget prompts go: retain-mean-orthogonal "
                                         "(default), zero (the paper), retain-mean, text-chance, reference-chance (default "
                                         "with --reference-images), neutral, "
                                         "neutral-orthogonal, or a phrase.")),
    "fold": (Optional[str], typer.Option(None, "--fold", help="Where W goes: image, text, or auto (default: "
                                         "image where that tower ends in a linear map, else text).")),
    "templates": (Optional[str], typer.Option(None, "--templates", help="Forget/eval templates: openai, simple, "
                                              "photo, or a file.")),
    "retain_templates": (Optional[str], typer.Option(None, "--retain-templates",
                                                     help="Retain templates (same choices).")),
    "eval": (Optional[str], typer.Option(None, "--eval", help="An ImageFolder path (one sub-folder per class) or "
                                         "a dataset: " + ", ".join(DATASET_NAMES) + "; none: no evaluation (the retain side is "
                                         "the default vocabulary).")),
    "data_root": (Optional[str], typer.Option(None, "--data-root", help="Where a named dataset lies.")),
    "eval_limit": (Optional[int], typer.Option(None, "--eval-limit", help="Images per class (stratified, seeded).")),
    "classnames": (Optional[str], typer.Option(None, "--classnames", help="File of class names, one per line in "
                                               "label order.")),
    "download": (Optional[bool], typer.Option(None, "--download/--no-download", help="Allow a dataset download.")),
    "finetune_data": (Optional[str], typer.Option(None, "--finetune-data", help="method finetune: labelled "
                                                  "training images (dataset or folder); default: the eval "
                                                  "dataset's train split.")),
}
_DATA_FIELDS = ("model", "pretrained", "eval", "data_root", "eval_limit", "classnames")


def examples(*lines: str) -> str:
    """A help epilog: the command's examples, kept as written (click's \\b block)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def job_command(name: str, spec_fields: tuple[str, ...] = (), epilog: str | None = None):
    """Register a job command: ``spec_fields`` flags arrive as ``fields`` (a dict by spec field name),
    the shared run flags as ``flags: RunFlags``, and the body runs inside the error boundary."""

    def register(fn):
        own = [p for p in inspect.signature(fn).parameters.values() if p.name not in ("flags", "fields")]
        added = {**{key: _SPEC_FLAGS[key] for key in spec_fields}, **_RUN_FLAGS}
        params = [inspect.Parameter(key, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=option, annotation=kind)
                  for key, (kind, option) in added.items()]

        @functools.wraps(fn)
        def command(**kwargs):
            flags = RunFlags(**{key: kwargs.pop(key) for key in _RUN_FLAGS})
            if _rank() > 0:  # under torchrun, rank 0 alone renders; the others run silently
                flags.quiet, flags.json_out = True, False
            fields = {key: kwargs.pop(key) for key in spec_fields}
            _quiet_libraries(flags.verbose)
            with _boundary(flags.debug):
                return fn(flags=flags, fields=fields, **kwargs)

        command.__signature__ = inspect.Signature(own[:1] + params[:len(spec_fields)] + own[1:]
                                                  + params[len(spec_fields):])
        command.__annotations__ = {**{k: v for k, v in fn.__annotations__.items() if k not in ("flags", "fields")},
                                   **{key: kind for key, (kind, _) in added.items()}}
        return app.command(name, epilog=epilog, cls=_Command)(command)

    return register


@job_command("unlearn", tuple(_SPEC_FLAGS), epilog=examples(
    "ccup unlearn --forget sandal --out out/        # the embedded model",
    "ccup unlearn --model ViT-B-32 --pretrained model.safetensors \\",
    "    --eval images/ --forget dog --out out/    # your file and ImageFolder",
    "ccup unlearn configs/partial-strength.yaml --alpha 0.8 --out out/"))
def unlearn_command(
    spec_file: Optional[Path] = SPEC_FILE,
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (model.safetensors, report.json, ...)."),
    flags: RunFlags = None,
    fields: dict = None,
) -> None:
    """Forget classes and write the patched checkpoint.

    The map is folded into one tower's final linear map (the image tower's, or the text tower's where
    the image tower has none, as in SigLIP); no other tensor changes.
    """
    spec = _spec_from(spec_file, fields)
    # lazy: start-up time (the CLI answers --help and door errors without torch)
    from .jobs.unlearn import run_unlearn
    from .output import report as rep

    with flags.options(out) as options:
        report = run_unlearn(spec, options)
    if flags.json_out:
        sys.stdout.write(rep.dumps(report))
        return
    if not flags.quiet:
        _warn(report)
        stdout.print(rep.summary_table(report))
        if "metrics" in report:
            ds = report["dataset"]
            stdout.print(rep.metrics_table(report["metrics"], f"{ds['name']} ({ds['n_images']} images)"))
            if "domains" in report["metrics"]["before"]:
                stdout.print(rep.domain_grid_table(report["metrics"], report["spec"]))
        if out is None:
            stdout.print("[dim]no --out given: nothing was written[/]")


@job_command("eval", _DATA_FIELDS + ("forget_domains",), epilog=examples(
    "ccup eval --pretrained out --eval images/ --forget dog \\",
    "    --max-forget-acc 0.05 --min-retain-acc 0.85     # a CI gate",
    "ccup eval --pretrained out --forget sandal --search-gone",
    "ccup eval --model ViT-B-32 --pretrained model.safetensors --eval images/"))
def eval_command(
    forget: Optional[str] = typer.Option(None, "--forget", help="Classes that should be forgotten, "
                                         "comma-separated."),
    eval_split: str = typer.Option("test", "--eval-split", help="Split of a named dataset: test, or train."),
    download: bool = typer.Option(False, "--download", help="Allow a dataset download."),
    templates: str = typer.Option("openai", "--templates", help="openai, simple, photo, or a file."),
    max_forget_acc: Optional[float] = typer.Option(None, "--max-forget-acc", help="Fail (exit 1) when forget "
                                                   "top-1 is above this fraction."),
    min_retain_acc: Optional[float] = typer.Option(None, "--min-retain-acc", help="Fail (exit 1) when retain "
                                                   "top-1 is below this fraction."),
    max_forget_retrieval: Optional[float] = typer.Option(None, "--max-forget-retrieval", help="Fail (exit 1) when "
                                                         "a forget class's search P@10, P@100 or R-precision is "
                                                         "above this (found at the top)."),
    max_forget_auc_gap: Optional[float] = typer.Option(None, "--max-forget-auc-gap", help="Fail (exit 1) when a "
                                                       "forget class's search |AUC - 0.5| is above this."),
    search_gone: bool = typer.Option(False, "--search-gone", help="Fail (exit 1) unless each forget class's text "
                                     "search is GONE as ccup audit reads it: at chance at every depth."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the JSON report here."),
    flags: RunFlags = None,
    fields: dict = None,
) -> None:
    """Measure one model; thresholds for CI (exit 1 when one fails).

    Zero-shot top-1 on the forget and retain classes, and each class's text search at every depth.
    """
    # lazy: start-up time (the CLI answers --help and door errors without torch)
    from .jobs.eval import EvalRequest, run_eval
    from .output import report as rep
    from .spec.lists import split_csv

    forget_domains = split_csv(fields.pop("forget_domains", None) or "")
    req = EvalRequest(**fields, eval_split=eval_split, download=download, forget=split_csv(forget or ""),
                      forget_domains=forget_domains,
                      templates=templates, max_forget_acc=max_forget_acc, min_retain_acc=min_retain_acc,
                      max_forget_retrieval=max_forget_retrieval, max_forget_auc_gap=max_forget_auc_gap,
                      search_gone=search_gone)
    with flags.options() as options:
        report, failures = run_eval(req, options, out)
    if flags.json_out:
        sys.stdout.write(rep.dumps(report))
    elif not flags.quiet:
        ds = report["dataset"]
        stdout.print(rep.metrics_table(report["metrics"], f"{report['model']['name']} on {ds['name']} "
                                                          f"({ds['n_images']} images)", measured="this model"))
        if "domains" in report["metrics"]["before"] and (req.forget or req.forget_domains):
            stdout.print(rep.domain_grid_table(report["metrics"], report["request"]))
    if _rank() > 0:
        return
    for failure in failures:
        stderr.print(f"[bold red]threshold failed:[/] {failure}", highlight=False)
    if failures:
        raise typer.Exit(1)
    held = report["thresholds"]["held"]
    if held and flags.tables:
        stdout.print(f"[bold green]every threshold held:[/] {'; '.join(held)}", highlight=False)


@job_command("sweep", ("forget", "retain", "forget_domains", "domains", "sink", "fold", "templates", "retain_templates")
             + _DATA_FIELDS, epilog=examples(
                 "ccup sweep --forget shirt,t-shirt --out sweep/",
                 "ccup sweep --forget dog --eval images/ --methods ccup:zero,ccup,nullspace \\",
                 "    --alphas 0,0.25,...,1 --out sweep/"))
def sweep_command(
    spec_file: Optional[Path] = SPEC_FILE,
    alphas: str = typer.Option("0,0.1,...,1", "--alphas", help="Strengths: a list, or start,next,...,end."),
    methods: str = typer.Option("ccup,nullspace", "--methods", help="Methods to compare; ccup:SINK compares "
                                "sinks, e.g. ccup:zero,ccup,nullspace."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder: sweep.jsonl, tradeoff.png, report.json."),
    flags: RunFlags = None,
    fields: dict = None,
) -> None:
    """Every strength of every method, from one pass over the images."""
    # lazy: start-up time (the CLI answers --help and door errors without torch)
    from .errors import SpecError
    from .spec.lists import split_csv
    from .spec.schema import parse_alphas

    try:
        alpha_list = parse_alphas(alphas)
    except ValueError as err:
        raise SpecError(f"alphas: {err}", "e.g. --alphas 0,0.1,...,1 or --alphas 0,0.5,1") from None
    spec = _spec_from(spec_file, fields, ignore_file_keys=("alpha", "method"))
    # lazy: start-up time (the CLI answers --help and door errors without torch)
    from .jobs.sweep import run_sweep_job
    from .output import report as rep

    with flags.options(out) as options:
        report = run_sweep_job(spec, alpha_list, split_csv(methods), options)
    rows = report.pop("rows")
    if flags.json_out:
        sys.stdout.write(rep.dumps(report))
    elif not flags.quiet:
        _warn(report)
        stdout.print(rep.sweep_table(rows, f"sweep: forget {', '.join(report['spec']['forget'])}"))
        stdout.print(f"written: {report['outputs']['folder']}")


@job_command("export", ("pretrained",), epilog=examples(
    "ccup export --out hf-tiny/                  # the embedded model",
    "ccup export out/ --to transformers --out hf-out/    # an unlearn output",
    "ccup export ViT-B-32 --pretrained model.safetensors --out hf-b32/"))
def export_command(
    source: Optional[str] = typer.Argument(None, metavar="[SOURCE]", help="An output folder, or a model name "
                                           "(with --pretrained); default: the embedded ccup-tiny-fashion."),
    to: str = typer.Option("transformers", "--to", help="Target format: transformers."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (config.json, model.safetensors, ...)."),
    flags: RunFlags = None,
    fields: dict = None,
) -> None:
    """Convert an open_clip model into a transformers CLIP folder."""
    # lazy: start-up time (the CLI answers --help and door errors without torch)
    from .jobs.export import run_export
    from .output import report as rep

    with flags.options(out) as options:
        report = run_export(source, fields["pretrained"], to, options)
    if flags.json_out:
        sys.stdout.write(rep.dumps(report))
    elif not flags.quiet:
        _warn(report)
        stdout.print(f"written: {report['export']['out']} ({', '.join(report['export']['files'])})",
                     highlight=False)


@job_command("audit", _DATA_FIELDS, epilog=examples(
    "ccup audit out/ --out audit/                 # every verdict, probes too",
    "ccup audit out/ --probe-shots '' --check     # CI: exit 1 unless all GONE",
    "ccup audit out/ --aliases configs/aliases/fashion-mnist.yaml --eval images/"))
def audit_command(
    patched: str = typer.Argument(..., metavar="PATCHED", help="An unlearn output folder, or a checkpoint "
                                  "(with --model)."),
    forget: Optional[str] = typer.Option(None, "--forget", help="Forgotten classes; default: from the folder."),
    aliases: Optional[Path] = typer.Option(None, "--aliases", help="YAML file mapping each class to a list "
                                           "of its other names."),
    templates: Optional[str] = typer.Option(None, "--templates", help="A second template set (openai, simple, "
                                            "photo, or a file); default: templates the unlearning did not use."),
    probe_shots: str = typer.Option("4,16", "--probe-shots", help="k of the k-shot linear probes; '' for none."),
    probe_draws: int = typer.Option(5, "--probe-draws", min=1, help="Draws of the k images, averaged."),
    probe_seed: int = typer.Option(0, "--probe-seed", help="Seed of the draws and of the probes."),
    leace: bool = typer.Option(True, "--leace/--no-leace", help="The LEACE comparison row (needs "
                               "concept-erasure; fitted on labelled images)."),
    reference: Optional[str] = typer.Option(None, "--reference", help="A model that never learnt the forget "
                                            "classes (a folder, a checkpoint, an embedded name): every measure "
                                            "side by side, with a verdict against it."),
    reference_pretrained: Optional[str] = typer.Option(None, "--reference-pretrained", help="The reference's "
                                                       "weights where --reference is a model name (none: random)."),
    eval_split: str = typer.Option("test", "--eval-split", help="Split of a named dataset the audit reads: test, "
                                   "or train."),
    download: bool = typer.Option(False, "--download", help="Allow a dataset download."),
    check: bool = typer.Option(False, "--check", help="Exit 1 unless every verdict is GONE (zero-shot, text "
                               "search, and the probes when run): a CI gate."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder: audit.json, audit.md, PNG figures."),
    flags: RunFlags = None,
    fields: dict = None,
) -> None:
    """Is it really gone? The verdicts, with --check for CI.

    Zero-shot under other names and templates, text search at every depth, where the images went,
    and k-shot linear probes.
    """
    # lazy: start-up time (the CLI answers --help and door errors without torch)
    from .errors import SpecError
    from .jobs.audit import AuditRequest, run_audit
    from .output import report as rep
    from .spec.lists import split_csv

    try:
        shots = [int(k) for k in split_csv(probe_shots)]
    except ValueError:
        raise SpecError(f"probe-shots: {probe_shots!r} is not a list of whole numbers", "e.g. --probe-shots 4,16") \
            from None
    req = AuditRequest(patched=patched, **fields, eval_split=eval_split, download=download,
                       forget=split_csv(forget or ""), aliases=str(aliases) if aliases else None, templates=templates,
                       probe_shots=shots, probe_draws=probe_draws, probe_seed=probe_seed, leace=leace,
                       reference=reference, reference_pretrained=reference_pretrained)
    with flags.options(out) as options:
        report = run_audit(req, options)
    from .audit.page import audit_table, domain_grid_table  # lazy: torch (the door answers without it)

    if flags.json_out:
        sys.stdout.write(rep.dumps(report))
    elif not flags.quiet:
        _warn(report)
        stdout.print(f"[bold]verdict:[/] {report['verdict']['headline']}", highlight=False)
        stdout.print(report["statement"], highlight=False)
        stdout.print(audit_table(report))
        if report.get("domain_grid"):
            stdout.print(domain_grid_table(report))
        if report.get("reference"):
            from .audit.reference_page import reference_table

            stdout.print(f"[bold]against the reference:[/] {report['reference']['headline']}", highlight=False)
            stdout.print(reference_table(report))
        if out is not None:
            stdout.print(f"written: {report['outputs']['folder']} (audit.md, audit.json, figures)")
    if check and _rank() == 0:
        from .audit.figures import check_failures

        failures = check_failures(report["verdict"])
        for failure in failures:
            stderr.print(f"[bold red]check failed:[/] {failure}", highlight=False)
        if failures:
            raise typer.Exit(1)
        if flags.tables:
            stdout.print("[bold green]check passed:[/] every verdict measured is GONE", highlight=False)


@app.command("models", cls=_Command)
def models_command() -> None:
    """List the architectures open_clip knows, the embedded one first."""
    # lazy: start-up time (the CLI answers --help and door errors without torch)
    from .backends.open_clip import EMBEDDED_MODEL, builtin_model_names, embedded_names

    embedded = embedded_names()
    for name in embedded:
        stdout.print(f"{name} (embedded{', default' if name == EMBEDDED_MODEL else ''})", highlight=False)
    for name in builtin_model_names():
        if name not in embedded:
            stdout.print(name, highlight=False)


@app.command("version", cls=_Command)
def version_command() -> None:
    """Print ccup's version."""
    # lazy: start-up time (the CLI answers --help and door errors without torch)
    from .run.provenance import ccup_version

    stdout.print(ccup_version())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
