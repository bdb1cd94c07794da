"""The small offline demo collection (:func:`load_demo_dataset`).

It builds an instance-retrieval toy collection from photographs that ship
inside installed packages (scikit-learn's sample images and scikit-image's
data files; nothing is downloaded).  Eight colour photos are the *scenes*:
each gives its original and seven hard generated views (small off-centre
crop, zoomed-out inset in another photo, large rotation, perspective warp
into another photo, shear, strong relighting with heavy JPEG compression,
partial occlusion), and the label of an image is its scene.  The other
photographs of scikit-image are *distractors*: each gives its original and
three generated views, all labelled ``-1`` (relevant to no query).  The
collection is split into two disjoint groups of photographs, so that a
whitening can be learned on one group and evaluated on the other.
"""

from __future__ import annotations

import io
import math
import os

import numpy as np
from PIL import Image

__all__ = ["load_demo_dataset", "DISTRACTOR_LABEL"]

# (name, source, file): the scenes of the demo collection, all photographs in
# colour that are plain files inside scikit-learn and scikit-image.
_SCENES = (
    ("china", "sklearn", "china.jpg"),
    ("flower", "sklearn", "flower.jpg"),
    ("astronaut", "skimage", "astronaut.png"),
    ("chelsea", "skimage", "chelsea.png"),
    ("coffee", "skimage", "coffee.png"),
    ("rocket", "skimage", "rocket.jpg"),
    ("motorcycle", "skimage", "motorcycle_left.png"),
    ("hubble", "skimage", "hubble_deep_field.jpg"),
)

# (name, file): the distractors, the other images of scikit-image's data
# folder (grey ones converted to RGB).  Left out: tiny or synthetic files
# (chessboards, microaneurysms, lfw_subset, GIF / TIFF stacks) and
# motorcycle_right.png, the other half of the stereo pair of the motorcycle
# scene (it shows the same scene, so it is not a distractor).  A file missing
# from the installed scikit-image is skipped.
_DISTRACTORS = (
    ("camera", "camera.png"),
    ("coins", "coins.png"),
    ("moon", "moon.png"),
    ("page", "page.png"),
    ("text", "text.png"),
    ("brick", "brick.png"),
    ("grass", "grass.png"),
    ("gravel", "gravel.png"),
    ("retina", "retina.jpg"),
    ("horse", "horse.png"),
    ("ihc", "ihc.png"),
    ("cell", "cell.png"),
    ("clock", "clock_motion.png"),
    ("color", "color.png"),
    ("logo", "logo.png"),
    ("phantom", "phantom.png"),
)

VIEWS = ("original", "crop", "zoomed-out", "rotated", "perspective", "sheared",
         "relit-jpeg", "occluded")
"""Names of the eight images of every scene, in the order of the collection."""

DISTRACTOR_VIEWS = ("crop", "rotated", "perspective", "sheared", "relit-jpeg")
"""Views drawn (three of them, at random) for every distractor photograph."""

N_DISTRACTOR_VIEWS = 3
DISTRACTOR_LABEL = -1
"""Label of the distractors: relevant to no query."""

_INSTALL_HINT = "pip install skretrieval[demo]"


def _skimage_path(filename):
    try:
        import skimage.data
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the demo data set uses photographs shipped with scikit-image, "
            f"which is not installed; install it with `{_INSTALL_HINT}`"
        ) from exc
    # Read the file of the package directly: no fetcher, hence no download.
    return os.path.join(os.path.dirname(skimage.data.__file__), filename)


def _read_rgb(path):
    with Image.open(path) as im:
        transparent = im.mode in ("RGBA", "LA", "PA") or (
            im.mode == "P" and "transparency" in im.info)
        if transparent:
            # transparent pixels on white, not on the black of the RGB values
            im = im.convert("RGBA")
            canvas = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(canvas, im)
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _load_scene(source, filename):
    if source == "sklearn":
        from sklearn.datasets import load_sample_image

        return np.asarray(load_sample_image(filename), dtype=np.uint8)
    path = _skimage_path(filename)
    if not os.path.isfile(path):  # pragma: no cover - depends on the environment
        raise FileNotFoundError(
            f"scikit-image's data file {filename!r} is missing from {path!r}; "
            "reinstall scikit-image"
        )
    return _read_rgb(path)


