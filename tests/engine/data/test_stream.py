"""Images that stream from disk (engine.data.stream): a small image cache gives exactly the eager
values (images, alpha, masks, pixel gathers), the ray sampler draws bit-identical batches from a
streamed and an in-memory split for the same seed (working sets included, across refreshes and a
resume), evaluation order reads ahead, and bad values / files are one-line errors."""
from __future__ import annotations

import pytest
import torch

from engine.data import RaySampler, load_dataset
from engine.data.sampler import iter_images
from engine.data.stream import MB, ImageStore, parse_image_cache
from engine.errors import ConfigError, DataError
from tests.engine.data.conftest import link_tree, replace_with_copy


@pytest.fixture(scope="module")
def lego_pair(lego_100):
    eager = load_dataset(lego_100)
    streamed = load_dataset(lego_100, image_cache="4MB")   # 100x100 RGBA: 4 MB hold 26 images
    return eager, streamed


def _batches_equal(a, b):
    for k in ("origins", "directions", "rgb", "image_index", "pixel", "alpha"):
        x, y = getattr(a, k), getattr(b, k)
        assert (x is None) == (y is None), k
        if x is not None:
            assert torch.equal(x, y), k


def test_streamed_values_equal_eager(lego_pair):
    eager, streamed = lego_pair
    assert eager.metadata["image_cache"]["streaming"] is False and not eager.train.streaming
    assert streamed.metadata["image_cache"]["streaming"] is True and streamed.train.streaming
    for name, s in eager.splits.items():
        t = streamed.splits[name]
        assert isinstance(t.images, ImageStore) and t.images.shape == s.images.shape and t.alpha.shape == s.alpha.shape
        assert t.height == s.height and t.width == s.width and len(t) == len(s)
    tr, st = eager.train, streamed.train
    for i in (0, 37, 99):
        assert torch.equal(st.images[i], tr.images[i]) and torch.equal(st.alpha[i], tr.alpha[i])
    g = torch.Generator().manual_seed(3)
    idx, v, u = (torch.randint(0, n, (3000,), generator=g) for n in (100, 100, 100))
    assert torch.equal(st.images[idx, v, u], tr.images[idx, v, u])
    assert torch.equal(st.alpha[idx, v, u], tr.alpha[idx, v, u])
    assert torch.equal(st.images[5, v, u], tr.images[5, v, u])
    cache = streamed.image_cache
    assert cache.bytes <= cache.budget_bytes and st.images.capacity() == 4 * MB // (100 * 100 * 16)
    # the visual hull (init of raygauss / gvolume) reads coverage and colours through the store
    from engine.train.init_points import visual_hull_points

    a = visual_hull_points(tr, eager.scene_box, 200, resolution=10)
    b = visual_hull_points(st, streamed.scene_box, 200, resolution=10)
    assert all((x == y).all() for x, y in zip(a, b))


@pytest.mark.parametrize("working_set", [None, 10])
def test_sampler_batches_bit_identical(lego_pair, working_set):
    eager, streamed = lego_pair
    kw = dict(seed=7, jitter=True, working_set=working_set, refresh_every=4)
    se, ss = RaySampler(eager.train, 256, **kw), RaySampler(streamed.train, 256, **kw)
    for step in range(14 if working_set else 3):    # three refreshes of the working set; None
        # (uniform over all 100 images) decodes most of them per batch with 26 in the cache: keep it short
        _batches_equal(se.sample(), ss.sample())
        if step == 6:                         # resume mid-set from the streamed sampler's state
            state = ss.state_dict()
    if working_set is not None:
        assert len(set(ss.sample().image_index.tolist())) <= working_set
        r = RaySampler(eager.train, 256, **kw)
        r.load_state_dict(state)
        s2 = RaySampler(streamed.train, 256, **kw)
        s2.load_state_dict(state)
        for _ in range(7):
            _batches_equal(r.sample(), s2.sample())


def test_auto_working_set_and_sharding(lego_pair):
    _, streamed = lego_pair
    s = RaySampler(streamed.train, 64, seed=0)
    assert s.working_set == streamed.train.images.capacity() // 2 == 13
    whole = s.sample(64)
    halves = [RaySampler(streamed.train, 64, seed=0, shard=(r, 2)).sample() for r in (0, 1)]
    assert torch.equal(torch.cat([h.rgb for h in halves]), whole.rgb)


