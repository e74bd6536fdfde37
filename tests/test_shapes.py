"""The shapes world (invedit.shapes) and its judge (invedit.judge): ground truth, grammar, accuracy."""
from __future__ import annotations

import math

import numpy as np
import pytest

from invedit.judge import judge, judge_caption
from invedit.shapes import (CAPTION_WORDS, COLOURS, CROSS_ARM, SHAPES, STAR_INNER, SYMMETRY, Scene, all_captions,
                            caption_for, coverage, make_dataset, parse_caption, perturb, render,
                            sample_scene, shape_mask)


@pytest.fixture(scope="module")
def dataset():
    """Shapes at random rotations: the judge must read those too, a harder superset of the upright world."""
    return make_dataset(300, seed=123, rotate=True)


def _area(scene: Scene, size: int) -> float:
    """The shape's exact area in pixels, from its geometry."""
    r = scene.size * size / 2
    if scene.shape == "circle":
        return math.pi * r * r
    if scene.shape == "square":
        return 2 * r * r
    if scene.shape == "triangle":
        return 3 * math.sqrt(3) / 4 * r * r
    if scene.shape == "star":
        return 10 * 0.5 * r * (STAR_INNER * r) * math.sin(math.radians(36))
    span = 2 * r / math.hypot(1, CROSS_ARM)  # cross: r is half the diagonal of an arm's end
    return (2 * CROSS_ARM - CROSS_ARM ** 2) * span * span


# ---- the world -----------------------------------------------------------------------------------

def test_same_seed_same_data_other_seed_other_data():
    images_a, scenes_a = make_dataset(20, seed=7)
    images_b, scenes_b = make_dataset(20, seed=7)
    images_c, scenes_c = make_dataset(20, seed=8)
    assert scenes_a == scenes_b and np.array_equal(images_a, images_b)
    assert scenes_a != scenes_c and not np.array_equal(images_a, images_c)
    assert images_a.shape == (20, 64, 64, 3) and images_a.dtype == np.uint8


def test_every_caption_is_reachable_and_uses_only_caption_words():
    captions = all_captions()
    assert len(captions) == len(SHAPES) * len(COLOURS) * (len(COLOURS) - 1) == len(set(captions))
    assert {w for c in captions for w in c.split()} == set(CAPTION_WORDS)
    _, scenes = make_dataset(3000, seed=1)
    assert {s.shape for s in scenes} == set(SHAPES)
    assert {(s.colour, s.background) for s in scenes} == {(c, b) for c in COLOURS for b in COLOURS if c != b}


def test_parse_caption_round_trips_every_caption():
    for caption in all_captions():
        assert caption_for(*parse_caption(caption)) == caption
    assert parse_caption("  A Red   CIRCLE on a blue Background ") == ("circle", "red", "blue")


@pytest.mark.parametrize("text", [
    "", "a red circle", "a red circle on a blue background.", "the red circle on a blue background",
    "a red circle on a red background", "a purple circle on a blue background",
    "a red hexagon on a blue background", "a red circle on a blue backdrop", "a big red circle on a blue background",
])
def test_parse_caption_rejects_text_outside_the_grammar(text):
    with pytest.raises(ValueError):
        parse_caption(text)


def test_scene_rejects_unknown_or_equal_colours():
    with pytest.raises(ValueError, match="both"):
        Scene("circle", "red", "red", (0.5, 0.5), 0.5, 0.0)
    with pytest.raises(ValueError, match="shape"):
        Scene("hexagon", "red", "blue", (0.5, 0.5), 0.5, 0.0)
    with pytest.raises(ValueError, match="colour"):
        Scene("circle", "purple", "blue", (0.5, 0.5), 0.5, 0.0)


def test_shapes_stand_upright_unless_rotated():
    upright, rotated = make_dataset(200, seed=5)[1], make_dataset(200, seed=5, rotate=True)[1]
    assert all(s.rotation == 0.0 for s in upright)
    assert sum(s.rotation != 0.0 for s in rotated) == sum(s.shape != "circle" for s in rotated) > 100
    for a, b in zip(upright, rotated):  # the same seed draws the same scene, only the rotation differs
        assert (a.shape, a.colour, a.background, a.centre, a.size) == (b.shape, b.colour, b.background, b.centre, b.size)
        if a.shape != "circle":
            assert 0.0 < b.rotation < SYMMETRY[a.shape]


def test_sample_scene_keeps_the_attributes_it_is_given():
    rng = np.random.default_rng(0)
    for _ in range(50):
        scene = sample_scene(rng, shape="star", background="white")
        assert scene.shape == "star" and scene.background == "white" and scene.colour != "white"
    assert sample_scene(rng, colour="red").colour == "red"


