"""Chest-radiograph-like grayscale images in which the true findings are visible, with graded severity.

Convention: radiographic (PA) orientation, so the patient's LEFT is on the IMAGE RIGHT (x > 0). Values are
float32 in [0, 1], bright = dense (bone, fluid, heart), dark = air. Every finding's contrast grows with its
severity and starts near the noise floor, so findings near the reporting threshold are subtle; the hard
ones (consolidation, pneumothorax, atelectasis) are regions large enough to survive a 64 px downsample:

- cardiomegaly: heart half-width 0.22 + 0.17 * severity (half-width, image units; AP views magnify 8 %);
- pleural effusion (side): basal opacity whose top is a meniscus rising laterally, height ~ severity;
- consolidation (side): a dense, patchy, well-defined opacity in the mid/lower zone that spares the
  costophrenic angle (unlike an effusion), radius 0.12 + 0.16 * severity, density 0.08 + 0.34 * severity;
- pneumothorax (side): the lung edge pulled away from the chest wall from the apex down to the mid zone, the
  gap air-dark without lung markings (a quarter to two thirds of the lung's width at the apex, narrower
  below), a denser collapsing lung medial to it and a pleural line at the edge;
- edema: bilateral perihilar haze with coarse interstitial texture;
- atelectasis (side): a thick oblique plate-like band in the lower zone plus volume loss (the hemidiaphragm
  below it raised: a convex dome, unlike an effusion's concave meniscus rising laterally);
- support devices: 1-3 of endotracheal tube, right jugular central line, left chest pacemaker with lead.

The "shifted" domain imitates another hospital: different gamma and contrast, stronger noise, collimation
borders and a burned-in side marker. Lateral views are a simpler side projection (heart anterior, spine
posterior) in which cardiomegaly, effusion (posterior angle), consolidation and edema show.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

_RENDER_MIN = 128  # small outputs are rendered at this size and downsampled (anti-aliasing)


@functools.lru_cache(maxsize=8)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(n, dtype=np.float32) + 0.5) / n * 2 - 1
    return np.meshgrid(c, c)  # x (columns), y (rows): both in [-1, 1]


def _smooth_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a random ``cells`` x ``cells`` grid upsampled bilinearly."""
    g = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(g, mode="F").resize((n, n), Image.BILINEAR)) * 0.8


def _sig(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def _line_mask(x, y, x0, y0, x1, y1, width):
    """Soft mask of the segment (x0, y0)-(x1, y1) with half-width ``width``."""
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy + 1e-9), 0, 1)
    d = np.hypot(x - (x0 + t * dx), y - (y0 + t * dy))
    return _sig((width - d) / (width * 0.35 + 1e-4))


