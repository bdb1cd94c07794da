"""A small offline demo collection and a figure of retrieval results.

:func:`load_demo_dataset` builds an instance-retrieval toy collection from
photographs that ship inside installed packages (scikit-learn's sample images
and scikit-image's data files; nothing is downloaded): every scene gives its
original photograph plus five generated views of it (two crops, a half-size
mirrored copy, a rotation and a lighting change), and the label of an image
is its scene.  :func:`plot_rankings` draws queries and their top results with
green / red frames for relevant / non-relevant results, in the style of
Fig. 1 of Babenko et al., "Neural codes for image retrieval" (ECCV 2014).
:func:`run_demo` is what ``skretrieval demo`` runs.
"""

from __future__ import annotations

import math
import os
import sys
import time

import numpy as np
from PIL import Image

__all__ = ["load_demo_dataset", "plot_rankings", "run_demo"]

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

VIEWS = ("original", "crop1", "crop2", "half-mirrored", "rotated", "relit")
"""Names of the six views of every scene, in the order of the collection."""

_INSTALL_HINT = "pip install skretrieval[demo]"


def _load_scene(source, filename):
    if source == "sklearn":
        from sklearn.datasets import load_sample_image

        return np.asarray(load_sample_image(filename), dtype=np.uint8)
    try:
        import skimage.data
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the demo data set uses photographs shipped with scikit-image, "
            f"which is not installed; install it with `{_INSTALL_HINT}`"
        ) from exc
    # Read the file of the package directly: no fetcher, hence no download.
    path = os.path.join(os.path.dirname(skimage.data.__file__), filename)
    if not os.path.isfile(path):  # pragma: no cover - depends on the environment
        raise FileNotFoundError(
            f"scikit-image's data file {filename!r} is missing from {path!r}; "
            "reinstall scikit-image"
        )
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _resize_longest(img, longest):
    h, w = img.shape[:2]
    s = longest / max(h, w)
    size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
    if size == (w, h):
        return np.ascontiguousarray(img)
    return np.asarray(Image.fromarray(img).resize(size, Image.LANCZOS))


def _crop(img, area, fx, fy):
    """Crop ``area`` of the image, same aspect, at relative position (fx, fy)."""
    h, w = img.shape[:2]
    s = math.sqrt(area)
    ch, cw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    y0 = int(round(fy * (h - ch)))
    x0 = int(round(fx * (w - cw)))
    return np.ascontiguousarray(img[y0:y0 + ch, x0:x0 + cw])


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


