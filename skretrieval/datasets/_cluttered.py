"""A cluttered object-retrieval benchmark generated from COIL-100 and real photos.

:func:`make_cluttered_objects` is a seeded generator in the style of
scikit-learn's ``make_*`` functions.  COIL-100 objects (Nene et al., 1996:
128 x 128 views of 100 objects on a turntable, on a black background) are
segmented from their background by a threshold mask and pasted, at random
scale, position and in-plane rotation, on real photographs (the colour photos
of scikit-image and scikit-learn, and optionally the photos of a folder),
among clutter objects, and partly hidden by an occluder (another object or a
patch of another photo).  Distractor scenes hold clutter only.  The queries
are one view of each query object, clean (on black) or itself cluttered.

Every clutter and occluder object is taken from the COIL objects that are
*not* query objects, so a distractor scene contains no query object and a
scene of object ``k`` contains no other query object.

:data:`CLUTTERED_BENCHMARK` holds the parameters of the fixed instance used in
``docs/benchmarks.md``: it is regenerated from the seed, never stored.
"""

from __future__ import annotations

import os
import re
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ._base import DatasetError, GroundTruth, RetrievalBenchmark, dataset_root

__all__ = ["CLUTTERED_BENCHMARK", "make_cluttered_objects", "segment_object"]

_COIL_FILE = re.compile(r"^obj(\d+)__(\d+)\.png$", re.IGNORECASE)
_PHOTO_EXT = (".jpg", ".jpeg", ".png")

#: The fixed instance of ``docs/benchmarks.md`` (``make_cluttered_objects(coil_root,
#: **CLUTTERED_BENCHMARK)``): 40 query objects, 3 scenes each, 120 distractor
#: scenes, 384 x 384 scenes, occlusion up to 40 %, seed 0.
CLUTTERED_BENCHMARK = dict(n_objects=40, n_scenes_per_object=3, n_distractors=120,
                           image_size=(384, 384), scale=(0.25, 0.5), max_rotation=45.0,
                           occlusion=(0.0, 0.4), n_clutter=2, query="clean", random_state=0)


def _skimage_photos():
    try:
        import skimage.data as data
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("make_cluttered_objects uses the photos shipped with "
                          "scikit-image: pip install skretrieval[demo]") from exc
    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(),
              data.hubble_deep_field()]
    left, right, _ = data.stereo_motorcycle()
    return photos + [left, right]


def _backgrounds(folders):
    """The real photographs the scenes are cut from (RGB uint8)."""
    from sklearn.datasets import load_sample_images

    photos = list(load_sample_images().images) + _skimage_photos()
    for folder in folders:
        path = Path(os.fspath(folder)).expanduser()
        if not path.is_dir():
            raise DatasetError(f"background folder {str(path)!r} does not exist")
        for f in sorted(path.iterdir()):
            if f.suffix.lower() in _PHOTO_EXT:
                with Image.open(f) as im:
                    photos.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    return [np.ascontiguousarray(p[..., :3], dtype=np.uint8) for p in photos]


def segment_object(image, threshold=30):
    """Mask of a COIL object on its black background.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8
        A COIL view.
    threshold : int, default=30
        A pixel belongs to the object when its brightest channel exceeds it;
        the mask is then cleaned (holes filled, largest component kept).

    Returns
    -------
    mask : ndarray of shape (H, W), bool
    """
    mask = np.asarray(image).max(axis=2) > threshold
    mask = ndimage.binary_fill_holes(ndimage.binary_opening(mask, iterations=1))
    labels, n = ndimage.label(mask)
    if n > 1:
        mask = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    return mask


def _coil_index(root):
    root = dataset_root(root, "coil100")
    views = {}
    for f in sorted(root.iterdir()):
        m = _COIL_FILE.match(f.name)
        if m:
            views.setdefault(int(m.group(1)), []).append((int(m.group(2)), str(f)))
    if not views:
        raise DatasetError(f"coil100: no image named like obj<ID>__<deg>.png in {root}")
    return {k: [p for _, p in sorted(v)] for k, v in sorted(views.items())}


