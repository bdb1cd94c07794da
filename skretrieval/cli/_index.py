"""``skretrieval index``: build, grow and prune an index file of a folder of images."""

from __future__ import annotations

import os
import time

from ..index import IndexFile, add_to_index, item_fingerprint, set_feature_params
from ._common import (PROG, CLIError, check_device, format_size, info, load_pipeline,
                      show_progress, warn)

__all__ = ["cmd_index"]


def cmd_index(args):
    """Run ``skretrieval index``: a new index of FOLDER, or ``--append`` to FILE."""
    t0 = time.perf_counter()
    folder = args.folder
    paths, n_found = _list_images_checked(folder, args.skip_bad)
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        raise CLIError(f"cannot write {args.output!r}: folder {out_dir!r} does not exist")
    if args.prune and not args.append:
        raise CLIError("--prune applies to --append (it removes the indexed images "
                       "whose files are gone)")
    _check_local_options(args)
    # One writer at a time: a second 'index' of the same FILE waits here; the
    # existence check is made under the lock, so two concurrent --append runs
    # on a new FILE create it once and both add their images.
    with IndexFile(args.output, timeout=args.lock_timeout) as index_file:
        if args.append and index_file.exists():
            return _append_to_index(args, index_file, paths, t0)
        return _new_index(args, index_file, paths, n_found, t0)


def _list_images_checked(folder, skip_bad):
    """The images of FOLDER (the unreadable ones left out with ``--skip-bad``)
    and the number found."""
    from ..extraction._collections import check_images, list_images

    paths = list_images(folder)  # FileNotFoundError / NotADirectoryError / ValueError
    n_found = len(paths)
    if skip_bad:
        problems = check_images(paths, n_jobs=min(8, os.cpu_count() or 1))
        if problems:
            bad = {i for i, _, _ in problems}
            lines = "\n".join(f"  {msg}" for _, _, msg in problems)
            warn(f"leaving out {len(problems)} unreadable image(s) of {len(paths)}:\n"
                 f"{lines}")
            paths = [p for i, p in enumerate(paths) if i not in bad]
        if not paths:
            raise CLIError(f"no readable image under {folder!r}")
    return paths, n_found


def _new_index(args, index_file, paths, n_found, t0):
    """``index`` of a new FILE: fit the pipeline, then add the rest in batches."""
    import numpy as np

    folder = args.folder
    n = len(paths)
    n_fit = min(n, args.save_every or n)  # the images the pipeline is fitted on
    _check_new_index(args, n, n_fit)
    pipe = _new_local_pipeline(args) if args.local is not None else _new_pipeline(args)

    # names = ids = paths relative to FOLDER; fingerprints = content hashes
    labels = np.asarray([os.path.relpath(p, folder) for p in paths])
    if not args.quiet:
        info(f"{PROG}: indexing {n} image(s) of {folder!r} with {_features_used(args, pipe)}")
    retriever_name = pipe.steps[-1][0]
    fit_params = {
        f"{retriever_name}__ids": labels[:n_fit],
        f"{retriever_name}__fingerprints": [item_fingerprint(p) for p in paths[:n_fit]],
    }
    # in batches (--save-every): one bar for the whole index, the extractor's inside
    with _batches_bar(args, n if n_fit < n else 0) as bar:
        with _numbered_errors(range(n_fit), n), _asmk_errors(args):
            pipe.fit(paths[:n_fit], labels[:n_fit], **fit_params)
        index_file.save(pipe)
        bar.update(n_fit)
        if n_fit < n:
            _add_in_batches(pipe, index_file, paths, labels, list(range(n_fit, n)), True,
                            args.save_every, bar)
    seconds = time.perf_counter() - t0
    retriever = pipe[-1]
    print(f"indexed {retriever.n_samples_fit_} image(s) of {folder}"
          + (f" ({n_found - n} left out)" if n_found != n else ""))
    print(_descriptors_line(args, pipe))
    print(f"saved to {args.output} ({format_size(os.path.getsize(args.output))}) "
          f"in {seconds:.1f} s")
    return 0


