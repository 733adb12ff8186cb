"""nano's drawing primitives: shapes as their names say, positions read from the mask, the blur
of small originals that size conditioning teaches, and the degradations the refiner undoes.
(The scenes built from them: tests/test_nano_scenes.py.)"""

import numpy as np
import pytest
from PIL import Image

from sdxl_edu.nano.data import aesthetic_score, coverage, degrade, position_of
from sdxl_edu.nano.metrics import high_frequency_energy
from sdxl_edu.nano.scenes import BUCKETS, make_scene


@pytest.mark.parametrize("shape,area", [("circle", np.pi / 4), ("square", 1.0), ("triangle", 0.5)])
def test_a_shape_covers_the_area_of_its_name(shape, area):
    """Areas as fractions of size^2: a disc pi/4, a square 1, a triangle with base = height 1/2."""
    size = 40.0
    c = coverage(shape, 64, 64, 32.0, 32.0, size)
    assert abs(c.sum() / size**2 - area) < 0.01
    assert c.max() == 1.0 and c.min() == 0.0


def test_positions_are_read_from_where_the_mask_lies():
    mask = np.zeros((60, 60), bool)
    for (y, x), word in (((30, 5), "left"), ((30, 55), "right"), ((5, 30), "top"), ((55, 30), "bottom"),
                         ((30, 30), "center")):
        mask[:] = False
        mask[y - 3:y + 3, x - 3:x + 3] = True
        assert position_of(mask) == word


def test_small_originals_come_out_blurry():
    """SDXL's reason for size conditioning: an original smaller than the bucket is upscaled,
    so it is blurry; the data must show it for the model to learn it."""
    rng = np.random.default_rng(123)
    small, large = [], []
    while len(small) < 40 or len(large) < 40:
        scene = make_scene(rng, BUCKETS[0])
        if min(scene.original_size) <= 40:
            small.append(Image.fromarray(scene.image))
        elif min(scene.original_size) >= 128:
            large.append(Image.fromarray(scene.image))
    assert high_frequency_energy(large[:40]) > 2 * high_frequency_energy(small[:40])


def test_degradations_and_scores():
    image = make_scene(np.random.default_rng(0), BUCKETS[0]).image
    rng = np.random.default_rng(0)
    assert np.array_equal(degrade(image, 0.0, rng), image)
    for _ in range(6):
        assert np.abs(degrade(image, 0.9, rng).astype(int) - image).mean() > 1
    assert aesthetic_score(0.0) > aesthetic_score(0.5) > aesthetic_score(1.0)
