"""ConvFeatureExtractor: images -> convolutional feature maps of a torchvision CNN."""

from __future__ import annotations

import copy
import os
import sys
import time
import warnings
from collections import OrderedDict, defaultdict
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral, Real

import numpy as np
import torch
from PIL import Image
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._backbones import cam_head, describe_weights, load_backbone, resolve_layer
from . import _distributed
from ._cache import FORWARD_PASSES, get_cache, make_key
from ._images import describe, image_key, load_image
from ._maps import FeatureMaps

__all__ = ["ConvFeatureExtractor"]

# Images decoded ahead of the network, per chunk: bounds the RAM held by
# decoded pixels and by not-yet-stored maps.
_CHUNK = 64
_TRUNKS: "OrderedDict[tuple, torch.nn.Module]" = OrderedDict()
# NHWC tensors let oneDNN pick its fast convolution kernels on CPU (about
# 1.5x for MobileNetV2 here, see benchmarks/bench_extraction.py).
CHANNELS_LAST = True
_GEOMETRY: dict = {}


def _resolve_device(device):
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; use 'cpu' or 'auto'")
    return str(dev)


def _as_image_list(X):
    """Validate the collection ``X`` and return it as a list of images."""
    if isinstance(X, (str, os.PathLike, Image.Image)):
        raise TypeError(
            "X must be a collection of images (a list of paths, PIL images or "
            f"arrays), got a single {type(X).__name__}; wrap it in a list"
        )
    if isinstance(X, np.ndarray):
        if X.dtype != object and X.ndim != 4:
            raise ValueError(
                "an array X must hold a batch of images, shape (n, H, W, 3); got "
                f"shape {X.shape}. Pass a list of images instead"
            )
        items = list(X)
    elif isinstance(X, FeatureMaps):
        raise TypeError("X is already FeatureMaps: it goes to a pooler, not to the extractor")
    else:
        try:
            items = list(X)
        except TypeError:
            raise TypeError(
                f"X must be a list of images (paths, PIL images or arrays), got "
                f"{type(X).__name__}"
            ) from None
    if not items:
        raise ValueError("X is empty: no image to extract features from")
    return items


def _resized_shape(h, w, longest):
    s = longest / max(h, w)
    return max(1, int(round(h * s))), max(1, int(round(w * s)))


def _resize(arr, shape):
    if arr.shape[:2] == shape:
        return arr
    img = Image.fromarray(arr).resize((shape[1], shape[0]), Image.BILINEAR)
    return np.asarray(img)


def _smallest_input(forward, start, device):
    """Smallest square input side (>= ``start``) that ``forward`` accepts."""
    size = max(1, int(start))

    def ok(side):
        try:
            forward(torch.zeros(1, 3, side, side, device=device))
            return True
        except RuntimeError:
            return False

    if ok(size):
        return size
    lo = size
    while size < 4096 and not ok(size):
        lo, size = size, size * 2
    for s in range(lo + 1, size):  # refine between the last failure and success
        if ok(s):
            return s
    return size


