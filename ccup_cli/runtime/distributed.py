"""Many processes via torchrun: a small layer over ``torch.distributed``.

ccup does not launch processes; ``torchrun`` does, and sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``. With ``WORLD_SIZE`` > 1 each rank encodes a contiguous shard of the images
(``shard_indices``), the rows are gathered in dataset order (``gather_rows``), and rank 0
alone solves, folds, evaluates and writes (``on_main``).

Failures: each phase ends with a collective status exchange (``phase``), so an exception on
any rank raises ``RankFailed`` on every other rank at the end of that phase and every rank
exits non-zero. A rank that dies outright (killed, ``os._exit``) is torchrun's to handle:
it stops the other workers when one exits non-zero; without torchrun, the process-group
timeout ends the waiting ranks.

Caches: only rank 0 reads or writes the on-disk cache, under the same key as a
single-process run (``cached_gather``). No two processes of a run write the same entry,
and entries made by 1-process and N-process runs serve each other. (Separate runs writing
one entry at once are already safe: writes are atomic and the contents equal.)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch

from ..errors import CcupError
from ..output.cache import load_cached, store_cached

DEFAULT_TIMEOUT_S = 600.0
TIMEOUT_ENV = "CCUP_DIST_TIMEOUT"  # seconds a rank waits on the others before failing


class RankFailed(CcupError):
    """Another rank failed; this rank stops too, with that rank's exit code."""

    def __init__(self, phase: str, failures: list[tuple[int, int, str]]):
        rank, code, message = failures[0]
        others = f" (and ranks {', '.join(str(r) for r, _, _ in failures[1:])})" if len(failures) > 1 else ""
        super().__init__(f"rank {rank}{others} failed during {phase}: {message}",
                         "see that rank's output for details")
        self.exit_code = code
        self.failures = failures


@dataclass(frozen=True)
class World:
    """Where this process stands among the ranks torchrun started (1 rank without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise CcupError(f"{name}={raw!r} is not an integer", "launch through torchrun, or unset it") from None


def world() -> World:
    """``World`` from ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (torchrun's variables)."""
    size, rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0)
    if size < 1 or not 0 <= rank < size:
        raise CcupError(f"RANK={rank} does not fit WORLD_SIZE={size}", "launch through torchrun")
    return World(rank, size, _env_int("LOCAL_RANK", rank))


def is_main() -> bool:
    """True on rank 0, and in every single-process run."""
    return world().is_main


def _timeout_s(timeout_s: float | None) -> float:
    if timeout_s is not None:
        return timeout_s
    return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))


def rank_device(device: str) -> str:
    """The device of this rank: ``cuda`` becomes ``cuda:LOCAL_RANK``; anything else unchanged."""
    return f"cuda:{world().local_rank}" if device == "cuda" else device


def init_if_needed(device: str = "cpu", timeout_s: float | None = None) -> World:
    """Join the process group when ``WORLD_SIZE`` > 1 (once): NCCL on CUDA, gloo otherwise.

    ``device`` is the resolved device (``cpu``, ``cuda`` or ``cuda:N``). ``timeout_s``
    (default ``CCUP_DIST_TIMEOUT`` or 600) bounds how long a collective waits for the other
    ranks. Returns ``world()``; a single process gets it without any process group.
    """
    import torch.distributed as dist

    here = world()
    if not here.distributed or (dist.is_available() and dist.is_initialized()):
        return here
    if not dist.is_available():
        raise CcupError("WORLD_SIZE > 1 but this torch has no torch.distributed", "install a torch build with it")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(here.local_rank)
    dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://",
                            timeout=timedelta(seconds=_timeout_s(timeout_s)),
                            world_size=here.world_size, rank=here.rank)
    return here


