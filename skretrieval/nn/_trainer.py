"""RetrievalNetTrainer: fine-tune a retrieval network on labelled images, then describe.

``fit(images, labels)`` trains a :class:`~skretrieval.RetrievalNet` (a
torchvision trunk, GeM / R-MAC / MAC / SPoC pooling, an optional projection
initialised from a PCA-whitening, L2) with one of the losses of
:mod:`skretrieval.nn` (or a classification loss over the labels, the
Neural Codes recipe); ``transform(images)`` then returns L2-normalised
descriptors, so the fitted trainer replaces ``ConvFeatureExtractor -> pooler
-> PCAWhitener`` in a retrieval pipeline.
"""

from __future__ import annotations

import math
import os
import time
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ..extraction._backbones import describe_weights
from ..extraction._batches import ShapeBatching, as_image_list
from ..extraction._network import fallback_device, load_state, resolve_device, state_arrays
from ..pooling._whitening import PCAWhitener
from ..utils._progress import progress, write_line
from ..utils._state import LABELS, Attr, PathParam, StateSpec
from ._augment import load_resized, load_training_image, random_crops
from ._layers import POOLINGS, RetrievalNet
from ._registry import LOSSES
from ._training import (CosineClassifier, backward, check_labels, describe_images, loo_map,
                        loss_function, make_optimizer, set_lr, split_labels, train_mode)
from ._session import (Session, check_fingerprint, load_checkpoint, restore_checkpoint,
                       save_checkpoint, state_copy, training_fingerprint)

__all__ = ["RetrievalNetTrainer"]

# Images decoded and described at once by transform (bounds the RAM).
_CHUNK = 256


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _as_images(X, what="X"):
    return as_image_list(X, what, empty_message=f"{what} is empty: no image",
                         maps_message=f"{what} holds feature maps: RetrievalNetTrainer "
                                      "takes images")