def _frontal(sev: dict[str, float], anatomy: dict[str, float], view: str, rng: np.random.Generator, n: int) -> np.ndarray:
    x, y = _grid(n)
    x = x - anatomy["shift_x"]
    y = y - anatomy["shift_y"]
    img = np.full((n, n), 0.06, dtype=np.float32)
    body = _sig((1 - ((x / anatomy["body_w"]) ** 2 + ((y - 0.15) / 1.25) ** 2)) / 0.05)
    img += 0.42 * body
    texture = _smooth_noise(rng, n, 24) * 0.6 + _smooth_noise(rng, n, 9) * 0.4
    lungs = {}
    lw, lh = anatomy["lung_w"], anatomy["lung_h"]
    for side, s in (("left", 1.0), ("right", -1.0)):
        cx, cy = s * 0.36 * lw, -0.02
        rx = 0.27 * lw * (0.55 + 0.45 * np.clip((y + 0.62 * lh) / (1.0 * lh), 0, 1))  # narrower apex
        ry = 0.6 * lh
        d = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
        lungs[side] = (_sig((1 - d) / 0.06), cx, cy, rx, ry)
    lung = np.maximum(lungs["left"][0], lungs["right"][0])
    markings = np.ones_like(img)
    ptx_dark = np.zeros_like(img)
    ptx_line = np.zeros_like(img)
    for side in ("left", "right"):
        p = sev[f"pneumothorax_{side}"]
        if p <= 0:
            continue
        m, cx, cy, rx, ry = lungs[side]
        s = 1.0 if side == "left" else -1.0
        half = rx * np.sqrt(np.clip(1 - ((y - cy) / ry) ** 2, 0.04, 1))  # the lung's half-width on this row
        lateral = (x - cx) * s / half  # -1 medial .. +1 lateral edge of the lung on this row
        # The collapsed lung's edge runs parallel to the chest wall from the apex down to the mid zone,
        # the air gap widest at the apex; beyond it: no lung markings and air density.
        down = np.clip((y - (cy - ry)) / (1.3 * ry), 0, 1)  # 0 at the apex .. 1 near the base
        width = (0.35 + 1.0 * p) * (1 - 0.45 * down)
        edge = 1 - width
        zone = _sig((0.5 - y) / 0.1) * m
        rim = _sig((lateral - edge) / 0.04) * zone
        markings *= 1 - rim
        ptx_dark += rim * (0.1 + 0.1 * p)
        ptx_line += np.exp(-(((lateral - edge) / 0.05) ** 2)) * zone
        ptx_dark -= 0.08 * p * (1 - rim) * zone * _sig((lateral - edge + 0.6) / 0.1)  # denser collapsing lung
    img -= lung * 0.3
    img += lung * markings * texture * 0.05
    ribs = 0.5 + 0.5 * np.sin(2 * np.pi * (4.8 * (y + 0.12 * np.abs(x) ** 2) + anatomy["rib_phase"]))
    img += lung * ribs * 0.045
    img -= ptx_dark
    img += ptx_line * 0.1
    # Mediastinum and spine.
    img += 0.16 * _sig((0.1 - np.abs(x)) / 0.02) * _sig((y + 0.75) / 0.05)
    # Heart.
    c = sev["cardiomegaly"]
    mag = 1.08 if view == "AP" else 1.0
    hx = anatomy["heart_x"] + 0.05 * c
    hrx = (0.22 + 0.17 * c) * mag
    hry = (0.21 + 0.05 * c) * mag
    heart = _sig((1 - ((x - hx) / hrx) ** 2 - ((y - 0.33) / hry) ** 2) / 0.08)
    img += 0.24 * heart
    # Diaphragm domes below the lungs (soft tissue density).
    for side, s in (("left", 1.0), ("right", -1.0)):
        _, cx, cy, rx, ry = lungs[side]
        dome = cy + ry * 0.92 - 0.12 * (1 - ((x - cx) / (0.3 * lw)) ** 2)
        img += 0.12 * _sig((y - dome) / 0.02) * _sig((0.32 * lw - np.abs(x - cx)) / 0.03)
    # Pleural effusion: basal opacity with a meniscus rising laterally.
    for side, s in (("left", 1.0), ("right", -1.0)):
        e = sev[f"effusion_{side}"]
        if e <= 0:
            continue
        m, cx, cy, rx, ry = lungs[side]
        lateral = np.clip((x - cx) * s / (0.3 * lw), -1, 1.2)
        base = cy + ry * 0.9
        level = base - (0.06 + 0.55 * e) - 0.1 * e * (lateral + 1) ** 2 / 2
        fluid = _sig((y - level) / 0.025) * _sig((0.34 * lw - np.abs(x - cx)) / 0.03) * body
        img += (0.06 + 0.3 * e) * fluid
    # Consolidation: a dense, patchy, well-defined airspace opacity in the mid/lower zone (not at the base,
    # not touching the chest wall: unlike an effusion it has no meniscus and spares the costophrenic angle).
    for side, s in (("left", 1.0), ("right", -1.0)):
        k = sev[f"consolidation_{side}"]
        if k <= 0:
            continue
        m, cx, cy, rx, ry = lungs[side]
        bx, by = cx + s * 0.02, 0.1 + 0.1 * anatomy["rib_phase"]
        r = 0.12 + 0.16 * k
        d = ((x - bx) / (r * 0.95)) ** 2 + ((y - by) / (r * 1.15)) ** 2
        blob = _sig((1 - d) / 0.25)
        patch = np.clip(0.75 + 0.35 * _smooth_noise(rng, n, 18), 0.3, 1.3)
        img += (0.08 + 0.34 * k) * blob * patch * m
    # Edema: bilateral perihilar haze with coarse interstitial texture.
    ed = sev["edema"]
    if ed > 0:
        haze = sum(np.exp(-(((x - s * 0.2) / 0.28) ** 2 + ((y - 0.0) / 0.38) ** 2)) for s in (1.0, -1.0))
        coarse = 0.7 + 0.3 * _smooth_noise(rng, n, 30)
        img += (0.03 + 0.22 * ed) * haze * coarse * lung
    # Atelectasis: a thick oblique plate-like band in the lower zone plus volume loss (the hemidiaphragm
    # below it is pulled up: a convex dome, unlike an effusion's concave meniscus rising laterally).
    for side, s in (("left", 1.0), ("right", -1.0)):
        a = sev[f"atelectasis_{side}"]
        if a <= 0:
            continue
        m, cx, cy, rx, ry = lungs[side]
        band_y = 0.3 + 0.14 * (x - cx) * s
        width = 0.02 + 0.05 * a
        band = np.exp(-(((y - band_y) / width) ** 2)) * _sig((0.2 - np.abs(x - cx)) / 0.03)
        img += (0.06 + 0.3 * a) * band * m
        dome = cy + ry * 0.92 - 0.12 * (1 - ((x - cx) / (0.3 * lw)) ** 2)
        lift = 0.2 * a
        raised = _sig((y - (dome - lift)) / 0.025) * (1 - _sig((y - dome) / 0.02))
        img += 0.2 * raised * _sig((0.3 * lw - np.abs(x - cx)) / 0.03) * m
    # Support devices (radio-opaque, bright, thin).
    n_dev = int(round(sev["support_devices"] * 3))
    w = max(0.008, 1.5 / n)
    if n_dev >= 1:  # endotracheal tube down the trachea
        img += 0.45 * _line_mask(x, y, 0.0, -1.0, 0.0, -0.3, w)
    if n_dev >= 2:  # right internal jugular line (patient right = image left)
        img += 0.4 * np.maximum(_line_mask(x, y, -0.45, -0.95, -0.12, -0.5, w), _line_mask(x, y, -0.12, -0.5, -0.06, -0.1, w))
    if n_dev >= 3:  # left chest pacemaker generator + lead to the heart
        img += 0.6 * _sig((0.06 - np.maximum(np.abs(x - 0.55) / 1.4, np.abs(y + 0.62))) / 0.01)
        img += 0.4 * np.maximum(_line_mask(x, y, 0.5, -0.6, 0.1, -0.3, w), _line_mask(x, y, 0.1, -0.3, 0.05, 0.35, w))
    return img