def _active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device() -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard_indices(n: int, rank: int, world_size: int) -> range:
    """Rank ``rank``'s contiguous share of ``n`` items: ``ceil(n / world_size)`` each, the last
    shard shorter (or empty when there are fewer items than ranks)."""
    if world_size < 1 or not 0 <= rank < world_size or n < 0:
        raise ValueError(f"no shard {rank} of {n} items over {world_size} ranks")
    per = -(-n // world_size)
    start = min(rank * per, n)
    return range(start, min(start + per, n))


def gather_rows(local: torch.Tensor, n_total: int, all_ranks: bool = False) -> torch.Tensor | None:
    """The ``[n_total, ...]`` rows of every rank's shard, in dataset order, on the CPU.

    ``local`` holds this rank's ``shard_indices(n_total, rank, world_size)`` rows. Returned
    on rank 0 (and on every rank with ``all_ranks``); None elsewhere. Single process:
    ``local`` itself.
    """
    import torch.distributed as dist

    here = world()
    expected = len(shard_indices(n_total, here.rank, here.world_size))
    if local.shape[0] != expected:
        raise ValueError(f"rank {here.rank} holds {local.shape[0]} rows; its shard of {n_total} has {expected}")
    if not _active():
        return local
    per = -(-n_total // here.world_size)
    device = _comm_device()
    padded = torch.zeros((per, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local.to(device)
    parts = [torch.empty_like(padded) for _ in range(here.world_size)]
    dist.all_gather(parts, padded)
    if not (all_ranks or here.is_main):
        return None
    return torch.cat(parts)[:n_total].cpu()


def gather_varied(local: torch.Tensor, all_ranks: bool = False) -> torch.Tensor | None:
    """Every rank's ``local`` rows (any count each, same trailing shape), rank order, on the CPU.

    On rank 0 (every rank with ``all_ranks``); None elsewhere. Single process: ``local``.
    """
    import torch.distributed as dist

    if not _active():
        return local
    here = world()
    device = _comm_device()
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(here.world_size)]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], dtype=torch.long, device=device))
    counts = [int(s) for s in sizes]
    padded = torch.zeros((max(counts), *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local.to(device)
    parts = [torch.empty_like(padded) for _ in range(here.world_size)]
    dist.all_gather(parts, padded)
    if not (all_ranks or here.is_main):
        return None
    return torch.cat([part[:count] for part, count in zip(parts, counts)]).cpu()


def broadcast_object(value=None):
    """Rank 0's ``value`` on every rank (a small picklable object)."""
    import torch.distributed as dist

    if not _active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree(phase_name: str, error: BaseException | None = None) -> None:
    """Collective: every rank says how ``phase_name`` went on it.

    A rank that passes no ``error`` raises ``RankFailed`` if any other rank passed one; a
    rank that passes its ``error`` returns (its caller re-raises it).
    """
    import torch.distributed as dist

    if not _active():
        return
    status = None
    if error is not None:
        code = getattr(error, "exit_code", 1)
        line = error.one_line() if isinstance(error, CcupError) else f"{type(error).__name__}: {error}"
        status = (int(code) if isinstance(code, int) else 1, " ".join(line.split()))
    statuses: list = [None] * dist.get_world_size()
    dist.all_gather_object(statuses, status)
    failures = [(rank, s[0], s[1]) for rank, s in enumerate(statuses) if s is not None]
    if failures and error is None:
        raise RankFailed(phase_name, failures)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Run the block on every rank; a failure on any rank fails the phase on all of them."""
    try:
        yield
    except Exception as err:
        try:
            agree(name, err)
        except Exception:  # noqa: BLE001 - the others may be gone already; this rank's error wins
            pass
        raise
    agree(name)


def on_main(fn: Callable[[], object], name: str):
    """``fn()`` on rank 0 only, inside ``phase(name)``: its result there, None elsewhere."""
    with phase(name):
        return fn() if is_main() else None


def cached_gather(kind: str, key: str | None, n_total: int,
                  encode_shard: Callable[[range], torch.Tensor],
                  all_ranks: bool = False) -> tuple[torch.Tensor | None, bool]:
    """Rows ``[n_total, ...]`` through the cache, each rank encoding only its shard.

    Only rank 0 reads and writes the entry (``key``: the single-process key). Rank 0 tells
    the others whether it hit; on a miss every rank calls ``encode_shard(its range)``, the
    rows are gathered, and rank 0 stores them. Returns (rows or None off rank 0 unless
    ``all_ranks``, cache hit). Single process: ``encode_shard(range(n_total))`` through the cache.
    """
    here = world()
    cached = load_cached(kind, key, n_total) if here.is_main else None
    hit = bool(broadcast_object(cached is not None))
    if hit:
        if all_ranks:
            with phase(f"reading cached {kind}"):
                if not here.is_main:
                    cached = load_cached(kind, key, n_total)  # entries are written atomically
                    if cached is None:
                        raise CcupError(f"cache entry {kind}/{key} vanished during the run", "rerun with --no-cache")
        return cached, True
    with phase(f"encoding {kind}"):
        local = encode_shard(shard_indices(n_total, here.rank, here.world_size))
    rows = gather_rows(local, n_total, all_ranks=all_ranks)
    if here.is_main:
        store_cached(kind, key, rows)
    return rows, False


def cached_collective(kind: str, key: str | None, n_total: int,
                      encode: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, bool]:
    """Rows through the cache for an ``encode`` that every rank runs together (a collective).

    Only rank 0 reads and writes the entry; it tells the others whether it hit and, on a
    hit, sends them the rows. On a miss every rank calls ``encode()``, which returns the
    same rows on every rank. Returns (rows on every rank, cache hit).
    """
    cached = load_cached(kind, key, n_total) if is_main() else None
    hit = bool(broadcast_object(cached is not None))
    if hit:
        return broadcast_object(cached), True
    with phase(f"encoding {kind}"):
        rows = encode()
    if is_main():
        store_cached(kind, key, rows)
    return rows, False
