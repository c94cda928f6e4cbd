"""open_clip's ``zero_shot_metadata`` (template lists, ImageNet class names), read without torch.

That file is plain data, so it is loaded on its own, without importing open_clip (and torch)
behind it: a spec error or ``--help`` never pays for the model stack.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from types import ModuleType


@lru_cache(maxsize=1)
def open_clip_metadata() -> ModuleType:
    """open_clip's ``zero_shot_metadata`` module (templates, ImageNet class names), torch-free."""
    found = importlib.util.find_spec("open_clip")
    if found is None or not found.submodule_search_locations:
        raise ImportError("open_clip is not installed")
    path = Path(list(found.submodule_search_locations)[0]) / "zero_shot_metadata.py"
    spec = importlib.util.spec_from_file_location("_ccup_open_clip_zero_shot_metadata", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