def _check_local_options(args):
    """``--local`` / ``--asmk``: together, and without the global-descriptor options."""
    given = getattr(args, "given", frozenset())
    if args.local is None:
        for option, value in (("--asmk", args.asmk), ("--local-features", args.local_features)):
            if value is not None:
                raise CLIError(f"{option} applies to local features: add --local sift or "
                               "--local deep")
        return
    if args.asmk is None:
        raise CLIError(f"--local {args.local} is searched with ASMK: give the codebook "
                       "size, e.g. --asmk 1024 (more visual words for more images)")
    # (option, whether it was given, what it applies to)
    refused = [("--pooler", "--pooler" in given, "global descriptors"),
               ("--algorithm", "--algorithm" in given, "global descriptors"),
               ("--engine", args.engine is not None, "global descriptors")]
    if args.local == "sift":
        network = "the network of global descriptors or of --local deep"
        refused += [(option, option in given, network)
                    for option in ("--backbone", "--weights", "--layer", "--scales")]
        refused.append(("--pca", args.pca is not None,
                        "global descriptors and --local deep (RootSIFT is not whitened)"))
    for option, used, what in refused:
        if used:
            raise CLIError(f"{option} applies to {what}, not to --local {args.local} "
                           f"(searched with --asmk {args.asmk})")


def _check_new_index(args, n, n_fit):
    """The options of a new index that the number of images rules out."""
    if args.pca is not None and args.local is None and args.pca >= n_fit:
        raise CLIError(
            f"--pca {args.pca} needs more images than components: {n_fit} image(s) "
            f"give at most {max(n_fit - 1, 0)} principal directions; use --pca "
            f"{max(n_fit - 1, 1)} or less, or index more images"
            + (" (or a larger --save-every)" if n_fit < n else "")
        )
    if args.algorithm == "nndescent" and n < 3:
        raise CLIError(f"--algorithm nndescent needs at least 3 images, got {n}")
    if getattr(args, "engine", None) is not None:
        from ..neighbors._engine import check_uri

        try:
            check_uri(args.engine)
        except ValueError as exc:
            raise CLIError(f"--engine: {exc}") from None
    check_device(args.device)


def _new_pipeline(args):
    """The unfitted pipeline of the options, its extractor fitted (network loaded)."""
    from sklearn.pipeline import make_pipeline

    from ..extraction._extractor import ConvFeatureExtractor
    from ..neighbors._retriever import NearestNeighborRetriever
    from ..pooling._registry import make_pooler
    from ..pooling._whitening import PCAWhitener

    extractor = ConvFeatureExtractor(
        args.backbone, weights=args.weights, layer=args.layer, max_size=args.max_size,
        scales=tuple(args.scales), device=args.device, batch_size=args.batch_size,
        cache=args.cache, verbose=int(show_progress(args)),
    )
    # Load the network first: unknown backbone / layer and missing weights are
    # reported before any image is read, and the descriptor size is known.
    extractor.fit()
    dim = extractor.n_channels_
    if args.pca is not None and args.pca > dim:
        raise CLIError(
            f"--pca {args.pca} is larger than the descriptor dimension {dim} of "
            f"{args.backbone} at layer {extractor.layer_name_}"
        )
    steps = [extractor, make_pooler(args.pooler)]
    if args.pca is not None:
        steps.append(PCAWhitener(n_components=args.pca))
    retriever_kwargs = {"algorithm": args.algorithm}
    if args.algorithm != "brute":
        retriever_kwargs["random_state"] = 0
    if getattr(args, "engine", None) is not None:  # the table of a pgvector server
        retriever_kwargs = {"algorithm": "pgvector", "algorithm_params": {
            "uri": args.engine, "store": getattr(args, "engine_store", "engine")}}
    steps.append(NearestNeighborRetriever(**retriever_kwargs))
    return make_pipeline(*steps)


