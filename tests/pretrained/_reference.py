"""Re-implementations of the authors' networks and forward passes, and their checkpoints.

Written from filipradenovic/cnnimageretrieval-pytorch (``cirtorch/networks/
imageretrievalnet.py``: ``ImageRetrievalNet``, ``init_network``,
``extract_ss``/``extract_ms``; ``cirtorch/layers``: ``GeM``, ``L2N``;
``cirtorch/utils/whiten.py``: ``whitenapply``; ``examples/test.py``: the
checkpoint layout and ``msp``) and naver/deep-image-retrieval
(``dirtorch/nets/rmac_resnet.py``: ``ResNet_RMAC``;
``dirtorch/nets/layers/pooling.py``: ``GeneralizedMeanPoolingP``;
``dirtorch/utils/common.py``: ``pool``, ``whiten_features``;
``dirtorch/test_dir.py``: ``load_model``, ``eval_model``).  The networks are
built from torchvision's with random weights (and random batch-norm
statistics, so that every layer matters) and saved in exactly the authors'
dictionary layouts.
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from PIL import Image

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def randomise(module, seed):
    """Random weights and batch-norm statistics (seeded)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
            elif isinstance(m, nn.Conv2d):
                fan = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan) ** 0.5)
    return module


# ---------------------------------------------------------------------------
# cirtorch
# ---------------------------------------------------------------------------
def l2n(x, eps=1e-6):  # cirtorch.layers.functional.l2n
    return x / (torch.norm(x, p=2, dim=1, keepdim=True) + eps).expand_as(x)


class GeM(nn.Module):  # cirtorch.layers.pooling.GeM
    def __init__(self, p=3, eps=1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x):
        return F.avg_pool2d(x.clamp(min=self.eps).pow(self.p),
                            (x.size(-2), x.size(-1))).pow(1. / self.p)


class MAC(nn.Module):
    def forward(self, x):
        return F.max_pool2d(x, (x.size(-2), x.size(-1)))


class ImageRetrievalNet(nn.Module):  # cirtorch.networks.imageretrievalnet
    def __init__(self, features, pool, whiten, meta):
        super().__init__()
        self.features = nn.Sequential(*features)
        self.lwhiten = None
        self.pool = pool
        self.whiten = whiten
        self.meta = meta

    def forward(self, x):
        o = self.features(x)
        o = l2n(self.pool(o)).squeeze(-1).squeeze(-1)
        if self.whiten is not None:
            o = l2n(self.whiten(o))
        return o.permute(1, 0)


def cirtorch_net(architecture="resnet18", pooling="gem", whitening=False, p=2.5, seed=0):
    """``init_network(pretrained=False)`` with random weights and the given GeM p."""
    torch.manual_seed(seed)
    net_in = getattr(torchvision.models, architecture)(weights=None)
    randomise(net_in, seed)
    if architecture.startswith(("alexnet", "vgg")):
        features = list(net_in.features.children())[:-1]
    elif architecture.startswith("resnet"):
        features = list(net_in.children())[:-2]
    else:
        raise ValueError(architecture)
    dim = {"alexnet": 256, "resnet18": 512, "resnet50": 2048}[architecture]
    pool = GeM(p=p) if pooling == "gem" else MAC()
    whiten = None
    if whitening:
        whiten = nn.Linear(dim, dim, bias=True)
        with torch.no_grad():  # near-orthogonal, as a whitening-initialised layer is
            q, _ = torch.linalg.qr(torch.randn(dim, dim))
            whiten.weight.copy_(q * (1 + 0.2 * torch.rand(dim, 1)))
            whiten.bias.copy_(0.05 * torch.randn(dim))
    meta = {"architecture": architecture, "local_whitening": False, "pooling": pooling,
            "regional": False, "whitening": whitening, "mean": MEAN, "std": STD,
            "outputdim": dim}
    return ImageRetrievalNet(features, pool, whiten, meta).eval()


def save_cirtorch(net, path, Lw=None):
    """``{'meta', 'state_dict'}`` as cirtorch's train.py saves it (Lw as test.py reads it)."""
    meta = dict(net.meta)
    if Lw is not None:
        meta["Lw"] = Lw
    torch.save({"epoch": 10, "meta": meta, "state_dict": net.state_dict()}, path)


def random_lw(dim, seed):
    rng = np.random.default_rng(seed)
    P = np.linalg.qr(rng.standard_normal((dim, dim)))[0] * (1 + rng.random((dim, 1)))
    return {"m": 0.02 * rng.standard_normal((dim, 1)), "P": P}


def whitenapply(X, m, P):  # cirtorch.utils.whiten.whitenapply (X: D x N)
    X = np.dot(P, X - m)
    return X / (np.linalg.norm(X, ord=2, axis=0, keepdims=True) + 1e-6)


def to_input(arr):
    """cirtorch's transform: ToTensor, Normalize(meta mean, std); a 1-image batch."""
    x = torch.from_numpy(np.array(arr)).permute(2, 0, 1).float() / 255.0
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    return x[None]


def pil_scaled(arr, longest):
    """The image resized (PIL bilinear) so that its longest side is ``longest``,
    rounded as skretrieval rounds."""
    h, w = arr.shape[:2]
    s = longest / max(h, w)
    shape = (max(1, int(round(h * s))), max(1, int(round(w * s))))
    if shape == (h, w):
        return arr
    return np.asarray(Image.fromarray(arr).resize((shape[1], shape[0]), Image.BILINEAR))


