"""``skretrieval search``: rank the images of an index for query images."""

from __future__ import annotations

import json
import os

import numpy as np

from ..utils._arrays import similarities_from_distances
from ._common import PROG, CLIError, info, load_pipeline, show_progress, warn

__all__ = ["cmd_search"]


def cmd_search(args):
    """Run ``skretrieval search``: print (and write as pairs) the top-k of each query."""
    from ..index import set_feature_params

    _check_search_args(args)
    pipe = load_pipeline(args.index)
    retriever = pipe[-1]
    set_feature_params(pipe, verbose=int(show_progress(args)))
    items = _query_items(args)

    n_db = retriever.n_samples_fit_
    k = min(args.k, n_db)
    if args.k > n_db:
        warn(f"-k {args.k}: the index holds only {n_db} image(s); showing them all")
    Xq = pipe[:-1].transform(items)
    dist, ind = retriever.kneighbors(Xq, n_neighbors=k)
    results = _results(args, retriever, dist, ind)
    if args.pairs is not None:
        _write_pairs(args, retriever, Xq)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _print_results(results, getattr(retriever, "metric", "cosine"))
    return 0


def _check_search_args(args):
    """Fail on bad options and missing files before the network runs."""
    if args.box is not None and len(args.queries) != 1:
        raise CLIError(f"--box applies to a single query, got {len(args.queries)} queries")
    if args.pairs is not None:  # fail before the network runs
        from ..pairs import check_names

        pairs_dir = os.path.dirname(os.path.abspath(args.pairs))
        if not os.path.isdir(pairs_dir):
            raise CLIError(f"cannot write {args.pairs!r}: folder {pairs_dir!r} does not exist")
        check_names(args.queries, args.pairs_format, query=True)


def _query_items(args):
    """The query images, the single one cropped to ``--box``."""
    from ..extraction._images import Crop

    for q in args.queries:  # a clear message before the network is rebuilt
        if not os.path.exists(q):
            raise CLIError(f"query image not found: {q!r}")
    items = list(args.queries)
    if args.box is not None:
        x1, y1, x2, y2 = args.box
        if not (x2 > x1 and y2 > y1):
            raise CLIError(f"--box {x1:g} {y1:g} {x2:g} {y2:g}: need X2 > X1 and Y2 > Y1")
        box = tuple(int(v) if float(v).is_integer() else v for v in args.box)
        items = [Crop(items[0], box=box)]
    return items


def _results(args, retriever, dist, ind):
    """One ``{"query", "box", "results": [{"rank", "name", "index", score}]}`` per query.

    The score is the similarity for the cosine and inner-product metrics, the
    distance otherwise (an ASMK index's metric is ``"cosine"``: its distances
    are ``1 - K``, the similarity printed is the kernel value ``K``).
    """
    names = retriever.y_
    metric = getattr(retriever, "metric", "cosine")
    similar = metric in ("cosine", "inner_product")
    dist = np.asarray(dist, dtype=np.float64)  # the printed scores are rounded from float64
    score = similarities_from_distances(dist, metric) if similar else dist
    results = []
    for qi, query in enumerate(args.queries):
        hits = []
        for r in range(ind.shape[1]):
            hit = {"rank": r + 1, "name": str(names[ind[qi, r]]), "index": int(ind[qi, r]),
                   "similarity" if similar else "distance": round(float(score[qi, r]), 6)}
            hits.append(hit)
        results.append({"query": query,
                        "box": list(args.box) if args.box is not None else None,
                        "results": hits})
    return results


def _write_pairs(args, retriever, Xq):
    """``--pairs FILE``: the top-k of every query as an image-pairs file."""
    from ..pairs import pairs_from_retriever, write_pairs

    pairs = pairs_from_retriever(retriever, Xq, query_names=list(args.queries),
                                 database_names=[str(n) for n in retriever.y_], k=args.k)
    n_pairs = write_pairs(args.pairs, pairs, format=args.pairs_format)
    info(f"{PROG}: wrote {n_pairs} pair(s) of {len(args.queries)} query image(s) "
         f"to {args.pairs} ({args.pairs_format} format)")


def _print_results(results, metric):
    """The results as a table per query."""
    column = "distance" if metric == "euclidean" else "similarity"
    for i, res in enumerate(results):
        if i:
            print()
        box = ""
        if res["box"] is not None:
            box = " box (" + ", ".join(f"{v:g}" for v in res["box"]) + ")"
        print(f"query: {res['query']}{box}")
        print(f"{'rank':>4}  {column:>10}  image")
        for hit in res["results"]:
            print(f"{hit['rank']:>4}  {hit.get(column):>10.4f}  {hit['name']}")