def _available_distractors():
    """The (name, file) of the distractors present in the installed scikit-image."""
    return [(name, filename) for name, filename in _DISTRACTORS
            if os.path.isfile(_skimage_path(filename))]


def _resize_longest(img, longest):
    h, w = img.shape[:2]
    s = longest / max(h, w)
    size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
    if size == (w, h):
        return np.ascontiguousarray(img)
    return np.asarray(Image.fromarray(img).resize(size, Image.LANCZOS))


def _resize(img, w, h):
    return np.asarray(Image.fromarray(img).resize((max(1, w), max(1, h)), Image.LANCZOS))


def _crop(img, area, fx, fy):
    """Crop ``area`` of the image, same aspect, at relative position (fx, fy)."""
    h, w = img.shape[:2]
    s = math.sqrt(area)
    ch, cw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    y0 = int(round(fy * (h - ch)))
    x0 = int(round(fx * (w - cw)))
    return np.ascontiguousarray(img[y0:y0 + ch, x0:x0 + cw])


def _off_centre(rng):
    """A relative position near a border: away from the centre on both axes."""
    return [rng.uniform(0.0, 0.2) if rng.random() < 0.5 else rng.uniform(0.8, 1.0)
            for _ in range(2)]


def _inner_scale(w, h, angle):
    """Largest ``s`` such that an ``s*w x s*h`` box fits in the rotated image."""
    sin_a, cos_a = abs(math.sin(angle)), abs(math.cos(angle))
    return min(w / (w * cos_a + h * sin_a), h / (w * sin_a + h * cos_a))


def _rotate(img, degrees):
    """Rotate (bicubic, canvas expanded) and keep the largest centred box of
    the original aspect ratio that holds no empty corner."""
    h, w = img.shape[:2]
    rotated = Image.fromarray(img).rotate(degrees, resample=Image.BICUBIC, expand=True)
    s = _inner_scale(w, h, math.radians(degrees))
    # one pixel of margin on every side: no black pixel from the corners
    rw, rh = max(1, int(math.floor(s * w)) - 2), max(1, int(math.floor(s * h)) - 2)
    W, H = rotated.size
    x0, y0 = (W - rw) // 2, (H - rh) // 2
    return np.asarray(rotated.crop((x0, y0, x0 + rw, y0 + rh)))


def _perspective_coeffs(dst, src):
    """Coefficients of PIL's PERSPECTIVE transform mapping ``dst`` to ``src``.

    PIL maps every output pixel ``(x, y)`` to the input point
    ``((a x + b y + c) / (g x + h y + 1), (d x + e y + f) / (g x + h y + 1))``.
    """
    A, b = [], []
    for (x, y), (u, v) in zip(dst, src):
        A.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        A.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b.extend((u, v))
    return tuple(np.linalg.solve(np.asarray(A, float), np.asarray(b, float)))


