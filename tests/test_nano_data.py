"""The nano dataset: captions true to the picture, SDXL's metadata, the effects it must teach."""

import numpy as np
import pytest
from PIL import Image

from sdxl_edu.nano.data import (BUCKETS, COLOURS, PHRASES, POSITIONS, SHAPES, SIZES, aesthetic_score, degrade,
                                make_sample, position_of)
from sdxl_edu.nano.metrics import high_frequency_energy


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(123)
    return [make_sample(rng, BUCKETS[i % 3]) for i in range(1500)]


def test_same_seed_same_sample():
    a, b = make_sample(np.random.default_rng(5), (48, 80)), make_sample(np.random.default_rng(5), (48, 80))
    assert np.array_equal(a.image, b.image) and a.caption == b.caption and a.crop_top_left == b.crop_top_left


def test_captions_describe_the_picture_after_the_crop(samples):
    for s in samples:
        words = s.caption.split()
        assert SHAPES[s.labels["shape"]] in words
        named = [c for c in COLOURS if c in words]
        assert named in ([], [list(COLOURS)[s.labels["colour"]]])
        phrases = [p for p in POSITIONS if PHRASES[p] in s.caption]
        assert phrases in ([], [POSITIONS[s.labels["position"]]])
        assert [z for z in SIZES if z in words] in ([], [SIZES[s.labels["size"]]])
        assert s.labels["position"] == POSITIONS.index(position_of(s.mask))  # from the final crop


def test_sdxl_metadata(samples):
    for s in samples:
        assert s.image.shape[:2] == s.target_size == s.mask.shape and s.target_size in BUCKETS
        h, w = s.original_size
        scale = max(s.target_size[0] / h, s.target_size[1] / w)
        assert 0 <= s.crop_top_left[0] <= round(h * scale) - s.target_size[0]
        assert 0 <= s.crop_top_left[1] <= round(w * scale) - s.target_size[1]
    offsets = [max(s.crop_top_left) / min(s.target_size) for s in samples]
    assert max(offsets) >= 0.5  # crops of half the bucket occur
    shorts = [min(s.original_size) / min(s.target_size) for s in samples]
    assert min(shorts) < 0.3 and max(shorts) > 1.8  # originals from a quarter to twice the bucket


def test_every_attribute_value_occurs(samples):
    for key, values in (("shape", SHAPES), ("colour", COLOURS), ("position", POSITIONS), ("size", SIZES)):
        counts = np.bincount([s.labels[key] for s in samples], minlength=len(values))
        assert counts.min() > 0.05 * len(samples), (key, counts)


def test_small_originals_are_blurry(samples):
    square = [s for s in samples if s.target_size == (64, 64)]
    small = [Image.fromarray(s.image) for s in square if min(s.original_size) < 24]
    large = [Image.fromarray(s.image) for s in square if min(s.original_size) >= 64]
    assert high_frequency_energy(large) > 2 * high_frequency_energy(small)


def test_the_crop_says_where_the_object_is(samples):
    """The crop-conditioning signal: in wide (tall) photographs the subject sits near the
    middle, so in the crop it lies near W'/2 - crop_left (H'/2 - crop_top): a large offset
    at the far end of a photograph puts it on, and cuts it by, the left (top) edge."""
    errors, far_cuts, whole = [], [], []
    for s in samples:
        (h, w), (bh, bw) = s.original_size, s.target_size
        scale = max(bh / h, bw / w)
        rh, rw = round(h * scale), round(w * scale)
        ys, xs = np.nonzero(s.mask)
        if not s.extra["framed"]:
            wide = rw - bw > rh - bh
            centre, predicted = (xs.mean(), rw / 2 - s.crop_top_left[1]) if wide else (ys.mean(), rh / 2 - s.crop_top_left[0])
            errors.append(abs(centre - predicted) / min(bh, bw))
            if max(rh / bh, rw / bw) >= 1.9 and max(s.crop_top_left) >= 0.9 * max(rh - bh, rw - bw):
                far_cuts.append(s.mask[0].any() or s.mask[:, 0].any())
        elif s.crop_top_left == (0, 0):
            whole.append(not s.extra["cut"])
    assert np.mean(np.array(errors) < 0.15) > 0.8
    assert len(far_cuts) >= 5 and np.mean(far_cuts) > 0.8
    assert len(whole) > 200 and np.mean(whole) == 1.0


def test_degradations_and_scores():
    image = make_sample(np.random.default_rng(0), (64, 64)).image
    rng = np.random.default_rng(0)
    assert np.array_equal(degrade(image, 0.0, rng), image)
    for _ in range(6):
        assert np.abs(degrade(image, 0.9, rng).astype(int) - image).mean() > 1
    assert aesthetic_score(0.0) > aesthetic_score(0.5) > aesthetic_score(1.0)
