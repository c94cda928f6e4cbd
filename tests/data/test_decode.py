"""Decoders: the default is open_clip's transform bit for bit; the tensor paths are close; the gpu
decoder's own code runs on the CPU (batched ``decode_jpeg``) and falls back for other formats once."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ccup_cli.backends.features import encode_pre_projection, feature_cache_key
from ccup_cli.backends.open_clip import load_model
from ccup_cli.data import loader
from ccup_cli.data.datasets import open_dataset
from ccup_cli.data.decode import (
    DECODERS,
    DRAFT_GAP,
    DeviceDecoder,
    make_decoder,
    open_draft,
    tensor_transform,
)
from ccup_cli.errors import SpecError
from ccup_cli.run.options import RunOptions

from ..conftest import TINY_VIT


def smooth_image(rng, width: int, height: int) -> Image.Image:
    """A photo-like RGB image: smooth colour gradients plus mild noise (not pure noise, which no resize keeps)."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([np.sin(6 * x + rng.uniform(0, 6)), np.cos(5 * y + rng.uniform(0, 6)),
                     np.sin(4 * (x + y))], axis=-1)
    arr = (127.5 + 100 * base + rng.normal(0, 8, base.shape)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory) -> Path:
    """Two classes of 256 x 192 JPEGs (large against the 32-px test model), and one of 40 x 40."""
    root = tmp_path_factory.mktemp("jpegs") / "photos"
    rng = np.random.default_rng(0)
    for c, size in (("cat", (256, 192)), ("dog", (256, 192)), ("fox", (40, 40))):
        (root / c).mkdir(parents=True)
        for i in range(4):
            smooth_image(rng, *size).save(root / c / f"{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def mixed_folder(jpeg_folder, tmp_path_factory) -> Path:
    """The JPEG folder plus two PNGs: what the gpu decoder cannot hand to nvJPEG."""
    import shutil

    root = tmp_path_factory.mktemp("mixed") / "photos"
    shutil.copytree(jpeg_folder, root)
    rng = np.random.default_rng(1)
    smooth_image(rng, 64, 48).save(root / "cat" / "z-extra.png")
    smooth_image(rng, 50, 50).save(root / "fox" / "z-extra.png")
    return root


@pytest.fixture(scope="module")
def tiny(tiny_vit_file):
    return load_model(TINY_VIT, str(tiny_vit_file))


def pixels(ds, model, decode: str, workers: int = 0, batch_size: int = 5) -> torch.Tensor:
    return torch.cat(list(loader.image_batches(ds, model.preprocess, batch_size, decode=decode, workers=workers)))


def pixel_step(model) -> float:
    """One uint8 level after normalisation: 1 / 255 / std (the smallest std)."""
    return 1 / 255 / min(tensor_transform(model.preprocess).std)


def test_default_decoder_is_open_clips_transform_bit_for_bit(tiny, jpeg_folder):
    ds = open_dataset(str(jpeg_folder))
    direct = torch.stack([tiny.preprocess(ds.load_image(i)) for i in range(len(ds))])
    assert torch.equal(pixels(ds, tiny, "pil"), direct)
    assert torch.equal(pixels(ds, tiny, "pil", workers=2), direct)


def test_default_features_identical_to_in_process_on_jpegs(tiny, jpeg_folder):
    ds = open_dataset(str(jpeg_folder))
    in_process, _ = encode_pre_projection(tiny, ds, batch_size=5, workers=0)
    with_workers, _ = encode_pre_projection(tiny, ds, batch_size=5, workers=2)
    by_name, _ = encode_pre_projection(tiny, ds, batch_size=5, workers=2, decode="pil")
    assert torch.equal(in_process, with_workers) and torch.equal(in_process, by_name)


def test_tensor_decoder_is_close_to_pil_but_its_own_path(tiny, jpeg_folder):
    ds = open_dataset(str(jpeg_folder))
    reference, tensor = pixels(ds, tiny, "pil"), pixels(ds, tiny, "tensor", workers=2)
    assert tensor.shape == reference.shape and tensor.dtype == torch.float32
    gap = (tensor - reference).abs()
    assert float(gap.max()) <= 2 * pixel_step(tiny) + 1e-6  # at most 2 uint8 levels anywhere
    assert float(gap.mean()) < 0.05 * pixel_step(tiny)  # and almost every pixel equal
    feats = {d: encode_pre_projection(tiny, ds, batch_size=5, workers=0, decode=d)[0] for d in ("pil", "tensor")}
    cos = torch.nn.functional.cosine_similarity(feats["pil"], feats["tensor"], dim=1)
    assert float(cos.min()) > 0.999


def test_tensor_decoder_of_in_memory_images_at_native_size_is_exact():
    """Fashion-MNIST arrays at the embedded model's 28 px: no decode and no resize, so no difference."""
    embedded = load_model()
    mini = open_dataset("fashion-mnist-mini").subset(np.arange(0, 2000, 97))
    reference = pixels(mini, embedded, "pil")
    for decode in ("tensor", "pil-draft"):
        assert torch.equal(pixels(mini, embedded, decode), reference), decode


def test_gpu_decoder_on_the_cpu_matches_the_tensor_decoder(tiny, jpeg_folder):
    """The same code path as on CUDA (batched decode_jpeg, resize per size group), with device='cpu'."""
    ds = open_dataset(str(jpeg_folder))
    decoder = make_decoder("gpu", tiny.preprocess)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all JPEGs: no fallback, so no warning
        batches = list(loader.image_batches(ds, tiny.preprocess, batch_size=5, decoder=decoder, workers=2))
    assert [len(b) for b in batches] == [5, 5, 2]
    assert torch.equal(torch.cat(batches), pixels(ds, tiny, "tensor"))
    assert decoder.fallbacks == 0


def test_gpu_decoder_falls_back_for_other_formats_and_says_so_once(tiny, mixed_folder):
    ds = open_dataset(str(mixed_folder))
    n_png = sum(item.endswith(".png") for item in ds.item_ids)
    assert n_png == 2
    decoder = make_decoder("gpu", tiny.preprocess)
    with pytest.warns(UserWarning, match="not JPEG files are decoded on the CPU") as caught:
        gpu = torch.cat(list(loader.image_batches(ds, tiny.preprocess, batch_size=4, decoder=decoder, workers=0)))
    assert len([w for w in caught if "not JPEG" in str(w.message)]) == 1
    assert decoder.fallbacks == n_png
    assert torch.equal(gpu, pixels(ds, tiny, "tensor"))  # the fallback images finish like the rest, in order


def test_gpu_decoder_keeps_dataset_order_across_sizes(tiny, jpeg_folder):
    """Images of different sizes are resized in groups; rows still come back in dataset order."""
    ds = open_dataset(str(jpeg_folder)).subset(np.array([8, 0, 9, 1, 10]))  # 40-px and 256-px alternating
    decoder = DeviceDecoder(tensor_transform(tiny.preprocess))
    items = [decoder.item(ds, i) for i in range(len(ds))]
    batch = decoder.join([decoder.unpack(decoder.collate(items))], "cpu", pin=False)
    singles = torch.cat([decoder.join([[item]], "cpu", pin=False) for item in items])
    assert torch.equal(batch, singles)
    assert not torch.equal(batch[0], batch[1])


def test_pil_draft_decodes_large_jpegs_smaller_and_stays_close(tiny, jpeg_folder, tmp_path):
    side = 32
    big = jpeg_folder / "cat" / "0.jpg"
    drafted = open_draft(big, side)
    assert drafted.size == (128, 96)  # 1/2 scale: the smallest keeping DRAFT_GAP x 32 px on both sides
    assert min(drafted.size) >= DRAFT_GAP * side
    small = jpeg_folder / "fox" / "0.jpg"
    assert open_draft(small, side).size == (40, 40)  # too small to reduce
    png = tmp_path / "x.png"
    Image.open(big).save(png)
    assert open_draft(png, side).size == (256, 192)  # not a JPEG: untouched
    ds = open_dataset(str(jpeg_folder))
    draft, reference = pixels(ds, tiny, "pil-draft", workers=2), pixels(ds, tiny, "pil")
    is_big = torch.as_tensor([not item.startswith("fox") for item in ds.item_ids])
    assert torch.equal(draft[~is_big], reference[~is_big])
    assert not torch.equal(draft[is_big], reference[is_big])
    assert float((draft - reference).abs().mean()) < 5 * pixel_step(tiny)


def test_tensor_decoders_refuse_transforms_they_do_not_know(tiny):
    from torchvision import transforms as T

    with pytest.raises(SpecError, match="do not know the transform step Pad") as err:
        tensor_transform(T.Compose([T.Pad(2), *tiny.preprocess.transforms]))
    assert err.value.one_line().endswith("use --decode pil")
    with pytest.raises(SpecError, match="open_clip transform"):
        make_decoder("tensor", lambda image: image)
    with pytest.raises(SpecError, match="not one of"):
        make_decoder("nvjpeg", tiny.preprocess)
    assert make_decoder("pil", lambda image: image) is not None  # pil needs no knowledge of the steps


def test_decode_is_checked_at_the_door_and_keys_the_cache(tiny, jpeg_folder):
    with pytest.raises(SpecError, match='decode: "fast" is not one of'):
        RunOptions(decode="fast").check()
    with pytest.raises(SpecError, match="gpu decodes on a CUDA device"):
        RunOptions(decode="gpu", device="cpu").check()
    assert RunOptions(decode="gpu", device="auto").check().decode == "gpu"
    # where auto resolves to the CPU, gpu decoding is refused once the device is known
    import torch

    from ccup_cli.run.options import resolve_device

    if not torch.cuda.is_available():
        with pytest.raises(SpecError, match="decode: gpu needs a CUDA device"):
            resolve_device("auto", "gpu")
    assert resolve_device("auto", "pil") in ("cpu", "cuda")
    ds = open_dataset(str(jpeg_folder))
    keys = {d: feature_cache_key("abc", tiny.site, ds, tiny.preprocess, decode=d) for d in DECODERS}
    assert keys["pil"] == feature_cache_key("abc", tiny.site, ds, tiny.preprocess)  # old keys stay valid
    assert len(set(keys.values())) == len(DECODERS)


def test_subset_keeps_the_image_files(jpeg_folder):
    ds = open_dataset(str(jpeg_folder))
    part = ds.subset(np.array([5, 2]))
    assert part.image_file(0) == ds.image_file(5) and part.image_file(1).name == "2.jpg"
    assert open_dataset("fashion-mnist-mini").image_file is None


def test_workers_run_one_torch_thread_and_the_main_process_keeps_its_own(jpeg_folder):
    ds = open_dataset(str(jpeg_folder))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        threads_seen = loader.image_loader(ds, lambda image: torch.tensor(torch.get_num_threads()),
                                           batch_size=4, workers=2)
        assert threads_seen.worker_init_fn is loader.one_thread_per_worker
        assert torch.cat(list(threads_seen)).tolist() == [1] * len(ds)
        assert torch.get_num_threads() == 2
        in_process = loader.image_loader(ds, lambda image: torch.tensor(torch.get_num_threads()), workers=0)
        assert torch.cat(list(in_process)).tolist() == [2] * len(ds)
    finally:
        torch.set_num_threads(before)


def test_pinned_join_is_one_copy_with_the_same_values(tiny, jpeg_folder):
    decoder = make_decoder("pil", tiny.preprocess)
    chunk = torch.rand(6, 3, 4, 4)
    assert decoder.join([chunk], "cpu", pin=False) is chunk  # one piece, no pinning: no copy at all
    joined = decoder.join([chunk[:4], chunk[4:]], "cpu", pin=False)
    assert torch.equal(joined, chunk) and joined.data_ptr() != chunk.data_ptr()
    if torch.cuda.is_available():
        pinned = decoder.join([chunk[:4], chunk[4:]], "cuda", pin=True)
        assert pinned.is_pinned() and torch.equal(pinned, chunk)


def test_eval_job_runs_a_decoder_records_it_and_caches_it_apart(tiny_vit_file, jpeg_folder):
    from ccup_cli.jobs.eval import EvalRequest, run_eval

    req = EvalRequest(model=TINY_VIT, pretrained=str(tiny_vit_file), eval=str(jpeg_folder), templates="photo")
    exact, _ = run_eval(req, RunOptions(device="cpu", workers=0))
    tensor, _ = run_eval(req, RunOptions(device="cpu", workers=0, decode="tensor"))
    assert exact["run"]["decode"] == "pil" and tensor["run"]["decode"] == "tensor"
    assert tensor["dataset"]["feature_cache_hit"] is False  # not served the pil run's features
    again, _ = run_eval(req, RunOptions(device="cpu", workers=0, decode="tensor"))
    assert again["dataset"]["feature_cache_hit"] is True