def _perspective(img, background, rng):
    """A print of the image seen at an angle: the whole image warped (PIL's
    PERSPECTIVE) into a quadrilateral with one side 30-50 % shorter than the
    opposite one, every corner moved inwards by up to 5 %, covering about
    45-80 % of a frame of the same size; the rest of the frame is cut from
    another photograph."""
    h, w = img.shape[:2]
    s = rng.uniform(0.75, 0.95)  # the box of the quadrilateral, in the frame
    bw, bh = s * w, s * h
    x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    # corners TL, TR, BR, BL of the quadrilateral
    quad = np.array([[x0, y0], [x0 + bw, y0], [x0 + bw, y0 + bh], [x0, y0 + bh]])
    quad += (rng.uniform(0.0, 0.05, size=(4, 2)) * [bw, bh]
             * [[1, 1], [-1, 1], [-1, -1], [1, -1]])
    t = rng.uniform(0.3, 0.5) / 2.0
    side = rng.integers(4)  # 0 left, 1 right, 2 top, 3 bottom
    if side == 0:
        quad[0, 1] += t * bh
        quad[3, 1] -= t * bh
    elif side == 1:
        quad[1, 1] += t * bh
        quad[2, 1] -= t * bh
    elif side == 2:
        quad[0, 0] += t * bw
        quad[1, 0] -= t * bw
    else:
        quad[3, 0] += t * bw
        quad[2, 0] -= t * bw
    # PIL maps every output pixel to the input: from the quadrilateral to the image
    coeffs = _perspective_coeffs(quad, [(0, 0), (w, 0), (w, h), (0, h)])
    warped = Image.fromarray(img).transform((w, h), Image.PERSPECTIVE, coeffs,
                                            resample=Image.BICUBIC)
    mask = Image.new("L", (w, h), 255).transform((w, h), Image.PERSPECTIVE, coeffs,
                                                 resample=Image.BILINEAR, fillcolor=0)
    out = Image.fromarray(np.ascontiguousarray(_patch(background, w, h, rng)))
    out.paste(warped, (0, 0), mask)
    return np.asarray(out)


def _shear(img, rng):
    """A shear of 30-50 % either way, along the longer side of the image: the
    largest parallelogram of the image, warped onto a rectangle (AFFINE)."""
    h, w = img.shape[:2]
    k = rng.uniform(0.3, 0.5)
    sign = rng.choice([-1.0, 1.0])
    if w >= h:  # horizontal: x_in = x + offset(y)
        d = k * h
        ow, oh = max(1, int(round(w - d))), h
        if sign > 0:
            coeffs = (1.0, -d / h, d, 0.0, 1.0, 0.0)
        else:
            coeffs = (1.0, d / h, 0.0, 0.0, 1.0, 0.0)
    else:  # vertical: y_in = y + offset(x)
        d = k * w
        ow, oh = w, max(1, int(round(h - d)))
        if sign > 0:
            coeffs = (1.0, 0.0, 0.0, -d / w, 1.0, d)
        else:
            coeffs = (1.0, 0.0, 0.0, d / w, 1.0, 0.0)
    return np.asarray(Image.fromarray(img).transform(
        (ow, oh), Image.AFFINE, coeffs, resample=Image.BICUBIC))


def _relight(img, gamma, contrast, brightness, tint, saturation=1.0):
    x = (img.astype(np.float64) / 255.0) ** gamma
    if saturation != 1.0:
        grey = x.mean(axis=2, keepdims=True)
        x = grey + saturation * (x - grey)
    x = (x - 0.5) * contrast + 0.5 + brightness
    x = x * tint[np.newaxis, np.newaxis, :]
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def _jpeg(img, quality):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def _relit_jpeg(img, rng):
    """A strong lighting and colour change, then heavy JPEG compression."""
    if rng.random() < 0.5:  # dark, flat and colour-cast
        gamma, contrast, brightness = rng.uniform(1.8, 2.6), rng.uniform(0.5, 0.7), -0.1
    else:  # bright, harsh and washed out
        gamma, contrast, brightness = rng.uniform(0.35, 0.55), rng.uniform(1.3, 1.6), 0.1
    tint = rng.uniform(0.65, 1.35, size=3)
    saturation = rng.uniform(0.3, 1.6)
    out = _relight(img, gamma, contrast, brightness, tint, saturation)
    return _jpeg(out, rng.integers(8, 21))


def _patch(source, w, h, rng):
    """A ``w x h`` patch of ``source`` at a random position (resized if smaller)."""
    sh, sw = source.shape[:2]
    if sw < w or sh < h:
        s = max(w / sw, h / sh)
        source = _resize(source, int(math.ceil(sw * s)), int(math.ceil(sh * s)))
        sh, sw = source.shape[:2]
    y0, x0 = rng.integers(0, sh - h + 1), rng.integers(0, sw - w + 1)
    return source[y0:y0 + h, x0:x0 + w]


