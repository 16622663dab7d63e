"""The procedural torso phantom: label numbering, anatomy, grid convention, contrasts and rendering."""

from __future__ import annotations

import time

import numpy as np
import pytest

from app.synthetic.phantom import (
    CONTRASTS,
    LABEL_BY_NAME,
    LABELS,
    TISSUE_INDEX,
    TISSUES,
    PhantomError,
    TorsoPhantom,
    contrast,
    dixon_contrasts,
    render,
    render_many,
)

# total_mr numbering from TotalSegmentator 2.5+ (the 50-class map); the phantom must use these values.
TOTAL_MR = {
    1: "spleen",
    2: "kidney_right",
    3: "kidney_left",
    4: "gallbladder",
    5: "liver",
    6: "stomach",
    10: "lung_left",
    11: "lung_right",
    19: "vertebrae",
    20: "intervertebral_discs",
    21: "spinal_cord",
    22: "heart",
    23: "aorta",
    24: "inferior_vena_cava",
    46: "autochthon_left",
    47: "autochthon_right",
    48: "iliopsoas_left",
    49: "iliopsoas_right",
}
REQUIRED = (
    "liver",
    "spleen",
    "kidney_left",
    "kidney_right",
    "aorta",
    "inferior_vena_cava",
    "vertebrae",
    "spinal_cord",
    "autochthon_left",
    "autochthon_right",
    "stomach",
    "gallbladder",
)


def grid_3mm(phantom: TorsoPhantom, spacing: float = 3.0) -> tuple[tuple[int, int, int], np.ndarray]:
    """An axial LPS grid covering the phantom's body with isotropic ``spacing``."""
    lo, hi = phantom.extent_lps
    shape = tuple(int(np.ceil((b - a) / spacing)) + 1 for a, b in zip(lo, hi, strict=True))
    affine = np.eye(4)
    affine[:3, :3] *= spacing
    affine[:3, 3] = lo
    return shape, affine  # type: ignore[return-value]