def _relight(img, gamma, contrast, brightness, tint):
    x = (img.astype(np.float64) / 255.0) ** gamma
    x = (x - 0.5) * contrast + 0.5 + brightness
    x = x * tint[np.newaxis, np.newaxis, :]
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def _views(img, rng):
    """The six views of one scene (see ``VIEWS``)."""
    h, w = img.shape[:2]
    # two crops of 60-80 % of the area, one towards the top left corner and
    # one towards the bottom right corner
    crop1 = _crop(img, rng.uniform(0.6, 0.8), rng.uniform(0.0, 0.3), rng.uniform(0.0, 0.3))
    crop2 = _crop(img, rng.uniform(0.6, 0.8), rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0))
    half = np.asarray(
        Image.fromarray(img[:, ::-1]).resize(
            (max(1, w // 2), max(1, h // 2)), Image.LANCZOS
        )
    )
    angle = rng.uniform(15.0, 25.0) * rng.choice([-1.0, 1.0])
    rotated = _rotate(img, angle)
    if rng.random() < 0.5:  # darker and flatter, or brighter and harsher
        gamma, contrast, brightness = rng.uniform(1.5, 2.0), rng.uniform(0.6, 0.8), -0.05
    else:
        gamma, contrast, brightness = rng.uniform(0.5, 0.7), rng.uniform(1.1, 1.3), 0.05
    tint = rng.uniform(0.85, 1.15, size=3)
    relit = _relight(img, gamma, contrast, brightness, tint)
    return [np.ascontiguousarray(img), crop1, crop2, half, rotated, relit]


def load_demo_dataset(max_side=320, random_state=0):
    """Load the offline demo collection: 8 scenes, 6 views of each.

    The scenes are colour photographs that are files inside installed
    packages, so nothing is downloaded: scikit-learn's sample images
    ``china.jpg`` and ``flower.jpg``, and scikit-image's ``astronaut``,
    ``chelsea``, ``coffee``, ``rocket``, ``motorcycle_left`` and
    ``hubble_deep_field``.  Each photograph is downscaled so that its longest
    side is ``max_side`` pixels and gives six images (see ``VIEWS``):

    0. ``original``: the photograph itself;
    1. ``crop1``: a crop of 60-80 % of its area towards the top left;
    2. ``crop2``: a crop of 60-80 % of its area towards the bottom right;
    3. ``half-mirrored``: a horizontally flipped copy at half the size;
    4. ``rotated``: a rotation by 15-25 degrees either way, the empty
       corners cut away;
    5. ``relit``: a lighting change (gamma, contrast, brightness and a
       colour tint).

    Parameters
    ----------
    max_side : int, default=320
        Longest side of the originals, in pixels (at least 16).
    random_state : int, numpy.random.Generator or None, default=0
        Seed of the crop positions, angles and lighting changes; the same
        seed gives the same images.

    Returns
    -------
    images : list of ndarray of shape (H, W, 3), dtype uint8
        The 48 images, scene by scene (the six views of scene 0 first).
    labels : ndarray of shape (48,), dtype int64
        The scene index of every image: images are relevant to each other
        when they have the same label.
    names : list of str
        ``"<scene>/<view>"`` for every image, e.g. ``"china/crop1"``.

    Raises
    ------
    ImportError
        If scikit-image is not installed (``pip install skretrieval[demo]``).
    """
    max_side = int(max_side)
    if max_side < 16:
        raise ValueError(f"max_side must be at least 16 pixels, got {max_side}")
    rng = np.random.default_rng(random_state)
    images, labels, names = [], [], []
    for label, (scene, source, filename) in enumerate(_SCENES):
        img = _resize_longest(_load_scene(source, filename), max_side)
        for view, arr in zip(VIEWS, _views(img, rng)):
            images.append(arr)
            labels.append(label)
            names.append(f"{scene}/{view}")
    return images, np.asarray(labels, dtype=np.int64), names


# ---------------------------------------------------------------------------
# figure
# ---------------------------------------------------------------------------
def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(
            "plotting the demo figure needs matplotlib, which is not installed; "
            f"install it with `{_INSTALL_HINT}`"
        ) from exc
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _default_queries(labels, n_queries):
    """One query per scene where possible, cycling through the views."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    picks = []
    for j in range(n_queries):
        members = np.flatnonzero(labels == classes[(j * len(classes)) // n_queries])
        picks.append(members[j % len(members)])
    return np.asarray(picks)


def _frame(ax, colour, width=4):
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)


def plot_rankings(images, labels, rankings, *, n_queries=6, k=5, path=None,
                  similarities=None, queries=None, names=None, title=None):
    """Draw queries and their top-``k`` results, framed by relevance.

    Every row shows a query (blue frame) followed by its ``k`` first results;
    a result is framed green when it has the query's label (relevant) and red
    otherwise, as in Fig. 1 of Babenko et al. (2014).  The titles give the
    rank of each result, its similarity when ``similarities`` is given, and
    the image names when ``names`` is given.

    Parameters
    ----------
    images : list of ndarray of shape (H, W, 3), dtype uint8
        The collection (queries and database).
    labels : array-like of shape (n_images,)
        Label of every image; equal labels mean relevant.
    rankings : array-like of int of shape (n_images, >= k)
        ``rankings[q]`` is the ranking of the collection for image ``q`` as
        the query, best first (e.g. the leave-one-out ``ind`` of
        ``NearestNeighborRetriever.kneighbors()``).
    n_queries : int, default=6
        Number of rows, when ``queries`` is None.
    k : int, default=5
        Number of results shown per query.
    path : str or os.PathLike, default=None
        If given, the figure is saved there as a PNG.
    similarities : array-like of shape (n_images, >= k), default=None
        Similarity of every ranked item (e.g. ``1 - distance``), shown in the
        titles.
    queries : sequence of int, default=None
        Indices of the query images to show (rows of ``rankings``); None picks
        ``n_queries`` of them, from different labels where possible.
    names : list of str, default=None
        Names of the images, shown under the query and result titles.
    title : str, default=None
        Title of the whole figure.

    Returns
    -------
    fig : matplotlib.figure.Figure
        The figure (drawn with the non-interactive Agg backend).

    Raises
    ------
    ImportError
        If matplotlib is not installed (``pip install skretrieval[demo]``).
    """
    plt = _pyplot()
    labels = np.asarray(labels)
    rankings = np.asarray(rankings)
    if rankings.ndim != 2 or rankings.shape[0] != len(images):
        raise ValueError(
            "rankings must have one row per image, shape (n_images, >= k); got "
            f"shape {rankings.shape} for {len(images)} images"
        )
    if labels.shape[0] != len(images):
        raise ValueError(f"{labels.shape[0]} labels for {len(images)} images")
    k = min(int(k), rankings.shape[1])
    if k < 1:
        raise ValueError("k must be at least 1 and rankings must not be empty")
    if similarities is not None:
        similarities = np.asarray(similarities, dtype=float)
        if similarities.shape[0] != rankings.shape[0] or similarities.shape[1] < k:
            raise ValueError(
                f"similarities of shape {similarities.shape} do not match the "
                f"rankings of shape {rankings.shape}"
            )
    if queries is None:
        queries = _default_queries(labels, int(n_queries))
    queries = [int(q) for q in queries]
    if not queries:
        raise ValueError("no query to plot (n_queries must be at least 1)")

    n_rows, n_cols = len(queries), k + 1
    text_lines = 2 if names is not None else 1
    row_height = 1.45 + 0.16 * text_lines  # inches: an image of 3:2, its title, a gap
    top_margin = 0.12 + 0.16 * text_lines + (0.35 if title else 0.0)
    fig_height = row_height * n_rows + top_margin
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.1 * n_cols, fig_height),
                             squeeze=False)
    fig.subplots_adjust(left=0.015, right=0.985, bottom=0.06 / fig_height,
                        top=1 - top_margin / fig_height,
                        wspace=0.06, hspace=0.16 * text_lines / 1.45 + 0.08)
    for row, q in enumerate(queries):
        ax = axes[row, 0]
        ax.imshow(images[q])
        _frame(ax, "tab:blue", 5)
        head = "query"
        if names is not None:
            head += f"\n{names[q]}"
        ax.set_title(head, fontsize=9, fontweight="bold", color="tab:blue")
        for r in range(k):
            idx = int(rankings[q, r])
            ax = axes[row, r + 1]
            ax.imshow(images[idx])
            relevant = labels[idx] == labels[q]
            colour = "tab:green" if relevant else "tab:red"
            _frame(ax, colour, 4)
            head = f"#{r + 1}"
            if similarities is not None:
                head += f"  sim {similarities[q, r]:.3f}"
            if names is not None:
                head += f"\n{names[idx]}"
            ax.set_title(head, fontsize=8, color="black" if relevant else "tab:red")
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.08 / fig_height, va="top")
    if path is not None:
        fig.savefig(os.fspath(path), format="png", dpi=100)
    return fig


# ---------------------------------------------------------------------------
# the demo
# ---------------------------------------------------------------------------
_POOLERS = ("SPoC", "MAC", "GeM", "R-MAC", "CroW")


def _make_pooler(name):
    from ._pooling import CroWPooler, GeMPooler, MACPooler, RMACPooler, SPoCPooler

    return {
        "SPoC": SPoCPooler, "MAC": MACPooler, "GeM": GeMPooler,
        "R-MAC": RMACPooler, "CroW": CroWPooler,
    }[name]()


def _leave_one_out(X, labels):
    """Leave-one-out (mAP, rankings, similarities) of descriptors X."""
    from ._retriever import NearestNeighborRetriever
    from .metrics import mean_average_precision

    retriever = NearestNeighborRetriever(metric="cosine").fit(X, labels)
    dist, ind = retriever.kneighbors(None, n_neighbors="all")
    positives = [np.flatnonzero((labels == labels[i]) & (np.arange(len(labels)) != i))
                 for i in range(len(labels))]
    return mean_average_precision(ind, positives), ind, 1.0 - dist


def run_demo(*, out="skretrieval-demo.png", max_size=256, device="auto", figure=True,
             file=None):
    """Run ``skretrieval demo``: compare the poolers on the demo collection.

    Extracts the MobileNetV2 (ImageNet weights) feature maps of the demo
    collection once, pools them with every pooler, raw and PCA-whitened,
    prints the leave-one-out mAP of each and draws the GeM rankings.

    Returns
    -------
    results : dict
        ``{"map": {(pooler, "raw" | "pca"): mAP}, "figure": path or None,
        "seconds": wall time, ...}``.
    """
    from ._extractor import ConvFeatureExtractor
    from ._whitening import PCAWhitener

    file = sys.stdout if file is None else file

    def say(*args):
        print(*args, file=file, flush=True)

    t0 = time.perf_counter()
    images, labels, names = load_demo_dataset()
    n = len(images)
    n_scenes = len(np.unique(labels))
    extractor = ConvFeatureExtractor(
        "mobilenet_v2", weights="IMAGENET1K_V1", max_size=max_size, device=device
    ).fit()
    t1 = time.perf_counter()
    maps = extractor.transform(images)
    t_maps = time.perf_counter() - t1
    n_components = min(32, n - 1)

    say(f"skretrieval demo: {n} images = {n_scenes} scenes x {n // n_scenes} views "
        f"({', '.join(VIEWS)})")
    say(f"network: mobilenet_v2 (IMAGENET1K_V1 weights), layer {extractor.layer_name_}, "
        f"{extractor.n_channels_} channels, longest side {max_size} px, "
        f"device {extractor.device_}")
    say(f"feature maps extracted once in {t_maps:.1f} s and shared by all the poolers")
    say()
    say(f"leave-one-out mAP: each image queries the {n - 1} others "
        f"({n // n_scenes - 1} relevant each)")
    say(f"{'pooler':<8} {'dim':>5}  {'raw':>6}  {'PCA-whitened':>12}")
    scores, gem = {}, None
    for name in _POOLERS:
        X = _make_pooler(name).fit_transform(maps)
        raw, ind, sim = _leave_one_out(X, labels)
        Xw = PCAWhitener(n_components=n_components).fit_transform(X)
        pca, _, _ = _leave_one_out(Xw, labels)
        scores[(name, "raw")], scores[(name, "pca")] = raw, pca
        if name == "GeM":
            gem = (ind, sim)
        say(f"{name:<8} {X.shape[1]:>5}  {raw:>6.3f}  {pca:>12.3f}")
    say(f"(PCA-whitened: {n_components} dimensions)")
    say()
    say(f"note: this is a demo. The PCA whitening is learned on the same {n} images "
        f"it is evaluated on: {n} descriptors are far too few to estimate "
        f"{n_components} whitened directions, so it mostly amplifies noise here. The "
        "benchmarks learn the whitening on thousands of images of another "
        "collection (e.g. Paris6k for Oxford5k).")
    path = None
    if figure:
        path = os.fspath(out)
        fig = plot_rankings(
            images, labels, gem[0], similarities=gem[1], names=names, k=5, path=path,
            title=f"GeM pooling of MobileNetV2 maps: leave-one-out top 5 "
                  f"(mAP {scores[('GeM', 'raw')]:.3f})",
        )
        import matplotlib.pyplot as plt

        plt.close(fig)
        say(f"figure: {path} (GeM, raw: 6 queries and their top 5; green = same scene, "
            "red = other scene)")
    seconds = time.perf_counter() - t0
    say(f"wall time: {seconds:.1f} s")
    return {"map": scores, "figure": path, "seconds": seconds, "n_images": n,
            "extract_seconds": t_maps}