def _lateral(sev: dict[str, float], anatomy: dict[str, float], rng: np.random.Generator, n: int) -> np.ndarray:
    x, y = _grid(n)
    x = x - anatomy["shift_x"]
    img = np.full((n, n), 0.06, dtype=np.float32)
    body = _sig((1 - (x / 0.8) ** 2 - ((y - 0.1) / 1.2) ** 2) / 0.05)
    img += 0.45 * body
    lung = _sig((1 - (x / 0.55) ** 2 - ((y + 0.02) / 0.62) ** 2) / 0.06)
    img -= 0.28 * lung
    img += lung * (_smooth_noise(rng, n, 20) * 0.04)
    img += 0.2 * _sig((x - 0.5) / 0.03) * body  # spine posterior (image right)
    c = sev["cardiomegaly"]
    heart = _sig((1 - ((x + 0.22 + 0.04 * c) / (0.2 + 0.14 * c)) ** 2 - ((y - 0.28) / 0.24) ** 2) / 0.08)
    img += 0.25 * heart
    e = max(sev["effusion_left"], sev["effusion_right"])
    if e > 0:
        level = 0.55 - 0.4 * e - 0.15 * e * np.clip((x - 0.1) / 0.4, 0, 1)
        img += (0.05 + 0.25 * e) * _sig((y - level) / 0.03) * _sig((x - 0.05) / 0.05) * lung
    k = max(sev["consolidation_left"], sev["consolidation_right"])
    if k > 0:
        img += (0.05 + 0.25 * k) * np.exp(-(((x - 0.1) / 0.2) ** 2 + ((y - 0.2) / 0.18) ** 2)) * lung
    ed = sev["edema"]
    if ed > 0:
        img += (0.03 + 0.18 * ed) * np.exp(-((x / 0.3) ** 2 + (y / 0.35) ** 2)) * lung
    return img


def render(sev: dict[str, float], anatomy: dict[str, float], view: str, domain: str, size: int,
           rng: np.random.Generator) -> np.ndarray:
    """Render one image as float32 ``(size, size)`` in [0, 1]; deterministic in ``rng``'s state."""
    n = max(size, _RENDER_MIN)
    img = _lateral(sev, anatomy, rng, n) if view == "LATERAL" else _frontal(sev, anatomy, view, rng, n)
    exposure = rng.uniform(-0.04, 0.04)
    img = img + exposure
    noise = 0.05 if domain == "shifted" else 0.03
    img = img + rng.normal(0.0, noise, size=img.shape).astype(np.float32)
    img = np.clip(img, 0.0, 1.0)
    if domain == "shifted":
        gamma = rng.choice([rng.uniform(0.55, 0.75), rng.uniform(1.35, 1.7)])
        img = np.clip((img ** gamma) * rng.uniform(0.85, 1.1) + rng.uniform(-0.05, 0.08), 0, 1)
        b = int(n * rng.uniform(0.05, 0.12))
        t = int(n * rng.uniform(0.03, 0.08))
        img[:, :b] = 0.02
        img[:, n - b :] = 0.02
        img[:t, :] = 0.02
        img[n - t :, :] = 0.02
        m0, m1 = int(n * 0.82), int(n * 0.9)
        img[t + 2 : t + 2 + (m1 - m0), m0:m1] = 0.95  # burned-in side marker
    if n != size:
        img = np.asarray(Image.fromarray(img.astype(np.float32), mode="F").resize((size, size), Image.BOX))
    return np.clip(img, 0.0, 1.0).astype(np.float32)
