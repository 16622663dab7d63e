"""A procedural torso phantom labelled with TotalSegmentator ``total_mr`` classes, and an MR-like renderer.

Anatomy is built from analytic shapes (superellipse body, ellipsoids, tubes along z) in the DICOM patient
coordinate system LPS (PS3.3 C.7.6.2.1.1): +x is patient left, +y posterior, +z superior, millimetres.
The body is centred on x = y = 0 and z = 0 and spans roughly the lower thorax to the lower abdomen.

Each point is classified into a *tissue class* (``TISSUES``: air, fat, muscle, bowel, CSF and one class
per labelled structure) and a *label* (``LABELS``, the total_mr numbering; 0 where no structure is drawn).
A :class:`Contrast` assigns an intensity to every tissue class; :func:`render` turns a voxel grid into an
MR-like image (piecewise-constant tissues, mild texture, partial-volume blur, a smooth multiplicative bias
field and Rician noise) together with its label volume. Everything is deterministic from the seeds and
random generators passed in.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from operators.cpu_count import available_cpu_count
from operators.errors import TotalSegMRIError

logger = logging.getLogger(__name__)

# total_mr label values (TotalSegmentator 2.5+, 50-class map) of the structures this phantom draws.
LABELS: dict[int, str] = {
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
LABEL_BY_NAME: dict[str, int] = {name: value for value, name in LABELS.items()}

# Tissue classes: unlabelled tissues first, then one class per labelled structure (in LABELS order).
UNLABELLED_TISSUES: tuple[str, ...] = ("air", "subcutaneous_fat", "visceral_fat", "muscle", "bowel", "csf")
TISSUES: tuple[str, ...] = UNLABELLED_TISSUES + tuple(LABELS.values())
TISSUE_INDEX: dict[str, int] = {name: index for index, name in enumerate(TISSUES)}
# label value -> tissue class, for every label value 0..255 (0 and undrawn values -> air)
_TISSUE_OF_LABEL = np.zeros(256, dtype=np.uint8)
for _value, _name in LABELS.items():
    _TISSUE_OF_LABEL[_value] = TISSUE_INDEX[_name]

CONTRASTS: tuple[str, ...] = ("t1", "t2", "pd", "dixon_in", "dixon_opp", "dixon_water", "dixon_fat", "random")
DIXON_CONTRASTS: tuple[str, ...] = ("dixon_in", "dixon_opp", "dixon_water", "dixon_fat")


class PhantomError(TotalSegMRIError, ValueError):
    """A phantom or rendering request is malformed (bad point array, grid shape, affine or contrast name)."""


# --------------------------------------------------------------------------------------------- geometry


def _rotation(axis: str, degrees: float) -> np.ndarray:
    """Right-handed rotation matrix about one LPS axis."""
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


# A predicate gets x, y, z and the body zone of each point (see ``_ZONE_*``) and says which points it covers.
Predicate = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
Shape = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

# Body zones, nested (each inside the previous), computed once per point: the outline test is costly.
_ZONE_SUBCUTANEOUS, _ZONE_WALL, _ZONE_CAVITY, _ZONE_INNER_CHEST = 1, 2, 3, 4
_INNER_CHEST_MARGIN = 4.0  # mm between the cavity outline and the lungs (pleura, ribs)


@dataclass(frozen=True)
class _Part:
    """One painted shape: where it is (predicate on x, y, z arrays), its bounding box, and what it paints."""

    tissue: int
    label: int
    lo: np.ndarray  # conservative bounding box in LPS mm, used to skip points cheaply
    hi: np.ndarray
    inside: Predicate


def _ellipsoid(center, semi_axes, rotation: np.ndarray | None = None) -> tuple[Shape, np.ndarray, np.ndarray]:
    """Ellipsoid whose local axes are the columns of ``rotation``."""
    c = np.asarray(center, dtype=float)
    s = np.asarray(semi_axes, dtype=float)
    r = np.eye(3) if rotation is None else np.asarray(rotation, dtype=float)
    half = np.sqrt(((r * s[None, :]) ** 2).sum(axis=1))  # exact half-extent of a rotated ellipsoid per axis

    def inside(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        dx, dy, dz = x - c[0], y - c[1], z - c[2]
        acc = np.zeros(x.shape, dtype=float)
        for axis in range(3):
            q = r[0, axis] * dx + r[1, axis] * dy + r[2, axis] * dz
            acc += (q / s[axis]) ** 2
        return acc <= 1.0

    return inside, c - half, c + half


def _tube(
    z0: float,
    z1: float,
    cx: Callable[[np.ndarray], np.ndarray],
    cy: Callable[[np.ndarray], np.ndarray],
    rx: Callable[[np.ndarray], np.ndarray],
    ry: Callable[[np.ndarray], np.ndarray],
) -> tuple[Shape, np.ndarray, np.ndarray]:
    """A tube running along z with an elliptical cross-section whose centre and radii vary with z."""
    zs = np.linspace(z0, z1, 129)
    margin = 2.0  # the centreline is sampled; a small margin keeps the bounding box conservative
    lo = np.array([np.min(cx(zs) - rx(zs)) - margin, np.min(cy(zs) - ry(zs)) - margin, z0])
    hi = np.array([np.max(cx(zs) + rx(zs)) + margin, np.max(cy(zs) + ry(zs)) + margin, z1])

    def inside(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return (((x - cx(z)) / rx(z)) ** 2 + ((y - cy(z)) / ry(z)) ** 2 <= 1.0) & (z >= z0) & (z <= z1)

    return inside, lo, hi


def _const(value: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda z: np.full(np.shape(z), value, dtype=float)


class TorsoPhantom:
    """A randomized torso (lower thorax to lower abdomen) with total_mr structures, deterministic from a seed.

    ``labels_at`` / ``tissue_at`` classify arbitrary points; ``sample_grid`` classifies a voxel grid given
    the ``operators.volume`` index convention (``array[i, j, k]``, ``affine_lps`` maps (i, j, k, 1) to LPS).
    """

    def __init__(self, seed: int):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise PhantomError(f"phantom seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        rng = np.random.default_rng([0x7052, self.seed])  # namespaced so other users of the seed differ

        def u(lo: float, hi: float) -> float:
            return float(rng.uniform(lo, hi))

        # Body: axial superellipse |x/a|^p + |y/b|^p <= 1 whose half-axes vary smoothly with z.
        self._a0, self._b0 = u(150, 170), u(108, 124)
        self._ka = (u(-0.02, 0.05), u(0.0, 0.06))
        self._kb = (u(-0.02, 0.03), u(0.0, 0.03))
        self._p = u(2.3, 2.9)
        self._half_length = u(165, 185)
        self._fat = u(8, 20)  # subcutaneous fat thickness
        self._wall = u(9, 14)  # abdominal / chest wall muscle thickness
        self.extent_lps: tuple[np.ndarray, np.ndarray] = self._body_extent()

        self._parts: list[_Part] = []
        self._build(rng, u)

    # ---- body outline -----------------------------------------------------------------------------------

    def _half_axes(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        zn = np.asarray(z, dtype=float) / 150.0
        a = self._a0 * (1.0 + self._ka[0] * zn + self._ka[1] * zn**2)
        b = self._b0 * (1.0 + self._kb[0] * zn + self._kb[1] * zn**2)
        return a, b

    def _inside_outline(
        self, x: np.ndarray, y: np.ndarray, z: np.ndarray, shrink: float, axes: tuple[np.ndarray, np.ndarray]
    ) -> np.ndarray:
        """Inside the body outline shrunk by ``shrink`` mm; ``axes`` is ``_half_axes(z)``, computed once per
        point for the four nested outlines."""
        qx, qy = np.abs(x / (axes[0] - shrink)), np.abs(y / (axes[1] - shrink))
        # |q|^p + |r|^p <= 1 needs |q| <= 1 and |r| <= 1 (pow(q, p) > 1 for q > 1, p > 1): the costly powers
        # only where both hold, with the same result everywhere
        inside = (qx <= 1.0) & (qy <= 1.0) & (np.abs(z) <= self._half_length)
        candidates = np.nonzero(inside)[0]
        inside[candidates] = qx[candidates] ** self._p + qy[candidates] ** self._p <= 1.0
        return inside

    def _body_extent(self) -> tuple[np.ndarray, np.ndarray]:
        zs = np.linspace(-self._half_length, self._half_length, 257)
        a, b = self._half_axes(zs)
        lo = np.array([-a.max(), -b.max(), -self._half_length])
        return lo, -lo

    def _back(self, z: np.ndarray) -> np.ndarray:
        """y of the skin of the back at height z: posterior anatomy is anchored to it."""
        return self._half_axes(z)[1]

    # ---- anatomy ----------------------------------------------------------------------------------------

    def _add(
        self, tissue: str, shape: tuple[Shape, np.ndarray, np.ndarray], clip: Predicate | None = None
    ) -> None:
        """Paint ``tissue`` (and its label, if it is a labelled structure) inside ``shape`` [and ``clip``]."""
        shape_inside, lo, hi = shape

        def inside(x: np.ndarray, y: np.ndarray, z: np.ndarray, zone: np.ndarray) -> np.ndarray:
            if clip is None:
                return shape_inside(x, y, z)
            hit = clip(x, y, z, zone)  # clips are cheap: evaluate the shape only where the clip holds
            idx = np.nonzero(hit)[0]
            hit[idx] = shape_inside(x[idx], y[idx], z[idx])
            return hit

        self._parts.append(_Part(TISSUE_INDEX[tissue], LABEL_BY_NAME.get(tissue, 0), lo, hi, inside))

    def _build(self, rng: np.random.Generator, u: Callable[[float, float], float]) -> None:
        top, bottom = self._half_length, -self._half_length

        def cavity(x, y, z, zone):
            return zone >= _ZONE_CAVITY

        # Diaphragm: two domes (right higher), lower posteriorly; abdominal organs stay below it.
        spine_x = u(-3, 3)
        dome_r, dome_l = u(105, 120), u(95, 110)

        def dome(x, y):
            right = dome_r - 40.0 * ((x - (spine_x - 70.0)) / 90.0) ** 2
            left = dome_l - 40.0 * ((x - (spine_x + 70.0)) / 90.0) ** 2
            return np.maximum(right, left) - 0.2 * np.maximum(y, 0.0)

        def abdomen(x, y, z, zone):
            return (zone >= _ZONE_CAVITY) & (z <= dome(x, y))

        # Spine geometry, anchored to the back so that it follows the body outline.
        d_canal, r_canal, r_cord = u(45, 52), u(8.5, 9.5), u(5.5, 6.5)
        vb_rx, vb_ry = u(20, 25), u(14, 17)
        vb_h, disc_h = u(22, 27), u(7, 10)
        period = vb_h + disc_h
        phase = u(0, period)
        ring = r_canal + u(6, 8)

        def canal_y(z):
            return self._back(z) - d_canal

        def vb_y(z):
            return canal_y(z) - r_canal - vb_ry - 1.5

        vb_y0 = float(vb_y(np.array(0.0)))

        # 1. unlabelled background: bowel, a thresholded band-limited random field (sum of plane waves) that
        #    gives convoluted loops filling much of the mid and lower abdomen so that fat does not dominate
        n_waves = 10
        directions = rng.standard_normal((n_waves, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        wavenumbers = directions * (2 * np.pi / rng.uniform(45.0, 90.0, (n_waves, 1)))
        wavenumbers, phases = (
            wavenumbers.astype(np.float32),
            rng.uniform(0, 2 * np.pi, n_waves).astype(np.float32),
        )
        bowel_top, bowel_level = u(20, 50), u(0.15, 0.35)

        def bowel(x, y, z):
            px, py, pz = (c.astype(np.float32) for c in (x, y, z))
            field = np.zeros(px.shape, dtype=np.float32)
            for (kx, ky, kz), phi in zip(wavenumbers, phases, strict=True):
                field += np.cos(kx * px + ky * py + kz * pz + phi)
            return (field / np.float32(np.sqrt(n_waves / 2)) > bowel_level) & (z <= bowel_top)

        bowel_box = (np.array([-250.0, -250.0, bottom]), np.array([250.0, 250.0, bowel_top]))
        self._add("bowel", (bowel, *bowel_box), abdomen)

        # 2. iliopsoas: starts small beside the upper lumbar spine, grows and drifts laterally/anteriorly
        psoas_top, psoas_r_max = u(-20, 10), u(20, 24)
        for side, tissue in ((+1.0, "iliopsoas_left"), (-1.0, "iliopsoas_right")):
            x_off, y_off = u(26, 30), u(-2, 4)
            self._add(
                tissue,
                _tube(
                    bottom,
                    psoas_top,
                    lambda z, s=side, xo=x_off: spine_x + s * (xo + 0.13 * (psoas_top - z)),
                    lambda z, yo=y_off: vb_y(z) + yo - 0.12 * (psoas_top - z),
                    lambda z: np.minimum(6.0 + 0.13 * (psoas_top - z), psoas_r_max),
                    lambda z: np.minimum(6.0 + 0.13 * (psoas_top - z), psoas_r_max),
                ),
            )

        # 3. abdominal organs (later wins where they touch)
        stomach_fundus = (u(35, 50), u(-30, -15), dome_l - u(30, 40))
        self._add("stomach", _ellipsoid(stomach_fundus, (u(35, 45), u(30, 38), u(35, 45))), abdomen)
        self._add(
            "stomach",
            _ellipsoid(
                (u(10, 25), u(-60, -45), stomach_fundus[2] - u(45, 60)),
                (u(40, 50), u(18, 24), u(22, 28)),
                _rotation("z", u(-30, -15)),
            ),
            abdomen,
        )

        liver_c = (spine_x - u(55, 68), u(-15, 0), dome_r - u(40, 50))
        self._add(
            "liver",
            _ellipsoid(liver_c, (u(68, 80), u(70, 85), u(65, 80)), _rotation("z", u(-10, 10))),
            abdomen,
        )
        self._add(
            "liver",
            _ellipsoid((u(0, 15), u(-55, -40), dome_r - u(30, 40)), (u(45, 60), u(25, 32), u(35, 45))),
            abdomen,
        )
        self._add(
            "gallbladder",
            _ellipsoid(
                (liver_c[0] + u(10, 20), u(-55, -40), liver_c[2] - u(40, 55)),
                (u(16, 20), u(15, 18), u(32, 40)),
                _rotation("x", u(-25, -10)),
            ),
            abdomen,
        )
        self._add(
            "spleen",
            _ellipsoid(
                (spine_x + u(80, 90), self._b0 - u(70, 80), dome_l - u(45, 55)),
                (u(24, 30), u(42, 50), u(45, 55)),
                _rotation("z", u(25, 40)),
            ),
            abdomen,
        )
        for side, tissue, z_c in ((+1.0, "kidney_left", u(-20, 0)), (-1.0, "kidney_right", u(-35, -10))):
            rot = _rotation("z", -side * u(15, 30)) @ _rotation("y", side * u(8, 15))
            self._add(
                tissue,
                _ellipsoid(
                    (spine_x + side * u(66, 76), vb_y0 + u(2, 10), z_c),
                    (u(24, 29), u(19, 23), u(48, 56)),
                    rot,
                ),
                cavity,
            )

        # 4. lower thorax: lungs above the diaphragm beside the mediastinum, heart on the central dome

        def inner_chest(x, y, z, zone):
            return zone >= _ZONE_INNER_CHEST

        for side, tissue in ((+1.0, "lung_left"), (-1.0, "lung_right")):

            def lung(x, y, z, s=side):
                return (s * (x - spine_x) > 22.0) & (z > dome(x, y) + 4.0)

            lo = np.array([-250.0, -250.0, min(dome_l, dome_r) - 80.0])
            self._add(tissue, (lung, lo, np.array([250.0, 250.0, top])), inner_chest)
        dome_mid = float(dome(np.array(spine_x), np.array(0.0)))

        def above_dome(x, y, z, zone):
            return (zone >= _ZONE_CAVITY) & (z > dome(x, y) + 2.0)

        self._add(
            "heart",
            _ellipsoid(
                (spine_x + u(10, 25), u(-45, -30), dome_mid + u(50, 60)), (u(50, 60), u(42, 50), u(50, 60))
            ),
            above_dome,
        )

        # 5. great vessels in front of the spine
        r_ao, x_ao, gap_ao = u(10, 12), spine_x + u(17, 24), u(1, 4)
        self._add(
            "aorta",
            _tube(
                u(-140, -120),
                top,
                lambda z: x_ao + 0.05 * np.maximum(z, 0.0),
                lambda z: vb_y(z) - vb_ry - r_ao - gap_ao,
                _const(r_ao),
                _const(r_ao),
            ),
        )
        ivc_rx, ivc_ry, x_ivc, gap_ivc = u(12, 14), u(9, 11), spine_x - u(22, 30), u(4, 10)
        self._add(
            "inferior_vena_cava",
            _tube(
                u(-145, -125),
                dome_mid + 15.0,
                _const(x_ivc),
                lambda z: vb_y(z) - vb_ry - ivc_ry - gap_ivc,
                _const(ivc_rx),
                _const(ivc_ry),
            ),
        )

        # 6. back muscles, then the spine on top of them
        for side, tissue in ((+1.0, "autochthon_left"), (-1.0, "autochthon_right")):
            x_c, dy, rx, ry = spine_x + side * u(30, 36), u(7, 11), u(18, 22), u(14, 17)
            self._add(
                tissue,
                _tube(bottom, top, _const(x_c), lambda z, d=dy: canal_y(z) + d, _const(rx), _const(ry)),
            )

        def level_position(z):
            return np.mod(z - phase, period)

        def vertebra(x, y, z):
            zz = level_position(z)
            cy = canal_y(z)
            dx = x - spine_x
            body = ((dx / vb_rx) ** 2 + ((y - (cy - r_canal - vb_ry - 1.5)) / vb_ry) ** 2 <= 1.0) & (
                zz < vb_h
            )
            arch = (dx**2 + (y - cy) ** 2 <= ring**2) & (zz >= 0.15 * vb_h) & (zz <= 0.95 * vb_h)
            processes_z = (zz >= 0.3 * vb_h) & (zz <= 0.85 * vb_h)
            spinous = (np.abs(dx) <= 4.0) & (np.abs(y - (cy + r_canal + 9.0)) <= 10.0) & processes_z
            transverse = (np.abs(dx) <= 36.0) & (np.abs(y - (cy - 2.0)) <= 5.0) & processes_z
            return body | arch | spinous | transverse

        def disc(x, y, z):
            dx = x - spine_x
            vby = canal_y(z) - r_canal - vb_ry - 1.5
            return ((dx / vb_rx) ** 2 + ((y - vby) / vb_ry) ** 2 <= 1.0) & (level_position(z) >= vb_h)

        zs = np.linspace(bottom, top, 129)
        backs = self._back(zs)
        spine_lo = np.array([spine_x - 40.0, backs.min() - d_canal - r_canal - 2 * vb_ry - 4.0, bottom])
        spine_hi = np.array([spine_x + 40.0, backs.max() - d_canal + r_canal + 20.0, top])
        self._add("vertebrae", (vertebra, spine_lo, spine_hi))
        self._add("intervertebral_discs", (disc, spine_lo, spine_hi))
        self._add("csf", _tube(bottom, top, _const(spine_x), canal_y, _const(r_canal), _const(r_canal)))
        self._add(
            "spinal_cord", _tube(u(-60, -30), top, _const(spine_x), canal_y, _const(r_cord), _const(r_cord))
        )

    # ---- classification ---------------------------------------------------------------------------------

    def _classify(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(tissue class, label) for flat coordinate arrays. Every test is per point, so a point's class does
        not depend on the other points passed with it (``_classify_grid`` relies on that)."""
        n = x.size
        tissue = np.zeros(n, dtype=np.uint8)
        label = np.zeros(n, dtype=np.uint8)
        a, b = self._half_axes(z)
        body = np.nonzero(self._inside_outline(x, y, z, 0.0, (a, b)))[0]
        if body.size == 0:
            return tissue, label
        bx, by, bz = x[body], y[body], z[body]
        axes = (a[body], b[body])
        zone = np.full(body.size, _ZONE_SUBCUTANEOUS, dtype=np.uint8)
        inner = np.arange(body.size)
        for level, shrink in (
            (_ZONE_WALL, self._fat),
            (_ZONE_CAVITY, self._fat + self._wall),
            (_ZONE_INNER_CHEST, self._fat + self._wall + _INNER_CHEST_MARGIN),
        ):  # nested outlines: test each only on the points inside the previous one
            inside = self._inside_outline(bx[inner], by[inner], bz[inner], shrink, (axes[0][inner], axes[1][inner]))
            inner = inner[inside]
            zone[inner] = level
        t = np.choose(
            np.minimum(zone, _ZONE_CAVITY) - 1,
            np.array(
                [TISSUE_INDEX[n] for n in ("subcutaneous_fat", "muscle", "visceral_fat")], dtype=np.uint8
            ),
        ).astype(np.uint8)
        lab = np.zeros(body.size, dtype=np.uint8)
        # The box of these points decides most parts' box tests at once: a part whose box misses it is skipped,
        # one whose box holds it is tested on every point without the per-point box test.
        lo = np.array([bx.min(), by.min(), bz.min()])
        hi = np.array([bx.max(), by.max(), bz.max()])
        for part in self._parts:
            if np.any(part.lo > hi) or np.any(part.hi < lo):
                continue
            if np.all(part.lo <= lo) and np.all(part.hi >= hi):
                hit = np.nonzero(part.inside(bx, by, bz, zone))[0]
            else:
                near = np.nonzero(
                    (bx >= part.lo[0])
                    & (bx <= part.hi[0])
                    & (by >= part.lo[1])
                    & (by <= part.hi[1])
                    & (bz >= part.lo[2])
                    & (bz <= part.hi[2])
                )[0]
                if near.size == 0:
                    continue
                hit = near[part.inside(bx[near], by[near], bz[near], zone[near])]
            t[hit] = part.tissue
            lab[hit] = part.label
        tissue[body] = t
        label[body] = lab
        return tissue, label

    def _classify_grid(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(tissue classes, labels) of a voxel grid given its LPS coordinate arrays (all of the grid's shape).

        Classified in blocks of about GRID_BLOCK voxels a side on a thread pool: a block is compact in space, so
        its box rules out most parts (``_classify``), and NumPy releases the GIL in the array arithmetic. The
        result is the same as classifying all points at once, since every test is per point."""
        shape = x.shape
        tissue = np.empty(shape, dtype=np.uint8)
        label = np.empty(shape, dtype=np.uint8)

        def classify(block: tuple[slice, ...]) -> None:
            t, lab = self._classify(x[block].ravel(), y[block].ravel(), z[block].ravel())
            sub = tissue[block].shape
            tissue[block], label[block] = t.reshape(sub), lab.reshape(sub)

        blocks = list(_grid_blocks(shape, GRID_BLOCK))
        workers = min(len(blocks), available_cpu_count())
        if workers <= 1:
            for block in blocks:
                classify(block)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for _ in pool.map(classify, blocks):  # re-raises a block's exception here
                    pass
        return tissue, label

    @staticmethod
    def _split_points(points_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = np.asarray(points_lps, dtype=float)
        if p.ndim != 2 or p.shape[1] != 3:
            raise PhantomError(f"points must be an (N, 3) array of LPS millimetres, got shape {p.shape}")
        if not np.all(np.isfinite(p)):
            raise PhantomError("points contain NaN or infinite coordinates")
        return p[:, 0], p[:, 1], p[:, 2]

    def labels_at(self, points_lps: np.ndarray) -> np.ndarray:
        """total_mr label (uint8, 0 = none) at each of N points given as an (N, 3) LPS mm array."""
        return self._classify(*self._split_points(points_lps))[1]

    def tissue_at(self, points_lps: np.ndarray) -> np.ndarray:
        """Tissue class (uint8 index into ``TISSUES``, 0 = air) at each of N LPS points."""
        return self._classify(*self._split_points(points_lps))[0]

    def classify_grid(
        self, shape: tuple[int, int, int], affine_lps: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(tissue classes, labels), both uint8 arrays of ``shape`` on the grid (see ``sample_grid``)."""
        return self._classify_grid(*grid_coordinates(shape, affine_lps))

    def sample_grid(self, shape: tuple[int, int, int], affine_lps: np.ndarray) -> np.ndarray:
        """Labels (uint8) at voxel centres: ``out[i, j, k]`` lies at ``affine_lps @ (i, j, k, 1)``."""
        return self.classify_grid(shape, affine_lps)[1]


def grid_coordinates(
    shape: tuple[int, int, int], affine_lps: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LPS x, y, z (each an array of ``shape``) of the voxel centres of a grid."""
    if len(shape) != 3 or any(int(n) < 1 for n in shape):
        raise PhantomError(f"grid shape must be three positive integers, got {tuple(shape)}")
    a = np.asarray(affine_lps, dtype=float)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)) or abs(np.linalg.det(a[:3, :3])) < 1e-9:
        raise PhantomError("affine_lps must be a finite, invertible 4x4 voxel-to-LPS matrix")
    i, j, k = np.ogrid[: int(shape[0]), : int(shape[1]), : int(shape[2])]
    coords = tuple(a[r, 0] * i + a[r, 1] * j + a[r, 2] * k + a[r, 3] for r in range(3))
    return coords  # type: ignore[return-value]


GRID_BLOCK = 48  # voxels along each axis of a classification block (about 110 000 points)


def _grid_blocks(shape: tuple[int, ...], side: int):
    """Index tuples of slices tiling ``shape`` with blocks of at most ``side`` voxels a side, equal in size
    along each axis to within one voxel."""
    cuts = []
    for n in shape:
        pieces = max(1, -(-int(n) // side))
        edges = np.linspace(0, int(n), pieces + 1).round().astype(int)
        cuts.append([slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)])
    return itertools.product(*cuts)


# --------------------------------------------------------------------------------------------- contrasts


@dataclass(frozen=True)
class Contrast:
    """Intensity of every tissue class (``TISSUES`` order) for one MR weighting, plus acquisition hints."""

    name: str
    intensities: tuple[float, ...]
    texture: float = 0.05  # relative amplitude of the smooth within-tissue texture
    repetition_time_ms: float = 0.0
    echo_time_ms: float = 0.0

    def __post_init__(self) -> None:
        if len(self.intensities) != len(TISSUES):
            raise PhantomError(
                f"contrast {self.name!r} needs {len(TISSUES)} intensities, got {len(self.intensities)}"
            )
        if min(self.intensities) < 0:
            raise PhantomError(f"contrast {self.name!r} has a negative intensity")

    def intensity(self, tissue: str) -> float:
        return self.intensities[TISSUE_INDEX[tissue]]

    @property
    def table(self) -> np.ndarray:
        return np.asarray(self.intensities, dtype=np.float32)


# Tissue groups share one intensity in realistic contrasts (muscles look alike; a network must use shape).
_GROUP = {
    "subcutaneous_fat": "fat",
    "visceral_fat": "fat",
    "autochthon_left": "muscle",
    "autochthon_right": "muscle",
    "iliopsoas_left": "muscle",
    "iliopsoas_right": "muscle",
    "kidney_left": "kidney",
    "kidney_right": "kidney",
    "lung_left": "lung",
    "lung_right": "lung",
}

# Relative signal per group, loosely after published abdominal MR appearances (fluid dark on T1 and bright on
# T2, fat bright on both, liver brighter than spleen on T1 and darker on T2, flowing blood dark on T2 HASTE).
_BASE: dict[str, dict[str, float]] = {
    "t1": {
        "fat": 0.95,
        "muscle": 0.32,
        "bowel": 0.30,
        "csf": 0.08,
        "spleen": 0.38,
        "kidney": 0.42,
        "gallbladder": 0.12,
        "liver": 0.55,
        "stomach": 0.22,
        "lung": 0.04,
        "vertebrae": 0.62,
        "intervertebral_discs": 0.30,
        "spinal_cord": 0.45,
        "heart": 0.30,
        "aorta": 0.18,
        "inferior_vena_cava": 0.22,
    },
    "t2": {
        "fat": 0.70,
        "muscle": 0.18,
        "bowel": 0.45,
        "csf": 1.00,
        "spleen": 0.55,
        "kidney": 0.62,
        "gallbladder": 0.95,
        "liver": 0.25,
        "stomach": 0.75,
        "lung": 0.05,
        "vertebrae": 0.40,
        "intervertebral_discs": 0.75,
        "spinal_cord": 0.35,
        "heart": 0.12,
        "aorta": 0.04,
        "inferior_vena_cava": 0.08,
    },
    "pd": {
        "fat": 0.85,
        "muscle": 0.45,
        "bowel": 0.50,
        "csf": 0.75,
        "spleen": 0.62,
        "kidney": 0.65,
        "gallbladder": 0.70,
        "liver": 0.55,
        "stomach": 0.60,
        "lung": 0.06,
        "vertebrae": 0.60,
        "intervertebral_discs": 0.65,
        "spinal_cord": 0.55,
        "heart": 0.35,
        "aorta": 0.15,
        "inferior_vena_cava": 0.20,
    },
}
# Fat signal fraction per group for the Dixon family (marrow is partly fatty; liver may be mildly steatotic).
_FAT_FRACTION = {
    "fat": (0.88, 0.95),
    "muscle": (0.01, 0.06),
    "bowel": (0.02, 0.08),
    "vertebrae": (0.35, 0.55),
    "liver": (0.0, 0.15),
}
_TIMING_MS = {
    "t1": (5.0, 2.3),
    "t2": (1400.0, 90.0),
    "pd": (2500.0, 20.0),
    "random": (500.0, 15.0),
    "dixon_in": (6.7, 2.46),
    "dixon_opp": (6.7, 1.23),
    "dixon_water": (6.7, 1.23),
    "dixon_fat": (6.7, 1.23),
}


def _group(tissue: str) -> str:
    return _GROUP.get(tissue, tissue)


def _jittered_table(name: str, rng: np.random.Generator) -> dict[str, float]:
    """Group intensities of a realistic contrast, each scaled by an independent factor in [0.88, 1.12]."""
    return {g: v * float(rng.uniform(0.88, 1.12)) for g, v in _BASE[name].items()}


def _make(name: str, per_tissue: dict[str, float], rng: np.random.Generator) -> Contrast:
    values = tuple(0.0 if t == "air" else float(per_tissue[t]) for t in TISSUES)
    tr, te = _TIMING_MS[name]
    return Contrast(
        name, values, texture=float(rng.uniform(0.03, 0.08)), repetition_time_ms=tr, echo_time_ms=te
    )


def dixon_contrasts(rng: np.random.Generator) -> dict[str, Contrast]:
    """The four Dixon images (in-phase, opposed-phase, water, fat) of one acquisition, mutually consistent.

    With signal ``s`` and fat fraction ``f`` per tissue: in = s, opp = s|1 - 2f|, water = s(1 - f), fat = s f.
    """
    base = _jittered_table("t1", rng)
    fraction = {g: float(rng.uniform(*_FAT_FRACTION.get(g, (0.0, 0.02)))) for g in base}
    texture = float(rng.uniform(0.03, 0.08))
    out = {}
    for name, weight in (
        ("dixon_in", lambda f: 1.0),
        ("dixon_opp", lambda f: abs(1.0 - 2.0 * f)),
        ("dixon_water", lambda f: 1.0 - f),
        ("dixon_fat", lambda f: f),
    ):
        values = tuple(0.0 if t == "air" else base[_group(t)] * weight(fraction[_group(t)]) for t in TISSUES)
        tr, te = _TIMING_MS[name]
        out[name] = Contrast(name, values, texture=texture, repetition_time_ms=tr, echo_time_ms=te)
    return out


def contrast(name: str, rng: np.random.Generator) -> Contrast:
    """A tissue-intensity table for one of ``CONTRASTS``.

    "t1", "t2", "pd" and the Dixon images keep the realistic ordering of tissues with a random jitter;
    "random" draws every tissue's intensity independently (air stays 0), so a model cannot rely on intensity.
    """
    if name not in CONTRASTS:
        raise PhantomError(f"unknown contrast {name!r}; expected one of {', '.join(CONTRASTS)}")
    if name in DIXON_CONTRASTS:
        return dixon_contrasts(rng)[name]
    if name == "random":
        return _make(name, {t: float(rng.uniform(0.05, 1.0)) for t in TISSUES}, rng)
    table = _jittered_table(name, rng)
    return _make(name, {t: table[_group(t)] for t in TISSUES if t != "air"}, rng)


# --------------------------------------------------------------------------------------------- rendering


def _smooth_noise(shape: tuple[int, ...], rng: np.random.Generator, cell: float) -> Callable[[], np.ndarray]:
    """Zero-mean, unit-std random field varying over about ``cell`` voxels (coarse noise, upsampled).

    Draws the coarse noise now and returns the upsampling, which draws nothing, to run when (and on whichever
    thread) the caller likes."""
    coarse_shape = tuple(max(2, int(np.ceil(n / cell)) + 1) for n in shape)
    coarse = rng.standard_normal(coarse_shape).astype(np.float32)

    def upsample() -> np.ndarray:
        field = ndimage.zoom(
            coarse,
            [n / c for n, c in zip(shape, coarse_shape, strict=True)],
            order=1,
            grid_mode=True,
            mode="nearest",
        )
        field = field[tuple(slice(0, n) for n in shape)]
        std = float(field.std())
        return (field - field.mean()) / (std if std > 0 else 1.0)

    return upsample


def _bias_field(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, rng: np.random.Generator, strength: float
) -> Callable[[], np.ndarray]:
    """Smooth positive multiplicative field exp(strength * q) with q a random quadratic in space, |q| <= 1.
    Draws the coefficients now and returns the computation of the field (as :func:`_smooth_noise`)."""
    c = rng.standard_normal(9).astype(np.float32)

    def compute() -> np.ndarray:
        centre = [float((v.min() + v.max()) / 2) for v in (x, y, z)]
        ux, uy, uz = (((v - m) / 200.0).astype(np.float32) for v, m in zip((x, y, z), centre, strict=True))
        # terms x, y, z, xy, xz, yz, x^2, y^2, z^2, factored (Horner-like) to keep temporaries few
        q = (
            ux * (c[0] + c[3] * uy + c[4] * uz + c[6] * ux)
            + uy * (c[1] + c[5] * uz + c[7] * uy)
            + uz * (c[2] + c[8] * uz)
        )
        q = np.broadcast_to(q, np.broadcast_shapes(x.shape, y.shape, z.shape)).astype(np.float32)
        q -= q.mean()
        peak = float(np.abs(q).max())
        if peak > 0:
            q /= peak
        return np.exp(strength * q).astype(np.float32)

    return compute


def render(
    phantom: TorsoPhantom,
    shape: tuple[int, int, int],
    affine_lps: np.ndarray,
    contrast: Contrast,
    rng: np.random.Generator,
    *,
    bias: float = 0.3,
    noise: float = 0.03,
) -> tuple[np.ndarray, np.ndarray]:
    """An MR-like image of the phantom on a voxel grid, and the labels on the same grid.

    Returns ``(image, labels)``: ``image`` float32 >= 0 (tissue intensities of ``contrast`` with mild texture,
    partial-volume blur of about half a voxel, a smooth multiplicative bias field of log-amplitude ``bias``
    and Rician noise of standard deviation ``noise`` times the brightest tissue), ``labels`` uint8 total_mr
    values at the voxel centres. Index convention and affine as in ``operators.volume.Volume``.
    """
    images, labels = render_many(phantom, shape, affine_lps, [contrast], rng, bias=bias, noise=noise)
    return images[0], labels


def render_many(
    phantom: TorsoPhantom,
    shape: tuple[int, int, int],
    affine_lps: np.ndarray,
    contrasts: list[Contrast],
    rng: np.random.Generator,
    *,
    bias: float = 0.3,
    noise: float = 0.03,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Several images of one acquisition (e.g. a Dixon set): shared anatomy, texture and bias; own noise."""
    if bias < 0 or noise < 0:
        raise PhantomError("bias and noise must be non-negative")
    shape = tuple(int(n) for n in shape)  # type: ignore[assignment]
    x, y, z = grid_coordinates(shape, affine_lps)
    # The random draws in their fixed order first; the texture and bias fields, which draw nothing more, are
    # computed on another thread while the anatomy is classified.
    texture_of = _smooth_noise(shape, rng, cell=4.0)
    field_of = _bias_field(x, y, z, rng, bias) if bias > 0 else None
    with ThreadPoolExecutor(max_workers=1) as pool:
        fields = pool.submit(lambda: (texture_of(), field_of() if field_of is not None else None))
        tissue, labels = phantom._classify_grid(x, y, z)
        texture, field = fields.result()
    texture = np.clip(texture, -3, 3)
    images = []
    for c in contrasts:
        image = c.table[tissue]
        if c.texture > 0:
            image *= 1.0 + c.texture * texture
        image = ndimage.gaussian_filter(image, sigma=0.5, mode="nearest")  # partial volume at boundaries
        if field is not None:
            image *= field
        if noise > 0:
            sigma = noise * float(c.table.max())
            real = image + rng.normal(0.0, sigma, shape).astype(np.float32)
            imag = rng.normal(0.0, sigma, shape).astype(np.float32)
            image = np.sqrt(real * real + imag * imag)  # magnitude of complex Gaussian noise: Rician
        images.append(np.maximum(image, 0.0).astype(np.float32, copy=False))
    return images, labels