class ConvFeatureExtractor(TransformerMixin, BaseEstimator):
    """Convolutional feature maps of a torchvision backbone.

    Every image is resized so that its longest side is ``max_size * scale``
    for each scale (aspect ratio kept, no crop), normalised as the weights
    expect, and fed to the backbone truncated at ``layer``.  The output keeps
    the spatial layout: one ``C x H x W`` map per image and scale, in a
    :class:`~skretrieval.FeatureMaps` (a ragged, list-like container that
    pipelines and grid searches slice like an array).  Pool it into a vector
    with a pooler (:class:`GeMPooler`, :class:`SPoCPooler`, ...).

    Parameters
    ----------
    backbone : str, default="mobilenet_v2"
        Any torchvision classification model name ("vgg16", "resnet50",
        "googlenet", "mobilenet_v2", "efficientnet_b0", ...).
    weights : str, path or None, default="IMAGENET1K_V1"
        A torchvision weights name of that model ("IMAGENET1K_V1",
        "DEFAULT", ...), a path to a state-dict file, or None for random
        initialisation.  Official files are looked up in torch's hub cache,
        in ``$SKRETRIEVAL_WEIGHTS_DIR`` and in packages that ship them before
        any download (see :func:`skretrieval.weights_search_dirs`).
    layer : str, int or None, default=None
        Where to cut the network: a friendly name (vgg ``"conv5_3"``,
        ``"pool5"``; resnet ``"layer3"``; googlenet ``"inception4e"``;
        mobilenet block index ``14`` or ``"block14"``), a torchvision graph
        node or module name (``"features.14"``), or None for the last
        convolutional layer.  VGG ``convB_I`` names are the ReLU outputs.
        VGG and AlexNet also accept ``"fc6"`` and ``"fc7"`` (after their
        ReLU; ``"fc6_prerelu"`` before), the neural codes of Babenko et al.
        (ECCV 2014): use ``max_size=224`` and any pooler (a ``D x 1 x 1``
        map pools to the code itself).
    max_size : int, default=1024
        Longest image side in pixels at scale 1 (images are up- or
        down-sampled to it with bilinear interpolation).
    scales : tuple of float, default=(1.0,)
        Multipliers of ``max_size``; one map per scale (e.g. ``(1, 2)`` as in
        Ng et al., ``(1, 2**-0.5, 0.5)`` as in Radenović et al.).
    device : str, default="auto"
        Torch device; "auto" picks CUDA, then MPS, then CPU.
    batch_size : int or None, default=None
        Images of identical resized shape are fed to the network together, up
        to this many at once.  None: 1 on CPU (batching large images measured
        1.6x slower there, ``benchmarks/bench_extraction.py``), 8 on GPU.
    dtype : {"float32", "float16"}, default="float32"
        Storage precision of the output maps (float16 halves their memory;
        the network always computes in float32).
    store : {"memory", "disk"} or path, default="memory"
        Where the output maps live: in RAM, or in a file read back image by
        image (a temporary directory for "disk", removed with the
        output; or the given directory).  Use "disk" for large collections:
        peak memory then stays that of one chunk of images.
    cache : None, "memory" or path, default=None
        Feature cache keyed by image content, backbone, weights, layer and
        input size: "memory" (per process, LRU, bounded by
        ``$SKRETRIEVAL_CACHE_BYTES``, default 2 GiB) or a directory shared by
        processes.  With a cache, grid-search candidates that differ only in
        downstream steps run the network once per image and scale.
    cache_layers : sequence of str or int, default=None
        More layers to extract in the same forward pass as ``layer`` and to
        store in ``cache`` (ignored without a cache).  Give every layer a
        grid search tries, and the backbone runs once per image and scale for
        all of them: the candidates with another ``layer`` find their maps in
        the cache.  The network then runs up to the deepest of these layers.
        Not pickled: a loaded extractor computes ``layer`` only.
    cams : int or None, default=None
        Also compute class activation maps (Zhou et al., CVPR 2016) of the
        ``cams`` most probable classes of every image, for
        :class:`CAMWeighter` and the CAM-proposal re-ranking of
        :class:`RegionReranker`.  The backbone's classifier must be global
        average pooling + one linear layer (ResNet, DenseNet, GoogLeNet,
        MobileNetV2, EfficientNet...; VGG has none and raises).  The CAM of
        class ``c`` is ``sum_k w_ck F_k`` over the last convolutional maps
        ``F`` (``w``: the classifier's weights), bilinearly resized to the grid
        of ``layer`` and min-max normalised to [0, 1]; the classes are ranked
        by the softmax of the classifier averaged over the scales.  They are
        read with ``maps.class_activations(i)``.  The network runs up to its
        last convolutional layer, whatever ``layer`` is.
    n_jobs : int or None, default=None
        Threads that decode and resize images while the network runs
        (None: 1 on CPU, where the network uses every core; up to 4 on GPU).
    verbose : int, default=0
        Print progress (images done, rate, time left) to stderr when > 0.

    Attributes
    ----------
    trunk_ : torch.nn.Module
        The backbone truncated at the layer (rebuilt lazily after unpickling).
    layer_node_ : str
        The torchvision graph node the maps are taken from.
    layer_name_ : str
        The layer as requested (friendly name) or the resolved node.
    cache_nodes_ : tuple of str
        Graph nodes of ``cache_layers`` other than ``layer_node_``.
    cam_node_ : str or None
        Graph node of the maps the CAMs are computed from (with ``cams``).
    n_classes_ : int or None
        Number of classes of the classifier (with ``cams``).
    n_channels_ : int
        Number of channels ``C`` of the maps.
    stride_ : float
        Input pixels per output cell along each side.
    min_input_size_ : int
        Smallest image side (after resizing) the truncated network accepts.
    fully_connected_ : bool
        Whether ``layer`` is a fully-connected layer (neural codes): its
        ``D``-vector is returned as a ``D x 1 x 1`` map, and every image is
        resized to a ``max_size`` square (aspect ratio ignored), the fixed
        input those layers were trained on (224 for VGG and AlexNet).
    mean_, std_ : tuple of float
        Normalisation applied to RGB values in [0, 1].
    device_ : str
        Device the network runs on.

    See Also
    --------
    FeatureMaps : The output container.
    GeMPooler, SPoCPooler, MACPooler, RMACPooler, CroWPooler : Poolers.

    Notes
    -----
    Images may be paths, PIL images or ``H x W x 3`` uint8 arrays (see
    :func:`skretrieval.load_image` for the conversions); wrap a query in
    :class:`skretrieval.Crop` to extract features from a box only (cropped at
    full resolution before resizing, as the revisitop protocol requires).
    An unreadable image aborts the transform with an
    :class:`~skretrieval.ImageLoadError` naming it; screen a large folder
    first with :func:`skretrieval.check_images`.

    Pickling stores the truncated network's ``state_dict`` as numpy arrays,
    not the torch module; loading rebuilds the module on first use, on CPU
    when the fitted device is absent.

    Inside ``with joblib.parallel_backend("dask"):`` (dask.distributed),
    :meth:`transform` runs chunks of the images on the cluster's workers and
    returns the same maps, in order; a chunk that fails is retried, one that
    still fails is reported by :class:`~skretrieval.DistributedExtractionError`
    with the maps of the other images (``docs/distributed.md``).

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval import ConvFeatureExtractor
    >>> rng = np.random.default_rng(0)
    >>> images = [rng.integers(0, 255, (60, 80, 3), dtype=np.uint8) for _ in range(2)]
    >>> ext = ConvFeatureExtractor("resnet18", weights=None, max_size=64).fit(images)
    >>> maps = ext.transform(images)
    >>> maps[0][0].shape
    (512, 2, 2)
    """

    _parameter_constraints = {
        "backbone": [str],
        "weights": "no_validation",
        "layer": [str, Integral, None],
        "max_size": [Interval(Integral, 1, None, closed="left")],
        "scales": ["array-like", Interval(Real, 0, None, closed="neither")],
        "device": [str],
        "batch_size": [Interval(Integral, 1, None, closed="left"), None],
        "dtype": [StrOptions({"float32", "float16"})],
        "store": [StrOptions({"memory", "disk"}), str, os.PathLike],
        "cache": [None, str, os.PathLike],
        "cache_layers": ["array-like", None],
        "cams": [Interval(Integral, 1, None, closed="left"), None],
        "n_jobs": [Interval(Integral, 1, None, closed="left"), None],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        backbone="mobilenet_v2",
        *,
        weights="IMAGENET1K_V1",
        layer=None,
        max_size=1024,
        scales=(1.0,),
        device="auto",
        batch_size=None,
        dtype="float32",
        store="memory",
        cache=None,
        cache_layers=None,
        cams=None,
        n_jobs=None,
        verbose=0,
    ):
        self.backbone = backbone
        self.weights = weights
        self.layer = layer
        self.max_size = max_size
        self.scales = scales
        self.device = device
        self.batch_size = batch_size
        self.dtype = dtype
        self.store = store
        self.cache = cache
        self.cache_layers = cache_layers
        self.cams = cams
        self.n_jobs = n_jobs
        self.verbose = verbose

    # ------------------------------------------------------------------
    def _scales(self):
        scales = np.atleast_1d(np.asarray(self.scales, dtype=float))
        if scales.ndim != 1 or scales.size == 0 or not np.all(scales > 0):
            raise ValueError(f"scales must be positive numbers, got {self.scales!r}")
        return tuple(float(s) for s in scales)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X=None, y=None):
        """Load the backbone, cut it at the layer and probe its geometry.

        Parameters
        ----------
        X : list of images, optional
            Not used to fit anything (the network is pretrained); checked
            for emptiness when given.
        y : ignored

        Returns
        -------
        self : ConvFeatureExtractor
        """
        if X is not None:
            _as_image_list(X)
        self._scales()
        self.device_ = _resolve_device(self.device)
        wid = describe_weights(self.backbone, self.weights)
        model, mean, std = load_backbone(self.backbone, self.weights)
        node, name = resolve_layer(self.backbone, model, self.layer)
        self.layer_node_, self.layer_name_ = node, name
        self.mean_, self.std_ = tuple(mean), tuple(std)
        self._weights_id = wid
        self.cam_node_ = self.n_classes_ = None
        if self.cams is not None:
            self.cam_node_, self._cam_weight, self._cam_bias = cam_head(self.backbone, model)
            self.n_classes_ = int(self._cam_weight.shape[0])
            if self.cams > self.n_classes_:
                raise ValueError(f"cams={self.cams} but {self.backbone} has "
                                 f"{self.n_classes_} classes")
        key, self.trunk_ = self._shared_trunk(model, node)
        # the geometry depends only on the trunk: probe once per trunk, not
        # at every refit of a grid search
        geometry = _GEOMETRY.get(key)
        if geometry is None:
            self._probe()
            _GEOMETRY[key] = (self.n_channels_, self.stride_, self.min_input_size_,
                              self.fully_connected_)
        else:
            (self.n_channels_, self.stride_, self.min_input_size_,
             self.fully_connected_) = geometry
        self._fit_cache_layers(model)
        return self

    def _fit_cache_layers(self, model):
        """Resolve ``cache_layers`` and build the network that returns them all."""
        extra = []
        if self.cache_layers is not None:
            layers = ([self.cache_layers] if isinstance(self.cache_layers, (str, Integral))
                      else list(self.cache_layers))
            for layer in layers:
                node, _ = resolve_layer(self.backbone, model, layer)
                if node != self.layer_node_ and node not in extra:
                    extra.append(node)
        self.cache_nodes_ = tuple(extra)
        cam = self._cam_extra()
        if cam and cam[0] not in extra:
            extra.append(cam[0])
        self._multi_trunk = None
        self._multi_min_size = None
        if not extra or self.cache is None:
            return
        key, trunk = self._shared_trunk(model, (self.layer_node_,) + tuple(sorted(extra)))
        self._multi_trunk = trunk
        size = _GEOMETRY.get(key)
        if size is None:
            with torch.inference_mode():
                size = _GEOMETRY[key] = _smallest_input(
                    lambda x: trunk(x), self.min_input_size_, self.device_)
        self._multi_min_size = size

    def _cam_extra(self):
        """``(cam_node,)`` when the CAMs need maps of another node than the layer's."""
        node = getattr(self, "cam_node_", None)
        return (node,) if node is not None and node != self.layer_node_ else ()

    def _shared_trunk(self, model, node):
        """The truncated network for ``node`` (a node or a tuple of nodes) on
        this device, shared by the extractors of this process (LRU of 8)."""
        cam = () if isinstance(node, tuple) else self._cam_extra()
        key = (self.backbone, self._weights_id, node, cam, self.device_, CHANNELS_LAST)
        trunk = _TRUNKS.get(key)
        if trunk is None:
            trunk = self._build_trunk(model, node, *cam).to(self.device_)
            if CHANNELS_LAST:
                trunk = trunk.to(memory_format=torch.channels_last)
            _TRUNKS[key] = trunk
            while len(_TRUNKS) > 8:
                _TRUNKS.popitem(last=False)
        else:
            _TRUNKS.move_to_end(key)
        return key, trunk

    @staticmethod
    def _build_trunk(model, node, cam_node=None):
        """The network cut at ``node`` (output "out", and "cam" for ``cam_node``),
        or returning every node of a tuple (outputs named by their nodes)."""
        from torchvision.models.feature_extraction import create_feature_extractor

        return_nodes = {n: n for n in node} if isinstance(node, tuple) else {node: "out"}
        if cam_node is not None:
            return_nodes[cam_node] = "cam"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            trunk = create_feature_extractor(model, return_nodes=return_nodes)
        # The graph module shares its submodules with ``model`` (which the
        # backbone cache hands to other extractors): own copy, so that moving
        # it to a device or to channels-last leaves the shared model alone.
        trunk = copy.deepcopy(trunk).eval()
        return trunk

    def _forward(self, batch):
        return self._as_map(self.trunk_(batch)["out"])

    def _as_map(self, out):
        """A 4-D output as is; a fully-connected layer's ``(N, D)`` as ``D x 1 x 1``."""
        if out.ndim == 2:
            return out[:, :, None, None]
        if out.ndim != 4:
            raise ValueError(
                f"layer {self.layer_name_!r} of {self.backbone} outputs a tensor of "
                f"shape {tuple(out.shape)}, not a C x H x W map or a vector; choose "
                "a convolutional or fully-connected layer"
            )
        return out

    def _probe(self):
        """Find the channel count, stride and smallest accepted input."""
        with torch.inference_mode():
            x = torch.zeros(1, 3, 224, 224, device=self.device_)
            self.fully_connected_ = self.trunk_(x)["out"].ndim == 2
            out = self._forward(x)
            self.n_channels_ = int(out.shape[1])
            self.stride_ = 224 / out.shape[-1]
            self.min_input_size_ = _smallest_input(self._forward, 1, self.device_)

    def _ensure_trunk(self):
        """Rebuild the network after unpickling (from the stored state dict)."""
        if self.trunk_ is not None:
            return
        from torchvision.models import get_model

        from ._backbones import _model_builder_kwargs

        device = self.device_
        if device.startswith("cuda") and not torch.cuda.is_available():
            warnings.warn(
                f"this extractor was fitted on {device!r}, which is not available "
                "here; running on CPU",
                RuntimeWarning,
                stacklevel=3,
            )
            device = self.device_ = "cpu"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            model = get_model(self.backbone, weights=None,
                              **_model_builder_kwargs(self.backbone))
        model.eval()
        trunk = self._build_trunk(model, self.layer_node_, *self._cam_extra())
        state = {k: torch.from_numpy(np.array(v)) for k, v in self._trunk_state.items()}
        trunk.load_state_dict(state)
        for p in trunk.parameters():
            p.requires_grad_(False)
        if CHANNELS_LAST:
            trunk = trunk.to(memory_format=torch.channels_last)
        self.trunk_ = trunk.to(device)
        del self._trunk_state

    def __getstate__(self):
        state = self.__dict__.copy()
        if state.get("_multi_trunk") is not None:
            state["_multi_trunk"] = None  # a loaded extractor computes its layer only
        trunk = state.get("trunk_")
        if trunk is not None:
            state["trunk_"] = None
            state["_trunk_state"] = {
                k: v.detach().cpu().numpy() for k, v in trunk.state_dict().items()
            }
        return state

    # ------------------------------------------------------------------
    def _prepare(self, index, item, scales):
        """Load one image and resize it for every scale (runs in a thread)."""
        arr = load_image(item, index=index)
        h, w = arr.shape[:2]
        out = []
        square = getattr(self, "fully_connected_", False)
        for s in scales:
            shape = _resized_shape(h, w, self.max_size * s)
            if square:  # fully-connected codes: the whole image, aspect ignored
                shape = (max(1, round(self.max_size * s)),) * 2
            if min(shape) < self.min_input_size_:
                raise ValueError(
                    f"{describe(item, index)} is {h}x{w} px, {shape[0]}x{shape[1]} "
                    f"after resizing to max_size={self.max_size} x scale {s}; layer "
                    f"{self.layer_name_!r} of {self.backbone} needs at least "
                    f"{self.min_input_size_} px on each side. Raise max_size or "
                    "drop this image"
                )
            out.append(_resize(arr, shape))
        return out

    def _keys(self, items, indices, scales):
        """Cache keys: per image, ``{node: [one key per scale]}`` for the layer
        and, when the multi-layer network is used, for ``cache_layers``."""
        if self.cache is None:
            return None
        nodes = (self.layer_node_,) + self._cam_extra()
        if getattr(self, "_multi_trunk", None) is not None:
            nodes += tuple(n for n in self.cache_nodes_ if n not in nodes)
        out = []
        for i in indices:
            ikey = image_key(items[i], index=i)
            out.append({
                node: [make_key((self.backbone, self._weights_id, node, self.dtype), ikey,
                                self.max_size, s) for s in scales]
                for node in nodes
            })
        return out

    def transform(self, X):
        """Extract feature maps.

        Parameters
        ----------
        X : list of images
            Paths, PIL images, ``H x W x 3`` arrays or :class:`Crop` items.

        Returns
        -------
        maps : FeatureMaps
            ``maps[i]`` is a tuple of one ``(C, H, W)`` float32 array per scale.
        """
        check_is_fitted(self, "trunk_")
        items = _as_image_list(X)
        self._ensure_trunk()
        backend = _distributed.distributed_backend()
        if backend is not None:  # joblib's dask backend: chunks run on its workers
            return _distributed.transform_distributed(self, items, backend)
        scales = self._scales()
        cache = get_cache(self.cache)
        out = FeatureMaps(scales=scales, layer=self.layer_name_, store=self.store,
                          dtype=self.dtype)
        needed = (self.layer_node_,) + self._cam_extra()
        # On CPU the network already uses every core: one decoding thread
        # overlaps I/O without oversubscribing (benchmarks/bench_extraction.py).
        n_threads = self.n_jobs or (1 if self.device_ == "cpu" else min(4, os.cpu_count() or 1))
        batch_size = self.batch_size or (1 if self.device_ == "cpu" else 8)
        mean = torch.tensor(self.mean_, device=self.device_).view(1, 3, 1, 1)
        std = torch.tensor(self.std_, device=self.device_).view(1, 3, 1, 1)
        t0, last_report = time.perf_counter(), 0.0
        chunks = [range(a, min(a + _CHUNK, len(items))) for a in range(0, len(items), _CHUNK)]
        with ThreadPoolExecutor(max_workers=n_threads) as pool:

            def submit(chunk):
                keys = self._keys(items, chunk, scales)
                futures = []
                for j, i in enumerate(chunk):
                    if keys is not None:
                        hits = [{node: cache.get(keys[j][node][s]) for node in needed}
                                for s in range(len(scales))]
                        if all(h is not None for hit in hits for h in hit.values()):
                            futures.append((None, hits, keys[j]))
                            continue
                    futures.append((pool.submit(self._prepare, i, items[i], scales), None,
                                    None if keys is None else keys[j]))
                return futures

            pending = submit(chunks[0]) if chunks else []
            for c, chunk in enumerate(chunks):
                current = pending
                if c + 1 < len(chunks):  # decode the next chunk while this one runs
                    pending = submit(chunks[c + 1])
                results = {}
                groups = defaultdict(list)
                for j, (fut, hits, keys) in enumerate(current):
                    if fut is None:
                        results.update({(j, s): hits[s] for s in range(len(scales))})
                        continue
                    for s, arr in enumerate(fut.result()):
                        groups[arr.shape].append((j, s, arr, keys))
                with torch.inference_mode():
                    for shape in sorted(groups):
                        members = groups[shape]
                        for b in range(0, len(members), batch_size):
                            batch = members[b:b + batch_size]
                            outputs = self._run_batch([m[2] for m in batch], mean, std,
                                                      [chunk[m[0]] for m in batch], items,
                                                      multi=cache is not None)
                            for (j, s, _, keys_j), maps in zip(batch, outputs):
                                results[(j, s)] = {node: maps[node] for node in needed}
                                if cache is not None:
                                    for node, fmap in maps.items():
                                        if self.dtype == "float16":  # in the key too
                                            fmap = fmap.astype(np.float16)
                                        cache.put(keys_j[node][s], fmap)
                for j in range(len(chunk)):
                    got = [results.pop((j, s)) for s in range(len(scales))]
                    entry = tuple(g[self.layer_node_] for g in got)
                    cams = None
                    if self.cams is not None:
                        node = self.cam_node_
                        cams = self._class_activations(entry, [g[node] for g in got])
                    out.append(entry, cams)
                if self.verbose:
                    now = time.perf_counter() - t0
                    done = chunk.stop
                    if now - last_report > 5 or done == len(items):
                        last_report = now
                        rate = done / max(now, 1e-9)
                        eta = (len(items) - done) / max(rate, 1e-9)
                        print(f"[ConvFeatureExtractor] {done}/{len(items)} images, "
                              f"{rate:.1f} img/s, {eta:.0f} s left", file=sys.stderr,
                              flush=True)
        return out

    def _run_batch(self, arrays, mean, std, indices, items, multi=False):
        """Run a batch; per image, ``{node: map}`` (the cache layers too when
        ``multi`` and the multi-layer network accepts the input size)."""
        x = torch.from_numpy(np.stack(arrays)).to(self.device_)
        x = x.permute(0, 3, 1, 2).float().div_(255.0).sub_(mean).div_(std)
        if CHANNELS_LAST:
            x = x.contiguous(memory_format=torch.channels_last)
        trunk = getattr(self, "_multi_trunk", None) if multi else None
        if trunk is not None and min(arrays[0].shape[:2]) < self._multi_min_size:
            trunk = None  # too small for the deepest cache layer: this layer only
        try:
            if trunk is None:
                outputs = self.trunk_(x)
                outputs = {self.layer_node_: self._as_map(outputs["out"]),
                           **{n: outputs["cam"] for n in self._cam_extra()}}
            else:
                outputs = {node: y if y.ndim == 4 else y[:, :, None, None]
                           for node, y in trunk(x).items() if y.ndim in (2, 4)}
        except RuntimeError as exc:
            names = ", ".join(describe(items[i], i) for i in indices[:3])
            raise RuntimeError(
                f"{self.backbone} failed on {names} (input {tuple(x.shape)}): {exc}"
            ) from exc
        FORWARD_PASSES.add(len(arrays))
        outputs = {node: y.float().cpu().numpy() for node, y in outputs.items()}
        return [{node: np.ascontiguousarray(y[b]) for node, y in outputs.items()}
                for b in range(len(arrays))]

    def _class_activations(self, entry, cam_maps):
        """Top-``cams`` classes, their probabilities and CAMs on the layer grid."""
        W, b = self._cam_weight, self._cam_bias
        probs = np.zeros(W.shape[0])
        for F in cam_maps:
            logits = W @ np.asarray(F, np.float32).mean(axis=(1, 2)) + b
            e = np.exp(logits - logits.max())
            probs += e / e.sum()
        probs /= len(cam_maps)
        top = np.argsort(-probs, kind="stable")[: self.cams]
        cams = []
        for fmap, F in zip(entry, cam_maps):
            C, h, w = F.shape
            cam = (W[top] @ np.asarray(F, np.float32).reshape(C, -1)).reshape(-1, h, w)
            if (h, w) != fmap.shape[1:]:
                cam = torch.nn.functional.interpolate(
                    torch.from_numpy(cam)[None], size=fmap.shape[1:], mode="bilinear",
                    align_corners=False)[0].numpy()
            lo = cam.min(axis=(1, 2), keepdims=True)
            span = cam.max(axis=(1, 2), keepdims=True) - lo
            cam = np.where(span > 0, (cam - lo) / np.where(span > 0, span, 1), 1.0)
            cams.append(cam.astype(np.float32))
        return top, probs[top].astype(np.float32), tuple(cams)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.non_deterministic = self.device not in ("cpu",)
        return tags
