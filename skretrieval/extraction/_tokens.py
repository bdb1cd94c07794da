"""Vision transformers as map backbones: patch tokens of any block as C x H x W maps.

A ViT with patch size ``p`` turns an ``H x W`` image into ``(H/p) x (W/p)``
patch tokens (plus prefix tokens: a class token, registers, a distillation
token); after block ``k`` those tokens, laid back on their grid, are a
``C x (H/p) x (W/p)`` map that every pooler of :mod:`skretrieval.pooling`
takes like a convolutional one.  This module holds

* :class:`MapBackbone` -- a backbone that names and cuts its own layers
  (what :mod:`._backbones` and :mod:`._network` ask of the families that
  torchvision's graph tracing does not serve);
* :class:`TokenBackbone` -- the layers of a ViT, shared by every family:

  - ``"block<k>"`` (``k`` from 0): the patch tokens after block ``k`` as a
    ``C x (H/p) x (W/p)`` map;
  - ``"block<k>.cls"``: the class token after block ``k`` as a ``C x 1 x 1``
    map (the pooler then returns it unchanged: use :class:`MACPooler` or
    :class:`SPoCPooler`; GeM clamps negative values);
  - ``"norm"`` and ``"norm.cls"``: the same after the final layer norm of
    the model (the default layer is ``"norm"``; ``"norm.cls"`` is the
    class-token descriptor DINOv2 reports its retrieval results with);
  - the family's own names too (torchvision ``"encoder_layer_11"``, timm
    ``"blocks.11"``, open_clip ``"transformer.resblocks.11"``, with
    ``.cls``), and block indices (``11``, ``-1``);

* :class:`TokenTrunk` -- the network cut at some of those layers;
* :class:`TorchvisionViT` -- torchvision's ``VisionTransformer``.

**Input size.**  Any image size is accepted: the network resizes its input
(bilinear) so that each side is the nearest multiple of ``p`` (at least
``p``): ``round(H / p) * p`` by ``round(W / p) * p``; the aspect ratio
changes by at most half a patch per side, and an input whose sides are
already multiples of ``p`` is not touched.  The position embeddings, learnt
on a square grid, are interpolated (bicubic) to the grid of the input.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import re
from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MapBackbone", "TokenBackbone", "TokenTrunk", "TorchvisionViT",
           "interpolate_pos_embed", "map_to_tokens", "patch_multiple", "tokens_to_map"]

_BLOCK = re.compile(r"^block(-?\d+)$")


class MapBackbone(nn.Module):
    """A backbone that lists, resolves and cuts its own layers.

    Subclasses define :meth:`layer_names`, :meth:`resolve` and :meth:`cut`;
    :func:`skretrieval.extraction._backbones.resolve_layer` and
    :func:`skretrieval.extraction._network.cut_network` hand such a backbone
    its own work.
    """

    family = "?"

    def layer_names(self):
        """Names accepted as ``layer``."""
        raise NotImplementedError

    def resolve(self, layer):
        """``(node, pretty name)`` of ``layer`` (None: the default layer)."""
        raise NotImplementedError

    def cut(self, nodes, cam_node=None):
        """The network returning ``{"out": map}`` (one node) or ``{node: map}``."""
        raise NotImplementedError

    def cam_head(self, backbone):
        """The CAM head of the backbone: none by default, so this raises.

        Parameters
        ----------
        backbone : str
            The backbone name, for the message.

        Returns
        -------
        node : str
        weight : ndarray of shape (n_classes, n_channels)
        bias : ndarray of shape (n_classes,)

        Raises
        ------
        ValueError
            A map backbone has no global average pooling + linear head.
        """
        raise ValueError(
            f"{backbone} has no class activation maps: its classifier is not global "
            "average pooling + one linear layer on convolutional maps. Use a torchvision "
            "CNN with a GAP head (resnet*, densenet*, mobilenet_v2, efficientnet_*) for cams")

    def unknown_layer(self, layer, backbone):
        names = self.layer_names()
        key = str(layer).split(".")[0]
        hints = [n for n in names if key and key in n][:8]
        return ValueError(
            f"unknown layer {layer!r} for backbone {backbone!r}. "
            f"{'Close matches: ' + ', '.join(hints) + '. ' if hints else ''}"
            f"Examples: {', '.join(names[:6])}; skretrieval.layer_names({backbone!r}) "
            "lists all.")


def tokens_to_map(tokens, grid):
    """``(N, h*w, C)`` patch tokens (row-major) as an ``(N, C, h, w)`` map."""
    n, _, c = tokens.shape
    return tokens.transpose(1, 2).reshape(n, c, grid[0], grid[1])


def map_to_tokens(fmap):
    """An ``(N, C, h, w)`` map back to ``(N, h*w, C)`` tokens (inverse of :func:`tokens_to_map`)."""
    return fmap.flatten(2).transpose(1, 2)


def patch_multiple(side, patch):
    """The multiple of ``patch`` nearest to ``side`` (at least ``patch``)."""
    return max(1, int(math.floor(side / patch + 0.5))) * patch


def _traced_multiples(x, ph, pw):
    """:func:`patch_multiple` of the height and width of ``x`` as tensor
    operations, which a trace records (Python arithmetic would freeze them)."""
    sizes = torch._shape_as_tensor(x)[-2:].float()
    patch = torch.tensor([ph, pw], dtype=torch.float32)
    out = torch.clamp(torch.floor(sizes / patch + 0.5), min=1.0) * patch
    return [out[0].long(), out[1].long()]


def _plain_self_attention(mha, query, key, value, key_padding_mask=None, need_weights=True,
                          attn_mask=None, average_attn_weights=True, is_causal=False):
    """``nn.MultiheadAttention`` self-attention without masks, written with
    reshapes a trace keeps dynamic in the sequence length (the module's own
    code freezes it, and its fused inference kernel has no ONNX form)."""
    if (key is not query or value is not query or key_padding_mask is not None
            or attn_mask is not None or is_causal):
        return nn.MultiheadAttention.forward(
            mha, query, key, value, key_padding_mask=key_padding_mask,
            need_weights=need_weights, attn_mask=attn_mask,
            average_attn_weights=average_attn_weights, is_causal=is_causal)
    x = query if mha.batch_first else query.transpose(0, 1)  # (N, L, E)
    n, length, e = x.shape
    h = mha.num_heads
    qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias)
    qkv = qkv.reshape(n, length, 3, h, e // h).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (N, h, L, e/h)
    out = F.linear(out.transpose(1, 2).reshape(n, length, e), mha.out_proj.weight,
                   mha.out_proj.bias)
    return (out if mha.batch_first else out.transpose(0, 1)), None


def _is_plain(mha):
    return (mha._qkv_same_embed_dim and mha.in_proj_weight is not None
            and mha.bias_k is None and not mha.add_zero_attn and not mha.training)


@contextlib.contextmanager
def traceable_attention(module):
    """Within this context, every plain ``nn.MultiheadAttention`` of ``module``
    (self-attention, no masks, eval mode: a ViT's) runs
    :func:`_plain_self_attention`; used while a trace records an export."""
    swapped = [m for m in module.modules()
               if isinstance(m, nn.MultiheadAttention) and _is_plain(m)]
    for m in swapped:
        m.forward = functools.partial(_plain_self_attention, m)
    try:
        yield
    finally:
        for m in swapped:
            del m.forward


def interpolate_pos_embed(pos, n_prefix, grid):
    """Position embeddings ``(1, n_prefix + g*g, C)`` (or 2-D) for a ``grid = (h, w)``.

    The prefix embeddings are kept; the ``g x g`` grid of the others is
    resized with bicubic interpolation (not at all when it is ``h x w``).
    """
    if pos.ndim == 2:
        pos = pos.unsqueeze(0)
    prefix, cells = pos[:, :n_prefix], pos[:, n_prefix:]
    g = math.isqrt(cells.shape[1])
    if (g, g) == tuple(grid) and not torch.jit.is_tracing():
        return pos  # (a trace always resizes: an identity at g x g, a dynamic grid)
    c = cells.shape[-1]
    cells = cells.reshape(1, g, g, c).permute(0, 3, 1, 2)
    cells = F.interpolate(cells.float(), size=tuple(grid), mode="bicubic",
                          align_corners=False).to(pos.dtype)
    return torch.cat([prefix, cells.permute(0, 2, 3, 1).reshape(1, -1, c)], dim=1)


class TokenBackbone(MapBackbone):
    """The layers of a vision transformer (see the module's docstring).

    A subclass wraps one library's model and sets ``patch_size`` (``(ph,
    pw)``), ``n_blocks``, ``n_prefix`` (tokens before the patch tokens),
    ``cls_index`` (position of the class token among them, None without one)
    and ``aliases`` (its own layer names: ``{name: canonical}``); it defines
    :meth:`intermediates`, :meth:`final_norm` and :meth:`prune`.
    """

    aliases: dict = {}

    def intermediates(self, x, indices):
        """``{k: (map (N, C, h, w), prefix tokens (N, n_prefix, C))}`` after
        each block ``k`` of ``indices``, for an input whose sides are
        multiples of the patch size."""
        raise NotImplementedError

    def final_norm(self, tokens):
        """The model's final norm applied to all ``(N, L, C)`` tokens."""
        raise NotImplementedError

    def prune(self, depth, keep_norm):
        """Drop the blocks from ``depth`` on and the classifier (in place)."""
        raise NotImplementedError

    # ------------------------------------------------------------------
    def _canonical_names(self):
        names = [f"block{k}" for k in range(self.n_blocks)] + ["norm"]
        if self.cls_index is not None:
            names += [n + ".cls" for n in names]
        return names

    def layer_names(self):
        aliases = list(self.aliases)
        if self.cls_index is not None:
            aliases += [a + ".cls" for a in self.aliases]
        return self._canonical_names() + aliases

    def resolve(self, layer, backbone="this backbone"):
        if layer is None:
            return "norm", "norm"
        key = str(layer)
        base, cls = (key[:-4], True) if key.endswith(".cls") else (key, False)
        base = self.aliases.get(base, base)
        if re.fullmatch(r"-?\d+", base):
            base = f"block{base}"
        m = _BLOCK.match(base)
        if m:
            k = int(m.group(1))
            k = k + self.n_blocks if k < 0 else k
            base = f"block{k}" if 0 <= k < self.n_blocks else None
        if base is None or (base != "norm" and not _BLOCK.match(base)) or (
                cls and self.cls_index is None):
            raise self.unknown_layer(layer, backbone)
        return base + (".cls" if cls else ""), key

    def cut(self, nodes, cam_node=None):
        if cam_node is not None:
            self.cam_head(type(self).__name__)
        return_nodes = {n: n for n in nodes} if isinstance(nodes, tuple) else {nodes: "out"}
        parsed = [parse_node(n, self.n_blocks) for n in return_nodes]
        depth = max(k for k, _ in parsed) + 1
        trunk = copy.deepcopy(self)
        trunk.prune(depth, keep_norm=any(n.startswith("norm") for n in return_nodes))
        return TokenTrunk(trunk, return_nodes).eval()


