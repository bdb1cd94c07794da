"""ConvFeatureExtractor: images -> convolutional feature maps of a torchvision CNN."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._backbones import cam_head, describe_weights, load_backbone, resolve_layer
from . import _distributed
from ._batches import (SKIP_LISTED, ShapeBatching, as_image_list, checked_scales,
                       numbered_error, prepare_image, stop_error, warn_skipped)
from ._cache import (FORWARD_PASSES, RESUME_STORE, cache_setting, get_cache,
                     image_cache_keys, make_key)
from ._passes import (CHANNELS_LAST, CachedJob, ChunkResult, CutNetwork, EngineSessions,
                      NetworkRunner, RunJob, StashedJob, as_map, choose_engine)
from ._images import ImageLoadError, describe, image_key
from ._maps import FeatureMaps, class_activations
from ._network import (backbone_network, fallback_device, network_from_state, probed,
                       resolve_device, smallest_input, state_arrays)
from ..utils._progress import progress
from ..utils._state import Attr, PathParam, StateSpec

__all__ = ["ConvFeatureExtractor"]

# Images decoded ahead of the network, per chunk: bounds the RAM held by
# decoded pixels and by not-yet-stored maps.
_CHUNK = 64
# Images named in full in the warning of on_error="skip" (the rest are counted).


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
        "googlenet", "mobilenet_v2", "efficientnet_b0", "vit_b_16", ...),
        ``"timm:<model name>"`` or ``"open_clip:<arch>/<tag>"`` (extras
        ``skretrieval[timm]``, ``skretrieval[open_clip]``); transformers
        give their patch tokens as maps (``docs/backbones.md``).
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
        Transformers: ``"block<k>"`` (patch tokens after block ``k`` as a
        ``C x H/p x W/p`` map), ``"norm"`` (after the final norm; the
        default), ``"block<k>.cls"`` / ``"norm.cls"`` (the class token as a
        ``C x 1 x 1`` map), and the library's own names (``"encoder_layer_11"``,
        ``"blocks.11"``).
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
    cache : "auto", "memory", path, None or False, default="auto"
        Feature cache keyed by image content, backbone, weights, layer and
        input size: "memory" (per process, LRU, bounded by
        ``$SKRETRIEVAL_MEMORY_CACHE_BYTES``, default 2 GiB) or a directory
        shared by processes.  "auto": the memory cache, except with a
        ``store`` on disk (then none: large collections stay out of RAM).
        None, False or "none": no cache.  With a cache, grid-search
        candidates that differ only in downstream steps, or in ``layer`` and
        ``max_size`` values already seen, run the network once per image,
        scale and layer.
    cache_layers : sequence of str or int, default=None
        More layers to extract in the same forward pass as ``layer`` and to
        store in ``cache`` (ignored without a cache).  Give every layer a
        grid search tries, and the backbone runs once per image and scale for
        all of them: the candidates with another ``layer`` find their maps in
        the cache.  The network then runs up to the deepest of these layers.
        The default ``cache="auto"`` is a cache.  Not pickled: a loaded extractor computes ``layer`` only.
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
    strict : bool, default=True
        Treat a JPEG file whose compressed data is corrupt as a bad image
        (:class:`~skretrieval.ImageLoadError`): Pillow decodes such a file to
        wrong pixels without an error.  The check adds about a third to the
        loading time of a camera photo (+33 ms for 8 megapixels, up to twice
        it for small or progressive files; see :func:`skretrieval.load_image`),
        little next to the network; False skips it.  Images found in
        ``cache`` are not decoded, hence not checked, again.
    on_error : {"raise", "skip"}, default="raise"
        What :meth:`transform` does with an image it cannot use (an
        :class:`~skretrieval.ImageLoadError`: unreadable or corrupt file, bad
        array, image too small for the network):

        - ``"raise"``: stop, after the other images of the chunk of 64 being
          extracted, with an :class:`~skretrieval.ImageLoadError` naming the
          image and its position, ``"image 63 of 70 ('/data/x.jpg'): ..."``
          (attributes ``index``, ``path``, ``reason``).  No work is lost:
          the maps already extracted stay in ``cache`` or, without a cache,
          in the process, and the next transform (of this or another
          extractor with the same settings) takes them from there instead of
          running the network again, once the image is fixed or removed;
        - ``"skip"``: leave such images out of the output, with one warning
          naming them, and list them in ``skipped_``.  The output then has
          fewer rows than ``X``: drop the same positions from whatever is
          aligned with ``X`` (labels, paths).  In a
          :class:`~sklearn.pipeline.Pipeline`, ``fit(X, y)`` raises rather
          than pass a ``y`` that no longer lines up; the results of the
          later steps (e.g. a retriever's neighbours) refer to the images
          kept.  Screening ``X`` first with :func:`skretrieval.check_images`
          keeps every row aligned.  Not available with the dask backend.

        Errors that are not about one image (an unsupported item type such
        as ``None``, the network failing) always raise.
    n_jobs : int or None, default=None
        Threads that decode and resize images while the network runs
        (None: 1 on CPU, where the network uses every core; up to 4 on GPU).
    verbose : int, default=0
        Show a progress bar (images done, rate, time left) on stderr when > 0.
    engine : {"auto", "torch", "onnxruntime", "openvino"}, default="auto"
        What runs the network.  "onnxruntime" and "openvino" (CPU only;
        ``pip install skretrieval[onnx]`` / ``skretrieval[openvino]``) run
        its ONNX export (dynamic height and width, made once per network and
        kept in ``$SKRETRIEVAL_ONNX_CACHE``, default
        ``~/.cache/skretrieval/onnx``) with torch's thread count; their maps
        equal torch's to float32 rounding (GeM cosine > 0.9999).  "auto":
        torch on a GPU; on CPU the first installed of ONNX Runtime,
        OpenVINO, torch (the order measured by
        ``benchmarks/bench_extraction.py``), or ``$SKRETRIEVAL_ENGINE``.
        When an engine cannot run the network, "auto" (and a model loaded
        where its engine is not installed) runs it with torch, with a
        warning.  Models store the network, never a compiled engine.
    precision : {"float32", "float16", "bfloat16"}, default="float32"
        Compute precision of the network: "float16"/"bfloat16" run it under
        torch's autocast (``engine`` then torch), for GPUs.  The maps change
        by rounding; cache keys include it.  Measured on CPU with bfloat16
        (float16 autocast is for CUDA; bfloat16 keeps 8 bits of mantissa,
        float16 11, so float16 stays closer): GeM descriptors of MobileNetV2
        ImageNet at 512 px on 11 UKBench and Holidays photos had cosine 0.9990
        on average (min 0.9964) to float32.

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
    skipped_ : list of tuple (int, str)
        The images the last :meth:`transform` left out (``on_error="skip"``):
        their position in ``X`` and the error message naming them, in the
        order of ``X``; empty when none was (always with ``"raise"``).  Keep
        the rows of labels aligned with
        ``np.delete(y, [i for i, _ in ext.skipped_])``.

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
    :class:`~skretrieval.ImageLoadError` naming it, keeping the maps already
    extracted for the next call (``on_error``); screen a large folder first
    with :func:`skretrieval.check_images`, which applies the same checks.

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
        "cache": [None, "boolean", str, os.PathLike],
        "cache_layers": ["array-like", None],
        "cams": [Interval(Integral, 1, None, closed="left"), None],
        "strict": ["boolean"],
        "on_error": [StrOptions({"raise", "skip"})],
        "n_jobs": [Interval(Integral, 1, None, closed="left"), None],
        "verbose": ["verbose"],
        "engine": [StrOptions({"auto", "torch", "onnxruntime", "openvino"})],
        "precision": [StrOptions({"float32", "float16", "bfloat16"})],
    }

    # The state skretrieval.persistence stores and accepts (see skretrieval/utils/_state.py).
    _state_spec = StateSpec(
        {
            "device_": Attr("str"),
            "layer_node_": Attr("str"),
            "layer_name_": Attr("str"),
            "mean_": Attr("tuple", items="float", shape=(3,)),
            "std_": Attr("tuple", items="float", shape=(3,)),
            "_weights_id": Attr("str"),
            "cam_node_": Attr("str", none=True, optional=True),
            "n_classes_": Attr("int", none=True, optional=True),
            "_cam_weight": Attr("array", dtype="f", shape=("n_classes_", None), optional=True),
            "_cam_bias": Attr("array", dtype="f", shape=("n_classes_",), optional=True),
            "n_channels_": Attr("int", values=(1, None)),
            "stride_": Attr("float"),
            "min_input_size_": Attr("int"),
            "fully_connected_": Attr("bool", optional=True),
            "cache_nodes_": Attr("tuple", items="str", optional=True),
            "engine_": Attr("str", optional=True),
            # the network's state dict, in its own file (rebuilt on first use)
            "_trunk_state": Attr("arrays", file="trunk"),
        },
        transient={"trunk_": None, "_multi_trunk": None, "_multi_min_size": None,
                   "skipped_": [], "_runners": None},
        paths={
            "weights": PathParam(None, keep_names=True,
                                 warn="the loaded network keeps the weights stored in "
                                      "the model, but refitting it would start from "
                                      "random weights"),
            "store": PathParam("memory", keep=("memory", "disk")),
            "cache": PathParam(None, keep=(None, False, "memory", "auto", "none")),
        },
        device="device",
    )

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
        cache="auto",
        cache_layers=None,
        cams=None,
        strict=True,
        on_error="raise",
        n_jobs=None,
        verbose=0,
        engine="auto",
        precision="float32",
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
        self.strict = strict
        self.on_error = on_error
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.engine = engine
        self.precision = precision

    # ------------------------------------------------------------------
    def _scales(self):
        return checked_scales(self.scales, self.max_size, type(self).__name__)

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
            as_image_list(X)
        self._scales()
        self.skipped_ = []
        self.device_ = resolve_device(self.device)
        self.engine_ = choose_engine(self.engine, self.precision, self.device_)
        self._runners = {}
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
        # the geometry depends only on the trunk: probed once per trunk, not at
        # every refit of a grid search
        (self.n_channels_, self.stride_, self.min_input_size_,
         self.fully_connected_) = probed(key, self._probe)
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
        if not extra or self._cache() is None:
            return
        key, trunk = self._shared_trunk(model, (self.layer_node_,) + tuple(sorted(extra)))
        self._multi_trunk = trunk
        self._multi_min_size = probed(
            key, lambda: smallest_input(trunk, self.min_input_size_, self.device_))

    def _recipe(self):
        """What the maps depend on besides the layer and the input: backbone,
        weights, and the autocast precision when not float32."""
        precision = self.precision
        return ((self.backbone, self._weights_id) if precision == "float32"
                else (self.backbone, self._weights_id, precision))

    def _cache(self):
        """The feature cache in effect: None, ``"memory"`` or a directory."""
        return cache_setting(self.cache, self.store)

    def _cam_extra(self):
        """``(cam_node,)`` when the CAMs need maps of another node than the layer's."""
        node = getattr(self, "cam_node_", None)
        return (node,) if node is not None and node != self.layer_node_ else ()

    def _shared_trunk(self, model, node):
        """The truncated network for ``node`` (a node or a tuple of nodes) on
        this device, shared by the process (see :func:`._network.shared`)."""
        cam = None if isinstance(node, tuple) else (self._cam_extra() or (None,))[0]
        key = (self.backbone, self._weights_id, node, cam, self.device_, CHANNELS_LAST)
        return key, backbone_network(*key[:3], cam_node=cam, device=self.device_,
                                     channels_last=CHANNELS_LAST, model=model)

    def _forward(self, batch):
        return as_map(self.trunk_(batch)["out"], self._what())

    def _what(self):
        return f"layer {self.layer_name_!r} of {self.backbone}"

    def _engine_sessions(self):
        """The engine of ``engine_`` over the sessions kept in ``_runners``."""
        if self.__dict__.get("_runners") is None:
            self._runners = {}
        return EngineSessions(getattr(self, "engine_", "torch"), what=self._what(),
                              sample_size=max(224, self.min_input_size_),
                              fallback=self.engine == "auto", sessions=self._runners)

    def _adopt_engine(self, sessions):
        """``engine_`` after ``sessions`` ran: torch once it fell back."""
        if sessions.engine != getattr(self, "engine_", "torch"):
            self.engine_ = sessions.engine

    def _engine(self, net):
        """``net`` as run by ``engine_`` (built once per network and process;
        when the engine cannot run it: torch, see :class:`._passes.EngineSessions`)."""
        sessions = self._engine_sessions()
        try:
            return sessions(net)
        finally:
            self._adopt_engine(sessions)

    def _network_runner(self, sessions):
        """The runner of this fitted network on the engine ``sessions``."""
        network = CutNetwork(self.trunk_, self.layer_node_, self._what(), self.backbone,
                             cam_nodes=self._cam_extra(),
                             multi=getattr(self, "_multi_trunk", None),
                             multi_min_size=getattr(self, "_multi_min_size", None))
        return NetworkRunner(network, engine=sessions,
                             batching=ShapeBatching.for_device(self.batch_size, self.device_),
                             device=self.device_, mean=self.mean_, std=self.std_,
                             precision=self.precision,
                             counter=FORWARD_PASSES, channels_last=CHANNELS_LAST)

    def _probe(self):
        """The channel count, stride, smallest accepted input and whether the
        layer is fully connected."""
        x = torch.zeros(1, 3, 224, 224, device=self.device_)
        fully_connected = self.trunk_(x)["out"].ndim == 2
        out = self._forward(x)
        return (int(out.shape[1]), 224 / out.shape[-1],
                smallest_input(self._forward, 1, self.device_), fully_connected)

    def _ensure_trunk(self):
        """Rebuild the network after unpickling (from the stored state dict)."""
        if self.trunk_ is not None:
            return
        self.device_ = fallback_device(self.device_, "extractor", stacklevel=3)
        cam = (self._cam_extra() or (None,))[0]
        self.trunk_ = network_from_state(self.backbone, self.layer_node_, self._trunk_state,
                                         cam_node=cam, device=self.device_,
                                         channels_last=CHANNELS_LAST)
        del self._trunk_state

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_runners", None)  # compiled engines are rebuilt, never pickled
        if state.get("_multi_trunk") is not None:
            state["_multi_trunk"] = None  # a loaded extractor computes its layer only
        trunk = state.get("trunk_")
        if trunk is not None:
            state["trunk_"] = None
            state["_trunk_state"] = state_arrays(trunk)
        return state

    def __setstate__(self, state):
        # extractors pickled before these parameters existed: their behaviour then
        state.setdefault("strict", True)
        state.setdefault("on_error", "raise")
        state.setdefault("engine", "torch")
        state.setdefault("precision", "float32")
        super().__setstate__(state)

    def _persistent_state(self):
        """What :func:`skretrieval.persistence.save_pipeline` stores: the
        pickled state (the network as a numpy state dict)."""
        return self.__getstate__()

    def _after_load(self, device=None):
        """Complete an extractor loaded by :func:`skretrieval.persistence.load_pipeline`.

        The network is rebuilt from ``_trunk_state`` on first use, on
        ``device`` if given, else on the fitted device (the CPU, with a
        warning, when it is not available here).
        """
        if device is not None:
            self.device_ = device
        elif self.device_.startswith("mps"):  # a CUDA one falls back on first use
            self.device_ = fallback_device(self.device_, "extractor", stacklevel=5)

    # ------------------------------------------------------------------
    def _prepare(self, index, item, scales):
        """Load one image and resize it for every scale (runs in a thread)."""
        return prepare_image(item, index, scales, max_size=self.max_size,
                             min_size=self.min_input_size_, what=self._what(),
                             square=getattr(self, "fully_connected_", False),
                             strict=self.strict)

    def _resume_key(self, item, scales):
        """Key of the maps of ``item`` in the resume store (None if it has none)."""
        try:
            ikey = image_key(item)
        except (ImageLoadError, TypeError):
            return None
        return make_key((*self._recipe(), self.layer_node_, self.dtype,
                         self.max_size, scales, self.cams, self._cam_extra()), ikey)

    def _keys(self, items, indices, scales):
        """Cache keys: per image, ``{node: [one key per scale]}`` for the layer
        and, when the multi-layer network is used, for ``cache_layers`` (None
        for an image without a key, e.g. a missing file: it fails to load)."""
        if self._cache() is None:
            return None
        nodes = (self.layer_node_,) + self._cam_extra()
        if getattr(self, "_multi_trunk", None) is not None:
            nodes += tuple(n for n in self.cache_nodes_ if n not in nodes)
        return image_cache_keys(items, indices, self._recipe(), nodes,
                                self.dtype, self.max_size, scales)

    def transform(self, X):
        """Extract feature maps.

        Parameters
        ----------
        X : list of images
            Paths, PIL images, ``H x W x 3`` arrays or :class:`Crop` items.

        Returns
        -------
        maps : FeatureMaps
            ``maps[i]`` is a tuple of one ``(C, H, W)`` float32 array per scale,
            for every image of ``X`` in order (with ``on_error="skip"``, for
            every image kept; ``skipped_`` lists the others).

        Raises
        ------
        ImageLoadError
            With ``on_error="raise"``, for an image that cannot be used, naming
            it and its position in ``X``; the maps already extracted are kept
            for the next call (see ``on_error``).
        """
        check_is_fitted(self, "trunk_")
        items = as_image_list(X)
        self._ensure_trunk()
        on_error = self.on_error
        backend = _distributed.distributed_backend()
        if backend is not None:  # joblib's dask backend: chunks run on its workers
            maps = self._transform_distributed(items, backend, on_error)
        else:
            maps, _, skipped = self._extract(items, on_error)
            if skipped:
                warn_skipped(skipped, len(items))
        self.skipped_ = [] if backend is not None else skipped
        return maps

    def _transform_distributed(self, items, backend, on_error):
        """The maps of ``items`` extracted by the workers of the dask ``backend``."""
        if on_error != "raise":
            raise ValueError(
                "on_error='skip' is not supported with the dask backend (the "
                "workers' outputs could not be placed in X): screen the images "
                "first with skretrieval.check_images(X) and keep on_error='raise', "
                "or extract outside the dask backend")
        return _distributed.transform_distributed(self, items, backend, scales=self._scales())

    def fit_transform(self, X, y=None, **fit_params):
        """Fit, then extract the feature maps of ``X`` (see :meth:`transform`).

        Parameters
        ----------
        X : list of images
            Paths, PIL images, ``H x W x 3`` arrays or :class:`Crop` items.
        y : array-like, optional
            Labels aligned with ``X`` (passed on by a Pipeline).  With
            ``on_error="skip"``, leaving an image out while ``y`` is given
            raises: ``y`` would no longer line up with the output.
        **fit_params : dict
            Passed to :meth:`fit`.

        Returns
        -------
        maps : FeatureMaps
            As :meth:`transform` returns them.
        """
        items = as_image_list(X)
        self.fit(items, y, **fit_params)
        out = self.transform(items)
        if y is not None and self.skipped_:
            bad = [i for i, _ in self.skipped_]
            if self._cache() is None:  # the filtered rerun takes them from there
                left_out = set(bad)
                kept = [i for i in range(len(items)) if i not in left_out]
                self._stash(out, kept, items, self._scales())
            shown = ", ".join(map(str, bad[:SKIP_LISTED])) + (
                ", ..." if len(bad) > SKIP_LISTED else "")
            raise ValueError(
                f"on_error='skip' left out {len(bad)} images of X (positions {shown}) "
                "but y was given: y would no longer line up with the maps (a Pipeline "
                "passes y unchanged to its next steps). Drop the same positions from X "
                "and y, e.g. bad = {i for i, _, _ in skretrieval.check_images(X)}, "
                "and fit again: the maps extracted now are reused")
        return out

    def _stash(self, out, placed, items, scales):
        """Keep ``out`` (the maps of ``items[placed]``) for the next transform."""
        index = {}
        for k, p in enumerate(placed):
            key = self._resume_key(items[p], scales)
            if key is not None:
                index[key] = k
        RESUME_STORE.put(out, index)

    def _extract(self, items, on_error):
        """The maps of ``items`` in process: ``(maps, position in items of each
        image of maps, [(position, message) of the images skipped])``.

        The images go in chunks of :data:`_CHUNK`: the next chunk is looked
        up (resume store, cache) and decoded in threads while the network
        runs on the current one (:meth:`_run_chunk`)."""
        scales = self._scales()
        cache = get_cache(self._cache())
        out = FeatureMaps(scales=scales, layer=self.layer_name_, store=self.store,
                          dtype=self.dtype)
        placed, skipped = [], []
        stash = RESUME_STORE.get()
        reused = 0
        sessions = self._engine_sessions()
        runner = self._network_runner(sessions)
        # On CPU the network already uses every core: one decoding thread
        # overlaps I/O without oversubscribing (benchmarks/bench_extraction.py).
        n_threads = self.n_jobs or (1 if self.device_ == "cpu" else min(4, os.cpu_count() or 1))
        n = len(items)
        chunks = [range(a, min(a + _CHUNK, n)) for a in range(0, n, _CHUNK)]
        bar = progress(total=n, desc="extracting", unit="img", verbose=self.verbose)
        try:
            with ThreadPoolExecutor(max_workers=n_threads) as pool, bar:

                def lookup(chunk):
                    return self._lookup_chunk(pool, items, chunk, scales, cache, stash[1])

                pending = lookup(chunks[0]) if chunks else []
                for c, chunk in enumerate(chunks):
                    current = pending
                    if c + 1 < len(chunks):  # decode the next chunk while this one runs
                        pending = lookup(chunks[c + 1])
                    done = self._run_chunk(current, runner, items, cache, stash[0])
                    for maps, cams in zip(done.maps, done.cams):
                        out.append(maps, cams)
                    placed.extend(done.placed)
                    reused += done.reused
                    if done.errors:
                        if on_error == "raise":
                            raise stop_error(done.errors, len(placed), cache is not None)
                        skipped.extend((e.index, str(e)) for e in done.errors)
                    bar.update(len(chunk))
        except Exception:
            if cache is None and placed:  # keep the work done for the next call
                self._stash(out, placed, items, scales)
            raise
        finally:
            self._adopt_engine(sessions)
        if reused:
            RESUME_STORE.release(stash[0])
        return out, placed, skipped

    def _lookup_chunk(self, pool, items, chunk, scales, cache, stash_index):
        """Per image of ``chunk``, its job: a :class:`StashedJob` for maps left
        by a transform that failed, a :class:`CachedJob` for maps in the cache,
        else a :class:`RunJob` (its arrays resized in ``pool``)."""
        keys = self._keys(items, chunk, scales)
        needed = (self.layer_node_,) + self._cam_extra()
        jobs = []
        for j, i in enumerate(chunk):
            if stash_index:  # maps left by a transform that failed
                pos = stash_index.get(self._resume_key(items[i], scales))
                if pos is not None:
                    jobs.append(StashedJob(i, pos))
                    continue
            keys_j = None if keys is None else keys[j]
            if keys_j is not None:
                hits = tuple({node: cache.get(keys_j[node][s]) for node in needed}
                             for s in range(len(scales)))
                if all(h is not None for hit in hits for h in hit.values()):
                    jobs.append(CachedJob(i, hits))
                    continue
            jobs.append(RunJob(i, pool.submit(self._prepare, i, items[i], scales), keys_j))
        return jobs

    def _run_chunk(self, jobs, runner, items, cache, stash):
        """Run ``runner`` on the images of ``jobs`` that need it (their maps
        into ``cache`` too); the :class:`ChunkResult` of the chunk."""
        got, errors, arrays, owners = {}, [], [], []  # owners: (job, scale) of each array
        for j, job in enumerate(jobs):
            if isinstance(job, CachedJob):
                got[j] = list(job.maps)
            elif isinstance(job, RunJob):
                try:
                    resized = job.arrays.result()
                except ImageLoadError as exc:  # this image only: see on_error
                    errors.append(numbered_error(exc, job.index, items))
                    continue
                got[j] = [None] * len(resized)
                arrays.extend(resized)
                owners.extend((j, s) for s in range(len(resized)))
        needed = (self.layer_node_,) + self._cam_extra()
        index = [jobs[j].index for j, _ in owners]
        for k, maps in runner.run(arrays, multi=cache is not None,
                                  describe=lambda k: describe(items[index[k]], index[k])):
            j, s = owners[k]
            got[j][s] = {node: maps[node] for node in needed}
            if cache is not None and jobs[j].keys is not None:
                for node, fmap in maps.items():
                    if self.dtype == "float16":  # in the key too
                        fmap = fmap.astype(np.float16)
                    cache.put(jobs[j].keys[node][s], fmap)
        done = [(j, job) for j, job in enumerate(jobs) if j in got or isinstance(job, StashedJob)]
        entries = [self._entry(job, got.pop(j, None), stash) for j, job in done]
        return ChunkResult(tuple(job.index for _, job in done), tuple(e for e, _ in entries),
                           tuple(c for _, c in entries), tuple(errors),
                           reused=sum(isinstance(job, StashedJob) for job in jobs))

    def _entry(self, job, scale_maps, stash):
        """``(maps per scale, class activations or None)`` of a job done: from
        ``stash`` for a :class:`StashedJob`, else of its ``{node: map}`` per scale."""
        if isinstance(job, StashedJob):
            return stash[job.position], (stash.class_activations(job.position)
                                         if stash.has_cams else None)
        entry = tuple(g[self.layer_node_] for g in scale_maps)
        if self.cams is None:
            return entry, None
        return entry, class_activations(self._cam_weight, self._cam_bias, self.cams, entry,
                                        [g[self.cam_node_] for g in scale_maps])

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.non_deterministic = self.device not in ("cpu",)
        return tags
