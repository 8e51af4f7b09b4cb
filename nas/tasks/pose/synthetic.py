"""Procedurally drawn pose data: nothing to download, joints known exactly, seeded.

Each record is a canvas a little larger than the network input with one articulated figure on a
random background (gradient or smooth noise, clutter shapes, pixel noise), sometimes partly
hidden behind an occluder. The figure is a 2-D projection of a turned 3-D body: its yaw decides
which way the shoulders and hips spread, which side is drawn in front, where the eyes and the
shirt's front stripe show and which way the feet point. Those are the cues that tell the
person's left from right, and since they come from a proper rotation, a mirrored figure is again
a valid figure with left and right swapped, so flip augmentation stays consistent.

Record i is drawn from a generator seeded by (seed, stream, i): the same figure every time,
independent of worker or order, and ``stream`` keeps splits disjoint.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from nas.tasks.pose.dataset import PoseDataset
from nas.tasks.pose.joints import JOINT_SETS
from nas.tasks.pose.transforms import Augmentation
from supernets.errors import NasError

__all__ = ["SyntheticPose", "draw_figure"]

_CONTENT_STREAM = 0xF16  # keeps the drawing stream apart from the augmentation stream

# Segment lengths as fractions of body height (roughly anthropometric; jittered per figure).
_LENGTHS = {"torso": 0.30, "head": 0.16, "upper_arm": 0.16, "forearm": 0.15, "thigh": 0.23,
            "shin": 0.23, "shoulder": 0.10, "hip": 0.07, "foot": 0.07}


def _unit(angle: float) -> np.ndarray:
    return np.array([math.sin(angle), -math.cos(angle)])   # angle 0 points up (y is down)


def _rotate(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(lo, hi, 3))


def _pose(rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict]:
    """Named 2-D points of a figure 1 unit tall around its pelvis, and how it faces."""
    seg = {k: v * rng.uniform(0.85, 1.15) for k, v in _LENGTHS.items()}
    tilt = rng.normal(0, math.radians(15)) if rng.random() < 0.85 else rng.uniform(-math.pi,
                                                                                   math.pi)
    yaw = rng.uniform(0, 2 * math.pi)
    up = _unit(tilt)
    side = np.array([math.cos(tilt), math.sin(tilt)])   # the image of the body's x axis
    # The person's right in camera space is (-cos yaw, 0, sin yaw), forward (-sin yaw, 0, -cos yaw).
    right_x, right_z = -math.cos(yaw), math.sin(yaw)
    forward_x, forward_z = -math.sin(yaw), -math.cos(yaw)

    pts = {"pelvis": np.zeros(2)}
    pts["neck"] = up * seg["torso"]
    pts["head-top"] = pts["neck"] + _rotate(up, rng.normal(0, math.radians(12))) * seg["head"]
    for s, sign in (("r", 1.0), ("l", -1.0)):
        pts[f"{s}-hip"] = side * seg["hip"] * right_x * sign
        pts[f"{s}-shoulder"] = pts["neck"] - up * 0.02 + side * seg["shoulder"] * right_x * sign
        thigh_angle = (rng.normal(0, math.radians(20)) if rng.random() < 0.75
                       else rng.uniform(-math.radians(100), math.radians(100)))
        thigh = _rotate(-up, thigh_angle)
        bend = rng.uniform(0, math.radians(120)) if rng.random() < 0.6 else rng.normal(0, 0.15)
        shin = _rotate(thigh, bend * rng.choice([-1.0, 1.0]))
        pts[f"{s}-knee"] = pts[f"{s}-hip"] + thigh * seg["thigh"]
        pts[f"{s}-ankle"] = pts[f"{s}-knee"] + shin * seg["shin"]
        upper = _rotate(-up, rng.uniform(-math.pi, math.pi) if rng.random() < 0.5
                        else rng.normal(0, math.radians(30)) * sign + sign * math.radians(15))
        fore = _rotate(upper, rng.uniform(-math.radians(140), math.radians(140)))
        pts[f"{s}-elbow"] = pts[f"{s}-shoulder"] + upper * seg["upper_arm"]
        pts[f"{s}-wrist"] = pts[f"{s}-elbow"] + fore * seg["forearm"]
    pts["thorax"] = pts["neck"]
    pts["upper-neck"] = pts["neck"] + (pts["head-top"] - pts["neck"]) * 0.3
    view = {"up": up, "side": side, "right_x": right_x, "right_z": right_z,
            "forward_x": forward_x, "forward_z": forward_z, "seg": seg}
    return pts, view


def _background(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    kind = rng.integers(3)
    if kind == 0:     # linear gradient between two colours
        a, b = np.array(_colour(rng)), np.array(_colour(rng))
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:8, 0:8] / 7.0
        t = (math.cos(angle) * xx + math.sin(angle) * yy)
        t = (t - t.min()) / max(np.ptp(t), 1e-6)
        small = a * (1 - t[..., None]) + b * t[..., None]
    elif kind == 1:   # smooth colour noise
        gh, gw = rng.integers(2, 9, 2)
        small = rng.integers(0, 256, (gh, gw, 3))
    else:             # flat colour
        small = np.broadcast_to(np.array(_colour(rng)), (2, 2, 3))
    image = Image.fromarray(small.astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(0, 9)):
        _shape(rng, draw, h, w, size=rng.uniform(0.05, 0.5) * min(h, w))
    return image


def _shape(rng: np.random.Generator, draw: ImageDraw.ImageDraw, h: int, w: int,
           size: float) -> None:
    """A random rectangle, ellipse or thick line (limb-like clutter) of about ``size`` pixels."""
    x, y = rng.uniform(0, w), rng.uniform(0, h)
    dx, dy = rng.uniform(0.3, 1.0, 2) * size
    kind = rng.integers(3)
    if kind == 0:
        draw.rectangle([x, y, x + dx, y + dy], fill=_colour(rng))
    elif kind == 1:
        draw.ellipse([x, y, x + dx, y + dy], fill=_colour(rng))
    else:
        a = rng.uniform(0, 2 * math.pi)
        draw.line([x, y, x + math.cos(a) * size, y + math.sin(a) * size], fill=_colour(rng),
                  width=max(1, int(size * rng.uniform(0.05, 0.2))))


def _limb(draw: ImageDraw.ImageDraw, a: np.ndarray, b: np.ndarray, width: float,
          colour: tuple) -> None:
    r = width / 2
    draw.line([tuple(a), tuple(b)], fill=colour, width=max(1, round(width)))
    for p in (a, b):
        draw.ellipse([p[0] - r, p[1] - r, p[0] + r, p[1] + r], fill=colour)


def _shade(colour: tuple, factor: float) -> tuple[int, int, int]:
    return tuple(int(min(255, c * factor)) for c in colour)


def draw_figure(rng: np.random.Generator, canvas_size: tuple[int, int]
                ) -> tuple[Image.Image, dict[str, np.ndarray]]:
    """One random figure on a random background: the RGB canvas and named joint positions."""
    h, w = canvas_size
    image = _background(rng, h, w)
    draw = ImageDraw.Draw(image)
    pts, view = _pose(rng)
    seg, up, side = view["seg"], view["up"], view["side"]

    # Scale to a body height that fits the canvas, then place it at random inside.
    lo = np.min(list(pts.values()), axis=0) - seg["head"] * 0.5
    hi = np.max(list(pts.values()), axis=0) + seg["head"] * 0.5
    extent = hi - lo
    height = min(rng.uniform(0.55, 0.95) * min(h, w), 0.95 * w / extent[0], 0.95 * h / extent[1])
    offset = np.array([rng.uniform(-lo[0] * height, w - hi[0] * height),
                       rng.uniform(-lo[1] * height, h - hi[1] * height)])
    pts = {k: v * height + offset for k, v in pts.items()}

    skin = _colour(rng, 60, 256)
    shirt, pants, shoes = _colour(rng), _colour(rng), _colour(rng, 0, 120)
    arm_w = height * rng.uniform(0.035, 0.065)
    leg_w = height * rng.uniform(0.05, 0.085)
    lit = 1.0 if rng.random() < 0.5 else rng.uniform(0.7, 1.0)

    def side_limbs(s: str, shade: float) -> None:
        foot = (side * view["forward_x"] * seg["foot"] - up * 0.3 * seg["foot"]) * height
        _limb(draw, pts[f"{s}-ankle"], pts[f"{s}-ankle"] + foot, leg_w * 0.8, _shade(shoes, shade))
        _limb(draw, pts[f"{s}-hip"], pts[f"{s}-knee"], leg_w, _shade(pants, shade))
        _limb(draw, pts[f"{s}-knee"], pts[f"{s}-ankle"], leg_w * 0.85, _shade(pants, shade))
        _limb(draw, pts[f"{s}-shoulder"], pts[f"{s}-elbow"], arm_w, _shade(shirt, shade))
        _limb(draw, pts[f"{s}-elbow"], pts[f"{s}-wrist"], arm_w * 0.85, _shade(skin, shade))
        r = arm_w * 0.7
        wx, wy = pts[f"{s}-wrist"]
        draw.ellipse([wx - r, wy - r, wx + r, wy + r], fill=_shade(skin, shade))

    # The side farther from the camera is drawn first (and darker), the torso over it.
    far, near = ("r", "l") if view["right_z"] > 0 else ("l", "r")
    side_limbs(far, 0.75 * lit)
    # A turned torso narrows; keep a minimum width so it stays a torso, not a line.
    lateral = side * max(abs(view["right_x"]), 0.3) * height
    neck, pelvis = pts["neck"], pts["pelvis"]
    torso = [neck + lateral * seg["shoulder"], neck - lateral * seg["shoulder"],
             pelvis - lateral * seg["hip"] * 1.3, pelvis + lateral * seg["hip"] * 1.3]
    draw.polygon([tuple(p) for p in torso], fill=shirt)
    if view["forward_z"] < -0.1:   # facing the camera: the shirt's front stripe shows
        front = side * view["forward_x"] * seg["shoulder"] * 0.5 * height
        _limb(draw, neck + front - up * seg["torso"] * 0.1 * height, pelvis + front,
              max(1.0, arm_w * 0.4), _shade(shirt, 0.4))
    center = (neck + pts["head-top"]) / 2
    r = seg["head"] * height / 2
    draw.ellipse([center[0] - r, center[1] - r, center[0] + r, center[1] + r], fill=skin)
    for eye in (1.0, -1.0):   # eyes on the front of the head, visible when turned our way
        ex = 0.7 * view["forward_x"] + 0.35 * eye * view["right_x"]
        ez = 0.7 * view["forward_z"] + 0.35 * eye * view["right_z"]
        if ez < -0.2:
            p = center + side * ex * r + up * 0.15 * r
            e = max(0.8, r * 0.15)
            draw.ellipse([p[0] - e, p[1] - e, p[0] + e, p[1] + e], fill=(20, 20, 20))
    side_limbs(near, lit)
    if rng.random() < 0.3:   # something in front of the person
        _shape(rng, draw, h, w, size=rng.uniform(0.1, 0.3) * height)
    return image, pts


class SyntheticPose(PoseDataset):
    """``n`` procedurally drawn figures (see module doc) in LSP (14) or MPII (16) joint order.

    Nothing is stored: record i is redrawn from (seed, stream, i) on each access (a sample,
    crop and targets included, takes about 2.5 ms at 128x128). All joints are labelled, even
    when hidden, as in LSP.
    """

    def __init__(self, n: int, input_size: int | tuple[int, int],
                 heatmap_size: int | tuple[int, int], *, seed: int, augment: bool,
                 sigma: float = 2.0, num_joints: int = 14, stream: int = 0,
                 augmentation: Augmentation = Augmentation()):
        if num_joints not in JOINT_SETS:
            raise NasError(f"synthetic data has {' or '.join(map(str, JOINT_SETS))} joints, "
                           f"not {num_joints}")
        if n < 1:
            raise NasError(f"synthetic data size must be at least 1, not {n}")
        super().__init__(input_size, heatmap_size, joint_names=JOINT_SETS[num_joints],
                         seed=seed, augment=augment, sigma=sigma, augmentation=augmentation)
        self.n = n
        self.stream = stream

    def __len__(self) -> int:
        return self.n

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        rng = np.random.default_rng([self.seed, _CONTENT_STREAM, self.stream, index])
        h, w = self.input_size
        canvas = (int(h * rng.uniform(1.0, 1.5)), int(w * rng.uniform(1.0, 1.5)))
        image, pts = draw_figure(rng, canvas)
        noise = rng.uniform(0, 12)
        if noise > 2:
            # Grey (luminance) noise: as good a nuisance as colour noise at a third of the cost.
            pixels = np.asarray(image, dtype=np.float32)
            grain = rng.standard_normal((*pixels.shape[:2], 1), dtype=np.float32) * noise
            image = Image.fromarray(np.clip(pixels + grain, 0, 255).astype(np.uint8))
        joints = np.array([[*pts[name], 1.0] for name in self.joint_names])
        return image, joints
