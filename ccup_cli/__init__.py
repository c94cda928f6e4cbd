"""ccup: make a CLIP model forget chosen classes with a closed-form projection (CCUP).

Library entry points: ``unlearn`` (patch an in-memory open_clip model) and
``encode_prompts`` (fast exact text encoding).
"""

from .api import UnlearnResult, unlearn
from .text import encode_prompts

__all__ = ["unlearn", "UnlearnResult", "encode_prompts"]
