"""Crops, heatmap targets and augmentation: the geometry every pose sample relies on."""

import numpy as np
from PIL import Image

from nas.tasks.pose.transforms import (
    Augmentation,
    apply_affine,
    crop_affine,
    gaussian_heatmaps,
    heatmap_to_input,
    input_to_heatmap,
    invert_affine,
    person_box,
    warp_image,
)


def _bright_pixel_image(x, y, size=(60, 80)):
    pixels = np.zeros((*size, 3), np.uint8)
    pixels[y, x] = 255
    return Image.fromarray(pixels)


def _centroid(pixels):
    weights = pixels[..., 0].astype(float)
    ys, xs = np.nonzero(weights)
    w = weights[ys, xs]
    return np.array([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()])


def test_crop_puts_the_box_centre_at_the_crop_centre_and_fills_it():
    affine = crop_affine(np.array([50.0, 40.0]), np.array([20.0, 40.0]), (64, 32))
    assert np.allclose(apply_affine(affine, [50.0, 40.0]), [15.5, 31.5])
    # The box's left and right edges land on the crop's edges (pixel edges at -0.5, w - 0.5).
    assert np.allclose(apply_affine(affine, [[40.0, 40.0], [60.0, 40.0]])[:, 0], [-0.5, 31.5])


def test_inverse_affine_undoes_rotation_scale_and_flip():
    affine = crop_affine(np.array([30.0, 20.0]), np.array([50.0, 50.0]), (64, 64), 25.0, True)
    points = np.array([[3.0, 4.0], [30.0, 20.0], [70.0, -5.0]])
    assert np.allclose(apply_affine(invert_affine(affine), apply_affine(affine, points)), points)


def test_flip_mirrors_about_the_crop_centre():
    center, box = np.array([30.0, 20.0]), np.array([40.0, 40.0])
    plain = apply_affine(crop_affine(center, box, (32, 32)), [[25.0, 18.0]])
    mirrored = apply_affine(crop_affine(center, box, (32, 32), flip=True), [[25.0, 18.0]])
    assert np.allclose(mirrored, [[31 - plain[0, 0], plain[0, 1]]])


def test_warped_image_shows_a_pixel_where_the_affine_maps_it():
    image = _bright_pixel_image(30, 25)
    affine = crop_affine(np.array([35.0, 30.0]), np.array([20.0, 20.0]), (40, 40), 20.0, True)
    crop = warp_image(image, affine, (40, 40))
    assert crop.shape == (40, 40, 3) and crop.dtype == np.uint8
    assert np.allclose(_centroid(crop), apply_affine(affine, [30.0, 25.0]), atol=0.1)


def test_heatmap_and_input_coordinates_align_pixel_centres():
    points = np.array([[0.0, 0.0], [127.0, 127.0], [63.5, 10.0]])
    hm = input_to_heatmap(points, (128, 128), (32, 32))
    assert np.allclose(hm[0], [-0.375, -0.375]) and np.allclose(hm[2, 0], 15.5)
    assert np.allclose(heatmap_to_input(hm, (128, 128), (32, 32)), points)


def test_gaussian_target_peaks_at_the_subpixel_joint():
    target, weight = gaussian_heatmaps(np.array([[5.0, 7.0], [10.5, 3.0]]), np.ones(2), (16, 24),
                                       sigma=2.0)
    assert target.shape == (2, 16, 24) and target.dtype == np.float32
    assert target[0, 7, 5] == 1.0 and np.unravel_index(target[0].argmax(), (16, 24)) == (7, 5)
    assert np.isclose(target[1, 3, 10], target[1, 3, 11])   # halfway between two pixels
    assert np.isclose(target[0, 7, 7], np.exp(-4 / 8))
    assert weight.tolist() == [1.0, 1.0]


def test_joints_outside_the_map_or_unlabelled_get_weight_and_target_zero():
    points = np.array([[-3.0, 4.0], [4.0, 4.0], [4.0, 16.0]])
    target, weight = gaussian_heatmaps(points, np.array([1, 0, 1]), (16, 16), sigma=2.0)
    assert weight.tolist() == [0.0, 0.0, 0.0]
    assert not target.any()


def test_person_box_has_the_input_aspect_and_padding():
    joints = np.array([[10.0, 10.0, 1], [30.0, 90.0, 1], [500.0, 500.0, 0]])
    center, box = person_box(joints, aspect=0.75, padding=1.25)
    assert np.allclose(center, [20.0, 50.0])            # unlabelled joint ignored
    assert np.allclose(box, [80 * 0.75 * 1.25, 80 * 1.25])


def test_augmentation_stays_in_range_and_is_seeded():
    aug = Augmentation()
    draws = [aug.sample(np.random.default_rng([3, i])) for i in range(400)]
    scales, rotations, flips = map(np.array, zip(*draws))
    assert scales.min() >= 0.75 and scales.max() <= 1.25
    assert np.abs(rotations).max() <= 30 and 0.3 < (rotations == 0).mean() < 0.5
    assert 0.4 < flips.mean() < 0.6
    assert aug.sample(np.random.default_rng([3, 7])) == draws[7]
