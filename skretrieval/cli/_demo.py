"""What ``skretrieval demo`` runs (:func:`run_demo`): every pooler on the demo collection."""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from ..datasets import load_demo_dataset
from ..datasets._demo import N_DISTRACTOR_VIEWS, VIEWS
from ..display import plot_rankings
from ..pooling._registry import POOLERS
from ..utils import similarities_from_distances
from ._common import CLIError, check_device

__all__ = ["cmd_demo", "run_demo"]


# ---------------------------------------------------------------------------
# the demo
# ---------------------------------------------------------------------------
# Whitening learned on the other group (about 64 images): far fewer
# descriptors than dimensions, hence few components and a shrunk whitening
# (Jégou & Chum, ECCV 2012: whitening estimated on little data over-amplifies
# the weak, noisy components; a power of 0.5 is the usual remedy).
_WHITEN_COMPONENTS = 32
_WHITEN_POWER = 0.5


def _search_group(X, labels, whitener=None):
    """Leave-one-out search of one group: (per-query AP, rankings, similarities).

    Every image of the group is searched against the others (rankings and
    similarities for all of them); the AP is computed for the scene images
    only (``labels >= 0``, nan for the distractors), the relevant images
    being the other images of the same scene.  A ``whitener`` fitted on
    other images is applied as a frozen first step of the pipeline.
    """
    from sklearn.frozen import FrozenEstimator
    from sklearn.pipeline import make_pipeline

    from ..neighbors._retriever import NearestNeighborRetriever
    from ..metrics._ranking import mean_average_precision

    steps = [] if whitener is None else [FrozenEstimator(whitener)]
    pipe = make_pipeline(*steps, NearestNeighborRetriever(metric="cosine"))
    pipe.fit(X, labels)  # FrozenEstimator: the whitening stays as learned
    dist, ind = pipe[-1].kneighbors(None, n_neighbors="all")
    queries = np.flatnonzero(labels >= 0)
    positives = [np.flatnonzero((labels == labels[q]) & (np.arange(len(labels)) != q))
                 for q in queries]
    ap = np.full(len(labels), np.nan)
    _, ap[queries] = mean_average_precision(ind[queries], positives, return_ap=True)
    return ap, ind, similarities_from_distances(dist, "cosine")


def _evaluate(X, labels, groups, n_components, whiten_power):
    """Raw and whitened per-image AP of descriptors X, group by group.

    Each group is searched on its own; its whitening is learned on the
    descriptors of the *other* group only.  Returns the AP arrays and the raw
    rankings / similarities (as indices of the whole collection, truncated to
    the length of the shortest group ranking).
    """
    from ..pooling._whitening import PCAWhitener

    n = len(labels)
    ap_raw, ap_white = np.full(n, np.nan), np.full(n, np.nan)
    k = min(int(np.sum(groups == g)) for g in np.unique(groups)) - 1
    rankings, sims = np.zeros((n, k), dtype=np.int64), np.zeros((n, k))
    for g in np.unique(groups):
        test, train = np.flatnonzero(groups == g), np.flatnonzero(groups != g)
        ap, ind, sim = _search_group(X[test], labels[test])
        ap_raw[test] = ap
        rankings[test], sims[test] = test[ind[:, :k]], sim[:, :k]
        whitener = PCAWhitener(n_components=n_components, whiten_power=whiten_power,
                               random_state=0).fit(X[train])
        ap_white[test], _, _ = _search_group(X[test], labels[test], whitener)
    return ap_raw, ap_white, rankings, sims