def _zoomed_out(img, background, rng):
    """The image shrunk to 0.3-0.5x and pasted, off-centre, into a frame of
    the same size cut from another photograph (an object seen from afar)."""
    h, w = img.shape[:2]
    s = rng.uniform(0.3, 0.5)
    small = _resize(img, int(round(w * s)), int(round(h * s)))
    out = np.array(_patch(background, w, h, rng))
    fx, fy = _off_centre(rng)
    sh, sw = small.shape[:2]
    y0, x0 = int(round(fy * (h - sh))), int(round(fx * (w - sw)))
    out[y0:y0 + sh, x0:x0 + sw] = small
    return out


def _occluded(img, occluder, rng):
    """A rectangle of 25-40 % of the area covered by a patch of another photo."""
    h, w = img.shape[:2]
    area = rng.uniform(0.25, 0.4)
    aspect = rng.uniform(0.6, 1.6)
    ph = min(h, max(1, int(round(math.sqrt(area * w * h / aspect)))))
    pw = min(w, max(1, int(round(area * w * h / ph))))
    out = np.array(img)
    y0, x0 = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    out[y0:y0 + ph, x0:x0 + pw] = _patch(occluder, pw, ph, rng)
    return out


def _camera(img, rng):
    """The mild changes of any new photograph: exposure, white balance and
    JPEG compression at quality 30-70."""
    gamma = math.exp(rng.uniform(-0.3, 0.3))
    out = _relight(img, gamma, rng.uniform(0.85, 1.15), rng.uniform(-0.05, 0.05),
                   rng.uniform(0.88, 1.12, size=3))
    return _jpeg(out, rng.integers(30, 71))


def _view(img, view, rng, others):
    """One generated view of ``img``; ``others`` are photos to borrow from."""
    if view == "original":
        return np.ascontiguousarray(img)
    out = _main_change(img, view, rng, others)
    return out if view == "relit-jpeg" else _camera(out, rng)


def _main_change(img, view, rng, others):
    if view == "crop":  # 25-50 % of the area, towards a corner
        return _crop(img, rng.uniform(0.25, 0.5), *_off_centre(rng))
    if view == "zoomed-out":
        return _zoomed_out(img, others[rng.integers(len(others))], rng)
    if view == "rotated":  # 30-45 degrees, then cut the empty corners away
        return _rotate(img, rng.uniform(30.0, 45.0) * rng.choice([-1.0, 1.0]))
    if view == "perspective":
        return _perspective(img, others[rng.integers(len(others))], rng)
    if view == "sheared":
        return _shear(img, rng)
    if view == "relit-jpeg":
        return _relit_jpeg(img, rng)
    if view == "occluded":
        return _occluded(img, others[rng.integers(len(others))], rng)
    raise ValueError(f"unknown view {view!r}")  # pragma: no cover