def parse_node(node, n_blocks):
    """``(block index, is_cls)`` of a canonical node (``"norm"``: the last block)."""
    base, cls = (node[:-4], True) if node.endswith(".cls") else (node, False)
    return (n_blocks - 1 if base == "norm" else int(base[len("block"):])), cls


class TokenTrunk(nn.Module):
    """A :class:`TokenBackbone` cut at some of its layers.

    ``forward(x)`` resizes ``x`` to multiples of the patch size (see the
    module's docstring) and returns ``{name: tensor}`` for the layers asked:
    ``(N, C, h, w)`` maps of patch tokens, ``(N, C, 1, 1)`` class tokens.
    """

    def __init__(self, backbone, return_nodes):
        super().__init__()
        self.backbone = backbone
        self.return_nodes = dict(return_nodes)

    def extra_repr(self):
        # part of the repr, hence of the network's digest (the key of its ONNX export):
        # two cuts of one model differ by these only
        return f"return_nodes={self.return_nodes!r}"

    def forward(self, x):
        bb = self.backbone
        ph, pw = bb.patch_size
        parsed = {n: parse_node(n, bb.n_blocks) for n in self.return_nodes}
        indices = sorted({k for k, _ in parsed.values()})
        if torch.jit.is_tracing():  # an ONNX export: sizes as traced values
            x = F.interpolate(x, size=_traced_multiples(x, ph, pw), mode="bilinear",
                              align_corners=False)
            with traceable_attention(bb):
                inter = bb.intermediates(x, indices)
        else:
            size = (patch_multiple(x.shape[-2], ph), patch_multiple(x.shape[-1], pw))
            if tuple(x.shape[-2:]) != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            inter = bb.intermediates(x, indices)
        normed = None
        out = {}
        for node, name in self.return_nodes.items():
            k, cls = parsed[node]
            fmap, prefix = inter[k]
            if node.startswith("norm"):
                if normed is None:
                    grid = fmap.shape[-2:]
                    tokens = bb.final_norm(torch.cat([prefix, map_to_tokens(fmap)], dim=1))
                    normed = (tokens_to_map(tokens[:, bb.n_prefix:], grid),
                              tokens[:, :bb.n_prefix])
                fmap, prefix = normed
            out[name] = prefix[:, bb.cls_index, :, None, None] if cls else fmap
        return out


