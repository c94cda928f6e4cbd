"""Progress reports: ``(phase, done, total)`` callbacks that the CLI draws and the library never prints."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, int], None]  # (phase, done, total)


def step_counter(progress: Progress | None, phase: str, total: int) -> Callable[[int], None] | None:
    """A per-batch callback that reports ``(phase, done so far, total)`` to ``progress``."""
    if progress is None:
        return None
    done = [0]

    def step(n: int) -> None:
        done[0] += n
        progress(phase, done[0], total)

    return step