@torch.no_grad()
def cirtorch_descriptors(net, images, scales=(1.0,), msp=1.0, Lw=None, max_size=None,
                         tensor_rescale=False):
    """Descriptors as cirtorch's extract_vectors (then whitenapply) computes them.

    Scale ``s`` is the image at ``max_size * s`` resized by PIL (as skretrieval
    resizes), or, with ``tensor_rescale``, cirtorch's own
    ``interpolate(input, scale_factor=s, mode='bilinear')`` of the scale-1 input.
    """
    vecs = []
    for arr in images:
        if len(scales) == 1 and scales[0] == 1:  # extract_ss
            v = net(to_input(arr)).squeeze()
        else:  # extract_ms
            v = torch.zeros(net.meta["outputdim"])
            base = to_input(arr)
            for s in scales:
                if tensor_rescale:
                    x = base.clone() if s == 1 else F.interpolate(
                        base, scale_factor=s, mode="bilinear", align_corners=False)
                else:
                    x = to_input(pil_scaled(arr, max_size * s))
                v += net(x).pow(msp).squeeze()
            v /= len(scales)
            v = v.pow(1. / msp)
            v /= v.norm()
        vecs.append(v.numpy())
    X = np.stack(vecs, axis=1)  # D x N
    if Lw is not None:
        X = whitenapply(X, Lw["m"], Lw["P"])
    return X.T


# ---------------------------------------------------------------------------
# naver deep-image-retrieval
# ---------------------------------------------------------------------------
class GeneralizedMeanPoolingP(nn.Module):  # dirtorch.nets.layers.pooling
    def __init__(self, norm=3, output_size=1, eps=1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * norm)
        self.output_size = output_size
        self.eps = eps

    def forward(self, x):
        x = x.clamp(min=self.eps).pow(self.p)
        return F.adaptive_avg_pool2d(x, self.output_size).pow(1. / self.p)


class ResNetRMAC(nn.Module):
    """dirtorch.nets.rmac_resnet.ResNet_RMAC on torchvision's ResNet blocks (the
    same modules and names as dirtorch's own ResNet)."""

    def __init__(self, architecture="resnet18", out_dim=128, norm_features=False, gemp=3,
                 without_fc=False, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        tv = randomise(getattr(torchvision.models, architecture)(weights=None), seed)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(tv, name))
        self.norm_features = norm_features
        self.without_fc = without_fc
        self.adpool = GeneralizedMeanPoolingP(norm=gemp)
        with torch.no_grad():
            self.adpool.p.fill_(2.7)  # a learned value
        self.fc = nn.Linear(tv.fc.in_features, out_dim)
        self.eval()

    def forward(self, x):
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
        x = self.adpool(x)
        if self.norm_features:
            x = F.normalize(x, p=2, dim=1)
        x.squeeze_()
        if not self.without_fc:
            x = self.fc(x)
        return F.normalize(x, p=2, dim=-1)


def naver_pool(x, pooling="gem", gemp=3):  # dirtorch.utils.common.pool
    if len(x) == 1:
        return x[0]
    x = torch.stack(x, dim=0)
    if pooling == "mean":
        return torch.mean(x, dim=0)

    def sympow(x, p, eps=1e-6):
        s = torch.sign(x)
        return (x * s).clamp(min=eps).pow(p) * s
    x = sympow(x, gemp)
    x = torch.mean(x, dim=0)
    return sympow(x, 1 / gemp)


def naver_whiten(X, pca, whitenp=0.25):  # dirtorch.utils.common.whiten_features
    X = X - pca.mean_
    res = np.dot(X, pca.components_.T)
    if pca.whiten:
        res /= np.power(pca.explained_variance_, whitenp)
    return res / np.expand_dims(np.linalg.norm(res, axis=1), axis=1)


@torch.no_grad()
def naver_descriptors(net, images, scales=(1.0,), max_size=None, pca=None, whitenp=0.25):
    """eval_model's descriptors: one pass per transform (scale), pooled by GeM(3), L2, whitened."""
    per_scale = []
    for s in scales:
        rows = []
        for arr in images:
            x = to_input(arr if s == 1 else pil_scaled(arr, max_size * s))
            d = net(x)
            rows.append(d[None] if d.ndim == 1 else d)
        per_scale.append(torch.cat(rows, dim=0))
    X = F.normalize(naver_pool(per_scale, "gem", 3), p=2, dim=1).numpy()
    if pca is not None:
        X = naver_whiten(X, pca, whitenp)
    return X


def save_naver(net, path, arch="resnet18_rmac", out_dim=128, pca=None, module_prefix=True):
    """The layout of naver's checkpoints (trained with DataParallel: ``module.`` keys)."""
    state = net.state_dict()
    if module_prefix:
        state = {"module." + k: v for k, v in state.items()}
    ckpt = {"model_options": {"arch": arch, "out_dim": out_dim, "pooling": "gem", "gemp": 3,
                              "without_fc": net.without_fc, "norm_features": net.norm_features},
            "state_dict": state, "epoch": 12,
            "preprocess": {"mean": MEAN, "std": STD, "input_size": 224}}
    if pca is not None:
        ckpt["pca"] = {"Landmarks_clean": pca}
    torch.save(ckpt, path)