def load_demo_dataset(max_side=320, random_state=0, *, distractors=True,
                      return_groups=False):
    """Load the offline demo collection: 8 scenes of 8 images, and distractors.

    Everything comes from image files inside installed packages, so nothing
    is downloaded.  Every photograph is first downscaled so that its longest
    side is ``max_side`` pixels.

    **Scenes** (the queries, and their relevant images): scikit-learn's
    sample images ``china.jpg`` and ``flower.jpg`` and scikit-image's
    ``astronaut``, ``chelsea``, ``coffee``, ``rocket``, ``motorcycle_left``
    and ``hubble_deep_field``.  Each gives eight images (see ``VIEWS``):

    0. ``original``: the photograph itself;
    1. ``crop``: an off-centre crop of 25-50 % of its area;
    2. ``zoomed-out``: the photo shrunk to 0.3-0.5x and pasted off-centre into
       a frame cut from a distractor photograph;
    3. ``rotated``: a rotation by 30-45 degrees either way, the empty corners
       cut away;
    4. ``perspective``: the photo as a print seen at an angle: warped into a
       quadrilateral with one side 30-50 % shorter, that covers about 45-80 %
       of the frame, the rest of the frame cut from a distractor photograph;
    5. ``sheared``: a shear of 30-50 % either way, along the longer side;
    6. ``relit-jpeg``: a strong lighting and colour change (gamma, contrast,
       saturation, a colour cast) and JPEG compression at quality 8-20;
    7. ``occluded``: 25-40 % of the area covered by a patch of a distractor
       photograph.

    Every generated view but ``relit-jpeg`` also gets the mild changes of a
    new photograph: exposure, white balance and JPEG compression at quality
    30-70.

    **Distractors** (only when ``distractors=True``): the other photographs
    of scikit-image's data folder that are present locally (``camera``,
    ``coins``, ``moon``, ``page``, ``text``, ``brick``, ``grass``,
    ``gravel``, ``retina``, ``horse``, ``ihc``, ``cell``, ``clock_motion``
    (named ``clock``), ``color``, ``logo``, ``phantom``; grey ones converted
    to RGB, transparent ones put on white).  Each gives its original and
    three views drawn at random from ``DISTRACTOR_VIEWS``, all labelled
    ``DISTRACTOR_LABEL`` (-1): they are relevant to no query and are never
    queries themselves.

    **Groups**: scene ``i`` and distractor ``j`` belong to group ``i % 2`` and
    ``j % 2``.  The patches pasted into a scene (``zoomed-out``,
    ``perspective``, ``occluded``) come from a distractor of its own group, so
    that no photograph appears in both groups: a whitening learned on one
    group never sees the other.

    Parameters
    ----------
    max_side : int, default=320
        Longest side of the originals, in pixels (at least 16).
    random_state : int, numpy.random.Generator or None, default=0
        Seed of the generated views; the same seed gives the same images.
    distractors : bool, default=True
        Whether to add the distractors after the scenes.
    return_groups : bool, default=False
        Whether to also return the group (0 or 1) of every image.

    Returns
    -------
    images : list of ndarray of shape (H, W, 3), dtype uint8
        The images: the scenes first, scene by scene (the eight images of
        scene 0 first), then the distractors, photograph by photograph.
    labels : ndarray of shape (n_images,), dtype int64
        The scene index of every image, -1 for the distractors: images are
        relevant to each other when they have the same non-negative label.
    names : list of str
        ``"<photo>/<view>"`` for every image, e.g. ``"china/crop"`` or
        ``"camera/sheared"``.
    groups : ndarray of shape (n_images,), dtype int64
        The group (0 or 1) of every image.  Only returned when
        ``return_groups=True``.

    Raises
    ------
    ImportError
        If scikit-image is not installed (``pip install skretrieval[demo]``).
    """
    max_side = int(max_side)
    if max_side < 16:
        raise ValueError(f"max_side must be at least 16 pixels, got {max_side}")
    rng = np.random.default_rng(random_state)
    # the distractor photographs are also the source of the pasted patches
    extra = [(name, _resize_longest(_read_rgb(_skimage_path(filename)), max_side))
             for name, filename in _available_distractors()]
    pools = [[img for j, (_, img) in enumerate(extra) if j % 2 == g] for g in (0, 1)]
    images, labels, names, groups = [], [], [], []
    for label, (scene, source, filename) in enumerate(_SCENES):
        img = _resize_longest(_load_scene(source, filename), max_side)
        others = pools[label % 2] or [img[::-1, ::-1]]  # no distractor: itself, flipped
        for view in VIEWS:
            images.append(_view(img, view, rng, others))
            labels.append(label)
            names.append(f"{scene}/{view}")
            groups.append(label % 2)
    if distractors:
        for j, (name, img) in enumerate(extra):
            picks = rng.choice(len(DISTRACTOR_VIEWS), N_DISTRACTOR_VIEWS, replace=False)
            for view in ["original"] + [DISTRACTOR_VIEWS[p] for p in sorted(picks)]:
                images.append(_view(img, view, rng, pools[j % 2]))
                labels.append(DISTRACTOR_LABEL)
                names.append(f"{name}/{view}")
                groups.append(j % 2)
    labels = np.asarray(labels, dtype=np.int64)
    if return_groups:
        return images, labels, names, np.asarray(groups, dtype=np.int64)
    return images, labels, names
