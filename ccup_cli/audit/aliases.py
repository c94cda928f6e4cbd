"""Other names for a class (``--aliases FILE``), and a template set the unlearning did not use.

The aliases file is YAML, one class per key, its other names as a list::

    sandal: [strappy sandal, beach sandal]
    sneaker: [tennis shoe, athletic sneaker]

Torch-free, read at the door: every problem is reported at once, with its place in the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from ..data.catalog import check_classes_in
from ..errors import SpecError
from ..runtime.yaml_input import NotReadable, read_yaml

# Templates in none of open_clip's sets (openai, simple, photo): the "second template set" an
# audit uses by default, so a class is also looked for in words the unlearning never saw.
UNSEEN_TEMPLATES = [
    "a catalogue image showing a {}.", "this is a {}.", "someone's {}.", "a {} for sale.",
    "an online shop picture of a {}.", "a thumbnail of a {}.",
]

FORMAT_FIX = "write one class per line as  class: [alias, alias]"


def read_aliases(path: str | Path, classnames: Sequence[str] | None = None, dataset_name: str = "") -> dict[str, list[str]]:
    """``{class: [alias, ...]}`` from a YAML file; class names in the dataset's spelling when given."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"aliases: {path} does not exist", "give a YAML file: " + FORMAT_FIX)
    try:
        data = read_yaml(path)
    except NotReadable as err:
        raise SpecError(f"aliases: {path} is not a valid alias file: {err}", FORMAT_FIX) from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        raise SpecError(f"aliases: {path} is not valid YAML{at}", FORMAT_FIX) from None
    if not isinstance(data, dict) or not data:
        raise SpecError(f"aliases: {path} must map class names to lists of aliases", FORMAT_FIX)
    problems, aliases = [], {}
    for key, value in data.items():
        if not isinstance(key, str) or not key.strip():
            problems.append(f"aliases: key {key!r} is not a class name")
            continue
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            problems.append(f"aliases.{key}: give a non-empty list of aliases, not {type(value).__name__}")
            continue
        bad = [i for i, v in enumerate(value) if not isinstance(v, str) or not v.strip()]
        if bad:
            problems.append(f"aliases.{key}[{bad[0]}]: {value[bad[0]]!r} is not a non-empty string")
            continue
        aliases[key.strip()] = list(dict.fromkeys(v.strip() for v in value))
    if problems:
        raise SpecError(problems, FORMAT_FIX)
    if classnames is not None:
        check_classes_in({"aliases": list(aliases)}, list(classnames), dataset_name)
        lookup = {c.lower(): c for c in classnames}
        aliases = {lookup[k.lower()]: v for k, v in aliases.items()}
    return aliases


def second_templates(used: Sequence[str], given: list[str] | None = None) -> list[str]:
    """The templates an audit tries beside the unlearning's: ``given``, else ``UNSEEN_TEMPLATES``
    less any the unlearning used."""
    if given:
        return list(given)
    return [t for t in UNSEEN_TEMPLATES if t not in set(used)]
