#!/usr/bin/env python3
"""Feeding the model: one worker against the one-core floor, workers 0/1/2/default, and the decoders.

    python scripts/bench_workers.py [--images 1500] [--vit-images 48] [--repeats 3] [--top1-images 2000] [--no-doc]

Two generated JPEG folders of Fashion-MNIST test images: 224 x 224 px, and 500 x 375 px (the
image upscaled to 375 px and centred on a black canvas, so the model's centre crop sees all of
it). Everything runs in one process, caches off, settings alternating within each repeat;
medians are compared, so the ratios hold better than the absolute rates on a shared machine.

1. profile (the embedded model's 28-px transform and ViT-B-32's 224-px transform): the one-core
   floor (``PIL.Image.open`` + open_clip's transform in a loop at one torch thread), PIL decode
   alone, the other decoders, and one DataLoader worker without a model (steady state after its
   first chunk, and its start-up time apart), one worker shipping ready tensors (the IPC cost),
   and the main process's join of chunks into a batch (its one copy).
2. end to end (``encode_pre_projection``): workers 0, 1, 2 and the default, embedded model on both
   folders; ViT-B-32 (random init) on a few images.
   Features must be identical for every setting; the script stops if they are not.
3. decoders: top-1 of the embedded model with each decoder on the full Fashion-MNIST test split
   and on JPEG folders of ``--top1-images`` test images, against ``pil`` (open_clip's transform).

Targets (issue 23): on the 500 x 375 folder the default >= 1.5x the images/s of workers 0 with
identical features, and one worker >= 0.8 of the one-core floor.

    python scripts/bench_workers.py --cli-only [--cli-images 3000] [--repeats 3] [--before-tree /work/main]

4. the CLI (``--cli-only`` runs this alone): ``ccup eval --eval FOLDER --no-cache --json`` on a
   500 x 375 folder, one fresh process per run, settings alternating within each repeat. The
   encode-phase ratio (``timings.encode_images`` of the JSON report: decode and encode alone) is
   reported beside the whole-run ratio (which includes the ~6 s of imports and the model load).
   ``--before-tree`` adds the default run of another checkout (the code before a change). Target
   (issue 31): the encode phase of the default >= 1.6x that of ``--workers 0``, metrics identical.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402
from benchdoc import write_section  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from ccup_cli.backends.features import encode_pre_projection  # noqa: E402
from ccup_cli.backends.fold import project, site_tensors  # noqa: E402
from ccup_cli.backends.open_clip import load_model  # noqa: E402
from ccup_cli.data import loader  # noqa: E402
from ccup_cli.data.datasets import open_dataset  # noqa: E402
from ccup_cli.data.decode import DECODERS, make_decoder  # noqa: E402
from ccup_cli.metrics.zero_shot import zero_shot_metrics  # noqa: E402
from ccup_cli.text.encode import class_embeddings, encode_prompts  # noqa: E402
from ccup_cli.text.templates import build_prompts, load_templates  # noqa: E402

DEFAULT_TARGET = 1.5
WORKER_TARGET = 0.8
FOLDERS = {"224 px": (224, 224), "500x375": (500, 375)}


def make_jpeg_folder(root: Path, n_images: int, size: int | tuple[int, int] = 224) -> Path:
    """``n_images`` RGB JPEGs (quality 90) of Fashion-MNIST test images, one sub-folder per class.

    ``size``: an int for square images, or ``(width, height)``: the image is upscaled to the
    shorter side and centred on a black canvas (Fashion-MNIST's own background).
    """
    from PIL import Image

    try:
        source = open_dataset("fashion-mnist")
    except Exception:  # noqa: BLE001 - the Debian files are optional; the embedded subset always exists
        source = open_dataset("fashion-mnist-mini")
    width, height = (size, size) if isinstance(size, int) else size
    side = min(width, height)
    picks = np.linspace(0, len(source) - 1, n_images).astype(int)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text("".join(f"{c:02d}\t{name}\n" for c, name in enumerate(source.classnames)),
                                         encoding="utf-8")
    for k, i in enumerate(picks):
        folder = root / f"{int(source.labels[i]):02d}"
        folder.mkdir(parents=True, exist_ok=True)
        img = source.load_image(int(i)).convert("RGB").resize((side, side), Image.BICUBIC)
        if (width, height) != (side, side):
            canvas = Image.new("RGB", (width, height))
            canvas.paste(img, ((width - side) // 2, (height - side) // 2))
            img = canvas
        img.save(folder / f"{k:05d}.jpg", quality=90)
    return root


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


class ReadyTensors(Dataset):
    """``n`` copies of one transformed image: a worker that ships tensors and decodes nothing."""

    def __init__(self, image: torch.Tensor, n: int):
        self.image, self.n = image, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> torch.Tensor:
        return self.image.clone()


def _one_worker(dataset) -> DataLoader:
    import multiprocessing

    return DataLoader(dataset, batch_size=loader.WORKER_CHUNK, num_workers=1, prefetch_factor=loader.PREFETCH_CHUNKS,
                      multiprocessing_context=multiprocessing.get_context("fork"),
                      worker_init_fn=loader.one_thread_per_worker, collate_fn=torch.utils.data.default_collate)


def _worker_steady(dataset) -> tuple[float, float]:
    """(images/s after the first chunk, seconds to the first chunk) of one worker draining ``dataset``."""
    t0 = time.perf_counter()
    chunks = iter(_one_worker(dataset))
    next(chunks)
    t1 = time.perf_counter()
    n = sum(len(chunk) for chunk in chunks)
    return n / (time.perf_counter() - t1), t1 - t0


FLOOR = "floor: PIL open + open_clip transform, in-process"
WORKER = "1 worker, pil (steady state, after its first chunk)"
STARTUP = "1 worker: seconds to its first chunk (fork, start, first 32 images)"
IPC = "1 worker shipping ready tensors (IPC + collate only, steady state)"
JOIN = "main process: joining chunks into batches of 256 (its one copy)"


def profile(ds, preprocess, repeats: int) -> dict[str, float]:
    """Images/s of each way to make this transform's tensors (at one torch thread), median of
    ``repeats`` alternating runs; ``STARTUP`` is in seconds."""
    n = len(ds)
    decoders = {name: make_decoder(name, preprocess) for name in DECODERS}
    ready = preprocess(ds.load_image(0))
    chunks = [torch.stack([ready] * loader.WORKER_CHUNK)] * 8

    def join() -> None:
        for _ in range(max(1, n // 256)):
            decoders["pil"].join(chunks, "cpu", pin=False)

    steps = {
        FLOOR: lambda: [preprocess(ds.load_image(i)) for i in range(n)],
        "PIL open + decode alone": lambda: [ds.load_image(i) for i in range(n)],
        "pil-draft decoder, in-process": lambda: [decoders["pil-draft"].item(ds, i) for i in range(n)],
        "tensor decoder (torchvision.io + v2), in-process": lambda: [decoders["tensor"].item(ds, i)
                                                                    for i in range(n)],
        WORKER: lambda: _worker_steady(loader.DecodedImages(ds, decoders["pil"])),
        IPC: lambda: _worker_steady(ReadyTensors(ready, n)),
        JOIN: join,
    }
    times: dict[str, list[float]] = {name: [] for name in [*steps, STARTUP]}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in ("pil-draft decoder, in-process", "tensor decoder (torchvision.io + v2), in-process"):
            [decoders[name.split()[0]].item(ds, i) for i in range(min(n, 8))]  # warm up first calls
        for _ in range(repeats):
            for name, step in steps.items():
                t0 = time.perf_counter()
                result = step()
                seconds = time.perf_counter() - t0
                if name in (WORKER, IPC):
                    rate, startup = result
                    times[name].append(n / rate)
                    if name == WORKER:
                        times[STARTUP].append(startup)
                elif name == JOIN:
                    times[name].append(seconds * n / (256 * max(1, n // 256)))
                else:
                    times[name].append(seconds)
    finally:
        torch.set_num_threads(threads)
    rates = {name: n / statistics.median(ts) for name, ts in times.items()}
    rates[STARTUP] = statistics.median(times[STARTUP])
    return rates


def end_to_end(model, ds, settings: dict, repeats: int, batch_size: int) -> dict[str, float]:
    """Images/s of ``encode_pre_projection`` per setting (``workers``); features must match."""
    times: dict[str, list[float]] = {name: [] for name in settings}
    reference = None
    for _ in range(repeats):
        for name, workers in settings.items():
            t0 = time.perf_counter()
            feats, _ = encode_pre_projection(model, ds, batch_size=batch_size, workers=workers)
            times[name].append(time.perf_counter() - t0)
            if reference is None:
                reference = feats
            elif not torch.equal(reference, feats):
                sys.exit(f"workers {name}: features differ from the first setting")
    return {name: len(ds) / statistics.median(ts) for name, ts in times.items()}


def decoder_top1(model, datasets: dict, batch_size: int) -> dict[str, dict[str, float]]:
    """Top-1 (%) per dataset and decoder; the ``gpu`` decoder runs its own code on the CPU here."""
    templates = load_templates("openai")
    out = {}
    for label, ds in datasets.items():
        text = encode_prompts(model.model, model.tokenizer, build_prompts(ds.classnames, templates))
        classes = class_embeddings(text, len(ds.classnames), len(templates))
        tensors = site_tensors(model.model, model.site)
        out[label] = {}
        for decode in DECODERS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # gpu on in-memory arrays: the CPU fallback, said in the table
                pre, _ = encode_pre_projection(model, ds, batch_size=batch_size, decode=decode)
            metrics = zero_shot_metrics(project(model.site, tensors, pre), classes, ds.labels, ds.classnames)
            out[label][decode] = 100.0 * metrics["overall"]["top1"]
    return out


PHASE_TARGET = 1.6


def cli_run(folder: Path, workers: int | None, tree: Path, env_extra: dict | None = None) -> tuple[float, float, dict]:
    """(encode_images seconds, whole-run seconds, metrics) of one ``ccup eval --json`` process on ``folder``."""
    args = [sys.executable, "-m", "ccup_cli.cli", "eval", "--eval", str(folder), "--no-cache", "--json", "-q"]
    if workers is not None:
        args += ["--workers", str(workers)]
    env = {**os.environ, "PYTHONPATH": str(tree), **(env_extra or {})}
    t0 = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"ccup eval failed ({tree}, workers {workers}): {done.stderr.strip()}")
    report = json.loads(done.stdout)
    return report["timings"]["encode_images"], wall, report["metrics"]


def cli_phase(folder: Path, repeats: int, before_tree: Path | None) -> tuple[dict, dict, dict, dict]:
    """Median encode-phase and whole-run seconds per setting (then every run's), settings alternating in each repeat."""
    settings = {"--workers 0": (0, ROOT, None), "default": (None, ROOT, None),
                "--workers 1": (1, ROOT, None)}
    if before_tree is not None:
        settings[f"default, before ({before_tree})"] = (None, before_tree, None)
    phase: dict[str, list[float]] = {name: [] for name in settings}
    whole: dict[str, list[float]] = {name: [] for name in settings}
    reference = None
    for r in range(repeats):
        order = list(settings) if r % 2 == 0 else list(reversed(settings))
        for name in order:
            workers, tree, env = settings[name]
            encode, wall, metrics = cli_run(folder, workers, tree, env)
            phase[name].append(encode)
            whole[name].append(wall)
            print(f"repeat {r + 1} {name}: encode_images {encode:.2f} s, whole run {wall:.2f} s, load "
                  f"{load_average()}", flush=True)
            if reference is None:
                reference = metrics
            elif metrics != reference:
                sys.exit(f"{name}: metrics differ from the first setting's")
    return ({name: statistics.median(ts) for name, ts in phase.items()},
            {name: statistics.median(ts) for name, ts in whole.items()}, phase, whole)


def features_identical(n_images: int, size: tuple[int, int]) -> bool:
    """Whether ``encode_pre_projection`` gives bit-identical features for workers 0 and 2 (threads beside)."""
    with tempfile.TemporaryDirectory() as tmp:
        ds = open_dataset(str(make_jpeg_folder(Path(tmp) / "check", n_images, size)))
        model = load_model()
        a, _ = encode_pre_projection(model, ds, workers=0)
        b, _ = encode_pre_projection(model, ds, workers=2)
    return bool(torch.equal(a, b))


def phase_in_process(n_images: int, rounds: int) -> tuple[dict, dict]:
    """The encode phase (``encode_pre_projection``, caches off) in one process, rounds alternating ABC / CBA:
    workers 0, the default with the main process's threads beside the workers, and the default with the
    model's threads left as they were (the code before). Returns (median seconds, median per-round ratio
    against workers 0) per setting; a ratio taken within one round sees the same load on both sides."""
    import contextlib

    default = loader.default_workers(n_images)

    @contextlib.contextmanager
    def threads_left_as_they_are(workers):
        yield torch.get_num_threads()

    settings = {"--workers 0": (0, None), f"default ({default})": (None, None),
                f"default ({default}), model threads left as they were (before)": (None, threads_left_as_they_are)}
    times: dict[str, list[float]] = {name: [] for name in settings}
    model = load_model()
    reference = None
    with tempfile.TemporaryDirectory() as tmp:
        ds = open_dataset(str(make_jpeg_folder(Path(tmp) / "500x375", n_images, FOLDERS["500x375"])))
        for r in range(rounds):
            for name in (list(settings) if r % 2 == 0 else list(reversed(settings))):
                workers, policy = settings[name]
                saved = loader.threads_beside_workers
                if policy is not None:
                    loader.threads_beside_workers = policy
                try:
                    t0 = time.perf_counter()
                    feats, _ = encode_pre_projection(model, ds, workers=workers)
                    times[name].append(time.perf_counter() - t0)
                finally:
                    loader.threads_beside_workers = saved
                print(f"round {r + 1} {name}: {times[name][-1]:.2f} s, load {load_average()}", flush=True)
                if reference is None:
                    reference = feats
                elif not torch.equal(reference, feats):
                    sys.exit(f"{name}: features differ from the first setting's")
    base = "--workers 0"
    ratios = {name: statistics.median(b / t for b, t in zip(times[base], ts)) for name, ts in times.items()}
    return {name: statistics.median(ts) for name, ts in times.items()}, ratios, times


def reliability(paired: list[float], load: float) -> str:
    """A plain sentence on whether per-round ratios this spread, at this load, can carry a verdict."""
    cores = loader.available_cores()
    spread = max(paired) / min(paired) if paired and min(paired) > 0 else float("inf")
    if spread > 1.25 or load > 2 * cores:
        return (f"**Unreliable here:** the per-round ratios range {min(paired):.2f}x to {max(paired):.2f}x and "
                f"the load average reached {load:.1f} on {cores} cores; no verdict on the target is drawn from it.")
    return f"Per-round ratios {min(paired):.2f}x to {max(paired):.2f}x at load {load:.1f} on {cores} cores."


def cli_main(args) -> None:
    if args.in_process_rounds:
        load_before = load_average()
        medians, ratios, each = phase_in_process(args.cli_images, args.in_process_rounds)
        lines = [f"In one process: `encode_pre_projection` on {args.cli_images} JPEGs of 500x375 (embedded model, "
                 f"caches off), {args.in_process_rounds} rounds alternating the settings (ABC, CBA, ...). Ratio: "
                 "the median over rounds of (workers 0's seconds / this setting's) within each round. Load average "
                 f"(1/5/15 min) before: {load_before}, after: {load_average()}. Features bit-identical in every run.",
                 "", "| setting | seconds (median) | vs `--workers 0` (median of per-round ratios) | each round |",
                 "|---|---:|---:|---|"]
        lines += [f"| {name} | {medians[name]:.2f} s | {ratios[name]:.2f}x | "
                  f"{', '.join(f'{t:.1f}' for t in each[name])} |" for name in medians]
        default_name = next(name for name in medians if name.startswith("default") and "before" not in name)
        paired = [b / t for b, t in zip(each["--workers 0"], each[default_name])]
        peak = max(float(x) for x in (load_before.split(" / ")[0], load_average().split(" / ")[0]))
        lines += ["", reliability(paired, peak)]
        body = "\n".join(lines)
        print(body)
        if not args.no_doc:
            write_section("bench_workers_threads_in_process", "python scripts/bench_workers.py "
                          + " ".join(sys.argv[1:]), body)
        return
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_jpeg_folder(Path(tmp) / "500x375", args.cli_images, FOLDERS["500x375"])
        phase, whole, phase_all, whole_all = cli_phase(folder, args.repeats, args.before_tree)
    identical = features_identical(args.check_images, FOLDERS["500x375"])
    load_after = load_average()
    base = "--workers 0"
    ratio = phase[base] / phase["default"]
    lines = [
        f"**Encode phase of the default ({loader.default_workers(args.cli_images)} workers here, main process "
        f"at {loader.main_threads_beside(loader.default_workers(args.cli_images))} torch thread(s) while they "
        f"decode): {ratio:.2f}x** that of `--workers 0` ({'meets' if ratio >= PHASE_TARGET else 'misses'} the "
        f"{PHASE_TARGET}x target); whole run {whole[base] / whole['default']:.2f}x. Metrics identical in every "
        f"run; features bit-identical for workers 0 and 2 on {args.check_images} images: {identical}.",
        "",
        f"`ccup eval --eval FOLDER --no-cache --json` on {args.cli_images} JPEGs of 500x375 (embedded model), one "
        f"process per run, {args.repeats} repeats alternating the settings (medians). Load average (1/5/15 min) "
        f"before: {load_before}, after: {load_after}; torch threads in a fresh process: {torch.get_num_threads()}.",
        "",
        "| setting | encode_images (median) | vs `--workers 0` | same, median of per-repeat ratios | "
        "whole run (median) | vs `--workers 0` | encode_images, each run |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name in phase:
        paired = statistics.median(b / t for b, t in zip(phase_all[base], phase_all[name]))
        lines.append(f"| {name} | {phase[name]:.2f} s | {phase[base] / phase[name]:.2f}x | {paired:.2f}x | "
                     f"{whole[name]:.2f} s | {whole[base] / whole[name]:.2f}x | "
                     f"{', '.join(f'{t:.1f}' for t in phase_all[name])} |")
    body = "\n".join(lines)
    print(body)
    if not args.no_doc:
        write_section("bench_workers_threads", "python scripts/bench_workers.py " + " ".join(sys.argv[1:]), body)


def _rate_table(title: str, rates: dict, settings, fmt: str) -> list[str]:
    """A markdown table of images/s per worker setting (rows) and folder (columns), and each rate
    against workers 0 of its folder."""
    lines = [title, "", "| workers | " + " | ".join(f"{label}: images/s" for label in rates) + " | "
             + " | ".join(f"{label}: vs workers 0" for label in rates) + " |", "|---|" + "---:|" * (2 * len(rates))]
    for name in settings:
        lines.append(f"| {name} | " + " | ".join(f"{rates[label][name]:{fmt}}" for label in rates) + " | "
                     + " | ".join(f"{rates[label][name] / rates[label]['0']:.2f}x" for label in rates) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--images", type=int, default=1500, help="JPEGs per folder for the throughput runs")
    parser.add_argument("--profile-images", type=int, default=400)
    parser.add_argument("--vit-images", type=int, default=48, help="images for ViT-B-32 (about 9 images/s here)")
    parser.add_argument("--top1-images", type=int, default=2000, help="JPEGs per folder for the decoders' top-1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--skip-top1", action="store_true")
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument("--cli-only", action="store_true", help="only the CLI encode-phase comparison (section 4)")
    parser.add_argument("--cli-images", type=int, default=3000)
    parser.add_argument("--check-images", type=int, default=600, help="images of the bit-identity check")
    parser.add_argument("--before-tree", type=Path, default=None, help="another checkout's default, for comparison")
    parser.add_argument("--in-process-rounds", type=int, default=0, help="with --cli-only: time the encode phase "
                        "in this process instead, this many alternating rounds (the 'before' setting included)")
    args = parser.parse_args()
    if args.cli_only:
        cli_main(args)
        return
    if args.profile_images < 4 * loader.WORKER_CHUNK:
        parser.error(f"--profile-images must be at least {4 * loader.WORKER_CHUNK} (a worker's steady state "
                     "is measured after its first chunk)")
    tiny = load_model()
    vit = load_model("ViT-B-32", "none")
    default = loader.default_workers(args.images)
    load_before = load_average()
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        folders = {label: open_dataset(str(make_jpeg_folder(Path(tmp) / label.replace(" ", ""), args.images, size)))
                   for label, size in FOLDERS.items()}
        # 1. profile
        prof = {}
        for label, ds in folders.items():
            part = ds.subset(np.arange(min(args.profile_images, len(ds))))
            for model_label, model in (("28 px (embedded)", tiny), ("224 px (ViT-B-32)", vit)):
                prof[(label, model_label)] = profile(part, model.preprocess, args.repeats)
                print(label, model_label, {k: round(v) for k, v in prof[(label, model_label)].items()}, flush=True)
        # 2. end to end
        settings = {"0": 0, "1": 1, "2": 2, f"default ({default})": None}
        e2e = {label: end_to_end(tiny, ds, settings, args.repeats, args.batch_size) for label, ds in folders.items()}
        for label, rates in e2e.items():
            print("embedded", label, {k: round(v) for k, v in rates.items()}, flush=True)
        vit_settings = {"0": 0, "1": 1, "2": 2}
        vit_e2e = {label: end_to_end(vit, ds.subset(np.arange(args.vit_images)), vit_settings, args.repeats,
                                     min(args.batch_size, 16)) for label, ds in folders.items()}
        for label, rates in vit_e2e.items():
            print("ViT-B-32", label, {k: round(v, 1) for k, v in rates.items()}, flush=True)
        # 3. decoders' top-1
        top1 = None
        if not args.skip_top1:
            top1_sets = {"fashion-mnist test split (10,000, in memory)": open_dataset("fashion-mnist")}
            for label, size in FOLDERS.items():
                root = make_jpeg_folder(Path(tmp) / f"top1-{label.replace(' ', '')}", args.top1_images, size)
                top1_sets[f"{args.top1_images} JPEGs, {label}"] = open_dataset(str(root))
            top1 = decoder_top1(tiny, top1_sets, args.batch_size)
            print(top1, flush=True)
    load_after = load_average()

    big = "500x375"
    ratio = e2e[big][f"default ({default})"] / e2e[big]["0"]
    worker_share = prof[(big, "28 px (embedded)")][WORKER] / prof[(big, "28 px (embedded)")][FLOOR]
    lines += [
        f"**Default workers ({default} here) on the 500x375 folder, embedded model: {ratio:.2f}x** the images/s of "
        f"workers 0 ({'meets' if ratio >= DEFAULT_TARGET else 'misses'} the {DEFAULT_TARGET}x target); features "
        f"identical for every setting. **One worker: {worker_share:.2f} of the one-core floor** for the same "
        f"transform ({'meets' if worker_share >= WORKER_TARGET else 'misses'} the {WORKER_TARGET} target).",
        "",
        f"Load average (1/5/15 min) before: {load_before}, after: {load_after}. Other sessions were using the same "
        "2 cores during the run, so absolute rates move from run to run; ratios come from one run, medians of "
        f"{args.repeats} alternating repeats.",
        "",
        f"### Profile: images/s on one core ({args.profile_images} images, no model)",
        "",
        "| way | " + " | ".join(f"{f}, {m}" for f, m in prof) + " |",
        "|---|" + "---:|" * len(prof),
    ]
    for step in next(iter(prof.values())):
        cells = []
        for rates in prof.values():
            cells.append(f"{rates[step]:.2f} s" if step == STARTUP else
                         f"{rates[step]:.0f} ({rates[step] / rates[FLOOR]:.2f}x)")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "In brackets: against the floor of the same column. Everything at one torch thread (a DataLoader worker "
        "has one anyway: torch's worker loop calls `torch.set_num_threads(1)`, and ccup's `worker_init_fn` says "
        "so explicitly). The worker rows ship every chunk of 32 through shared memory; their start-up is its own "
        "row.",
        "",
        *_rate_table(f"### End to end: `encode_pre_projection`, embedded model, {args.images} JPEGs, "
                     f"batch {args.batch_size}", e2e, settings, ".0f"),
        "",
        *_rate_table(f"### End to end: ViT-B-32 (random init), {args.vit_images} JPEGs, "
                     f"batch {min(args.batch_size, 16)}", vit_e2e, vit_settings, ".1f"),
    ]
    if top1 is not None:
        lines += [
            "",
            "### Decoders: zero-shot top-1 of the embedded model (openai templates)",
            "",
            "| dataset | " + " | ".join(DECODERS) + " |",
            "|---|" + "---:|" * len(DECODERS),
        ]
        for label, by_decoder in top1.items():
            cells = [f"{by_decoder['pil']:.2f} %"] + [f"{by_decoder[d]:.2f} % ({by_decoder[d] - by_decoder['pil']:+.2f})"
                                                     for d in DECODERS[1:]]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += ["", "In brackets: points against `pil` (open_clip's transform, the default). `gpu` ran its own code "
                  "path with `device='cpu'` (batched `decode_jpeg` on the CPU): no GPU was lent to this run."]
    body = "\n".join(lines)
    print(body)
    if not args.no_doc:
        write_section("bench_workers", "python scripts/bench_workers.py " + " ".join(sys.argv[1:]), body)


if __name__ == "__main__":
    main()
