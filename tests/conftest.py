"""Shared fixtures: tiny open_clip models registered by name, random weights saved to files,
PNG ImageFolders made on the fly, and a private ccup cache. No network, no downloads."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

TINY_VIT = "ccup-test-vit"
TINY_RN = "ccup-test-rn"
TINY_TIMM = "ccup-test-convnext"  # the convnext family through timm, as convnext_tiny, at a fraction of the cost
# one tiny config per tower shape of the fold-coverage table (scripts/fold_coverage.py)
TINY_TIMM_MLP = "ccup-test-timm-mlp"  # timm head with an MLP projection: visual.head.mlp.fc2
TINY_TRUNK_HEAD = "ccup-test-trunk-head"  # EVA / PE-Core: a timm ViT whose own classifier is the map: visual.trunk.head
TINY_TRUNK_FC = "ccup-test-trunk-fc"  # MobileCLIP: the trunk's classifier inside its head: visual.trunk.head.fc
# SigLIP: map pooling and no image projection; a bidirectional text tower pooled at its last token. No
# "siglip" in the name: open_clip would fetch SigLIP's tokenizer for it.
TINY_SIGLIP = "ccup-test-map-pool"
_CAUSAL_TEXT = {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
TINY_CONFIGS = {
    TINY_VIT: {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
    TINY_RN: {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
    TINY_TIMM: {
        "embed_dim": 32,
        "vision_cfg": {"timm_model_name": "convnext_atto", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": 64},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
    TINY_TIMM_MLP: {
        "embed_dim": 32,
        "vision_cfg": {"timm_model_name": "test_convnext", "timm_model_pretrained": False, "timm_pool": "avg",
                       "timm_proj": "mlp", "image_size": 64},
        "text_cfg": _CAUSAL_TEXT,
    },
    TINY_TRUNK_HEAD: {
        "embed_dim": 64,
        "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "token",
                       "timm_proj": None, "image_size": 160},
        "text_cfg": _CAUSAL_TEXT,
    },
    TINY_TRUNK_FC: {
        "embed_dim": 32,
        "vision_cfg": {"timm_model_name": "test_convnext", "timm_model_pretrained": False, "timm_pool": "avg",
                       "timm_proj": None, "image_size": 64},
        "text_cfg": _CAUSAL_TEXT,
    },
    TINY_SIGLIP: {  # the open_clip SigLIP configs' shape, with open_clip's own tokenizer (no hf_tokenizer_name)
        "embed_dim": 64,
        "init_logit_bias": -10,
        "custom_text": True,
        "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "map",
                       "timm_proj": "none", "image_size": 160},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2,
                     "no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6}},
    },
}
FASHION = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]


class NetworkRefused(OSError):
    """A test tried to reach beyond this machine."""


def _is_loopback(host) -> bool:
    if host in (None, "", "localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True, scope="session")
def _no_network():
    """No test may open a connection beyond loopback (or resolve a remote name): the suite must pass
    the same way on a machine whose network works. Unix sockets and loopback (gloo, torchrun) pass."""
    real_connect, real_connect_ex, real_getaddrinfo = socket.socket.connect, socket.socket.connect_ex, \
        socket.getaddrinfo

    def check(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            raise NetworkRefused(f"tests may not reach {address!r}: mock the network")

    def connect(self, address):
        check(self, address)
        return real_connect(self, address)

    def connect_ex(self, address):
        check(self, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_loopback(host.decode() if isinstance(host, bytes) else host):
            raise socket.gaierror(socket.EAI_NONAME, f"tests may not resolve {host!r}: mock the network")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
    yield
    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = real_connect, real_connect_ex, \
        real_getaddrinfo


@pytest.fixture(autouse=True, scope="session")
def _isolated_environment(tmp_path_factory):
    cache = tmp_path_factory.mktemp("ccup-cache")
    hf = tmp_path_factory.mktemp("hf-home")
    # HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE reach the subprocesses too (torchrun, the CLI probes)
    old = {k: os.environ.get(k) for k in ("CCUP_CACHE_DIR", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["CCUP_CACHE_DIR"] = str(cache)
    os.environ["HF_HOME"] = str(hf)
    os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
    yield
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Register the tiny architectures with open_clip; returns the config folder."""
    import open_clip

    folder = tmp_path_factory.mktemp("model-configs")
    for name, cfg in TINY_CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    return folder


def save_random(name: str, path: Path, seed: int = 0) -> Path:
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_vit_file(tiny_models, tmp_path_factory) -> Path:
    return save_random(TINY_VIT, tmp_path_factory.mktemp("weights") / "tiny-vit.safetensors")


@pytest.fixture(scope="session")
def tiny_rn_file(tiny_models, tmp_path_factory) -> Path:
    return save_random(TINY_RN, tmp_path_factory.mktemp("weights") / "tiny-rn.safetensors")


def make_image_folder(root: Path, classes: list[str], per_class: int = 3, size: int = 40, seed: int = 0) -> Path:
    """One sub-folder of random PNGs per class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def fashion_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("fashion-folder") / "fashion", FASHION, per_class=3)


HF_CONTEXT = 16


@pytest.fixture(scope="session")
def hf_clip_folder(tmp_path_factory) -> Path:
    """A tiny random transformers CLIPModel folder: open_clip's BPE tokenizer, a 32 px image processor."""
    transformers = pytest.importorskip("transformers")
    from open_clip.tokenizer import SimpleTokenizer

    from ccup_cli.backends.export import build_tokenizer

    config = transformers.CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "max_position_embeddings": HF_CONTEXT, "vocab_size": 49408, "projection_dim": 16},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8, "projection_dim": 16},
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    folder = tmp_path_factory.mktemp("hf") / "tiny-clip"
    model.save_pretrained(str(folder))
    build_tokenizer(SimpleTokenizer(context_length=HF_CONTEXT), HF_CONTEXT).save_pretrained(str(folder))
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}) \
        .save_pretrained(str(folder))
    return folder


def assert_same_metrics(a, b, rel: float = 1e-6, path: str = "metrics") -> None:
    """Two metric trees agree: the same keys, counts and None exactly, floats within ``rel``.

    Two runs of the same model can differ in the last float32 bits when the thread count (and
    so the order of a reduction) differs, as between pytest-xdist workers.
    """
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same_metrics(a[k], b[k], rel, f"{path}.{k}")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=rel, abs=rel), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.fixture(scope="session")
def hf_siglip_folder(tmp_path_factory) -> Path:
    """A tiny random transformers SiglipModel folder: open_clip's BPE tokenizer (built locally), a 32 px processor."""
    transformers = pytest.importorskip("transformers")
    from open_clip.tokenizer import SimpleTokenizer

    from ccup_cli.backends.export import build_tokenizer

    config = transformers.SiglipConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "max_position_embeddings": HF_CONTEXT, "vocab_size": 49408},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
    )
    torch.manual_seed(0)
    model = transformers.SiglipModel(config).eval()
    with torch.no_grad():  # the head's bias starts at zero; a fold must carry it too
        model.text_model.head.bias.normal_(std=0.1)
    folder = tmp_path_factory.mktemp("hf") / "tiny-siglip"
    model.save_pretrained(str(folder))
    build_tokenizer(SimpleTokenizer(context_length=HF_CONTEXT), HF_CONTEXT).save_pretrained(str(folder))
    transformers.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(str(folder))
    return folder