# ---------------------------------------------------------------------------
# the estimator
# ---------------------------------------------------------------------------
class RetrievalNetTrainer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Train a retrieval network on labelled images; then describe images with it.

    ``fit(images, labels)`` fine-tunes (or trains) a
    :class:`~skretrieval.RetrievalNet` -- a torchvision backbone cut at
    ``layer``, ``pooling`` (GeM with a learnable exponent, R-MAC, MAC or
    SPoC), an optional fully-connected projection to ``dim`` dimensions
    initialised from a PCA-whitening of the training images, and
    L2-normalisation -- so that images with the same label get close
    descriptors.  Afterwards :meth:`transform` returns the L2-normalised
    descriptors of any images: the fitted trainer takes the place of
    ``ConvFeatureExtractor -> pooler -> PCAWhitener`` in a pipeline.

    The losses and how each samples its batches:

    * ``"ap"`` / ``"tie_aware_ap"`` -- the listwise loss of Revaud et al.
      [1]_: every batch holds ``images_per_label`` images of each of
      ``batch_size // images_per_label`` random labels, every image is a
      query against the rest of the batch, and the loss is ``1 -`` the mean
      differentiable AP (:func:`skretrieval.nn.ap_loss`, ``n_bins``
      bins);
    * ``"triplet"`` -- Gordo et al. [2]_: each anchor (every training image
      in turn) gets a random positive of its label and the ``n_negatives``
      hardest negatives (of distinct labels) among ``mining_pool_size``
      images, mined with the current network at the start of every epoch;
      loss :func:`~skretrieval.nn.triplet_loss` (margin 0.1);
    * ``"contrastive"`` -- Radenović et al. [3]_: the same tuples, with
      :func:`~skretrieval.nn.contrastive_loss` on the (anchor,
      positive) and (anchor, negative) pairs (margin 0.7);
    * ``"classification"`` -- Neural Codes (Babenko et al. [4]_):
      cross-entropy over the labels with a new classifier head (a cosine
      classifier on the descriptor, temperature 0.05); compress the
      descriptors afterwards with a :class:`~skretrieval.PCAWhitener`.

    A step feeds ``batch_size`` images (for the tuple losses, ``batch_size
    // (2 + n_negatives)`` tuples), each a random resized crop
    (``crop_scale`` of the area, aspect ratio 3/4 to 4/3) of
    ``image_size x image_size`` pixels, flipped half of the time.  An epoch
    has ``steps_per_epoch`` steps (default: as many images as the training
    set).  The optimiser (Adam, AdamW or SGD with momentum 0.9) follows a
    cosine (or constant) learning-rate schedule; the GeM exponent and the
    classifier head learn 10 times faster.

    Parameters
    ----------
    backbone : str, default="mobilenet_v2"
        A torchvision classification model name.
    weights : str, path or None, default="IMAGENET1K_V1"
        Initial weights: a torchvision weights name, a state-dict file, or
        None for random weights (see :class:`~skretrieval.ConvFeatureExtractor`).
    layer : str, int or None, default=None
        Where to cut the backbone (None: the last convolutional layer).
    pooling : {"gem", "mac", "spoc", "rmac"}, default="gem"
        Pooling of the feature maps.
    p : float, default=3.0
        Initial GeM exponent.
    learn_p : bool, default=True
        Train the GeM exponent.
    dim : int or None, default=None
        Dimension of a projection after the pooling, initialised from the
        PCA-whitening of the training images' descriptors (as Gordo et al.
        and Radenović et al. do); None for no projection.
    loss : {"ap", "tie_aware_ap", "triplet", "contrastive", "classification"}, \
            default="ap"
        The training loss (see above).
    n_bins : int, default=20
        Quantisation bins of the AP losses.
    margin : float or None, default=None
        Margin of the triplet (default 0.1) or contrastive (default 0.7) loss.
    batch_size : int, default=64
        Images per optimisation step (also per forward pass in
        :meth:`transform`).
    images_per_label : int, default=8
        Images of each label in an AP-loss batch.
    n_negatives : int, default=5
        Hard negatives per tuple (triplet and contrastive losses).
    mining_pool_size : int or None, default=None
        Training images among which the hard negatives are mined at every
        epoch (None: all of them).
    image_size : int, default=224
        Side of the square training crops.
    max_size : int or None, default=None
        Longest side of the images described by :meth:`transform` and by
        the validation (aspect ratio kept); None: ``image_size``.
    crop_scale : (float, float) or None, default=(0.5, 1.0)
        Range of the area of the random crops, as a fraction of the image;
        None: the whole image, resized to ``image_size`` squared.
    flip : bool, default=True
        Flip the training crops horizontally half of the time.
    optimizer : {"adam", "adamw", "sgd"}, default="adam"
        The optimiser.
    learning_rate : float, default=1e-4
        Initial learning rate.
    weight_decay : float, default=1e-4
        Weight decay (not applied to the GeM exponent).
    lr_schedule : {"cosine", "constant"}, default="cosine"
        Cosine decay to 0 over all the steps, or a constant rate.
    n_epochs : int, default=10
        Number of epochs.
    steps_per_epoch : int or None, default=None
        Optimisation steps per epoch; None: ``ceil(n_training_images /
        batch_size)``.
    validation_fraction : float or None, default=None
        Fraction of the *labels* held out of the training (all their images)
        to measure the leave-one-out mAP after every epoch; None: use the
        ``eval_set`` of :meth:`fit`, or no validation.
    keep_best : bool, default=True
        With a validation, end with the weights of the epoch of best mAP
        (epoch 0, the initial network, included) rather than the last.
    freeze_batchnorm : bool, default=True
        Keep the batch-normalisation statistics of the backbone fixed (the
        usual choice when fine-tuning with small batches).
    chunk_size : int or None, default=None
        Run the network on at most this many images at once while training,
        with the multistage back-propagation of Revaud et al. (descriptors of
        the whole batch first, the loss's gradient with respect to them, then
        back-propagation chunk by chunk): the gradient of a large batch in
        the memory of a small one (exact with ``freeze_batchnorm=True``).
        None: the whole batch at once.
    checkpoint : str, path or None, default=None
        File where the training state (network, optimiser, random state,
        history, best weights) is saved after every epoch.
    resume : bool, default=False
        If ``checkpoint`` exists, continue the training it holds (from the
        epoch after the saved one) instead of starting over.
    device : str, default="auto"
        Torch device ("auto": CUDA, then MPS, then CPU).
    random_state : int, RandomState instance or None, default=None
        Seeds the batches, crops, mining, validation split and the new
        layers.  An int gives reproducible training on a given device.
    verbose : int, default=0
        When > 0, progress bars on stderr (images decoded, epochs, batches with
        the running loss) and each epoch's loss, validation mAP and timing.

    Attributes
    ----------
    network_ : RetrievalNet
        The trained network, in eval mode (rebuilt lazily after unpickling).
    classes_ : ndarray
        The training labels, sorted.
    n_features_out_ : int
        Dimension of the descriptors.
    history_ : list of dict
        One entry per epoch: ``epoch``, ``loss`` (mean training loss),
        ``val_map`` (validation mAP, nan without validation), ``lr`` (at the
        end of the epoch), ``p`` (GeM exponent or None) and ``seconds``.
        With a validation, epoch 0 (the initial network) comes first.
    best_epoch_ : int or None
        Epoch whose weights the network has (None without validation: the
        last one).
    best_score_ : float or None
        Its validation mAP.
    n_epochs_ : int
        Epochs trained (including those of a resumed checkpoint).
    device_ : str
        Device of the network.

    See Also
    --------
    skretrieval.RetrievalNet : The torch network.
    skretrieval.nn.ap_loss : The differentiable AP loss.
    skretrieval.ConvFeatureExtractor : Off-the-shelf features.

    Notes
    -----
    The images are decoded once at the start of ``fit`` and kept in memory
    (training images shrunk to at most ``2 * image_size`` pixels on their
    longest side, validation images at ``max_size``).  Pickling (joblib)
    stores the trained weights as NumPy arrays; loading rebuilds the network
    on first use, on the CPU when the fitted device is absent.  Seeded
    training is reproducible on the CPU with the same torch version and
    number of threads.

    References
    ----------
    .. [1] J. Revaud, J. Almazán, R. S. Rezende and C. R. de Souza, "Learning
       with average precision: training image retrieval with a listwise
       loss", ICCV 2019.
    .. [2] A. Gordo, J. Almazán, J. Revaud and D. Larlus, "End-to-end
       learning of deep visual representations for image retrieval", IJCV
       124(2), 2017.
    .. [3] F. Radenović, G. Tolias and O. Chum, "Fine-tuning CNN image
       retrieval with no human annotation", TPAMI 41(7), 2019.
    .. [4] A. Babenko, A. Slesarev, A. Chigorin and V. Lempitsky, "Neural
       codes for image retrieval", ECCV 2014.

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval import RetrievalNetTrainer
    >>> rng = np.random.default_rng(0)
    >>> images = [rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) for _ in range(8)]
    >>> labels = [0, 0, 1, 1, 2, 2, 3, 3]
    >>> trainer = RetrievalNetTrainer("resnet18", weights=None, image_size=32,
    ...                               batch_size=8, images_per_label=2, n_epochs=1,
    ...                               random_state=0).fit(images, labels)
    >>> trainer.transform(images).shape
    (8, 512)
    """

    _parameter_constraints: dict = {
        "backbone": [str],
        "weights": "no_validation",
        "layer": [str, Integral, None],
        "pooling": [StrOptions(POOLINGS)],
        "p": [Interval(Real, 0, None, closed="neither")],
        "learn_p": ["boolean"],
        "dim": [Interval(Integral, 1, None, closed="left"), None],
        "loss": [StrOptions(set(LOSSES))],
        "n_bins": [Interval(Integral, 2, None, closed="left")],
        "margin": [Interval(Real, 0, None, closed="left"), None],
        "batch_size": [Interval(Integral, 2, None, closed="left")],
        "images_per_label": [Interval(Integral, 2, None, closed="left")],
        "n_negatives": [Interval(Integral, 1, None, closed="left")],
        "mining_pool_size": [Interval(Integral, 2, None, closed="left"), None],
        "image_size": [Interval(Integral, 8, None, closed="left")],
        "max_size": [Interval(Integral, 8, None, closed="left"), None],
        "crop_scale": ["array-like", None],
        "flip": ["boolean"],
        "optimizer": [StrOptions({"adam", "adamw", "sgd"})],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "lr_schedule": [StrOptions({"cosine", "constant"})],
        "n_epochs": [Interval(Integral, 0, None, closed="left")],
        "steps_per_epoch": [Interval(Integral, 1, None, closed="left"), None],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither"), None],
        "keep_best": ["boolean"],
        "freeze_batchnorm": ["boolean"],
        "chunk_size": [Interval(Integral, 1, None, closed="left"), None],
        "checkpoint": [str, os.PathLike, None],
        "resume": ["boolean"],
        "device": [str],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    # The state skretrieval.persistence stores and accepts (see skretrieval/utils/_state.py).
    _state_spec = StateSpec(
        {
            "device_": Attr("str"),
            "classes_": Attr("array", dtype=LABELS, shape=(None,)),
            "_arch": Attr("json"),
            "n_features_out_": Attr("int", values=(1, None)),
            "best_epoch_": Attr("int", none=True),
            "best_score_": Attr("float", none=True),
            "history_": Attr("json"),
            "n_epochs_": Attr("int"),
            # the network's state dict (network_ is rebuilt from it when loaded)
            "_network_state": Attr("arrays"),
        },
        transient={"network_": None},
        paths={
            "weights": PathParam(None, keep_names=True,
                                 warn="the loaded network keeps its trained weights, "
                                      "but refitting it would start from random weights"),
            "checkpoint": PathParam(None),
        },
        device="device",
    )

    def __init__(
        self,
        backbone="mobilenet_v2",
        *,
        weights="IMAGENET1K_V1",
        layer=None,
        pooling="gem",
        p=3.0,
        learn_p=True,
        dim=None,
        loss="ap",
        n_bins=20,
        margin=None,
        batch_size=64,
        images_per_label=8,
        n_negatives=5,
        mining_pool_size=None,
        image_size=224,
        max_size=None,
        crop_scale=(0.5, 1.0),
        flip=True,
        optimizer="adam",
        learning_rate=1e-4,
        weight_decay=1e-4,
        lr_schedule="cosine",
        n_epochs=10,
        steps_per_epoch=None,
        validation_fraction=None,
        keep_best=True,
        freeze_batchnorm=True,
        chunk_size=None,
        checkpoint=None,
        resume=False,
        device="auto",
        random_state=None,
        verbose=0,
    ):
        self.backbone = backbone
        self.weights = weights
        self.layer = layer
        self.pooling = pooling
        self.p = p
        self.learn_p = learn_p
        self.dim = dim
        self.loss = loss
        self.n_bins = n_bins
        self.margin = margin
        self.batch_size = batch_size
        self.images_per_label = images_per_label
        self.n_negatives = n_negatives
        self.mining_pool_size = mining_pool_size
        self.image_size = image_size
        self.max_size = max_size
        self.crop_scale = crop_scale
        self.flip = flip
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.lr_schedule = lr_schedule
        self.n_epochs = n_epochs
        self.steps_per_epoch = steps_per_epoch
        self.validation_fraction = validation_fraction
        self.keep_best = keep_best
        self.freeze_batchnorm = freeze_batchnorm
        self.chunk_size = chunk_size
        self.checkpoint = checkpoint
        self.resume = resume
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------
    # validation
    # ------------------------------------------------------------------
    def _crop_scale(self):
        if self.crop_scale is None:
            return None
        try:
            lo, hi = (float(v) for v in self.crop_scale)
        except (TypeError, ValueError):
            raise ValueError("crop_scale must be a pair (min, max) of area fractions or "
                             f"None, got {self.crop_scale!r}") from None
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got "
                             f"{self.crop_scale!r}")
        return lo, hi

    def _check_training_labels(self, y):
        classes, counts = np.unique(y, return_counts=True)
        if len(classes) < 2:
            raise ValueError(
                f"the training images have a single label ({classes[0]!r}): training a "
                "retrieval network needs at least two labels (images of the same label "
                "are pulled together, those of different labels pushed apart)")
        spec = LOSSES[self.loss]
        if spec.two_per_label:
            lonely = classes[counts < 2]
            if len(lonely):
                shown = ", ".join(repr(v) for v in lonely[:5].tolist())
                raise ValueError(
                    f"loss={self.loss!r} needs at least 2 images per label (every query "
                    f"needs a positive), but {len(lonely)} label(s) have a single image: "
                    f"{shown}{', ...' if len(lonely) > 5 else ''}. Remove them, add "
                    "images, or use loss='classification'")
        spec.sampling.check(self, len(classes))
        return classes

    # ------------------------------------------------------------------
    # fit
    # ------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, *, eval_set=None):
        """Train the network on images ``X`` with labels ``y``.

        Parameters
        ----------
        X : list of images
            Paths, PIL images, ``H x W x 3`` arrays or :class:`~skretrieval.Crop`
            items.
        y : array-like of shape (n_images,)
            Labels: images of the same label show the same object or place.
            Every label needs two images at least (except with
            ``loss="classification"``), and there must be two labels at least.
        eval_set : (images, labels) or None, default=None
            Held-out images and labels whose leave-one-out mAP is measured
            before training and after every epoch (their labels may differ
            from the training ones: typically other objects).  Mutually
            exclusive with ``validation_fraction``.

        Returns
        -------
        self : RetrievalNetTrainer
            The fitted trainer.
        """
        items = _as_images(X)
        y = check_labels(y, len(items))
        crop_scale = self._crop_scale()
        if self.resume and self.checkpoint is None:
            raise ValueError("resume=True needs a checkpoint file (checkpoint=...)")
        state = None
        if self.resume and os.path.exists(self.checkpoint):
            state = load_checkpoint(self.checkpoint)
            seed = int(state["seed"])
        else:
            seed = int(check_random_state(self.random_state).randint(0, 2**31 - 1))
        items, y, val_items, val_y = self._held_out(items, y, eval_set, seed)
        classes = self._check_training_labels(y)

        self.device_ = resolve_device(self.device)
        self.classes_ = classes
        self._arch = dict(backbone=self.backbone, layer=self.layer, pooling=self.pooling,
                          p=float(self.p), learn_p=bool(self.learn_p), dim=self.dim)
        run = self._start(items, np.searchsorted(classes, y), val_items, val_y, seed, state)
        run.crop_scale = crop_scale
        self._fit_loop(run)

        net, best = run.net, run.best
        if self.keep_best and best["state"] is not None:
            net.load_state_dict(best["state"])
        self.best_epoch_ = best["epoch"] if best["state"] is not None else None
        self.best_score_ = best["score"] if best["state"] is not None else None
        self.history_ = run.history
        self.n_epochs_ = max(run.start_epoch, self.n_epochs)
        net.eval()
        for param in net.parameters():
            param.requires_grad_(False)
        return self

    def _held_out(self, items, y, eval_set, seed):
        """``(items, y, val_items, val_y)``: the training images and the held-out
        ones (``eval_set``, or the labels of ``validation_fraction``; None)."""
        if eval_set is not None and self.validation_fraction is not None:
            raise ValueError("give either validation_fraction or eval_set, not both")
        if eval_set is not None:
            try:
                val_items, val_y = eval_set
            except (TypeError, ValueError):
                raise ValueError("eval_set must be a pair (images, labels)") from None
            val_items = _as_images(val_items, "eval_set images")
            return items, y, val_items, check_labels(val_y, len(val_items), "eval_set labels")
        if self.validation_fraction is None:
            return items, y, None, None
        return split_labels(items, y, self.validation_fraction, seed)

    def _start(self, items, codes, val_items, val_y, seed, state):
        """The training session: network, decoded images, head, optimiser,
        random state, history (restored from the checkpoint ``state``)."""
        run = Session(codes=codes, seed=seed, fingerprint=training_fingerprint(
            self.get_params(), describe_weights(self.backbone, self.weights), len(items),
            self.classes_))
        check_fingerprint(state, run.fingerprint, self.checkpoint)
        gen = torch.Generator().manual_seed(seed)
        net = RetrievalNet(self.backbone, self.weights, layer=self.layer,
                           pooling=self.pooling, p=self.p, learn_p=self.learn_p, dim=self.dim)
        run.net = net = net.to(self.device_).to(memory_format=torch.channels_last)
        self.network_ = net
        self.n_features_out_ = net.out_dim

        t0 = time.perf_counter()
        run.train_bank = [self._load_train(item, i) for i, item in
                          self._bar(enumerate(items), len(items), "decoding", "img")]
        # training images at the evaluation size (mining, PCA)
        spec = LOSSES[self.loss]
        if (self.dim is not None and state is None) or spec.sampling.needs_eval_images:
            run.eval_train = [self._load_eval(item, i) for i, item in
                              self._bar(enumerate(items), len(items), "decoding", "img")]
        if val_items is not None:
            run.val_bank = [self._load_eval(item, i) for i, item in
                            self._bar(enumerate(val_items), len(val_items), "decoding", "img")]
            run.val_codes = np.unique(val_y, return_inverse=True)[1]
        self._log(f"decoded {len(items)} training and "
                  f"{0 if run.val_bank is None else len(run.val_bank)} validation images in "
                  f"{time.perf_counter() - t0:.1f} s")

        if spec.head:
            run.head = CosineClassifier(net.out_dim, len(self.classes_), gen).to(self.device_)
        if state is None and self.dim is not None:
            self._init_projection(net, run.eval_train)
        run.opt = make_optimizer(net, run.head, self.optimizer, float(self.learning_rate),
                                 float(self.weight_decay))
        run.steps = self.steps_per_epoch or max(1, math.ceil(len(items) / self.batch_size))
        run.total_steps = max(1, self.n_epochs * run.steps)
        run.rng = np.random.default_rng([seed, 2])
        if state is not None:
            restore_checkpoint(state, run)
            self._log(f"resumed from {self.checkpoint} after epoch {run.start_epoch}")
        elif run.val_bank is not None:
            score = loo_map(self._describe_bank(net, run.val_bank), run.val_codes)
            run.history.append({"epoch": 0, "loss": float("nan"), "val_map": score,
                                "lr": float(self.learning_rate), "p": self._p(net),
                                "seconds": 0.0})
            run.best = {"score": score, "epoch": 0, "state": state_copy(net)}
            self._log(f"epoch 0: validation mAP {score:.4f}")
        return run

    def _fit_loop(self, run):
        """The epochs after ``run.start_epoch``: train, validate, log, save."""
        epochs = range(run.start_epoch + 1, self.n_epochs + 1)
        for epoch in self._bar(epochs, len(epochs), "training", "epoch"):
            t_epoch = time.perf_counter()
            losses = self._run_epoch(run, epoch)
            run.step += run.steps
            record = {"epoch": epoch, "loss": float(np.mean(losses)),
                      "val_map": float("nan"), "lr": run.opt.param_groups[0]["lr"],
                      "p": self._p(run.net), "seconds": 0.0}
            msg = ""
            if run.val_bank is not None:
                score = loo_map(self._describe_bank(run.net, run.val_bank), run.val_codes)
                record["val_map"] = score
                if run.best["score"] is None or score > run.best["score"]:
                    run.best = {"score": score, "epoch": epoch,
                                "state": state_copy(run.net)}
                    msg = " (best)"
                msg = f", validation mAP {score:.4f}{msg}"
            record["seconds"] = time.perf_counter() - t_epoch
            run.history.append(record)
            self._log(f"epoch {epoch}/{self.n_epochs}: loss {record['loss']:.4f}{msg}, "
                      f"lr {record['lr']:.2e}, {record['seconds']:.1f} s")
            if self.checkpoint is not None:
                save_checkpoint(self.checkpoint, run, epoch)

    # ------------------------------------------------------------------
    def _log(self, msg):
        if self.verbose:
            write_line(f"[RetrievalNetTrainer] {msg}")

    def _bar(self, iterable, total, desc, unit):
        return progress(iterable, total=total, desc=desc, unit=unit, verbose=self.verbose)

    @staticmethod
    def _p(net):
        p = getattr(net.pool, "p", None)
        return None if p is None else float(p.detach().cpu())

    def _eval_size(self):
        return self.max_size or self.image_size

    def _load_train(self, item, index):
        return load_training_image(item, index, 2 * self.image_size)

    def _load_eval(self, item, index):
        return load_resized(item, index, self._eval_size())

    def _describe_bank(self, net, arrays, *, pooled=False):
        """Descriptors of prepared (resized) images, in eval mode, batched by shape."""
        return describe_images(net, arrays, ShapeBatching(self.batch_size), self.device_,
                               pooled=pooled, freeze_batchnorm=self.freeze_batchnorm)

    def _init_projection(self, net, eval_train):
        pooled = self._describe_bank(net, eval_train, pooled=True)
        if self.dim > min(pooled.shape):
            raise ValueError(f"dim={self.dim} exceeds what the PCA-whitening of "
                             f"{pooled.shape[0]} training descriptors of {pooled.shape[1]} "
                             f"channels can give ({min(pooled.shape)})")
        whitener = PCAWhitener(n_components=self.dim).fit(pooled)
        net.init_projection(whitener.components_, whitener.mean_, whitener.scale_)

    def _epoch_batches(self, run):
        """The batches of an epoch (arrays of training image indices) and the
        images per tuple of the loss, drawn by the loss's sampling."""
        return LOSSES[self.loss].sampling.batches(
            self, run, lambda idx: self._describe_bank(run.net, [run.eval_train[i] for i in idx]))

    def _run_epoch(self, run, epoch):
        """One epoch of ``run.steps`` steps; the loss of every step."""
        batches, n_tuple = self._epoch_batches(run)
        train_mode(run.net, self.freeze_batchnorm)
        if run.head is not None:
            run.head.train()
        losses = []
        with self._bar(None, run.steps, f"epoch {epoch}", "batch") as bar:
            for s, idx in enumerate(batches):
                losses.append(self.train_step(run, idx, n_tuple, run.step + s))
                bar.update()
                bar.set_postfix_str(f"loss {np.mean(losses):.4f}", refresh=False)
        set_lr(run.opt, float(self.learning_rate), self.lr_schedule, run.step + run.steps,
               run.total_steps)
        run.net.eval()
        return losses

    # ------------------------------------------------------------------
    # the step (what a subclass overrides)
    # ------------------------------------------------------------------
    def train_step(self, session, idx, n_tuple, step):
        """One optimisation step on training images; its loss.

        Sets the learning rate of ``step``, draws the random crops of the
        images ``idx``, back-propagates :meth:`get_loss` of the descriptors
        :meth:`infer` gives them (chunk by chunk with ``chunk_size``) and
        steps the optimiser.

        Parameters
        ----------
        session : Session
            The training run (``session.net``, ``.opt``, ``.head``,
            ``.train_bank``, ``.codes``, ``.rng``...).
        idx : ndarray of int
            Training images of the batch (tuples of ``n_tuple`` consecutive
            images for the tuple losses).
        n_tuple : int
            Images per tuple (1 but for the tuple losses).
        step : int
            Index of the step over the whole training (the schedule).

        Returns
        -------
        loss : float
            The loss of the batch, before the step.
        """
        set_lr(session.opt, float(self.learning_rate), self.lr_schedule, step,
               session.total_steps)
        x = random_crops(session.train_bank, idx, session.rng, self.image_size,
                         session.crop_scale, self.flip, self.device_)
        labels = torch.as_tensor(session.codes[idx], device=self.device_)
        session.opt.zero_grad(set_to_none=True)
        loss = backward(self.infer, x,
                        lambda d: self.get_loss(d, labels, n_tuple=n_tuple, head=session.head),
                        self.chunk_size)
        session.opt.step()
        return loss

    def infer(self, x):
        """The descriptors of a batch of images: the network's forward pass.

        Parameters
        ----------
        x : torch.Tensor of shape (N, 3, H, W)
            Images with values in ``[0, 1]``, on ``device_``.

        Returns
        -------
        descriptors : torch.Tensor of shape (N, dim)
        """
        return self.network_(x)

    def get_loss(self, y_pred, y_true, *, n_tuple=1, head=None):
        """The training loss of a batch of descriptors (``loss``, from the loss table).

        Parameters
        ----------
        y_pred : torch.Tensor of shape (N, dim)
            Descriptors of the batch, from :meth:`infer`.
        y_true : torch.Tensor of shape (N,)
            Their label codes (positions in ``classes_``).
        n_tuple : int, default=1
            Images per tuple: the tuple losses read ``y_pred`` as tuples of
            ``n_tuple`` consecutive rows (anchor, positive, negatives).
        head : torch.nn.Module or None, default=None
            The classifier head of ``loss="classification"``.

        Returns
        -------
        loss : torch.Tensor
            A scalar to minimise.
        """
        return loss_function(self.loss, head, y_true, n_tuple, n_bins=self.n_bins,
                             margin=self.margin)(y_pred)

    # ------------------------------------------------------------------
    # transform
    # ------------------------------------------------------------------
    def _ensure_network(self):
        """Rebuild the network after unpickling (from the stored state dict)."""
        if self.network_ is not None:
            return
        self.device_ = fallback_device(self.device_, "trainer", stacklevel=3)
        arch = self._arch
        net = RetrievalNet(arch["backbone"], None, layer=arch["layer"],
                           pooling=arch["pooling"], p=arch["p"], learn_p=arch["learn_p"],
                           dim=arch["dim"])
        self.network_ = load_state(net, self._network_state, self.device_, channels_last=True)
        del self._network_state

    def _after_load(self, device=None):
        """Rebuild the network from a state loaded by
        :func:`skretrieval.persistence.load_pipeline` (on ``device`` if given):
        a state that does not fit the architecture fails here, not at the first
        transform."""
        state = vars(self).get("_network_state")
        if not isinstance(state, dict) or not all(
                isinstance(v, np.ndarray) and v.dtype.kind in "biuf" for v in state.values()):
            raise ValueError("the network's weights are missing or not numeric")
        if device is not None:
            self.device_ = device
        self._ensure_network()

    def _persistent_state(self):
        """What :func:`skretrieval.persistence.save_pipeline` stores: the
        pickled state (the network as a numpy state dict, rebuilt when loaded)."""
        return self.__getstate__()

    def __getstate__(self):
        state = self.__dict__.copy()
        net = state.get("network_")
        if net is not None:
            state["network_"] = None
            state["_network_state"] = state_arrays(net)
        return state

    def transform(self, X):
        """L2-normalised descriptors of images.

        Every image is resized so that its longest side is ``max_size``
        (``image_size`` by default), aspect ratio kept, and described by the
        trained network; images of the same size go through it together.

        Parameters
        ----------
        X : list of images
            Paths, PIL images, ``H x W x 3`` arrays or :class:`~skretrieval.Crop`
            items.

        Returns
        -------
        X_new : ndarray of shape (n_images, n_features_out), dtype float32
            Unit-norm descriptors.
        """
        check_is_fitted(self, "n_features_out_")
        items = _as_images(X)
        self._ensure_network()
        out = np.empty((len(items), self.n_features_out_), dtype=np.float32)
        for a in range(0, len(items), _CHUNK):
            arrays = [self._load_eval(items[i], i) for i in range(a, min(a + _CHUNK, len(items)))]
            out[a:a + len(arrays)] = self._describe_bank(self.network_, arrays)
        return out

    @property
    def _n_features_out(self):
        return self.n_features_out_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.target_tags.required = True
        tags.non_deterministic = self.device != "cpu"
        return tags

