#!/usr/bin/env python3
"""How CCUP's cost grows: the solve against d and the number of forget classes, and the
time to fold and write a patched checkpoint next to a plain safetensors copy (the floor).

    python scripts/bench_scaling.py [--big ViT-B-32,ViT-L-14]

Solve: float64 on the CPU, random unit embeddings, 80 templates per forget class and
1,000 retain classes x 7 templates, median of 5. Write: random-init models (same size and
cost as real ones); "plain copy" is ``safetensors.torch.save_file`` of the same state dict,
"ccup" folds W into the fold site and writes with ccup's deterministic writer, sha256 included.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchdoc import write_section  # noqa: E402

from ccup_cli.backends.checkpoint import save_safetensors  # noqa: E402
from ccup_cli.backends.fold import fold  # noqa: E402
from ccup_cli.backends.open_clip_tower import locate_fold_site  # noqa: E402
from ccup_cli.methods.projector import ccup_map, projector_at  # noqa: E402


def median_time(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def solve_time(d: int, n_forget: int) -> float:
    g = torch.Generator().manual_seed(0)
    t_f = F.normalize(torch.randn(n_forget * 80, d, generator=g), dim=-1)
    t_r = F.normalize(torch.randn(7000, d, generator=g), dim=-1)
    return median_time(lambda: projector_at(ccup_map(t_f, t_r), 1.0, "ccup", {}))


def write_times(name: str, folder: Path) -> tuple[float, float, int]:
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    site = locate_fold_site(model)
    W = torch.eye(site.out_features, dtype=torch.float64) * 0.5

    def plain() -> None:
        save_file(state, str(folder / "plain.safetensors"))

    def ccup() -> None:
        patched = dict(state)
        patched.update(fold(site, {k: state[k] for k in site.keys}, W))
        save_safetensors(patched, folder / "ccup.safetensors", {"method": "ccup"})

    plain()
    ccup()  # warm the page cache for both
    nbytes = sum(v.numel() * v.element_size() for v in state.values())
    return median_time(plain, 3), median_time(ccup, 3), nbytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--big", default="ViT-B-32,ViT-L-14")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    lines = ["### Projector time (float64, CPU)", "", "| d | forget classes | forget prompts | projector build (ms): covariances + solve + SVD of I − W |",
             "|---|---|---|---|"]
    for d in (512, 768, 1024, 1280):
        lines.append(f"| {d} | 2 | 160 | {1000 * solve_time(d, 2):.1f} |")
    for n in (1, 10, 100, 500):
        lines.append(f"| 512 | {n} | {80 * n} | {1000 * solve_time(512, n):.1f} |")
    lines += ["", "### Fold and write a patched checkpoint", "",
              "| model | size | plain safetensors copy (s) | ccup fold + write + sha256 (s) | ratio |",
              "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        for name in [n for n in args.big.split(",") if n]:
            plain, ccup, nbytes = write_times(name, Path(tmp))
            lines.append(f"| {name} | {nbytes / 2**20:.0f} MiB | {plain:.2f} | {ccup:.2f} | {ccup / plain:.2f} |")
            print(lines[-1], flush=True)
    body = "\n".join(lines) + "\n\nRetain side: 1,000 classes × 7 templates; median of 5 (solve) or 3 (write)."
    print(body)
    if not args.no_doc:
        write_section("bench_scaling", f"python scripts/bench_scaling.py --big {args.big}", body)


if __name__ == "__main__":
    main()
