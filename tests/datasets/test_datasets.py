"""Benchmark loaders, on the official ground-truth files and on directories built here."""

import pickle
import shutil
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skretrieval import Crop, NearestNeighborRetriever, load_image
from skretrieval import datasets as D
from skretrieval.metrics import RetrievalMAP, mean_average_precision, revisitop_map


# ---------------------------------------------------------------------------
# an independent revisitop reference (the loop of revisitop's compute_map)
# ---------------------------------------------------------------------------
def reference_compute_map(ranks, gnd, kappas):
    """ranks: (n_db, n_queries) as revisitop takes it; gnd: list of {'ok', 'junk'}."""
    total, n_empty = 0.0, 0
    aps, prs = [], []
    for i, g in enumerate(gnd):
        ok = np.array(g["ok"])
        if ok.shape[0] == 0:
            aps.append(float("nan"))
            prs.append([float("nan")] * len(kappas))
            n_empty += 1
            continue
        junk = np.array(g.get("junk", []))
        column = list(ranks[:, i])
        pos = [r for r, item in enumerate(column) if item in set(ok.tolist())]
        jpos = [r for r, item in enumerate(column) if item in set(junk.tolist())]
        # shift every positive left by the number of junk items ranked before it
        pos = [p - sum(1 for j in jpos if j < p) for p in pos]
        ap = 0.0
        for j, rank in enumerate(pos):
            prec0 = 1.0 if rank == 0 else j / rank
            prec1 = (j + 1) / (rank + 1)
            ap += (prec0 + prec1) / 2.0 / len(ok)
        aps.append(ap)
        total += ap
        one = np.array(pos) + 1
        row = []
        for k in kappas:
            kq = min(one.max(), k)
            row.append((one <= kq).sum() / kq)
        prs.append(row)
    prs = np.array(prs, dtype=float)
    defined = ~np.isnan(np.array(aps))
    return total / (len(gnd) - n_empty), np.array(aps), prs[defined].mean(axis=0), prs


