"""Extraction speed and memory of ConvFeatureExtractor (real MobileNetV2 weights).

Throughput: a collection of real photos with many different sizes (COIL-100
views cut to random aspect ratios and saved as JPEG, plus the UKBench and
Holidays samples), extracted at ``--max-size``.  The baseline is the plain
loop most retrieval code uses: decode one image, resize it, feed it alone to
``model.features``.  Both produce the same maps; the ratio is printed along
with the effect of each ingredient (channels-last, decoding threads,
batching).

Memory: ``--memory-images`` images at max_size 1024 transformed with
``store="disk"`` (and float16), each configuration in a fresh process, peak
RSS read from ``resource.getrusage``; compared with the bytes the maps would
take in RAM.

Run:  python benchmarks/bench_extraction.py [--n 150] [--memory-images 2000]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("SKRETRIEVAL_SHARED_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))


def mixed_size_collection(n, folder, seed=0):
    """Real photos at many sizes: random-aspect crops of COIL-100 views, upsampled."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coil = sorted((DATA / "coil100").glob("obj*__*.png"))
    coil = [p for p in coil if not p.name.startswith("obj1__")]
    extra = sorted((DATA / "ukbench-sample").glob("*.jpg")) + sorted(
        (DATA / "holidays-sample").glob("*.jpg"))
    paths = [str(p) for p in extra]
    for i, p in enumerate(rng.choice(coil, n - len(paths), replace=False)):
        img = Image.open(p).convert("RGB")
        w, h = rng.integers(70, 129, 2)
        x, y = rng.integers(0, 129 - w), rng.integers(0, 129 - h)
        img = img.crop((x, y, x + w, y + h)).resize((int(w * 5), int(h * 5)), Image.BICUBIC)
        out = os.path.join(folder, f"img{i:04d}.jpg")
        img.save(out, quality=90)
        paths.append(out)
    return paths


def plain_loop(paths, max_size):
    """The baseline: one image at a time through model.features."""
    import torch
    from PIL import Image
    from skretrieval.extraction._backbones import build_model

    model, mean, std = build_model("mobilenet_v2", "IMAGENET1K_V1")
    features = model.features
    mean = torch.tensor(mean).view(1, 3, 1, 1)
    std = torch.tensor(std).view(1, 3, 1, 1)
    out = []
    with torch.inference_mode():
        for p in paths:
            img = Image.open(p).convert("RGB")
            s = max_size / max(img.size)
            img = img.resize((max(1, round(img.size[0] * s)), max(1, round(img.size[1] * s))),
                             Image.BILINEAR)
            x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255
            out.append(features((x - mean) / std)[0].numpy())
    return out


def extractor(paths, max_size, **params):
    from skretrieval import ConvFeatureExtractor

    ext = ConvFeatureExtractor("mobilenet_v2", max_size=max_size, device="cpu", **params)
    return list(ext.fit().transform(paths))