def centroids(labels: np.ndarray, affine: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    for value, name in LABELS.items():
        idx = np.argwhere(labels == value)
        if idx.size:
            out[name] = affine[:3, :3] @ idx.mean(axis=0) + affine[:3, 3]
    return out


@pytest.fixture(scope="module")
def sampled() -> dict[int, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for seed in (0, 1, 7):
        phantom = TorsoPhantom(seed)
        shape, affine = grid_3mm(phantom)
        out[seed] = (phantom.sample_grid(shape, affine), affine)
    return out


def test_labels_use_total_mr_numbers() -> None:
    assert LABELS == TOTAL_MR
    assert set(REQUIRED) <= set(LABELS.values())
    assert all(name in TISSUES for name in LABELS.values())
    assert TISSUES[0] == "air" and {"subcutaneous_fat", "muscle"} <= set(TISSUES)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_every_structure_is_drawn_and_big_enough_for_3mm(sampled, seed: int) -> None:
    labels, affine = sampled[seed]
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    volumes = {name: float((labels == value).sum() * voxel_ml) for value, name in LABELS.items()}
    for name, ml in volumes.items():
        assert ml > 10.0, f"{name} only {ml:.1f} ml at 3 mm (seed {seed})"
    assert 900 < volumes["liver"] < 3000
    assert volumes["gallbladder"] > 20


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_laterality_and_anteroposterior_order(sampled, seed: int) -> None:
    labels, affine = sampled[seed]
    c = centroids(labels, affine)
    # LPS: +x is patient left, +y posterior
    assert c["kidney_left"][0] > c["kidney_right"][0]
    assert c["spleen"][0] > 0 > c["liver"][0]
    assert c["aorta"][0] > 0 > c["inferior_vena_cava"][0]
    assert c["autochthon_left"][0] > 0 > c["autochthon_right"][0]
    assert c["iliopsoas_left"][0] > 0 > c["iliopsoas_right"][0]
    assert c["lung_left"][0] > 0 > c["lung_right"][0]
    assert c["spinal_cord"][1] > c["vertebrae"][1] - 20 and c["spinal_cord"][1] > c["aorta"][1]
    assert c["vertebrae"][1] > c["aorta"][1] and c["autochthon_left"][1] > c["spinal_cord"][1]
    assert c["liver"][1] < c["kidney_right"][1]  # kidneys are retroperitoneal
    # lungs and heart above the liver, psoas below the upper abdomen
    assert c["lung_right"][2] > c["liver"][2] and c["heart"][2] > c["liver"][2]
    assert c["iliopsoas_left"][2] < c["kidney_left"][2]


def test_tubular_structures_are_thick_enough(sampled) -> None:
    labels, affine = sampled[0]
    pixel_area = affine[0, 0] * affine[1, 1]
    for name, min_diameter, max_diameter in (
        ("aorta", 15, 30),
        ("inferior_vena_cava", 15, 32),
        ("spinal_cord", 9, 15),
    ):
        areas = (labels == LABEL_BY_NAME[name]).sum(axis=(0, 1)) * pixel_area
        areas = areas[areas > 0]
        diameter = 2 * np.sqrt(np.median(areas) / np.pi)
        assert min_diameter <= diameter <= max_diameter, (name, diameter)


def test_seed_determines_the_anatomy(sampled) -> None:
    phantom = TorsoPhantom(1)
    shape, affine = grid_3mm(phantom)
    np.testing.assert_array_equal(phantom.sample_grid(shape, affine), sampled[1][0])
    a = TorsoPhantom(0).sample_grid(shape, affine)
    disagreement = np.mean(a != sampled[1][0])
    assert disagreement > 0.01, "different seeds should give visibly different anatomy"


def test_sample_grid_follows_the_volume_index_convention() -> None:
    """``out[i, j, k]`` is the label at ``affine @ (i, j, k, 1)``, also for an oblique, permuted grid."""
    phantom = TorsoPhantom(3)
    rotation = np.array([[0.0, 0.0, 1.0], [0.96126, -0.27564, 0.0], [0.27564, 0.96126, 0.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([2.5, 3.0, 3.5])
    affine[:3, 3] = [-80.0, -40.0, -120.0]
    shape = (40, 60, 50)
    labels = phantom.sample_grid(shape, affine)
    rng = np.random.default_rng(0)
    ijk = np.stack([rng.integers(0, n, 3000) for n in shape], axis=1)
    points = (affine @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]
    np.testing.assert_array_equal(labels[ijk[:, 0], ijk[:, 1], ijk[:, 2]], phantom.labels_at(points))
    assert len(np.unique(labels)) > 8


def test_grid_classification_in_blocks_equals_classifying_every_point_at_once() -> None:
    """``classify_grid`` works block by block on threads (each block's box rules parts out); every voxel must
    get the class and label it gets when all points are classified together, also on an oblique grid that
    spans several blocks, some of them air."""
    phantom = TorsoPhantom(5)
    rotation = np.array([[0.0, 0.0, 1.0], [0.96126, -0.27564, 0.0], [0.27564, 0.96126, 0.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([4.0, 3.0, 3.5])
    affine[:3, 3] = [-150.0, -60.0, -200.0]
    shape = (70, 100, 60)  # 2 x 3 x 2 blocks of GRID_BLOCK voxels a side
    tissue, labels = phantom.classify_grid(shape, affine)
    ijk = np.indices(shape).reshape(3, -1)
    points = (affine @ np.vstack([ijk, np.ones(ijk.shape[1])]))[:3].T
    np.testing.assert_array_equal(labels.ravel(), phantom.labels_at(points))
    np.testing.assert_array_equal(tissue.ravel(), phantom.tissue_at(points))
    assert len(np.unique(labels)) > 10
    assert (tissue == TISSUE_INDEX["air"]).mean() > 0.2


def test_tissue_classes_are_consistent_with_labels() -> None:
    phantom = TorsoPhantom(2)
    lo, hi = phantom.extent_lps
    rng = np.random.default_rng(1)
    points = rng.uniform(lo - 20, hi + 20, size=(20000, 3))
    labels, tissue = phantom.labels_at(points), phantom.tissue_at(points)
    for value, name in LABELS.items():
        assert np.all(tissue[labels == value] == TISSUE_INDEX[name])
    assert np.all(labels[tissue == 0] == 0)
    outside = np.abs(points[:, 2]) > hi[2]
    assert outside.any() and np.all(tissue[outside] == TISSUE_INDEX["air"])
    # walking in from either side, the first tissue under the skin is subcutaneous fat, then muscle
    for direction in (1.0, -1.0):
        x = np.arange(0.0, 250.0, 0.5)[::-1] * direction
        line = phantom.tissue_at(np.c_[x, np.zeros_like(x), np.zeros_like(x)])
        inside = line[line != TISSUE_INDEX["air"]]
        assert inside[0] == TISSUE_INDEX["subcutaneous_fat"]
        assert TISSUE_INDEX["muscle"] in inside[:60]


def test_bad_points_and_grids_raise_phantom_error() -> None:
    phantom = TorsoPhantom(0)
    with pytest.raises(PhantomError, match=r"\(N, 3\)"):
        phantom.labels_at(np.zeros((5, 2)))
    with pytest.raises(PhantomError, match="NaN"):
        phantom.tissue_at(np.array([[0.0, np.nan, 0.0]]))
    with pytest.raises(PhantomError, match="invertible"):
        phantom.sample_grid((4, 4, 4), np.zeros((4, 4)))
    with pytest.raises(PhantomError, match="three positive"):
        phantom.sample_grid((4, 0, 4), np.eye(4))
    with pytest.raises(PhantomError, match="non-negative integer"):
        TorsoPhantom(-1)
    with pytest.raises(PhantomError, match="unknown contrast"):
        contrast("flair", np.random.default_rng(0))


def test_contrasts_keep_the_realistic_tissue_order() -> None:
    for seed in range(5):
        t1 = contrast("t1", np.random.default_rng(seed))
        t2 = contrast("t2", np.random.default_rng(seed))
        # fluid dark on T1 and bright on T2; fat bright on T1; liver brighter than spleen on T1, darker on T2
        assert t1.intensity("subcutaneous_fat") > t1.intensity("liver") > t1.intensity("spleen")
        assert t1.intensity("spleen") > t1.intensity("csf") and t1.intensity("gallbladder") < t1.intensity(
            "liver"
        )
        assert t2.intensity("csf") > t2.intensity("subcutaneous_fat") > t2.intensity("liver")
        assert t2.intensity("gallbladder") > t2.intensity("spleen") > t2.intensity("liver")
        assert t2.intensity("aorta") < t2.intensity("muscle")  # flow void
        for c in (t1, t2):
            assert c.intensity("air") == 0.0
            assert c.intensity("autochthon_left") == c.intensity("muscle")  # muscles look alike


def test_random_contrast_draws_tissues_independently() -> None:
    names = set()
    for seed in range(4):
        c = contrast("random", np.random.default_rng(seed))
        assert c.intensity("air") == 0.0
        assert len(set(c.intensities[1:])) == len(TISSUES) - 1
        names.add(c.intensities)
    assert len(names) == 4
    orders = {tuple(np.argsort(contrast("random", np.random.default_rng(s)).intensities)) for s in range(4)}
    assert len(orders) == 4


def test_dixon_images_are_physically_consistent() -> None:
    d = dixon_contrasts(np.random.default_rng(11))
    inp, opp, water, fat = (
        np.array(d[n].intensities) for n in ("dixon_in", "dixon_opp", "dixon_water", "dixon_fat")
    )
    np.testing.assert_allclose(water + fat, inp, rtol=1e-9)
    np.testing.assert_allclose(np.abs(water - fat), opp, rtol=1e-9, atol=1e-12)
    i_fat, i_liver, i_marrow = (TISSUE_INDEX[t] for t in ("subcutaneous_fat", "liver", "vertebrae"))
    assert fat[i_fat] > 0.8 * inp[i_fat] and water[i_liver] > fat[i_liver]
    assert opp[i_marrow] < 0.5 * inp[i_marrow]  # partly fatty marrow drops out on opposed phase
    single = contrast("dixon_water", np.random.default_rng(11))
    assert single.intensities == d["dixon_water"].intensities
    assert set(CONTRASTS) >= set(d)


def test_render_gives_mr_like_image_with_the_labels() -> None:
    phantom = TorsoPhantom(4)
    shape, affine = (96, 80, 48), np.diag([3.5, 3.2, 6.5, 1.0])
    affine[:3, 3] = [-166.0, -126.0, -150.0]
    c = contrast("t1", np.random.default_rng(0))
    image, labels = render(phantom, shape, affine, c, np.random.default_rng(5))
    assert image.shape == labels.shape == shape and image.dtype == np.float32 and labels.dtype == np.uint8
    assert float(image.min()) >= 0.0
    np.testing.assert_array_equal(labels, phantom.sample_grid(shape, affine))
    again, _ = render(phantom, shape, affine, c, np.random.default_rng(5))
    np.testing.assert_array_equal(image, again)
    other, _ = render(phantom, shape, affine, c, np.random.default_rng(6))
    assert not np.array_equal(image, other)

    liver, lung = labels == LABEL_BY_NAME["liver"], labels == LABEL_BY_NAME["lung_right"]
    assert np.median(image[liver]) > 3 * np.median(image[lung])
    # piecewise constant plus texture: the liver's spread is small relative to its level, but not zero
    spread = np.std(image[liver]) / np.mean(image[liver])
    assert 0.02 < spread < 0.35


def test_render_without_bias_and_noise_reproduces_tissue_intensities() -> None:
    phantom = TorsoPhantom(4)
    shape, affine = (80, 64, 40), np.diag([4.0, 4.0, 7.0, 1.0])
    affine[:3, 3] = [-160.0, -126.0, -140.0]
    c = contrast("t2", np.random.default_rng(2))
    image, labels = render(phantom, shape, affine, c, np.random.default_rng(3), bias=0.0, noise=0.0)
    for name in ("liver", "spleen", "autochthon_left"):
        inside = labels == LABEL_BY_NAME[name]
        assert abs(np.median(image[inside]) / c.intensity(name) - 1) < 0.1, name
    outside = phantom.tissue_at(np.array([[0.0, 0.0, 500.0]]))
    assert outside[0] == 0
    assert float(image[0, 0, 0]) == pytest.approx(0.0, abs=1e-6)  # corner is air: no signal without noise
    with pytest.raises(PhantomError):
        render(phantom, shape, affine, c, np.random.default_rng(3), noise=-1)


def test_render_many_shares_anatomy_and_bias() -> None:
    phantom = TorsoPhantom(8)
    shape, affine = (64, 48, 32), np.diag([5.0, 5.0, 9.0, 1.0])
    affine[:3, 3] = [-160.0, -120.0, -140.0]
    d = dixon_contrasts(np.random.default_rng(0))
    (inp, water, fat), labels = render_many(
        phantom,
        shape,
        affine,
        [d["dixon_in"], d["dixon_water"], d["dixon_fat"]],
        np.random.default_rng(1),
        noise=0.0,
    )
    np.testing.assert_allclose(water + fat, inp, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(labels, phantom.sample_grid(shape, affine))


def test_rendering_is_fast_enough_for_training() -> None:
    phantom = TorsoPhantom(0)
    shape, affine = (128, 128, 64), np.diag([2.7, 2.1, 5.0, 1.0])
    affine[:3, 3] = [-170.0, -133.0, -160.0]
    c = contrast("pd", np.random.default_rng(0))
    start = time.perf_counter()
    render(phantom, shape, affine, c, np.random.default_rng(0))
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"rendering 128x128x64 took {elapsed:.2f} s"
