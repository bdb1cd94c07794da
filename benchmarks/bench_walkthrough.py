"""The large-collection walk-through of docs/scale.md, measured on COIL-100 images.

Runs the ``skretrieval`` command line as a user would on a folder of images:

1. ``index --save-every N --cache DIR``, interrupted (SIGINT, as Ctrl-C)
   in the middle of its second batch;
2. the same command with ``--append``: it resumes, skipping the images
   already in the saved index (and finding the maps of the interrupted batch
   in the cache);
3. new images copied into the folder, then ``--append`` again;
4. ``search`` of a query image;

and prints the time, the sizes (index file, feature cache) and the rates of
every step, plus the extraction rate at a larger image size (COIL-100 images
are 128 x 128; photos are larger), for the extrapolation to 100,000 images in
docs/scale.md.

Run:  python benchmarks/bench_walkthrough.py [--images 1500] [--new 200] [--batch 500]
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(os.environ.get("SKRETRIEVAL_SHARED_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))
# torch's OpenMP threads spin while they wait: on a machine whose cores are
# shared with other jobs, that made the extraction 18x slower here (0.3
# against 5.4 images/s); PASSIVE makes them sleep.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ENV = dict(os.environ)


def _size(path):
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _cli(*args, interrupt_when=None):
    """Run ``python -m skretrieval args``; (seconds, exit code, stdout + stderr)."""
    cmd = [sys.executable, "-m", "skretrieval", *map(str, args)]
    print("$ skretrieval " + " ".join(map(str, args)), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ENV)
    if interrupt_when is not None:
        while proc.poll() is None and not interrupt_when():
            time.sleep(0.2)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate()
    seconds = time.perf_counter() - t0
    lines = [line for line in re.split(r"[\r\n]+", out) if line.strip()]
    # the extractor's progress line is rewritten in place: keep its last state
    shown = [line for line in lines if not line.startswith("[ConvFeatureExtractor]")]
    progress = [line for line in lines if line.startswith("[ConvFeatureExtractor]")]
    for line in shown[-8:]:
        print("  " + line)
    if progress:
        print("  (last progress line: " + progress[-1].strip() + ")")
    print(f"  -> exit {proc.returncode} in {seconds:.1f} s", flush=True)
    return seconds, proc.returncode, out


def _indexed(path):
    import joblib

    return joblib.load(path)[-1].n_samples_fit_


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--new", type=int, default=200)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--max-size", type=int, default=128)
    parser.add_argument("--pca", type=int, default=128)
    parser.add_argument("--large-size", type=int, default=512,
                        help="also time 100 images at this size (0: skip)")
    parser.add_argument("--keep", default=None, help="work folder to keep (default: temporary)")
    args = parser.parse_args(argv)

    coil = sorted((DATA / "coil100").glob("obj*__*.png"))
    coil = [p for p in coil if not p.name.startswith("obj1__")]  # stored at 32 px
    if len(coil) < args.images + args.new + 2:
        sys.exit(f"need {args.images + args.new + 2} COIL-100 images in {DATA / 'coil100'}")
    work = Path(args.keep or tempfile.mkdtemp(prefix="skretrieval-walkthrough-"))
    if work.exists():
        shutil.rmtree(work)
    (work / "photos").mkdir(parents=True)
    query = coil[args.images // 2]  # a view of an indexed object, itself left out
    for p in coil[: args.images + 1]:
        if p != query:
            shutil.copy(p, work / "photos" / p.name)
    index, cache = work / "photos.joblib", work / "cache"
    common = ["--max-size", args.max_size, "--pca", args.pca, "--save-every", args.batch,
              "--cache", cache, "--device", "cpu"]
    report = []
    load0 = os.getloadavg()[0]
    print(f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; load average {load0:.1f}")

    # 1. interrupted in the middle of the second batch: SIGINT half a first
    #    batch's time after the first save
    t_start, state = time.perf_counter(), {}

    def in_second_batch():
        if "saved" not in state and index.exists():
            state["saved"] = time.perf_counter()
        return ("saved" in state
                and time.perf_counter() - state["saved"] > 0.5 * (state["saved"] - t_start))

    s1, code1, _ = _cli("index", work / "photos", "-o", index, *common,
                        interrupt_when=in_second_batch)
    n1 = _indexed(index)
    cache1 = _size(cache)
    report.append(("1. index, interrupted (Ctrl-C) in the 2nd batch", s1,
                   f"exit {code1}; {n1} images in the saved index; cache {cache1 / 2**20:.1f} MB"))

    # 2. resume
    s2, code2, _ = _cli("index", work / "photos", "-o", index, "--append", *common)
    n2 = _indexed(index)
    report.append(("2. same command with --append: resumes", s2,
                   f"exit {code2}; {n2 - n1} images added, {n2} in all"))

    # 3. new images
    (work / "photos" / "new").mkdir()
    for p in coil[args.images + 1 : args.images + 1 + args.new]:
        shutil.copy(p, work / "photos" / "new" / p.name)
    s3, code3, _ = _cli("index", work / "photos", "-o", index, "--append", *common)
    n3 = _indexed(index)
    report.append((f"3. {args.new} new images, --append", s3,
                   f"exit {code3}; {n3 - n2} added, {n3} in all"))
    s3b, _, _ = _cli("index", work / "photos", "-o", index, "--append", *common)
    report.append(("   --append again, nothing new", s3b, "nothing to add"))

    # 4. search
    s4, code4, out4 = _cli("search", index, query, "-k", 5)
    report.append(("4. search one query (load, network, search)", s4, f"exit {code4}"))

    # in-process search time of the saved retriever
    import joblib
    import numpy as np

    pipe = joblib.load(index)
    X = pipe[-1].X_fit_[:100]
    t = time.perf_counter()
    for q in X:
        pipe[-1].kneighbors(q[np.newaxis], n_neighbors=10)
    per_query = (time.perf_counter() - t) / X.shape[0]
    index_bytes, cache_bytes = _size(index), _size(cache)

    large = None
    if args.large_size:
        from skretrieval import ConvFeatureExtractor, GeMPooler

        ext = ConvFeatureExtractor("mobilenet_v2", max_size=args.large_size, device="cpu")
        images = [str(p) for p in coil[:100]]
        ext.fit()
        GeMPooler().transform(ext.transform(images[:5]))  # warm up
        t = time.perf_counter()
        GeMPooler().transform(ext.transform(images))
        large = (time.perf_counter() - t) / len(images)

    load1 = os.getloadavg()[0]
    print("\n| step | time (s) | result |\n|---|---:|---|")
    for step, seconds, result in report:
        print(f"| {step} | {seconds:.1f} | {result} |")
    print(f"\nindex file: {index_bytes / 2**20:.2f} MB for {n3} images "
          f"({index_bytes / n3 / 1024:.2f} kB per image)")
    print(f"feature cache: {cache_bytes / 2**20:.1f} MB ({cache_bytes / n3 / 1024:.1f} kB "
          f"per image at max-size {args.max_size})")
    print(f"search in process: {per_query * 1e3:.2f} ms per query ({n3} images)")
    if large is not None:
        print(f"extraction at max-size {args.large_size}: {large:.3f} s per image "
              f"({1 / large:.1f} images/s)")
    print(f"load average {load0:.1f} at start, {load1:.1f} at the end")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