def throughput(args):
    import skretrieval.extraction._extractor as extmod

    with tempfile.TemporaryDirectory() as tmp:
        paths = mixed_size_collection(args.n, tmp)
        from PIL import Image

        shapes = {Image.open(p).size for p in paths}
        print(f"\n## Throughput: {len(paths)} real photos, {len(shapes)} distinct sizes, "
              f"max_size={args.max_size}, MobileNetV2 ImageNet, {os.cpu_count()} CPU cores")
        plain_loop(paths[:3], args.max_size)  # warm-up (loads weights, first kernels)
        extractor(paths[:3], args.max_size)
        rows = []

        def run(name, fn):
            t = time.perf_counter()
            maps = fn()
            dt = time.perf_counter() - t
            rows.append((name, dt, maps))

        run("plain loop (one image at a time, model.features)",
            lambda: plain_loop(paths, args.max_size))
        run("ConvFeatureExtractor (defaults)", lambda: extractor(paths, args.max_size))
        extmod.CHANNELS_LAST = False
        run("  without channels-last", lambda: extractor(paths, args.max_size))
        extmod.CHANNELS_LAST = True
        run("  with 1 decoding thread", lambda: extractor(paths, args.max_size, n_jobs=1))
        run("  batch_size=1", lambda: extractor(paths, args.max_size, batch_size=1))
        coil = sorted((DATA / "coil100").glob("obj*__*.png"))[100:100 + args.n // 2]
        coil = [str(p) for p in coil]
        run("plain loop, same-size images (COIL-100)", lambda: plain_loop(coil, args.max_size))
        run("ConvFeatureExtractor, same-size images, batch_size=8",
            lambda: extractor(coil, args.max_size))
        run("ConvFeatureExtractor, same-size images, batch_size=1",
            lambda: extractor(coil, args.max_size, batch_size=1))
        base = rows[0][1]
        ref = rows[0][2]
        print(f"{'method':52s} {'s':>7s} {'img/s':>7s} {'speed-up':>8s} {'max |diff|':>10s}")
        for name, dt, maps in rows:
            if "same-size" in name:
                if name.startswith("plain"):
                    base, ref = dt, maps
            diff = 0.0 if maps is ref else max(
                float(np.abs(a - b[0]).max()) for a, b in zip(ref, maps))
            print(f"{name:52s} {dt:7.2f} {len(maps) / dt:7.1f} {base / dt:7.2f}x {diff:10.2e}")


MEMORY_CHILD = r"""
import json, resource, sys, threading, time
import numpy as np
from skretrieval import ConvFeatureExtractor, GeMPooler

def anon_kib():  # private (anonymous) resident memory: what cannot be paged out to a file
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0

peak_anon, done = [0], threading.Event()
def sample():
    while not done.is_set():
        peak_anon[0] = max(peak_anon[0], anon_kib())
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
paths = json.loads(sys.argv[1]); params = json.loads(sys.argv[2])
ext = ConvFeatureExtractor("mobilenet_v2", max_size=1024, device="cpu", verbose=1, **params).fit()
t = time.perf_counter()
maps = ext.transform(paths)
t_ext = time.perf_counter() - t
desc = GeMPooler().transform(maps)
done.set()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"peak_mib": peak, "anon_mib": max(peak_anon[0], anon_kib()) / 1024,
                  "maps_mib": maps.nbytes / 2**20, "seconds": t_ext,
                  "desc_shape": list(desc.shape)}))
"""


def memory(args):
    coil = sorted((DATA / "coil100").glob("obj*__*.png"))
    paths = [str(p) for p in coil if not p.name.startswith("obj1__")][: args.memory_images]
    print(f"\n## Peak memory: {len(paths)} images (COIL-100 views upsampled to 1024x1024), "
          "MobileNetV2 last conv layer, then GeM pooling; one fresh process each")
    print(f"{'configuration':40s} {'peak RSS MiB':>12s} {'anon MiB':>9s} {'maps MiB':>9s} "
          f"{'extract s':>9s}")
    baseline = subprocess.run(
        [sys.executable, "-c", "import resource, skretrieval, torch; "
         "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"],
        capture_output=True, text=True, check=True)
    print(f"{'(python + torch + skretrieval imported)':40s} "
          f"{float(baseline.stdout.split()[-1]):12.0f}")
    for params in ({"store": "disk"}, {"store": "disk", "dtype": "float16"}):
        res = subprocess.run([sys.executable, "-c", MEMORY_CHILD, json.dumps(paths),
                              json.dumps(params)], capture_output=True, text=True)
        if res.returncode:
            print(res.stderr[-2000:])
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{json.dumps(params):40s} {r['peak_mib']:12.0f} {r['anon_mib']:9.0f} "
              f"{r['maps_mib']:9.0f} {r['seconds']:9.1f}")
    print("peak RSS counts file pages the kernel can reclaim; 'anon' is the private memory "
          "(sampled every 20 ms). store='memory' would hold all maps in RAM: the 'maps MiB' "
          "column on top of the baseline.")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=150, help="images in the throughput test")
    parser.add_argument("--max-size", type=int, default=512)
    parser.add_argument("--memory-images", type=int, default=2000)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    if not (DATA / "coil100").is_dir():
        sys.exit(f"needs COIL-100 in {DATA} (set SKRETRIEVAL_SHARED_DATA)")
    if not args.skip_throughput:
        throughput(args)
    if not args.skip_memory:
        memory(args)


if __name__ == "__main__":
    main()