def _new_local_pipeline(args):
    """``--local sift|deep --asmk K``: local features then an ASMK* retriever."""
    from sklearn.pipeline import make_pipeline

    from ..local import ASMKRetriever, DeepLocalFeatures, SIFTExtractor

    if args.local == "sift":
        local = SIFTExtractor(n_features=args.local_features or 2000, max_size=args.max_size,
                              cache=args.cache)
    else:
        local = DeepLocalFeatures(args.backbone, weights=args.weights, layer=args.layer,
                                  max_size=args.max_size, scales=tuple(args.scales),
                                  max_features=args.local_features or 500,
                                  n_components=args.pca, device=args.device, cache=args.cache)
    # unknown backbone / layer, missing weights or OpenCV: reported before any
    # image is read (the whitening of --pca is learned on the images, in the fit)
    if args.local == "deep":
        local.set_params(n_components=None).fit().set_params(n_components=args.pca)
    else:
        local.fit()
    return make_pipeline(local, ASMKRetriever(n_clusters=args.asmk))


class _asmk_errors:
    """Name ``--asmk`` in the error of a codebook the local features cannot train."""

    def __init__(self, args):
        self.asmk = getattr(args, "asmk", None) if getattr(args, "local", None) else None

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if self.asmk is None or not isinstance(exc, ValueError) or "codebook" not in str(exc):
            return False
        raise CLIError(f"--asmk {self.asmk}: {exc}") from exc


def _features_used(args, pipe):
    """What the index is made of, for the progress message."""
    if args.local == "sift":
        return f"SIFT local features (at most {pipe[0].n_features} per image)"
    if args.local == "deep":
        ex = pipe[0].extractor_
        return (f"{args.backbone} local features (layer {ex.layer_name_}, at most "
                f"{pipe[0].max_features} per image) on {ex.device_}")
    return f"{args.backbone} (layer {pipe[0].layer_name_}) on {pipe[0].device_}"


def _descriptors_line(args, pipe):
    """The line on the descriptors of a new index."""
    retriever = pipe[-1]
    if args.local is not None:
        kind = "RootSIFT" if args.local == "sift" else (
            f"{args.backbone} layer {pipe[0].extractor_.layer_name_}"
            + (f", PCA-whitened from {pipe[0].extractor_.n_channels_}"
               if args.pca is not None else ""))
        return (f"local features: {retriever.n_features_in_} dimensions ({kind}); ASMK* "
                f"codebook of {retriever.n_clusters} visual words, inverted file of "
                f"{len(retriever.entry_images_)} entries "
                f"({format_size(retriever.index_nbytes())})")
    extractor = pipe[0]
    return (f"descriptors: {retriever.n_features_in_} dimensions ({args.backbone} "
            f"layer {extractor.layer_name_}, {pipe[1].__class__.__name__}"
            + (f", PCA-whitened from {extractor.n_channels_}" if args.pca is not None else "")
            + ")")


class _numbered_errors:
    """Re-number an ImageLoadError of a batch by the image's place in the folder."""

    def __init__(self, positions, total):
        self.positions = list(positions)
        self.total = total

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        from ..extraction._images import ImageLoadError

        if not isinstance(exc, ImageLoadError) or exc.index is None:
            return False
        if not 0 <= exc.index < len(self.positions):
            return False
        where = self.positions[exc.index]
        reason = exc.reason or str(exc)
        item = getattr(exc, "path", None)
        what = f"image {where} of {self.total}" + (f" ({item!r})" if item else "")
        raise ImageLoadError(
            f"{what}: {reason} (use --skip-bad to leave unreadable images out; "
            "the batches saved so far are kept: --append resumes)",
            index=where, reason=reason) from exc


def _batches_bar(args, total):
    """The bar of the images indexed and saved, with ``--save-every`` (``total``
    images); a silent one otherwise."""
    from ..utils._progress import progress

    return progress(total=total, desc="indexed and saved", unit="img",
                    verbose=bool(total) and args.save_every is not None
                    and show_progress(args))


def _add_in_batches(pipe, index_file, paths, names, todo, str_ids, every, bar):
    """Add ``paths[todo]`` to the index in batches, saving after each."""
    import numpy as np

    step = every or len(todo)
    for start in range(0, len(todo), step):
        rows = todo[start : start + step]
        batch = np.asarray([names[i] for i in rows])
        with _numbered_errors(rows, len(paths)):
            add_to_index(pipe, [paths[i] for i in rows], batch,
                         ids=batch if str_ids else None, on_existing="update")
        index_file.save(pipe)
        bar.update(len(batch))


