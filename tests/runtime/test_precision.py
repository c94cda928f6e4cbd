"""--precision fp32|fp16|bf16: validation and autocast around the encoders."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ccup_cli.backends.features import encode_pre_projection
from ccup_cli.backends.open_clip import load_model
from ccup_cli.data.datasets import open_dataset
from ccup_cli.errors import SpecError
from ccup_cli.runtime.precision import autocast_dtype, check_precision, encoder_precision

from ..conftest import TINY_VIT


@pytest.mark.parametrize("given, expected", [("fp32", "fp32"), ("FP16", "fp16"), (" bf16 ", "bf16")])
def test_valid_precisions(given, expected):
    assert check_precision(given) == expected


@pytest.mark.parametrize("bad, hint", [("fp64", 'did you mean "fp16"'), ("half", None), (16, None), (None, None)])
def test_bad_precision_is_one_line_naming_the_field(bad, hint):
    with pytest.raises(SpecError) as err:
        check_precision(bad)
    line = err.value.one_line()
    assert "\n" not in line
    assert line.startswith(f'precision: "{bad}" is not one of fp32, fp16, bf16')
    if hint:
        assert hint in line


def test_autocast_dtypes():
    assert autocast_dtype("fp32") is None
    assert autocast_dtype("fp16") is torch.float16
    assert autocast_dtype("bf16") is torch.bfloat16


def test_autocast_applies_inside_only():
    a = torch.randn(4, 4)
    with encoder_precision("bf16", "cpu"):
        assert (a @ a).dtype is torch.bfloat16
        assert (a.double() @ a.double()).dtype is torch.float64  # float64 math is left alone
    with encoder_precision("fp32", "cpu"):
        assert (a @ a).dtype is torch.float32
    assert (a @ a).dtype is torch.float32


def test_bf16_features_are_float32_and_close_to_fp32(tiny_vit_file):
    tiny = load_model(TINY_VIT, str(tiny_vit_file))
    ds = open_dataset("fashion-mnist-mini").limit_per_class(2)
    full, _ = encode_pre_projection(tiny, ds, workers=0)
    same, _ = encode_pre_projection(tiny, ds, workers=0, precision="fp32")
    low, _ = encode_pre_projection(tiny, ds, workers=0, precision="bf16")
    assert torch.equal(full, same)
    assert low.dtype is torch.float32
    assert not torch.equal(low, full)
    assert float(F.cosine_similarity(low, full).min()) > 0.98