class SequentialBlocksViT(TokenBackbone):
    """A ViT whose embedding and blocks this package runs itself
    (torchvision's and open_clip's, whose position embeddings have a fixed
    size): subclasses define :meth:`embed` and :meth:`blocks`."""

    def embed(self, x):
        """``(tokens (N, n_prefix + h*w, C), (h, w))`` of the input."""
        raise NotImplementedError

    def blocks(self):
        raise NotImplementedError

    def run_block(self, block, tokens):
        return block(tokens)

    def intermediates(self, x, indices):
        tokens, grid = self.embed(x)
        wanted, out = set(indices), {}
        for k, block in enumerate(self.blocks()):
            if k > max(wanted):
                break
            tokens = self.run_block(block, tokens)
            if k in wanted:
                out[k] = (tokens_to_map(tokens[:, self.n_prefix:], grid),
                          tokens[:, :self.n_prefix])
        return out


class TorchvisionViT(SequentialBlocksViT):
    """torchvision's ``VisionTransformer`` (``vit_b_16``, ``vit_l_32``...) as a
    :class:`TokenBackbone`; ``model`` is kept whole as ``self.model``.

    Its own names: ``"encoder_layer_<k>"`` (and
    ``"encoder.layers.encoder_layer_<k>"``) for block ``k``, ``"ln"`` /
    ``"encoder.ln"`` for the final norm.

    Examples
    --------
    >>> import torch
    >>> from torchvision.models.vision_transformer import VisionTransformer
    >>> vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
    ...                         hidden_dim=16, mlp_dim=32)
    >>> trunk = TorchvisionViT(vit).cut(("block1", "norm.cls"))
    >>> out = trunk(torch.rand(1, 3, 48, 64))
    >>> tuple(out["block1"].shape), tuple(out["norm.cls"].shape)
    ((1, 16, 6, 8), (1, 16, 1, 1))
    """

    family = "torchvision"

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.patch_size = (int(model.patch_size),) * 2
        self.n_blocks = len(model.encoder.layers)
        self.n_prefix, self.cls_index = 1, 0
        self.aliases = {"ln": "norm", "encoder.ln": "norm"}
        for k in range(self.n_blocks):
            self.aliases[f"encoder_layer_{k}"] = f"block{k}"
            self.aliases[f"encoder.layers.encoder_layer_{k}"] = f"block{k}"

    def embed(self, x):
        m = self.model
        x = m.conv_proj(x)
        grid = tuple(x.shape[-2:])
        x = map_to_tokens(x)
        x = torch.cat([m.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return m.encoder.dropout(x + interpolate_pos_embed(m.encoder.pos_embedding, 1, grid)), grid

    def blocks(self):
        return self.model.encoder.layers

    def final_norm(self, tokens):
        return self.model.encoder.ln(tokens)

    def prune(self, depth, keep_norm):
        layers = self.model.encoder.layers
        self.model.encoder.layers = nn.Sequential(OrderedDict(
            list(layers.named_children())[:depth]))
        self.model.heads = nn.Identity()
        if not keep_norm:
            self.model.encoder.ln = nn.Identity()