def test_masks_match_the_geometry(dataset):
    images, scenes = dataset
    for image, scene in zip(images[:100], scenes[:100]):
        cover, mask = coverage(scene), shape_mask(scene)
        assert abs(cover.sum() / _area(scene, 64) - 1) < 0.012, scene
        assert abs(mask.sum() / _area(scene, 64) - 1) < 0.06, scene  # whole pixels: +-1/2 px on the edge
        rows, cols = np.nonzero(mask)
        assert rows.min() >= 1 and cols.min() >= 1 and rows.max() <= 62 and cols.max() <= 62, "touches the border"
        # the shape's outline is symmetric about its centre for every shape but the triangle and the star
        if scene.shape in ("circle", "square", "cross"):
            assert np.allclose([cols.mean() + 0.5, rows.mean() + 0.5], np.array(scene.centre) * 64, atol=0.6)
        # pixels fully inside carry the shape's colour, pixels fully outside the background's
        assert (image[cover == 1] == COLOURS[scene.colour]).all()
        assert (image[cover == 0] == COLOURS[scene.background]).all()


def test_render_scales_with_size():
    scene = Scene("square", "yellow", "black", (0.5, 0.5), 0.6, 0.0)
    for size in (32, 64, 128):
        image = render(scene, size)
        assert image.shape == (size, size, 3)
        assert abs(shape_mask(scene, size).mean() - 2 * 0.3 ** 2) < 0.02


# ---- the judge -----------------------------------------------------------------------------------

def _accuracy(images, scenes) -> np.ndarray:
    """Accuracy of (shape, colour, background, all three)."""
    hits = []
    for image, scene in zip(images, scenes):
        v = judge(image)
        hits.append((v.shape == scene.shape, v.colour == scene.colour, v.background == scene.background))
    hits = np.array(hits)
    return np.r_[hits.mean(0), hits.all(1).mean()]


def test_judge_reads_clean_images(dataset):
    images, scenes = dataset
    accuracy = _accuracy(images, scenes)
    assert accuracy[-1] >= 0.98, accuracy  # measured: 1.000 on 1,000 images


def test_judge_reads_the_upright_world_the_model_is_trained_on():
    images, scenes = make_dataset(300, seed=321)
    rng = np.random.default_rng(1)
    for batch in (images, [perturb(im, rng) for im in images]):
        accuracy = _accuracy(batch, scenes)
        assert accuracy[-1] >= 0.98, accuracy


def test_judge_reads_blurred_noisy_colour_shifted_images(dataset):
    images, scenes = dataset
    rng = np.random.default_rng(0)
    accuracy = _accuracy([perturb(im, rng) for im in images], scenes)
    assert accuracy[-1] >= 0.98, accuracy  # measured: 1.000 on 1,000 images
    strong = [perturb(im, rng, blur=(1.0, 2.0), noise=(6, 14), gain=0.2, offset=35) for im in images]
    accuracy = _accuracy(strong, scenes)
    assert accuracy[-1] >= 0.95, accuracy  # measured: 1.000 on 1,000 images


def test_judge_mask_overlaps_the_true_mask(dataset):
    images, scenes = dataset
    rng = np.random.default_rng(1)
    for image, scene in zip(images[:100], scenes[:100]):
        for seen in (image, perturb(image, rng)):
            truth, mask = shape_mask(scene), judge(seen).mask
            assert (truth & mask).sum() / (truth | mask).sum() > 0.85, scene


def test_judge_caption_needs_all_three_right(dataset):
    images, scenes = dataset
    image, scene = images[0], scenes[0]
    assert judge_caption(image, scene.caption)
    other_shape = next(s for s in SHAPES if s != scene.shape)
    other_colour = next(c for c in COLOURS if c not in (scene.colour, scene.background))
    assert not judge_caption(image, caption_for(other_shape, scene.colour, scene.background))
    assert not judge_caption(image, caption_for(scene.shape, other_colour, scene.background))
    assert not judge_caption(image, caption_for(scene.shape, scene.colour, other_colour))
    with pytest.raises(ValueError):
        judge_caption(image, "a photo of a cat")


def test_judge_sees_no_shape_on_a_plain_image():
    plain = np.full((64, 64, 3), COLOURS["green"], np.uint8)
    verdict = judge(plain)
    assert verdict.shape is None and verdict.colour is None and verdict.background == "green"
    assert verdict.caption is None and not verdict.mask.any()
    assert not judge_caption(plain, "a red circle on a green background")


def test_judge_works_at_other_sizes():
    for size in (32, 128):
        images, scenes = make_dataset(40, seed=size, size=size, rotate=True)
        assert all(judge(im).caption == s.caption for im, s in zip(images, scenes))


def test_judge_rejects_non_images():
    with pytest.raises(ValueError, match="uint8"):
        judge(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        judge(np.zeros((64, 64), np.uint8))