def _append_to_index(args, index_file, paths, t0):
    """``index --append`` on an existing FILE: add the new and the changed images."""
    import numpy as np

    pipe = load_pipeline(args.output)
    retriever = pipe[-1]
    if not hasattr(retriever, "partial_fit"):
        raise CLIError(f"the retriever of {args.output!r} ({type(retriever).__name__}) "
                       "cannot grow; index the folder again without --append")
    folder = args.folder
    names = [os.path.relpath(p, folder) for p in paths]
    indexed = [str(v) for v in retriever.y_]
    row_of = {name: row for row, name in enumerate(indexed)}
    n_before = retriever.n_samples_fit_
    new, changed, unknown = _compare_with_index(retriever, paths, names, row_of)
    ids = np.asarray(retriever.ids_)
    str_ids = ids.dtype.kind in "US" or (ids.dtype.kind == "O" and isinstance(ids[0], str))
    if changed and not str_ids:
        raise CLIError(f"{args.output!r} has integer ids: it cannot replace changed images; "
                       "index the folder again without --append")
    listed = set(names)
    gone = [name for name in indexed if name not in listed
            and not os.path.exists(os.path.join(folder, name))]
    _report_differences(args, names, changed, unknown, gone)
    todo = sorted(new + changed)
    pruned = len(gone) if args.prune else 0
    if not todo and not pruned:
        print(f"nothing to add: the {len(paths)} image(s) of {folder} are already "
              f"in {args.output} ({n_before} image(s))")
        return 0
    if todo:
        set_feature_params(pipe, verbose=int(show_progress(args)))
        if args.cache is not None:
            set_feature_params(pipe, cache=args.cache)
        if not args.quiet:
            info(f"{PROG}: adding {len(new)} new and {len(changed)} changed image(s) of "
                 f"{folder!r} to {args.output} ({n_before} image(s))")
        with _batches_bar(args, len(todo)) as bar:
            _add_in_batches(pipe, index_file, paths, names, todo, str_ids,
                            args.save_every, bar)
    if pruned:
        # after the additions: the folder has images, so the index never empties
        retriever.remove(ids[[row_of[g] for g in gone]])
        index_file.save(pipe)
    seconds = time.perf_counter() - t0
    done = ([f"added {len(new)} image(s) of {folder}"] if todo else []) + (
        [f"replaced {len(changed)} changed one(s)"] if changed else []) + (
        [f"removed {pruned} image(s) whose files are gone"] if pruned else [])
    print(f"{', '.join(done)} ({args.output}): {retriever.n_samples_fit_} image(s) in all")
    print(f"saved to {args.output} ({format_size(os.path.getsize(args.output))}) "
          f"in {seconds:.1f} s")
    return 0


def _compare_with_index(retriever, paths, names, row_of):
    """The images of the folder not indexed yet (``new``), those whose content
    changed (``changed``), as positions in ``paths``, and the number indexed
    without a content hash (``unknown``)."""
    stored = getattr(retriever, "fingerprints_", None)
    new, changed, unknown = [], [], 0
    for i, (path, name) in enumerate(zip(paths, names)):
        row = row_of.get(name)
        if row is None:
            new.append(i)
        elif stored is None or stored[row] == "":
            unknown += 1
        elif stored[row] != item_fingerprint(path):
            changed.append(i)
    return new, changed, unknown


def _report_differences(args, names, changed, unknown, gone):
    """Warn about the unchecked and the vanished images, tell the changed ones."""
    if unknown:
        warn(f"{unknown} image(s) of {args.output} were indexed without a content hash "
             "(by an older version): kept as they are, edits to them are not "
             "detected; index the folder again without --append to check them")
    if gone and not args.prune:
        warn(f"{len(gone)} image(s) of {args.output} are no longer under {args.folder!r} "
             f"(e.g. {gone[0]!r}); they stay in the index (--prune removes them)")
    if changed:
        info(f"{PROG}: {len(changed)} image(s) changed since they were indexed (e.g. "
             f"{names[changed[0]]!r}): extracted again, their entries replaced")
