"""Extraction speed and memory of ConvFeatureExtractor (real MobileNetV2 weights).

Throughput: a collection of real photos with many different sizes (COIL-100
views cut to random aspect ratios and saved as JPEG, plus the UKBench and
Holidays samples, the latter full-resolution camera photos).  The baseline is
the plain loop most retrieval code uses: decode one image, resize it, feed it
alone to ``model.features`` in eager torch.  Against it, the extractor with
each engine (torch, ONNX Runtime, OpenVINO, and what ``engine="auto"``
picks), each in a fresh process with an empty ONNX cache: export time, a
cold pass (every image shape new to the engine) and a warm one (the same
shapes again), images/s, peak RSS and the smallest GeM cosine to the plain
loop; MobileNetV2 ImageNet at 512 and 1024 px, ResNet-50 (random weights) at
512 px.  Then full vs reduced-scale (``draft``) JPEG decoding of the Holidays
photos.

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


def plain_loop(paths, max_size, backbone="mobilenet_v2", weights="IMAGENET1K_V1"):
    """The baseline: one image at a time through model.features (eager torch, NCHW)."""
    import torch
    from PIL import Image
    from skretrieval.extraction._backbones import build_model

    model, mean, std = build_model(backbone, weights)
    features = (model.features if hasattr(model, "features")
                else torch.nn.Sequential(*list(model.children())[:-2]))
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


ENGINE_CHILD = r"""
import json, os, sys, time
import numpy as np
from skretrieval import ConvFeatureExtractor
def hwm_mib():  # peak RSS of this process (ru_maxrss would keep the parent's across exec)
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:")) / 1024
paths, params, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
ext = ConvFeatureExtractor(device="cpu", cache=None, **params).fit()
t = time.perf_counter()
ext._engine(ext.trunk_)  # export (into an empty ONNX cache) and session
export = time.perf_counter() - t
times, maps = [], None
for _ in range(2):  # cold: every shape new to the engine; warm: the same shapes again
    t = time.perf_counter()
    maps = ext.transform(paths)
    times.append(time.perf_counter() - t)
np.save(out, np.stack([np.sign(m[0].mean((1, 2))) * np.abs(m[0] ** 3).mean((1, 2)) ** (1 / 3)
                       for m in maps]))
print(json.dumps({"engine": ext.engine_, "export": export, "cold": times[0], "warm": times[1],
                  "rss": hwm_mib()}))
"""


def _gem(maps):
    return np.stack([np.sign(m.mean((1, 2))) * np.abs(m ** 3).mean((1, 2)) ** (1 / 3)
                     for m in maps])


def _cosines(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def engines_table(paths, max_size, backbone, weights, label):
    """Plain loop vs the extractor with each engine, cold and warm, one process each."""

    t = time.perf_counter()
    ref = _gem(plain_loop(paths, max_size, backbone, weights))
    base = time.perf_counter() - t
    print(f"\n## {label}: {len(paths)} photos, max_size={max_size}, {backbone} "
          f"({weights or 'random weights'}); plain loop {base:.1f} s "
          f"({len(paths) / base:.1f} img/s), peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"{'engine':22s} {'export s':>8s} {'cold s':>7s} {'x plain':>7s} {'warm s':>7s} "
          f"{'x plain':>7s} {'img/s':>6s} {'RSS MiB':>7s} {'cos plain':>9s} {'cos torch':>9s}")
    torch_gem = None
    for engine in ("torch", "onnxruntime", "openvino", "auto"):
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, SKRETRIEVAL_ONNX_CACHE=tmp)
            env.pop("SKRETRIEVAL_ENGINE", None)
            params = dict(backbone=backbone, weights=weights, max_size=max_size, engine=engine)
            res = subprocess.run([sys.executable, "-c", ENGINE_CHILD, json.dumps(paths),
                                  json.dumps(params), os.path.join(tmp, "gem.npy")],
                                 capture_output=True, text=True, env=env)
            if res.returncode:
                print(f"{engine:22s} failed: {res.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            gem = np.load(os.path.join(tmp, "gem.npy"))
            cos = float(_cosines(ref, gem).min())
            torch_gem = gem if engine == "torch" else torch_gem
            cos_torch = (float(_cosines(torch_gem, gem).min()) if torch_gem is not None
                         else float("nan"))
        name = engine if engine != "auto" else f"auto ({r['engine']})"
        print(f"{name:22s} {r['export']:8.1f} {r['cold']:7.1f} {base / r['cold']:6.2f}x "
              f"{r['warm']:7.1f} {base / r['warm']:6.2f}x {len(paths) / r['warm']:6.1f} "
              f"{r['rss']:7.0f} {cos:9.5f} {cos_torch:9.5f}")


def decoding(n_repeat=3):
    """Full vs reduced-scale (draft) JPEG decoding of full-resolution photos."""
    from skretrieval import ConvFeatureExtractor, load_image

    photos = sorted((DATA / "holidays-sample").glob("*.jpg"))
    if not photos:
        return
    ext = ConvFeatureExtractor(max_size=512, device="cpu", cache=None, engine="torch").fit()
    print(f"\n## JPEG decoding for max_size=512: {len(photos)} Holidays photos")
    print(f"{'photo':14s} {'pixels':>11s} {'full ms':>8s} {'draft ms':>8s} {'draft size':>11s} "
          f"{'GeM cos':>8s}")
    for p in photos:
        times = []
        for kw in ({}, {"reduce_to": 512}):
            t = time.perf_counter()
            for _ in range(n_repeat):
                arr = load_image(p, **kw)
            times.append((time.perf_counter() - t) / n_repeat * 1000)
        full = load_image(p)
        a = _gem([ext.transform([full])[0][0]])
        b = _gem([ext.transform([str(p)])[0][0]])
        print(f"{p.name:14s} {full.shape[1]:>5d}x{full.shape[0]:<5d} {times[0]:8.0f} "
              f"{times[1]:8.0f} {arr.shape[1]:>5d}x{arr.shape[0]:<5d} "
              f"{float(_cosines(a, b)[0]):8.5f}")


def throughput(args):
    with tempfile.TemporaryDirectory() as tmp:
        paths = mixed_size_collection(args.n, tmp)
        from PIL import Image

        shapes = {Image.open(p).size for p in paths}
        print(f"\n# Throughput: {len(paths)} real photos, {len(shapes)} distinct sizes, "
              f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at start")
        plain_loop(paths[:3], 512)  # warm-up (loads weights, first kernels)
        tables = {"mobilenet512": (512, "mobilenet_v2", "IMAGENET1K_V1", "MobileNetV2 at 512 px"),
                  "mobilenet1024": (1024, "mobilenet_v2", "IMAGENET1K_V1",
                                    "MobileNetV2 at 1024 px"),
                  "resnet50": (512, "resnet50", None, "ResNet-50 at 512 px")}
        for name in args.tables.split(","):
            size, backbone, weights, label = tables[name]
            engines_table(paths, size, backbone, weights, label)
        decoding()
        print(f"\nload average at the end: {os.getloadavg()}")


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
    parser.add_argument("--memory-images", type=int, default=2000)
    parser.add_argument("--tables", default="mobilenet512,mobilenet1024,resnet50",
                        help="comma-separated: mobilenet512, mobilenet1024, resnet50")
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
