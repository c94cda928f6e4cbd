"""Every default number of a method, in one place, importable without torch.

The λ defaults were chosen on the embedded model's validation split (``scripts/tune_lambdas.py``,
docs/benchmarks.md): λ_identity matters most and the score flattens below 1e-4; λ_retain barely
moves it between 0.1 and 10, so it stays at the neutral 1.
"""

from __future__ import annotations

LAMBDA_RETAIN = 1.0
LAMBDA_IDENTITY = 1e-4
# where CCUP sends the forget prompts: chosen on the validation split, scoring text search beside
# classification (scripts/tune_sink.py); "zero" is the paper's exact method
SINK = "retain-mean-orthogonal"
PROTOTYPE_STEPS = 100  # ccup-proto: optimisation steps per synthetic image prototype
PROTOTYPES_PER_GROUP = 4  # ccup-proto: synthetic images per prompt group (class, or class x domain)
ENERGY = 0.99  # nullspace: share of the squared singular values its rank keeps
RETAIN_WARN_COSINE = 0.9
# how images become tensors (decode.py): "pil" is open_clip's own transform, bit for bit; the others
# change pixels slightly and are options (--decode)
DECODERS = ("pil", "pil-draft", "tensor", "gpu")
DEFAULT_DECODER = "pil"
FORGET_TEMPLATES = "openai"
RETAIN_TEMPLATES = "simple"

FINETUNE_STEPS = 300
FINETUNE_LR = 1e-4
FINETUNE_BATCH_SIZE = 128
FINETUNE_SEED = 0

EMBEDDED_MODEL = "ccup-tiny-fashion"  # the model used when no --model is given
# every model shipped in ccup_cli/assets/<name>/; the second learnt domain captions (issue 14)
EMBEDDED_MODELS = (EMBEDDED_MODEL, "ccup-tiny-fashion-domains")
# shipped LiT models (issue 27): a transformers dual encoder on the frozen all-MiniLM-L6-v2 text tower,
# assembled into the cache from ccup_cli/assets/<name>/ and the `lit` extra (backends/lit.py)
LIT_MODELS = ("ccup-lit-fashion",)
EMBEDDED_MODELS = EMBEDDED_MODELS + LIT_MODELS
# the pretrained tag of an embedded model's shipped weights, as the resolved spec records it
EMBEDDED_PRETRAINED = "embedded"