def test_eval_order_reads_ahead(lego_pair):
    eager, streamed = lego_pair
    test = streamed.splits["test"]
    got = [(i, rgb) for (i, _, _, rgb, _), _ in zip(iter_images(test), range(6))]
    assert all(torch.equal(rgb, eager.splits["test"].images[i]) for i, rgb in got)
    assert streamed.image_cache.prefetched > 0


def test_masks_stream(dtu):
    eager = load_dataset(dtu, downscale=4)
    streamed = load_dataset(dtu, downscale=4, image_cache="2MB")
    assert streamed.train.streaming and streamed.train.masks.dtype == torch.bool
    for i in (0, 20):
        assert torch.equal(streamed.train.masks[i], eager.train.masks[i])
        assert torch.equal(streamed.train.images[i], eager.train.images[i])
    assert torch.equal(streamed.train.masks.float()[3, torch.arange(5), torch.arange(5)],
                       eager.train.masks.float()[3, torch.arange(5), torch.arange(5)])


def test_budget_in_images_and_all(lego_100):
    ds = load_dataset(lego_100, image_cache="50img")          # 100 + 100 + 200 views do not fit in 50
    assert ds.train.streaming and ds.train.images.capacity() == 50
    assert not load_dataset(lego_100, image_cache="all").train.streaming
    assert not load_dataset(lego_100, image_cache="1GB").train.streaming


@pytest.mark.parametrize("bad", ["lots", "-5", "0", "1.5img", "12TB"])
def test_bad_cache_values_are_one_line(lego_100, bad):
    with pytest.raises(ConfigError, match="--image-cache"):
        load_dataset(lego_100, image_cache=bad)


def test_parse_units():
    assert parse_image_cache("2GB").value == 2048 * MB and parse_image_cache(64).value == 64 * MB
    assert parse_image_cache("300img").kind == "images" and parse_image_cache(None).kind == "auto"


def test_wrong_size_image_named_before_training(lego_100, tmp_path):
    from PIL import Image

    d = link_tree(lego_100, tmp_path / "lego")
    bad = replace_with_copy(d / "train" / "r_3.png")
    Image.new("RGBA", (50, 50)).save(bad)
    with pytest.raises(DataError, match=r"r_3\.png.*50x50 pixels but its camera says 100x100"):
        load_dataset(d, image_cache="1MB")


def test_damaged_image_named_when_it_is_read(lego_100, tmp_path):
    """A file whose header is fine but whose data is cut off fails when it is decoded (in the
    background or on demand) with the eager path's one-line DataError naming it."""
    d = link_tree(lego_100, tmp_path / "lego")
    bad = replace_with_copy(d / "train" / "r_5.png")
    bad.write_bytes(bad.read_bytes()[:400])
    ds = load_dataset(d, image_cache="1MB")
    assert ds.train.images[4].shape == (100, 100, 3)
    ds.train.prefetch([5])
    with pytest.raises(DataError, match=r"r_5\.png: cannot decode image"):
        ds.train.images[5]
    with pytest.raises(DataError, match=r"r_5\.png: cannot decode image"):   # not cached: fails again
        ds.train.images[torch.tensor([5, 6]), torch.tensor([0, 0]), torch.tensor([0, 0])]


def test_close_drops_queued_decodes_and_reads_still_work(lego_100):
    ds = load_dataset(lego_100, image_cache="2MB")
    ds.train.prefetch(range(50))
    ds.image_cache.close(wait=False)                 # what the interpreter-exit hook does
    assert ds.train.images[40].shape == (100, 100, 3)
    ds.image_cache.wait()


@pytest.mark.parametrize("streamed", [False, True])
def test_sampler_is_device_clean(lego_pair, streamed):
    """With torch's default device set to meta, every tensor made without ``device=`` lands there
    and mixing it with the split's fails: the sampler's draws are explicitly on the CPU (its
    generator) and everything else follows the split's device, as it must on a GPU."""
    split = lego_pair[1 if streamed else 0].train
    ref = RaySampler(split, 128, seed=2, jitter=True, working_set=8, refresh_every=2)
    s = RaySampler(split, 128, seed=2, jitter=True, working_set=8, refresh_every=2)
    for _ in range(3):
        with torch.device("meta"):
            b = s.sample()
        _batches_equal(b, ref.sample())