def _median_queries(labels, names, ap):
    """For every view of ``VIEWS``, the query of that view with the median AP
    over the scenes (the lower one of the two middle ones; ties broken by the
    index): a typical query of every view, neither picked for success nor for
    failure."""
    view_of = np.array([name.split("/")[1] for name in names])
    picks = []
    for view in VIEWS:
        members = np.flatnonzero((labels >= 0) & (view_of == view))
        if members.size:
            order = members[np.argsort(ap[members], kind="stable")]
            picks.append(int(order[(len(order) - 1) // 2]))
    return picks


def _one_or_two(pair):
    return f"{pair[0]}" if pair[0] == pair[1] else f"{pair[1]} / {pair[0]}"


def cmd_demo(args):
    """Run ``skretrieval demo``, after checking the device and the figure's needs."""
    check_device(args.device)
    if not args.no_figure:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CLIError(
                "the demo figure needs matplotlib: pip install skretrieval[demo] "
                "(or pass --no-figure)"
            ) from None
        out_dir = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(out_dir):
            raise CLIError(f"cannot write {args.out!r}: folder {out_dir!r} does not exist")
    run_demo(out=args.out, max_size=args.max_size, device=args.device,
             figure=not args.no_figure)
    return 0


def run_demo(*, out="skretrieval-demo.png", max_size=256, device="auto", figure=True,
             file=None):
    """Run ``skretrieval demo``: compare the poolers on the demo collection.

    Extracts the MobileNetV2 (ImageNet weights) feature maps of the demo
    collection (scenes and distractors, see :func:`load_demo_dataset`) once,
    pools them with every pooler, and prints the mAP of each, raw and
    PCA-whitened, with the time each pooler took.  The collection is
    searched in its two groups of photographs, each on its own: every scene
    image queries the other images of its group (the rest of its scene are
    relevant, the other scenes and the distractors are not), and the
    whitening of a group is learned on the *other* group, as the literature
    learns it on another collection (Paris6k for Oxford5k).  The mAP is the
    mean AP over all the scene images of both groups; it is also given for
    the queries of every view.  The figure shows the raw GeM results of a
    typical query of every view: the one of median AP over the scenes.

    Returns
    -------
    results : dict
        ``{"map": {(pooler, "raw" | "pca"): mAP}, "map_by_view": {pooler:
        {view: raw mAP of the queries of that view}}, "figure": path or None,
        "seconds": wall time, "pooler_seconds": {pooler: s}, "n_images",
        "n_queries", "n_distractors", "extract_seconds", "n_components",
        "whiten_power"}``.
    """
    from ..extraction._extractor import ConvFeatureExtractor

    file = sys.stdout if file is None else file

    def say(*args):
        print(*args, file=file, flush=True)

    t0 = time.perf_counter()
    images, labels, names, groups = load_demo_dataset(return_groups=True)
    extractor = ConvFeatureExtractor(
        "mobilenet_v2", weights="IMAGENET1K_V1", max_size=max_size, device=device
    ).fit()
    t1 = time.perf_counter()
    maps = extractor.transform(images)
    t_maps = time.perf_counter() - t1
    group_sizes = [int(np.sum(groups == g)) for g in (0, 1)]
    n_components = min(_WHITEN_COMPONENTS, min(group_sizes) - 1)
    counts = _collection_counts(labels, names)
    _print_setup(say, counts, extractor, max_size, t_maps, group_sizes, n_components)
    scores, seconds_by_pooler, ap_by_pooler, gem = _compare_poolers(
        say, maps, labels, groups, n_components)
    by_view = _map_by_view(say, ap_by_pooler, labels, names, counts["n_scenes"])
    photos = [len({names[i].split("/")[0] for i in np.flatnonzero(groups == g)})
              for g in (0, 1)]
    say("note: the whitening of each group is learned on the other group: "
        f"{_one_or_two(group_sizes)} images of {_one_or_two(photos)} photos unrelated to "
        "the searched ones, too few and too different to help here. The literature "
        "learns it on thousands of images of a similar collection (e.g. Paris6k for "
        "Oxford5k), where it usually helps; see benchmarks/report.py and docs/benchmarks.md.")
    path = None
    if figure:
        path = _draw_figure(say, os.fspath(out), images, labels, names, gem,
                            scores[("GeM", "raw")])
    seconds = time.perf_counter() - t0
    say(f"wall time: {seconds:.1f} s")
    return {"map": scores, "map_by_view": by_view, "figure": path, "seconds": seconds,
            "pooler_seconds": seconds_by_pooler, "n_images": counts["n"],
            "n_queries": counts["n_queries"], "n_distractors": counts["n_distractors"],
            "extract_seconds": t_maps, "n_components": n_components,
            "whiten_power": _WHITEN_POWER}


def _collection_counts(labels, names):
    """Images, scene images (the queries), scenes, distractors, distractor photos."""
    n = len(labels)
    is_scene = labels >= 0
    n_queries = int(is_scene.sum())
    return {"n": n, "n_queries": n_queries, "n_scenes": len(np.unique(labels[is_scene])),
            "n_distractors": n - n_queries,
            "n_photos": len({name.split("/")[0] for name in names[n_queries:]})}


def _print_setup(say, counts, extractor, max_size, t_maps, group_sizes, n_components):
    """The collection, the network, the protocol and the whitening of the demo."""
    n, n_queries, n_scenes = counts["n"], counts["n_queries"], counts["n_scenes"]
    n_distractors, n_photos = counts["n_distractors"], counts["n_photos"]
    say(f"skretrieval demo: {n} images, all generated from photographs shipped with "
        "scikit-learn and scikit-image (nothing downloaded)")
    say(f"  scenes: {n_queries} images = {n_scenes} photos x {n_queries // n_scenes} "
        f"({', '.join(VIEWS)})")
    say(f"  distractors: {n_distractors} images = {n_photos} other photos of "
        f"scikit-image x {n_distractors // max(n_photos, 1)} (original + "
        f"{N_DISTRACTOR_VIEWS} random views); relevant to no query, never queries")
    say(f"network: mobilenet_v2 (IMAGENET1K_V1 weights), layer {extractor.layer_name_}, "
        f"{extractor.n_channels_} channels, longest side {max_size} px, "
        f"device {extractor.device_}")
    say(f"feature maps extracted once in {t_maps:.1f} s and shared by all the poolers")
    say()
    say(f"protocol: the photos are split in two disjoint groups ({group_sizes[0]} and "
        f"{group_sizes[1]} images; even / odd scenes and distractors). Each group is "
        "searched on its own: every scene image queries the rest of its group, the "
        f"other {n_queries // n_scenes - 1} images of its scene are relevant. mAP over "
        f"all {n_queries} queries.")
    say(f"whitening: PCAWhitener(n_components={n_components}, "
        f"whiten_power={_WHITEN_POWER}) learned on the OTHER group's descriptors "
        "(no image, scene or distractor of the searched group), frozen in the "
        "pipeline with sklearn.frozen.FrozenEstimator")
    say()


def _compare_poolers(say, maps, labels, groups, n_components):
    """Every pooler of the registry on the maps: its mAP raw and whitened, timed.

    Returns ``scores`` (``{(display name, "raw" | "pca"): mAP}``), the seconds
    and the raw per-image AP of each pooler, and GeM's ``(ap, rankings,
    similarities)`` for the figure.
    """
    say(f"{'pooler':<8} {'dim':>5}  {'raw mAP':>7}  {'whitened':>8}  {'time':>6}")
    scores, seconds_by_pooler, ap_by_pooler, gem = {}, {}, {}, None
    for spec in POOLERS.values():
        name = spec.display_name
        tp = time.perf_counter()
        X = spec.estimator().fit_transform(maps)
        ap_raw, ap_white, rankings, sims = _evaluate(X, labels, groups, n_components,
                                                    _WHITEN_POWER)
        raw, white = float(np.nanmean(ap_raw)), float(np.nanmean(ap_white))
        scores[(name, "raw")], scores[(name, "pca")] = raw, white
        seconds_by_pooler[name] = time.perf_counter() - tp
        ap_by_pooler[name] = ap_raw
        if name == "GeM":
            gem = (ap_raw, rankings, sims)
        say(f"{name:<8} {X.shape[1]:>5}  {raw:>7.3f}  {white:>8.3f}  "
            f"{seconds_by_pooler[name]:>5.1f}s")
    say(f"(whitened: {n_components} dimensions; time: pooling, whitening and search "
        "of both groups)")
    say()
    return scores, seconds_by_pooler, ap_by_pooler, gem


def _map_by_view(say, ap_by_pooler, labels, names, n_scenes):
    """Print and return the raw mAP of each pooler for the queries of each view."""
    is_scene = labels >= 0
    view_of = np.array([name.split("/")[1] for name in names])
    by_view = {
        name: {view: float(np.nanmean(ap[is_scene & (view_of == view)])) for view in VIEWS}
        for name, ap in ap_by_pooler.items()
    }
    say(f"raw mAP by query view ({n_scenes} queries each):")
    say(f"{'pooler':<8}" + "".join(f" {view:>{max(len(view), 4)}}" for view in VIEWS))
    for name, values in by_view.items():
        say(f"{name:<8}" + "".join(f" {values[view]:>{max(len(view), 4)}.2f}"
                                   for view in VIEWS))
    say()
    return by_view


def _draw_figure(say, path, images, labels, names, gem, gem_map):
    """The figure: GeM's top 5 of the median query of every view, saved to ``path``."""
    queries = _median_queries(labels, names, gem[0])
    fig = plot_rankings(
        images, labels, gem[1], similarities=gem[2], names=names, k=5, path=path,
        queries=queries,
        title="GeM pooling of MobileNetV2 maps, raw: the median query of every view "
              f"and its top 5 (mAP {gem_map:.3f})",
    )
    import matplotlib.pyplot as plt  # after plot_rankings chose the Agg backend

    plt.close(fig)
    say(f"figure: {path} (GeM, raw: for each of the {len(queries)} views, the query "
        "of median AP over the scenes, and its top 5 in its group; green = same "
        "scene, red = other scene or distractor)")
    return path
