"""``skretrieval evaluate``: a pipeline on a standard benchmark, with its protocol."""

from __future__ import annotations

import json
import os
import time

from ._common import PROG, CLIError, check_device, info, show_progress, warn

__all__ = ["cmd_evaluate"]


def _load_benchmark(name, root, args, role):
    """The benchmark ``name`` in ``root``: the evaluated one or the whitening one."""
    import warnings

    from ..datasets import load_dataset

    kwargs = {"download": True} if args.download and role == "evaluated" else {}
    if role == "evaluated" and args.distractors is not None:
        if name not in ("roxford5k", "rparis6k"):
            raise CLIError(f"--distractors applies to roxford5k and rparis6k, not {name}")
        kwargs["distractors"] = args.distractors
    if args.rotated and name == "holidays" and role == "evaluated":
        kwargs["rotated"] = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bench = load_dataset(name, root, **kwargs)
    for w in caught:  # e.g. an incomplete database: results not comparable
        warn(str(w.message))
    return bench


def cmd_evaluate(args):
    """Run ``skretrieval evaluate``: print (or dump as JSON) the benchmark's table."""
    from sklearn.pipeline import make_pipeline

    from ..extraction._extractor import ConvFeatureExtractor
    from ..datasets import evaluate_benchmark
    from ..pooling._registry import make_pooler

    t0 = time.perf_counter()
    if args.rotated and args.dataset != "holidays":
        raise CLIError("--rotated applies to --dataset holidays only")
    if args.pca is not None and args.whiten_root is None:
        raise CLIError(
            "--pca needs --whiten-root: the whitening must be learned on another "
            "benchmark (e.g. Paris6k for Oxford5k), never on the evaluated images")
    model = getattr(args, "model", None)
    if model is not None and args.whiten_root is not None:
        raise CLIError("--whiten-root does not apply with --model: the checkpoint's own "
                       "whitening is used (choose it with --model-whitening)")
    check_device(args.device)
    bench = _load_benchmark(args.dataset, args.root, args, "evaluated")
    whiten_bench = None
    if args.whiten_root is not None:
        name = args.whiten_dataset or bench.paired
        if name is None:
            raise CLIError(f"{args.dataset} has no usual pair: give --whiten-dataset")
        whiten_bench = _load_benchmark(name, args.whiten_root, args, "whitening")
    cache = None if args.cache.lower() == "none" else os.path.expanduser(args.cache)
    if cache is not None:
        os.makedirs(cache, exist_ok=True)
    title = None
    if model is not None:
        features, title = _checkpoint_features(args, cache)
        extractor, whitener = features.features[0], None
    else:
        extractor = ConvFeatureExtractor(
            args.backbone, weights=args.weights, layer=args.layer, max_size=args.max_size,
            scales=tuple(args.scales), device=args.device, batch_size=args.batch_size,
            cache=cache, verbose=int(show_progress(args)),
        )
        extractor.fit()
        features = make_pipeline(extractor, make_pooler(args.pooler))
        whitener = _whitener(args, extractor, whiten_bench)
    if not args.quiet:
        info(f"{PROG}: {bench.name}: {bench.n_images} database images, "
             f"{bench.n_queries} queries; "
             + (title if title else f"{args.backbone} layer {extractor.layer_name_}")
             + f" on {extractor.device_}"
             + (f"; whitening learned on {whiten_bench.name}" if whiten_bench else ""))
    report = evaluate_benchmark(bench, features, whitener=whitener,
                                whitening_benchmark=whiten_bench)
    if args.figure is not None:
        _evaluation_figure(bench, report, args.figure)
    _print_report(args, bench, report, features, time.perf_counter() - t0, title=title)
    return 0


def _checkpoint_features(args, cache):
    """``--model FILE``: the checkpoint's descriptor pipeline (no retriever) and its title."""
    from ..pretrained import CheckpointFormatError, NativeScale, load_checkpoint

    if not os.path.isfile(args.model):
        raise CLIError(f"checkpoint file not found: {args.model!r}")
    whitening = None if args.model_whitening.lower() == "none" else args.model_whitening
    try:
        pipe, recipe = load_checkpoint(
            args.model, preset=args.preset, whitening=whitening, max_size=args.max_size,
            device=args.device, batch_size=args.batch_size,
            cache=cache, verbose=int(show_progress(args)),
            return_recipe=True)
    except (CheckpointFormatError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    scales = pipe[0].scales
    title = (f"{os.path.basename(args.model)}: {recipe.description}, max_size "
             f"{args.max_size}, scales {' '.join(f'{s:.4g}' for s in scales)}"
             + (f", whitening {recipe.whitening_name}" if recipe.whitening_name else ""))
    # their image sizes: never enlarged, query crops at the scale of their image
    return NativeScale(pipe[:-1]), title


def _whitener(args, extractor, whiten_bench):
    """The (unfitted) PCA whitening of the options, None without --whiten-root."""
    from ..pooling._whitening import PCAWhitener

    if whiten_bench is None:
        return None
    dims = min(extractor.n_channels_, whiten_bench.n_images - 1)
    n = args.pca if args.pca is not None else dims
    if n > dims:
        raise CLIError(f"--pca {n}: at most {dims} components can be learned on "
                       f"{whiten_bench.n_images} images of {extractor.n_channels_} "
                       "dimensions")
    return PCAWhitener(n_components=n, whiten_power=args.whiten_power, random_state=0)


def _print_report(args, bench, report, features, seconds, title=None):
    """The benchmark's table (or its JSON, with the configuration) and the times."""
    if title is not None:  # --model: a NativeScale over the checkpoint's pipeline
        extractor, pooler = features.features[0], None
    else:
        extractor, pooler = features[0], features[1]
    if args.json:
        out = report.to_dict()
        out["seconds"]["wall"] = seconds
        if title is not None:
            out["config"] = {"model": args.model, "preset": args.preset, "title": title,
                             "max_size": args.max_size, "scales": list(extractor.scales)}
        else:
            out["config"] = {k: getattr(args, k) for k in (
                "backbone", "layer", "max_size", "scales", "pooler", "pca", "whiten_power")}
            out["config"]["weights"] = str(args.weights)
        print(json.dumps(out, indent=2))
        return
    if title is not None:
        print(f"{title}, {report.n_dims} dims")
    else:
        print(f"{args.backbone} ({args.weights}) layer {extractor.layer_name_}, max_size "
              f"{args.max_size}, scales {' '.join(f'{s:g}' for s in args.scales)}, "
              f"{pooler.__class__.__name__}, {report.n_dims} dims"
              + (f", PCA-whitened on {report.whitening}" if report.whitening else ""))
    print(report.table())
    print(f"{bench.n_queries} queries, {bench.n_images} database images; wall time "
          f"{seconds:.1f} s (features {report.seconds['extract']:.1f} s, search "
          f"{report.seconds['search']:.1f} s)")


def _evaluation_figure(bench, report, path):
    """``--figure PNG``: the top 5 of a few queries spread over the benchmark."""
    import numpy as np

    from ..display import RetrievalDisplay

    gt = bench.ground_truth.get("medium") or next(iter(bench.ground_truth.values()))
    n = min(6, bench.n_queries)
    queries = np.linspace(0, bench.n_queries - 1, n).round().astype(int)
    RetrievalDisplay.from_predictions(
        report.rankings, bench.queries, bench.images, positives=gt.positives,
        junk=gt.junk, similarities=report.similarities, k=5, queries=queries,
        query_names=bench.query_names, database_names=bench.image_names, path=path)
    info(f"{PROG}: figure written to {path}")
