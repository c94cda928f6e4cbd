"""One exception family for everything a user can get wrong.

The CLI boundary (``cli.py``) turns a ``CcupError`` into exit code 2 and one line on
stderr; anything else is a bug and exits 1 with a hint about ``--debug``.
"""

from __future__ import annotations


class CcupError(Exception):
    """A problem with the user's input or environment, with a fix to suggest."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def one_line(self) -> str:
        text = self.problem.rstrip(".")
        if self.fix:
            text += f"; {self.fix.rstrip('.')}"
        return " ".join(text.split())


class SpecError(CcupError):
    """The spec or the flags are invalid. ``problems`` holds one line per field."""

    def __init__(self, problems: list[str] | str, fix: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems), fix)

    def one_line(self) -> str:
        # several problems are reported at once, one per line, each naming its field
        lines = [" ".join(p.split()) for p in self.problems]
        if self.fix:
            lines[-1] += f"; {self.fix}"
        return "\n".join(lines)


class CheckpointError(CcupError):
    """A model or checkpoint cannot be loaded, found or patched."""


class DatasetError(CcupError):
    """An evaluation dataset is missing, empty or inconsistent with the spec."""


class DependencyError(CcupError):
    """An optional dependency (matplotlib, network access) is not available."""


class OutputError(CcupError):
    """The output location cannot be written (exists, is an input, no space, no permission)."""


class ThresholdNotReachable(CcupError):
    """``--alpha auto`` found no strength that meets the forget target."""


class Problems:
    """Every problem found at the door, gathered so that all are reported at once.

    ``attempt`` runs one check and keeps its ``CcupError``; ``raise_all`` raises nothing when all
    passed, the error itself when there was one, and a ``SpecError`` of every line otherwise.
    """

    def __init__(self) -> None:
        self.errors: list[CcupError] = []

    def add(self, lines: list[str] | str) -> None:
        if lines:
            self.errors.append(SpecError(lines))

    def attempt(self, check, *args, **kwargs):
        """``check(*args, **kwargs)``, or None when it raised a CcupError (kept for ``raise_all``)."""
        try:
            return check(*args, **kwargs)
        except CcupError as err:
            self.errors.append(err)
            return None

    def passes(self, check, *args, **kwargs) -> bool:
        """Whether ``check(*args, **kwargs)`` raised no CcupError (the error is kept)."""
        before = len(self.errors)
        self.attempt(check, *args, **kwargs)
        return len(self.errors) == before

    def __bool__(self) -> bool:
        return bool(self.errors)

    def raise_all(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise SpecError([line for err in self.errors for line in err.one_line().splitlines()])