def test_revisitop_map_matches_the_reference_on_random_rankings():
    rng = np.random.default_rng(0)
    for trial in range(40):
        n_db, n_q = int(rng.integers(5, 60)), int(rng.integers(1, 8))
        ranks = np.stack([rng.permutation(n_db) for _ in range(n_q)], axis=1)
        gnd = []
        for _ in range(n_q):
            perm = rng.permutation(n_db)
            n_ok = int(rng.integers(0 if trial % 5 == 0 else 1, n_db // 2 + 1))
            n_junk = int(rng.integers(0, n_db // 3 + 1))
            gnd.append({"ok": perm[:n_ok], "junk": perm[n_ok:n_ok + n_junk]})
        if all(len(g["ok"]) == 0 for g in gnd):
            gnd[0]["ok"] = np.array([ranks[-1, 0]])
        kappas = [1, 5, 10]
        ref = reference_compute_map(ranks, gnd, kappas)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = revisitop_map(ranks.T, [g["ok"] for g in gnd], [g["junk"] for g in gnd],
                                ks=kappas)
            m = mean_average_precision(ranks.T, [g["ok"] for g in gnd],
                                       [g["junk"] for g in gnd])
        assert abs(got[0] - ref[0]) < 1e-12
        assert abs(m - ref[0]) < 1e-12
        np.testing.assert_allclose(got[1], ref[1], atol=1e-12, rtol=0)
        np.testing.assert_allclose(got[2], ref[2], atol=1e-12, rtol=0)
        np.testing.assert_allclose(got[3], ref[3], atol=1e-12, rtol=0)


def test_revisitop_precision_shrinks_the_cutoff_to_the_last_positive():
    # 3 positives at ranks 1-3: revisitop's P@10 is 3/3, not 3/10
    _, _, mpr, _ = revisitop_map([[4, 5, 6, 0, 1, 2, 3]], [[4, 5, 6]], ks=[1, 10])
    assert mpr.tolist() == [1.0, 1.0]
    # a junk item at rank 1 is removed before the precision is taken
    _, _, mpr, _ = revisitop_map([[9, 4, 0, 5]], [[4, 5]], [[9]], ks=[1, 2])
    assert mpr.tolist() == [1.0, 0.5]


def test_junk_changes_ap_as_revisitop_does():
    ranking = [7, 2, 3, 9, 1]
    positives = [2, 9]
    # counted as negatives, 7 and 3 push the positives down ...
    as_negative = mean_average_precision([ranking], [positives])
    # ... as junk they are removed: 2 and 9 move to ranks 0 and 1
    as_junk = mean_average_precision([ranking], [positives], [[7, 3]])
    assert as_junk == pytest.approx(1.0, abs=1e-15)
    assert as_negative < 0.6
    ref = reference_compute_map(np.array([ranking]).T, [{"ok": positives, "junk": [7, 3]}], [1])
    assert as_junk == pytest.approx(ref[0], abs=1e-12)


# ---------------------------------------------------------------------------
# Oxford5k / Paris6k on the official ground-truth files
# ---------------------------------------------------------------------------
def _gt_dir(shared_data, name):
    path = shared_data / name
    if not path.is_dir():
        pytest.skip(f"{name} not in shared data")
    return path


def _independent_counts(gt_dir, prefix):
    """Count positives / junk per query straight from the files."""
    counts = {}
    for q in sorted(gt_dir.glob("*_query.txt")):
        stem = q.name[: -len("_query.txt")]
        read = lambda kind: {l.strip() for l in open(gt_dir / f"{stem}_{kind}.txt") if l.strip()}
        image = q.read_text().split()[0]
        counts[stem] = (image[len(prefix):] if image.startswith(prefix) else image,
                        len(read("good") | read("ok")), len(read("junk")))
    return counts


def _touch_images(folder, names, subdir_of=None):
    for n in names:
        sub = folder / (subdir_of(n) if subdir_of else "")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{n}.jpg").write_bytes(b"")


def _named_images(parsed):
    named = set()
    for q in parsed:
        named.update([q["image"]], q["good"], q["ok"], q["junk"])
    return named


@pytest.fixture(scope="module")
def oxford_root(shared_data, tmp_path_factory):
    gt = _gt_dir(shared_data, "oxford5k-gt")
    root = tmp_path_factory.mktemp("oxford5k")
    shutil.copytree(gt, root / "gt_files_170407")
    names = _named_images(D.read_oxford_ground_truth(gt, "oxc1_"))
    _touch_images(root / "oxbuild_images", names)
    # the first query image as a real photo, to check the crop
    Image.new("RGB", (1024, 1000), (90, 120, 30)).save(
        root / "oxbuild_images" / "all_souls_000013.jpg")
    return root


def test_oxford5k_matches_the_official_files(oxford_root, shared_data):
    with pytest.warns(UserWarning, match="standard database has 5063"):
        bench = D.load_oxford5k(oxford_root)
    assert bench.n_queries == 55 and bench.protocols == ["default"]
    assert bench.info["official_ground_truth"] is True
    counts = _independent_counts(shared_data / "oxford5k-gt", "oxc1_")
    gt = bench.ground_truth["default"]
    assert sorted(counts) == bench.query_names
    for i, q in enumerate(bench.query_names):
        image, n_pos, n_junk = counts[q]
        assert bench.image_names[int(np.flatnonzero(
            np.array(bench.image_names) == image)[0])] == image
        assert len(gt.positives[i]) == n_pos and len(gt.junk[i]) == n_junk
        assert not set(gt.positives[i]) & set(gt.junk[i])
    # all_souls_1: 24 good + 54 ok positives, 33 junk, the query image among the positives
    i = bench.query_names.index("all_souls_1")
    assert len(gt.positives[i]) == 78 and len(gt.junk[i]) == 33
    assert bench.image_names.index("all_souls_000013") in gt.positives[i]
    assert bench.paired == "paris6k"


def test_oxford_query_is_the_full_resolution_crop_rounded_like_pil(oxford_root):
    with pytest.warns(UserWarning):
        bench = D.load_oxford5k(oxford_root)
    q = bench.queries[bench.query_names.index("all_souls_1")]
    assert isinstance(q, Crop)
    assert Path(q.image).name == "all_souls_000013.jpg"
    # the file says 136.5 34.1 648.5 955.7; PIL's crop (revisitop) rounds each value
    assert q.box == (136, 34, 648, 956)
    pil = Image.open(q.image).convert("RGB").crop((136.5, 34.1, 648.5, 955.7))
    assert load_image(q).shape == (pil.height, pil.width, 3) == (922, 512, 3)


def test_oxford_missing_images_and_ground_truth_are_named(oxford_root, tmp_path):
    root = tmp_path / "ox"
    shutil.copytree(oxford_root / "gt_files_170407", root / "gt_files_170407")
    (root / "jpg").mkdir()
    (root / "jpg" / "all_souls_000013.jpg").write_bytes(b"")
    with pytest.raises(D.DatasetError, match=r"844 of the 845 images .* missing.*"
                                             r"oxbuild_images-v1\.tgz"):
        D.load_oxford5k(root)
    with pytest.raises(D.DatasetError, match=r"no ground-truth files.*gt_files_170407\.tgz"):
        D.load_oxford5k(root / "jpg")
    with pytest.raises(D.DatasetError, match="does not exist"):
        D.load_oxford5k(tmp_path / "nowhere")


def test_modified_ground_truth_is_flagged(oxford_root, tmp_path):
    root = tmp_path / "ox"
    shutil.copytree(oxford_root, root)
    junk = root / "gt_files_170407" / "all_souls_1_junk.txt"
    junk.write_text(junk.read_text().splitlines()[0] + "\n")
    with pytest.warns(UserWarning) as record:
        bench = D.load_oxford5k(root)
    assert any("differ from the official release" in str(w.message) for w in record)
    assert bench.info["official_ground_truth"] is False
    assert len(bench.ground_truth["default"].junk[bench.query_names.index("all_souls_1")]) == 1


def test_paris6k_matches_the_official_files_and_drops_the_corrupt_images(shared_data, tmp_path):
    gt = _gt_dir(shared_data, "paris6k-gt")
    parsed = D.read_oxford_ground_truth(gt)
    assert len(parsed) == 55 and all(not q["good"] for q in parsed)  # all in *_ok.txt
    names = _named_images(parsed)
    corrupt = ["paris_louvre_000136", "paris_triomphe_000867"]
    assert not set(corrupt) & names
    _touch_images(tmp_path / "paris", list(names) + corrupt,
                  subdir_of=lambda n: n.split("_")[1])  # paris/<landmark>/<name>.jpg
    shutil.copytree(gt, tmp_path / "paris_120310")
    with pytest.warns(UserWarning, match="after leaving out the corrupt ones"):
        bench = D.load_paris6k(tmp_path)
    assert bench.n_images == len(names) and bench.info["excluded"] == sorted(corrupt)
    assert not set(corrupt) & set(bench.image_names)
    counts = _independent_counts(gt, "")
    for i, q in enumerate(bench.query_names):
        assert len(bench.ground_truth["default"].positives[i]) == counts[q][1]
        assert len(bench.ground_truth["default"].junk[i]) == counts[q][2]
    with pytest.warns(UserWarning):
        kept = D.load_paris6k(tmp_path, exclude_corrupt=False)
    assert kept.n_images == len(names) + 2
    assert bench.paired == "oxford5k"


# ---------------------------------------------------------------------------
# revisited Oxford / Paris in revisitop's format
# ---------------------------------------------------------------------------
def _write_revisited(root, n_db=12, n_q=3, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    (root / "jpg").mkdir()
    imlist = [f"img_{i:03d}" for i in range(n_db)]
    qimlist = [f"query_{i}" for i in range(n_q)]
    for n in imlist:
        (root / "jpg" / f"{n}.jpg").write_bytes(b"")
    for n in qimlist:
        Image.new("RGB", (80, 60), (10, 200, 40)).save(root / "jpg" / f"{n}.jpg")
    gnd = []
    for _ in range(n_q):
        perm = rng.permutation(n_db)
        gnd.append({"bbx": np.array([10.4, 5.5, 70.6, 50.2]), "easy": perm[:3],
                    "hard": perm[3:5], "junk": perm[5:7]})
    cfg = {"imlist": imlist, "qimlist": qimlist, "gnd": gnd}
    with open(root / "gnd_roxford5k.pkl", "wb") as fh:
        pickle.dump(cfg, fh, protocol=2)
    return cfg


def test_revisited_protocols_are_revisitops(tmp_path):
    cfg = _write_revisited(tmp_path / "roxford5k")
    # the data root above the dataset folder works too
    bench = D.load_revisited("roxford5k", tmp_path)
    assert bench.protocols == ["easy", "medium", "hard"] and bench.n_queries == 3
    assert bench.queries[0].box == (10, 6, 71, 50)  # round() as PIL's crop
    assert load_image(bench.queries[0]).shape == (44, 61, 3)
    rng = np.random.default_rng(1)
    ranks = np.stack([rng.permutation(12) for _ in range(3)])
    got = bench.evaluate(ranks)
    for protocol, ok_keys, junk_keys in (("easy", ["easy"], ["junk", "hard"]),
                                         ("medium", ["easy", "hard"], ["junk"]),
                                         ("hard", ["hard"], ["junk", "easy"])):
        gnd = [{"ok": np.concatenate([g[k] for k in ok_keys]),
                "junk": np.concatenate([g[k] for k in junk_keys])} for g in cfg["gnd"]]
        ref = reference_compute_map(ranks.T, gnd, [1, 5, 10])
        assert got[protocol]["mAP"] == pytest.approx(ref[0], abs=1e-12)
        for k, p in zip([1, 5, 10], ref[2]):
            assert got[protocol][f"mP@{k}"] == pytest.approx(p, abs=1e-12)


def test_revisited_with_the_1m_distractors(tmp_path):
    _write_revisited(tmp_path / "roxford5k")
    r1m = tmp_path / "revisitop1m"
    (r1m / "jpg" / "00").mkdir(parents=True)
    listing = [f"00/{i:04d}.jpg" for i in range(5)]
    for n in listing:
        (r1m / "jpg" / n).write_bytes(b"")
    (r1m / "revisitop1m.txt").write_text("\n".join(listing) + "\n")
    bench = D.load_revisited("roxford5k", tmp_path / "roxford5k", distractors=r1m)
    assert bench.name == "roxford5k+r1m" and bench.n_images == 17
    assert bench.images[12].endswith("00/0000.jpg") and bench.info["n_distractors"] == 5
    plain = D.load_revisited("roxford5k", tmp_path / "roxford5k")
    for p in bench.protocols:  # distractors are appended: indices unchanged
        for a, b in zip(bench.ground_truth[p].positives, plain.ground_truth[p].positives):
            np.testing.assert_array_equal(a, b)
    (r1m / "jpg" / listing[0]).unlink()
    with pytest.raises(D.DatasetError, match="missing"):
        D.load_revisited("roxford5k", tmp_path / "roxford5k", distractors=r1m)


def test_revisited_refuses_code_in_the_pickle_and_names_missing_files(tmp_path):
    _write_revisited(tmp_path / "roxford5k")
    (tmp_path / "roxford5k" / "jpg" / "img_003.jpg").unlink()
    with pytest.raises(D.DatasetError, match=r"1 of the 15 images.*img_003.*gnd_roxford5k"):
        D.load_revisited("roxford5k", tmp_path)
    with pytest.raises(D.DatasetError, match="gnd_rparis6k.pkl not found"):
        D.load_revisited("rparis6k", tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "roxford5k" / "gnd_roxford5k.pkl", "wb") as fh:
        pickle.dump({"imlist": [], "qimlist": [], "gnd": [Evil()]}, fh)
    with pytest.raises(D.DatasetError, match="refusing to load builtins.print"):
        D.load_revisited("roxford5k", tmp_path)


class _Call:
    """Pickles as a call of ``func(*args)`` (an allowed callable, bad arguments)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _entry(**changes):
    entry = {"bbx": [1.0, 2.0, 30.0, 40.0], "easy": [0, 1], "hard": [2], "junk": []}
    entry.update(changes)
    return entry


_GOOD_CFG = {"imlist": ["img_000", "img_001", "img_002"], "qimlist": ["q0"]}


@pytest.mark.parametrize("content, message", [
    # an allowed callable given a bad argument: raised a raw TypeError before
    (pickle.dumps({**_GOOD_CFG, "gnd": [_entry(easy=_Call(np.dtype, "not-a-dtype"))]}),
     r"not a revisitop ground-truth file \(TypeError: data type 'not-a-dtype'"),
    (pickle.dumps({**_GOOD_CFG, "gnd": [_Call(np.ndarray, "bad")]}),
     "not a revisitop ground-truth file"),
    # raw opcodes: REDUCE applied to a list
    (b"\x80\x02]q\x00K\x01\x85R.", r"not a revisitop ground-truth file \(TypeError"),
    (b"\x80\x02h\x05.", "not a revisitop ground-truth file"),        # a missing memo entry
    (pickle.dumps(_GOOD_CFG)[:-5], "not a revisitop ground-truth file"),  # truncated
    # well-formed pickles of the wrong shape
    (pickle.dumps([1, 2]), "is a dict with keys"),
    (pickle.dumps({**_GOOD_CFG, "gnd": 5}), "'gnd' must be a list of dicts"),
    (pickle.dumps({**_GOOD_CFG, "gnd": [5]}), r"gnd\[0\] must be a dict"),
    (pickle.dumps({**_GOOD_CFG, "imlist": [1, 2], "gnd": [_entry()]}), "'imlist' must be"),
    (pickle.dumps({**_GOOD_CFG, "gnd": [_entry(easy=["a", "b"])]}),
     r"gnd\[0\]\['easy'\] must hold indices"),
    (pickle.dumps({**_GOOD_CFG, "gnd": [_entry(hard=[7])]}),
     r"gnd\[0\]\['hard'\] must hold indices into 'imlist' \(integers from 0 to 2\)"),
    (pickle.dumps({**_GOOD_CFG, "gnd": [_entry(junk=[[0], [1, 2]])]}),
     r"gnd\[0\]\['junk'\] is not a list of image indices"),
    (pickle.dumps({**_GOOD_CFG, "gnd": [_entry(bbx=[1, 2, 3])]}),
     r"gnd\[0\]\['bbx'\] must be 4 finite numbers"),
    (pickle.dumps({**_GOOD_CFG, "gnd": [_entry(bbx="abcd")]}), r"gnd\[0\]\['bbx'\] is not a box"),
])
def test_malformed_revisited_ground_truth_raises_dataset_error_naming_the_file(
        tmp_path, content, message):
    place = tmp_path / "roxford5k"
    (place / "jpg").mkdir(parents=True)
    path = place / "gnd_roxford5k.pkl"
    path.write_bytes(content)
    with pytest.raises(D.DatasetError, match=message) as info:
        D.load_revisited("roxford5k", tmp_path)
    assert str(info.value).startswith(str(path))
    # a well-formed one of the same shape loads (the images aside)
    path.write_bytes(pickle.dumps({**_GOOD_CFG, "gnd": [_entry()]}))
    with pytest.raises(D.DatasetError, match="missing"):
        D.load_revisited("roxford5k", tmp_path)


# ---------------------------------------------------------------------------
# Holidays, UKBench, COIL
# ---------------------------------------------------------------------------
def _holidays_dir(folder, names):
    folder.mkdir(parents=True)
    for n in names:
        Image.new("RGB", (8, 8)).save(folder / n)


def test_holidays_queries_groups_and_rotated_variant(tmp_path):
    names = ["100000.jpg", "100001.jpg", "100002.jpg", "100100.jpg", "100101.jpg"]
    _holidays_dir(tmp_path / "jpg", names)
    with pytest.warns(UserWarning, match="has 1491"):
        bench = D.load_holidays(tmp_path)
    assert bench.query_names == ["100000.jpg", "100100.jpg"]
    gt = bench.ground_truth["default"]
    assert [p.tolist() for p in gt.positives] == [[1, 2], [4]]
    assert [j.tolist() for j in gt.junk] == [[0], [3]]  # the query is not its own result
    # a perfect ranking, the query itself first: mAP 1
    res = bench.evaluate([[0, 1, 2, 3, 4], [3, 4, 0, 1, 2]])
    assert res["default"]["mAP"] == 1.0
    with pytest.raises(D.DatasetError, match="jpg_rotated"):
        D.load_holidays(tmp_path, rotated=True)
    _holidays_dir(tmp_path / "jpg_rotated", names)
    with pytest.warns(UserWarning):
        rot = D.load_holidays(tmp_path, rotated=True)
    assert "jpg_rotated" in rot.images[0] and rot.info["rotated"]
    (tmp_path / "jpg" / "100100.jpg").unlink()
    with pytest.raises(D.DatasetError, match="without a query image.*1001"):
        D.load_holidays(tmp_path)


def test_holidays_and_ukbench_samples(shared_data):
    if not (shared_data / "holidays-sample").is_dir():
        pytest.skip("holidays sample not in shared data")
    with pytest.warns(UserWarning):
        hol = D.load_holidays(shared_data / "holidays-sample")
    assert hol.query_names == ["100000.jpg"]
    assert hol.ground_truth["default"].positives[0].tolist() == [1, 2]
    with pytest.warns(UserWarning, match="has 10200"):
        uk = D.load_ukbench(shared_data / "ukbench-sample")
    assert uk.n_queries == uk.n_images == 10
    assert uk.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    # each query ranks its own group first, itself at the top
    ranks = np.array([[q] + [j for j in range(10) if j != q and j // 4 == q // 4]
                      + [j for j in range(10) if j // 4 != q // 4] for q in range(10)])
    res = uk.evaluate(ranks)["default"]
    assert res["N-S"] == pytest.approx((8 * 4 + 2 * 2) / 10)
    assert res["mAP"] == 1.0
    # a ranking that puts group 0 first for everybody
    worst = np.array([list(range(10)) for _ in range(10)])
    assert uk.evaluate(worst)["default"]["N-S"] == pytest.approx((4 * 4 + 0 * 6) / 10)


def test_coil_leave_one_out(shared_data):
    if not (shared_data / "coil20").is_dir():
        pytest.skip("COIL-20 not in shared data")
    bench = D.load_dataset("coil20", shared_data / "coil20")
    assert bench.n_images == bench.n_queries == 1440
    assert np.bincount(bench.labels)[1:].tolist() == [72] * 20
    gt = bench.ground_truth["default"]
    assert all(len(p) == 71 for p in gt.positives)
    assert all(j.tolist() == [q] for q, j in enumerate(gt.junk))
    assert bench.paired == "coil100"
    with pytest.raises(D.DatasetError, match=r"coil-20-proc\.zip"):
        D.load_coil(shared_data / "ukbench-sample", name="coil20")
    with pytest.raises(ValueError, match="unknown dataset"):
        D.load_dataset("imagenet", shared_data)


# ---------------------------------------------------------------------------
# the ground-truth scorer
# ---------------------------------------------------------------------------
def test_retrieval_map_with_a_ground_truth():
    rng = np.random.default_rng(3)
    db = rng.normal(size=(30, 8)).astype(np.float32)
    queries = rng.normal(size=(4, 8)).astype(np.float32)
    gt = D.GroundTruth([rng.choice(30, 5, replace=False) for _ in range(4)],
                       [rng.choice(30, 2, replace=False) for _ in range(4)])
    gt.junk = [np.setdiff1d(j, p) for j, p in zip(gt.junk, gt.positives)]
    nn = NearestNeighborRetriever().fit(db)
    sims = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
        db / np.linalg.norm(db, axis=1, keepdims=True)).T
    ranks = np.argsort(-sims, axis=1, kind="stable")
    ids = np.array([2, 0, 3])
    expected = mean_average_precision(ranks[ids], [gt.positives[i] for i in ids],
                                      [gt.junk[i] for i in ids])
    assert RetrievalMAP(ground_truth=gt)(nn, queries[ids], ids) == pytest.approx(
        expected, abs=1e-12)
    assert gt.evaluate(ranks)["mAP"] == pytest.approx(
        mean_average_precision(ranks, gt.positives, gt.junk), abs=1e-12)
    with pytest.raises(ValueError, match="query numbers"):
        RetrievalMAP(ground_truth=gt)(nn, queries[:1], np.array([7]))
    with pytest.raises(TypeError, match="GroundTruth"):
        RetrievalMAP(ground_truth=[1, 2])


# ---------------------------------------------------------------------------
# downloading
# ---------------------------------------------------------------------------
def test_download_fails_fast_and_clearly_without_a_server(tmp_path, monkeypatch):
    monkeypatch.setitem(D.SOURCES, "coil20", [("http://127.0.0.1:9/coil-20-proc.zip", "")])
    with pytest.raises(D.DownloadError, match=r"could not download .*coil-20-proc\.zip"
                                              r".*put it at"):
        D.load_coil(tmp_path, name="coil20", download=True)


def test_download_extracts_and_checks_the_checksum(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(src / f"10{i}000.jpg")
    Image.new("RGB", (8, 8)).save(src / "100001.jpg")
    archive = tmp_path / "jpg1.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for f in sorted(src.iterdir()):
            tf.add(f, arcname=f"jpg/{f.name}")
    monkeypatch.setitem(D.SOURCES, "holidays", [(archive.as_uri(), "")])
    root = tmp_path / "holidays"
    with pytest.warns(UserWarning, match="has 1491"):
        bench = D.load_holidays(root, download=True)
    assert bench.n_images == 4 and bench.n_queries == 3
    assert "jpg1.tar.gz" in (root / "SHA256SUMS.json").read_text()
    # a changed file no longer matches the recorded checksum
    (root / "downloads" / "jpg1.tar.gz").write_bytes(b"tampered")
    with pytest.raises(D.DownloadError, match="does not match"):
        D.download_dataset("holidays", root)


def test_subset_rebuilds_the_leave_one_out_ground_truth(tmp_path):
    names = ["100000.jpg", "100001.jpg", "100002.jpg", "100100.jpg", "100101.jpg",
             "100200.jpg", "100201.jpg"]
    _holidays_dir(tmp_path / "jpg", names)
    with pytest.warns(UserWarning):
        bench = D.load_holidays(tmp_path)
    sub = bench.subset(bench.labels != 1001, name="holidays-part")
    assert sub.image_names == ["100000.jpg", "100001.jpg", "100002.jpg", "100200.jpg",
                               "100201.jpg"]
    assert sub.query_names == ["100000.jpg", "100200.jpg"]
    gt = sub.ground_truth["default"]
    assert [p.tolist() for p in gt.positives] == [[1, 2], [4]]
    assert [j.tolist() for j in gt.junk] == [[0], [3]]
    assert sub.name == "holidays-part" and sub.evaluate(
        [[0, 1, 2, 3, 4], [3, 4, 0, 1, 2]])["default"]["mAP"] == 1.0
    with pytest.raises(ValueError, match="selects no image"):
        bench.subset(np.zeros(7, bool))


def test_download_of_rparis6k_flattens_the_landmark_folders(tmp_path, monkeypatch):
    src = tmp_path / "src"
    (src / "paris" / "defense").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(src / "paris" / "defense" / "img_000.jpg")
    Image.new("RGB", (8, 8)).save(src / "paris" / "defense" / "query_0.jpg")
    archive = tmp_path / "paris_1-v1.tgz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src / "paris", arcname="paris")
    gnd = tmp_path / "gnd_rparis6k.pkl"
    with open(gnd, "wb") as fh:
        pickle.dump({"imlist": ["img_000"], "qimlist": ["query_0"],
                     "gnd": [{"bbx": [0, 0, 8, 8], "easy": [0], "hard": [], "junk": []}]}, fh)
    monkeypatch.setitem(D.SOURCES, "rparis6k", [(archive.as_uri(), "jpg"), (gnd.as_uri(), "")])
    bench = D.load_revisited("rparis6k", tmp_path / "rparis6k", download=True)
    assert bench.images == [str(tmp_path / "rparis6k" / "jpg" / "img_000.jpg")]
    assert bench.n_queries == 1