def _cutout(path, threshold):
    """RGBA cut-out (cropped to the mask's box) of a COIL view."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    mask = segment_object(rgb, threshold)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    sl = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return Image.fromarray(np.dstack([rgb[sl], mask[sl].astype(np.uint8) * 255]), "RGBA")


def _transformed(cutout, side, angle):
    """The cut-out with its longest side ``side`` px, rotated by ``angle`` degrees."""
    w, h = cutout.size
    s = side / max(w, h)
    im = cutout.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
    return im.rotate(angle, resample=Image.BILINEAR, expand=True)


def _paste(canvas, sprite, rng):
    """Paste an RGBA sprite at a random place; return its full-size mask."""
    H, W = canvas.shape[:2]
    arr = np.asarray(sprite)
    h, w = arr.shape[:2]
    y, x = int(rng.integers(0, max(1, H - h + 1))), int(rng.integers(0, max(1, W - w + 1)))
    return _paste_at(canvas, arr, y, x)


def _paste_at(canvas, arr, y, x):
    H, W = canvas.shape[:2]
    h, w = min(arr.shape[0], H - y), min(arr.shape[1], W - x)
    alpha = arr[:h, :w, 3:4].astype(np.float32) / 255.0
    region = canvas[y:y + h, x:x + w].astype(np.float32)
    canvas[y:y + h, x:x + w] = np.round(alpha * arr[:h, :w, :3] + (1 - alpha) * region)
    mask = np.zeros((H, W), bool)
    mask[y:y + h, x:x + w] = alpha[..., 0] > 0.5
    return mask


def _background(photos, size, rng):
    H, W = size
    photo = photos[int(rng.integers(len(photos)))]
    ph, pw = photo.shape[:2]
    frac = rng.uniform(0.5, 1.0)
    ch = max(8, int(min(ph, pw * H / W) * frac))
    cw = max(8, int(ch * W / H))
    y, x = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    crop = Image.fromarray(photo[y:y + ch, x:x + cw])
    out = np.asarray(crop.resize((W, H), Image.BILINEAR), dtype=np.uint8).copy()
    return np.ascontiguousarray(out[..., ::-1] if rng.random() < 0.5 else out)


def _occluder(target_mask, sprite_side, photos, clutter_cut, rng, fraction):
    """An RGBA occluder and the place that hides ``fraction`` of ``target_mask``."""
    if rng.random() < 0.5 and clutter_cut:
        occ = _transformed(clutter_cut[int(rng.integers(len(clutter_cut)))],
                           sprite_side, rng.uniform(0, 360))
        arr = np.asarray(occ)
    else:  # a rectangular patch of another photo
        photo = photos[int(rng.integers(len(photos)))]
        h = max(4, int(sprite_side * rng.uniform(0.4, 0.9)))
        w = max(4, int(sprite_side * rng.uniform(0.4, 0.9)))
        y = int(rng.integers(0, photo.shape[0] - h + 1))
        x = int(rng.integers(0, photo.shape[1] - w + 1))
        arr = np.dstack([photo[y:y + h, x:x + w], np.full((h, w), 255, np.uint8)])
    rows, cols = np.flatnonzero(target_mask.any(1)), np.flatnonzero(target_mask.any(0))
    H, W = target_mask.shape
    area, best = target_mask.sum(), None
    occ_mask = arr[..., 3] > 127
    for _ in range(24):  # keep the placement whose hidden fraction is closest
        y = int(np.clip(rng.integers(rows[0] - arr.shape[0] + 1, rows[-1] + 1), 0, H - 1))
        x = int(np.clip(rng.integers(cols[0] - arr.shape[1] + 1, cols[-1] + 1), 0, W - 1))
        h, w = min(arr.shape[0], H - y), min(arr.shape[1], W - x)
        hidden = (target_mask[y:y + h, x:x + w] & occ_mask[:h, :w]).sum() / area
        if best is None or abs(hidden - fraction) < best[0]:
            best = (abs(hidden - fraction), y, x)
    return arr, best[1], best[2]


def _scene(photos, size, target, clutter_cut, rng, p):
    """One scene: background, clutter, the target (optional), an occluder."""
    canvas = _background(photos, size, rng)
    short = min(size)
    for _ in range(p["n_clutter"]):
        side = int(short * rng.uniform(*p["scale"]))
        _paste(canvas, _transformed(clutter_cut[int(rng.integers(len(clutter_cut)))], side,
                                    rng.uniform(0, 360)), rng)
    if target is None:
        return canvas, None, None
    side = int(short * rng.uniform(*p["scale"]))
    angle = rng.uniform(-p["max_rotation"], p["max_rotation"])
    mask = _paste(canvas, _transformed(target, side, angle), rng)
    full = int(mask.sum())
    fraction = rng.uniform(*p["occlusion"])
    if fraction > 0:
        arr, y, x = _occluder(mask, side, photos, clutter_cut, rng, fraction)
        mask &= ~_paste_at(canvas, arr, y, x)
    box = (0, 0, 0, 0) if not mask.any() else (
        int(np.flatnonzero(mask.any(1))[0]), int(np.flatnonzero(mask.any(0))[0]),
        int(np.flatnonzero(mask.any(1))[-1]) + 1, int(np.flatnonzero(mask.any(0))[-1]) + 1)
    info = dict(side=side, angle=float(angle), occlusion=1.0 - mask.sum() / max(full, 1),
                box=box, area=int(mask.sum()))
    return canvas, mask, info


def _check_range(name, value, lo, hi):
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high), got {value!r}") from None
    if not lo <= a <= b <= hi:
        raise ValueError(f"{name} must satisfy {lo} <= low <= high <= {hi}, got {value!r}")
    return a, b


def _check_params(n_objects, n_scenes_per_object, n_distractors, image_size, scale,
                  max_rotation, occlusion, n_clutter, query):
    for name, v, lo in (("n_objects", n_objects, 1),
                        ("n_scenes_per_object", n_scenes_per_object, 1),
                        ("n_distractors", n_distractors, 0), ("n_clutter", n_clutter, 0)):
        if not isinstance(v, Integral) or isinstance(v, bool) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    size = (image_size, image_size) if isinstance(image_size, Integral) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, Integral) and s >= 64 for s in size):
        raise ValueError(f"image_size must be an int or an (height, width) pair of ints "
                         f">= 64, got {image_size!r}")
    if not isinstance(max_rotation, Real) or not 0 <= max_rotation <= 180:
        raise ValueError(f"max_rotation must be a number of degrees in [0, 180], "
                         f"got {max_rotation!r}")
    if query not in ("clean", "cluttered"):
        raise ValueError(f"query must be 'clean' or 'cluttered', got {query!r}")
    return dict(image_size=(int(size[0]), int(size[1])), scale=_check_range("scale", scale, 0.05, 1.0),
                occlusion=_check_range("occlusion", occlusion, 0.0, 0.9),
                max_rotation=float(max_rotation), n_clutter=int(n_clutter))


def make_cluttered_objects(coil_root, *, n_objects=20, n_scenes_per_object=3,
                           n_distractors=20, image_size=(384, 384), scale=(0.25, 0.5),
                           max_rotation=45.0, occlusion=(0.0, 0.4), n_clutter=2,
                           query="clean", background_folders=(), threshold=30,
                           return_masks=False, as_arrays=False, random_state=None):
    """Generate a cluttered instance-retrieval benchmark from COIL-100 objects.

    Each of ``n_objects`` COIL-100 objects, drawn at random, gets one query
    and ``n_scenes_per_object`` scenes.  A scene is a random crop of a real
    photograph (resized to ``image_size``, flipped at random) with
    ``n_clutter`` clutter objects, then the query object, segmented from its
    black background (:func:`segment_object`) and pasted in a random view
    (not the query's), with its longest side a fraction ``scale`` of the
    scene's shorter side, rotated in-plane by at most ``max_rotation``
    degrees, at a random position, then partly hidden by an occluder
    (another object or a patch of another photo) placed to hide a fraction
    drawn from ``occlusion`` of its area (the nearest of 24 random
    placements).  ``n_distractors`` scenes hold clutter only.  Clutter and
    occluder objects come from the COIL objects that are not query objects.

    Parameters
    ----------
    coil_root : str or os.PathLike
        Folder with the COIL-100 PNGs ``obj<ID>__<deg>.png`` (128 x 128).
    n_objects : int, default=20
        Query objects (at most the COIL objects minus one, kept for clutter).
    n_scenes_per_object : int, default=3
        Database scenes per query object (at most its views minus one).
    n_distractors : int, default=20
        Scenes without any query object.
    image_size : int or (int, int), default=(384, 384)
        Scene height and width (>= 64).
    scale : (float, float), default=(0.25, 0.5)
        Range of the pasted objects' longest side, as a fraction of the
        scene's shorter side.
    max_rotation : float, default=45.0
        In-plane rotation of the query object, uniform in
        ``[-max_rotation, max_rotation]`` degrees (clutter: any angle).
    occlusion : (float, float), default=(0.0, 0.4)
        Range of the fraction of the query object's area the occluder aims
        to hide (``(0, 0)``: no occluder).
    n_clutter : int, default=2
        Non-query objects pasted in every scene.
    query : {"clean", "cluttered"}, default="clean"
        A query is the object's COIL view on black (128 x 128), or that view
        pasted in a scene of its own (same rules, other background).
    background_folders : sequence of path, default=()
        Folders of further photos for the backgrounds (e.g. the Holidays or
        UKBench samples), added to the 9 photos of scikit-image/scikit-learn.
    threshold : int, default=30
        Segmentation threshold of :func:`segment_object`.
    return_masks : bool, default=False
        Add ``info["masks"]``: per database image, the bool mask of the
        query object's visible pixels (None for distractors).
    as_arrays : bool, default=False
        Return ``(images, labels, queries, query_labels)`` instead.
    random_state : int, RandomState or None, default=None
        Seed: the same seed gives the same benchmark, pixel for pixel.

    Returns
    -------
    benchmark : RetrievalBenchmark
        ``images`` and ``queries`` are ``(H, W, 3)`` uint8 arrays; ``labels``
        the object id of every database image (``-1`` for distractors);
        positives of a query = the scenes of its object; ``info["scenes"]``
        per database image the object, view, pasted side, angle, hidden
        fraction, visible box ``(y0, x0, y1, x1)`` and visible area.
    (images, labels, queries, query_labels) : tuple
        When ``as_arrays=True``.

    Examples
    --------
    >>> from skretrieval.datasets import make_cluttered_objects
    >>> bench = make_cluttered_objects("coil-100", n_objects=2,
    ...                                n_distractors=1, random_state=0)  # doctest: +SKIP
    >>> bench.n_images, bench.n_queries, bench.images[0].shape  # doctest: +SKIP
    (7, 2, (384, 384, 3))
    """
    p = _check_params(n_objects, n_scenes_per_object, n_distractors, image_size, scale,
                      max_rotation, occlusion, n_clutter, query)
    views = _coil_index(coil_root)
    ids = np.array(list(views))
    if n_objects >= len(ids):
        raise ValueError(f"n_objects must be below the {len(ids)} COIL objects found (at "
                         f"least one is kept for clutter), got {n_objects}")
    if n_scenes_per_object >= min(len(v) for v in views.values()):
        raise ValueError(f"n_scenes_per_object must be below the views per object "
                         f"({min(len(v) for v in views.values())}), got {n_scenes_per_object}")
    rng = np.random.RandomState(random_state) if not isinstance(
        random_state, np.random.RandomState) else random_state
    rng = np.random.default_rng(rng.randint(2**31))
    photos = _backgrounds(background_folders)
    chosen = np.sort(rng.choice(ids, n_objects, replace=False))
    others = [k for k in ids if k not in set(chosen.tolist())]
    clutter_cut = [_cutout(views[k][int(rng.integers(len(views[k])))], threshold)
                   for k in rng.choice(others, min(len(others), 12), replace=False)]
    return _assemble(views, chosen, photos, clutter_cut, rng, p, n_scenes_per_object,
                     n_distractors, query, threshold, return_masks, as_arrays, coil_root)


def _assemble(views, chosen, photos, clutter_cut, rng, p, n_scenes, n_distractors, query,
              threshold, return_masks, as_arrays, root):
    size = p["image_size"]
    images, labels, masks, scenes, queries = [], [], [], [], []
    for k in chosen:
        picked = rng.choice(len(views[k]), n_scenes + 1, replace=False)
        q_path = views[k][picked[0]]
        if query == "clean":
            with Image.open(q_path) as im:
                queries.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
        else:
            q_params = dict(p, occlusion=(0.0, 0.0))
            queries.append(_scene(photos, size, _cutout(q_path, threshold), clutter_cut,
                                  rng, q_params)[0])
        for v in picked[1:]:
            canvas, mask, info = _scene(photos, size, _cutout(views[k][v], threshold),
                                        clutter_cut, rng, p)
            images.append(canvas)
            labels.append(int(k))
            masks.append(mask)
            scenes.append(dict(info, object=int(k), view=os.path.basename(views[k][v])))
    for _ in range(n_distractors):
        images.append(_scene(photos, size, None, clutter_cut, rng, p)[0])
        labels.append(-1)
        masks.append(None)
        scenes.append(dict(object=-1))
    order = rng.permutation(len(images))  # scenes and distractors mixed
    images = [images[i] for i in order]
    labels = np.array(labels, dtype=np.int64)[order]
    query_labels = chosen.astype(np.int64)
    if as_arrays:
        return images, labels, queries, query_labels
    positives = [np.flatnonzero(labels == k) for k in query_labels]
    info = dict(scenes=[scenes[i] for i in order], params=dict(p, query=query))
    if return_masks:
        info["masks"] = [masks[i] for i in order]
    names = [f"scene{i:05d}" for i in range(len(images))]
    return RetrievalBenchmark(
        name="cluttered-coil100", root=str(root), images=images, image_names=names,
        queries=queries, query_names=[f"query_obj{k}" for k in query_labels],
        ground_truth={"default": GroundTruth(positives, [np.zeros(0, np.int64)] * len(positives))},
        labels=labels, query_labels=query_labels, info=info)
