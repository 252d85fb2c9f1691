"""Convert ImageNet ResNet state dicts (torchvision, detectron2/mmdet caffe).

Everything here works on a state dict already in memory; reading weight files
is `ps_jax.pretrained`'s job.

Conventions:
  * A *state dict* is `Mapping[str, np.ndarray]` keyed by the source
    framework's names (`ps_jax.pretrained.load_state_dict` reads one from a
    file).
  * Three key layouts are understood:
      torchvision / mmdet  conv1.weight, bn1.running_mean,
                           layer1.0.conv2.weight, layer1.0.downsample.1.bias
      detectron2           stem.conv1.weight, stem.conv1.norm.weight,
                           res2.0.conv1.norm.running_var, res2.0.shortcut.*
      caffe2 (Detectron)   conv1_w, res_conv1_bn_s, res2_0_branch2a_w,
                           res2_0_branch1_bn_b
    mmdet's `open-mmlab://detectron2/resnet50_caffe` checkpoint is the MSRA
    caffe2 ResNet-50 renamed to the torchvision layout by mmdet's
    `detectron2pytorch.py`, with running_mean = 0 and running_var = 1 (caffe2
    folded batch norm into an affine "AffineChannel" layer). State dicts whose
    keys carry a wrapper prefix (`module.`, `backbone.`, `backbone.body.` ...)
    are found by their stem and the prefix is stripped; keys outside it (a
    detector's neck and head) are then ignored.
  * Our tree (`ps_jax.models.backbone.ResNet`, names 1:1 with torchvision):
      params/conv1/kernel                 <- conv1.weight (OIHW -> HWIO)
      params/bn1/{scale,bias}             <- bn1.{weight,bias}
      frozen_bn/bn1/{mean,var}            <- bn1.running_{mean,var}
      params/layer{s}_{b}/conv{k}/kernel  <- layer{s}.{b}.conv{k}.weight
      params/layer{s}_{b}/bn{k}/...       <- layer{s}.{b}.bn{k}.*
      params/layer{s}_{b}/downsample_conv/kernel <- ....downsample.0.weight
      params/layer{s}_{b}/downsample_bn/...      <- ....downsample.1.*
      params/layer{s}_{b}/conv2/conv_offset/{kernel,bias}
                                          <- ....conv2.conv_offset.* (mmdet
                                             DCN; absent from ImageNet files,
                                             then kept at their zero init)
      params/fc/{kernel,bias}             <- fc.{weight (transposed),bias},
                                             only if the model has `fc`
    `num_batches_tracked` buffers and caffe2 `*_momentum` blobs are ignored.
  * Formats and what they imply. The two files have the same shapes; they
    differ in where a bottleneck's stride sits and in the input they expect:
      'torchvision': style='pytorch' (stride on the 3x3 conv), input
        normalization 'imagenet_rgb' (RGB, mean (123.675, 116.28, 103.53),
        std (58.395, 57.12, 57.375) in 0-255 units);
      'caffe': style='caffe' (stride on the first 1x1 conv), input
        'caffe_bgr' (BGR, mean (103.53, 116.28, 123.675), std 1). Missing
        running statistics (AffineChannel files) mean 0 and var 1, as mmdet
        and detectron2 load them; frozen BN still adds eps = 1e-5 to var,
        exactly as they do.
    The names match `ps_jax.data.augment.NORMALIZATIONS`.
  * Unknown, missing and mis-shaped keys are errors that list every offender.
    Any width works as long as the shapes match the model; ImageNet files are
    full width, i.e. `width_multiplier=1.0`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ps_jax.models.backbone import FROZEN_BN

FORMATS = ("torchvision", "caffe")
NORMALIZATION_FOR_FORMAT = {"torchvision": "imagenet_rgb",
                            "caffe": "caffe_bgr"}
STYLE_FOR_FORMAT = {"torchvision": "pytorch", "caffe": "caffe"}
FORMAT_FOR_STYLE = {style: fmt for fmt, style in STYLE_FOR_FORMAT.items()}

# Block type and blocks per stage (torchvision's resnet18..101).
_BLOCKS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}

# --------------------------------------------------------------------------
# Key layouts -> canonical (torchvision) names.
# --------------------------------------------------------------------------

_IGNORED = re.compile(r"(^|\.)num_batches_tracked$|_momentum$")
_C2_BN = {"s": "weight", "b": "bias", "rm": "running_mean",
          "riv": "running_var"}
_D2_NORM = {"weight", "bias", "running_mean", "running_var"}
# (stem key, first stage's key prefix) of each layout.
_STEMS = {"torchvision": ("conv1.weight", "layer1."),
          "detectron2": ("stem.conv1.weight", "res2."),
          "caffe2": ("conv1_w", "res2_")}


def _c2_to_tv(key: str) -> str | None:
  """caffe2 blob name -> torchvision key, or None if it is not a ResNet's."""
  if key == "conv1_w":
    return "conv1.weight"
  if key in ("pred_w", "pred_b"):
    return "fc." + ("weight" if key == "pred_w" else "bias")
  m = re.fullmatch(r"res_conv1_bn_(s|b|rm|riv)", key)
  if m:
    return "bn1." + _C2_BN[m.group(1)]
  m = re.fullmatch(r"res(\d+)_(\d+)_branch(1|2a|2b|2c)(_bn)?_(w|s|b|rm|riv)",
                   key)
  if not m:
    return None
  stage, block, branch, bn, leaf = m.groups()
  layer = f"layer{int(stage) - 1}.{block}."
  if branch == "1":
    mod = "downsample.1" if bn else "downsample.0"
  else:
    k = "abc".index(branch[1]) + 1
    mod = f"bn{k}" if bn else f"conv{k}"
  if bn:
    return layer + mod + "." + _C2_BN[leaf] if leaf in _C2_BN else None
  return layer + mod + ".weight" if leaf == "w" else None


def _d2_to_tv(key: str) -> str | None:
  """detectron2 key -> torchvision key, or None if it is not a ResNet's."""
  if key.startswith("linear."):  # detectron2's name for caffe2's `pred`.
    return "fc." + key[len("linear."):]
  m = re.fullmatch(r"stem\.conv1\.(?:(norm)\.)?(\w+)", key)
  if m:
    return ("bn1." if m.group(1) else "conv1.") + m.group(2)
  m = re.fullmatch(r"res(\d+)\.(\d+)\.(conv[123]|shortcut)\.(?:(norm)\.)?(\w+)",
                   key)
  if not m:
    return None
  stage, block, mod, norm, leaf = m.groups()
  if norm and leaf not in _D2_NORM:
    return None
  if mod == "shortcut":
    mod = "downsample.1" if norm else "downsample.0"
  elif norm:
    mod = "bn" + mod[-1]
  return f"layer{int(stage) - 1}.{block}.{mod}.{leaf}"


def _find_prefix(keys: Sequence[str]) -> tuple[str, str]:
  """(layout, wrapper prefix) from where the stem and first block are."""
  found = []
  for layout, (stem, block) in _STEMS.items():
    for k in keys:
      if k.endswith(stem):
        p = k[:len(k) - len(stem)]
        if ((not p or p.endswith("."))
            and any(j.startswith(p + block) for j in keys)):
          found.append((layout, p))
  if not found:
    raise ValueError(
        "weights: no ResNet stem found. Expected torchvision/mmdet keys "
        "(conv1.weight, layer1.*), detectron2 keys (stem.conv1.weight, "
        "res2.*) or caffe2 blobs (conv1_w, res2_*); the first keys are "
        f"{sorted(keys)[:8]}.")
  top = [f for f in found if f[1] == ""]
  if top:
    return top[0]
  if len(found) > 1:
    raise ValueError(f"weights: several ResNets in one file, under prefixes "
                     f"{sorted(p for _, p in found)}; save just one.")
  return found[0]


def _canonical(state_dict: Mapping[str, np.ndarray]
               ) -> tuple[str, dict[str, tuple[str, np.ndarray]], list[str]]:
  """Renames to torchvision keys.

  Returns:
    (layout, {tv_key: (file_key, array)}, unknown file keys).
  """
  layout, prefix = _find_prefix(list(state_dict))
  rename = {"torchvision": lambda k: k, "detectron2": _d2_to_tv,
            "caffe2": _c2_to_tv}[layout]
  out, unknown, outside = {}, [], 0
  for key, value in state_dict.items():
    if not key.startswith(prefix):
      outside += 1
      continue
    if _IGNORED.search(key):
      continue
    tv = rename(key[len(prefix):])
    if tv is None or tv in out:
      unknown.append(key)
    else:
      out[tv] = (key, np.asarray(value))
  if outside:
    logging.info("weights: using the keys under %r; ignored %d other keys.",
                 prefix, outside)
  return layout, out, unknown


# --------------------------------------------------------------------------
# Canonical names -> our tree.
# --------------------------------------------------------------------------

_BN_LEAF = {"weight": ("params", "scale"), "bias": ("params", "bias"),
            "running_mean": (FROZEN_BN, "mean"),
            "running_var": (FROZEN_BN, "var")}


def _expected_keys(depth: int, with_classifier: bool
                   ) -> tuple[set[str], set[str]]:
  """(required, optional) torchvision keys of a ResNet of `depth`."""
  if depth not in _BLOCKS:
    raise ValueError(f"depth: expected one of {sorted(_BLOCKS)}, got {depth}.")
  kind, blocks = _BLOCKS[depth]
  bn = ("weight", "bias", "running_mean", "running_var")
  required = {"conv1.weight"} | {f"bn1.{x}" for x in bn}
  optional = set()
  for s, n in enumerate(blocks, start=1):
    for b in range(n):
      p = f"layer{s}.{b}."
      for k in range(1, (3 if kind == "bottleneck" else 2) + 1):
        required.add(f"{p}conv{k}.weight")
        required |= {f"{p}bn{k}.{x}" for x in bn}
      if b == 0 and (s > 1 or kind == "bottleneck"):
        required.add(f"{p}downsample.0.weight")
        required |= {f"{p}downsample.1.{x}" for x in bn}
      if kind == "bottleneck":  # mmdet DCN offsets of a trained detector.
        optional |= {f"{p}conv2.conv_offset.weight",
                     f"{p}conv2.conv_offset.bias"}
  fc = {"fc.weight", "fc.bias"}
  if with_classifier:
    required |= fc
  else:
    optional |= fc
  return required, optional


def _tree_path(tv_key: str) -> tuple[tuple[str, ...], Any]:
  """Expected torchvision key -> ((collection, *modules, leaf), axes)."""
  m = re.fullmatch(r"(?:(layer\d+)\.(\d+)\.)?([\w.]+)\.(\w+)", tv_key)
  layer, block, mod, leaf = m.groups()
  mods = {"downsample.0": ("downsample_conv",),
          "downsample.1": ("downsample_bn",),
          "conv2.conv_offset": ("conv2", "conv_offset")}.get(mod, (mod,))
  scope = ((f"{layer}_{block}",) if layer else ()) + mods
  if mod == "fc":
    return ((("params", "fc", "kernel"), (1, 0)) if leaf == "weight"
            else (("params", "fc", "bias"), None))
  if mod.startswith("conv") or mod == "downsample.0":
    if leaf == "weight":
      return ("params", *scope, "kernel"), (2, 3, 1, 0)  # OIHW -> HWIO
    return ("params", *scope, "bias"), None
  collection, name = _BN_LEAF[leaf]
  return (collection, *scope, name), None


def _convert(state_dict: Mapping[str, np.ndarray], depth: int, *,
             with_classifier: bool, allow_missing_stats: bool
             ) -> tuple[str, dict[tuple[str, ...], tuple[str, np.ndarray]]]:
  """State dict -> {(collection, ...path): (file key, f32 array)}."""
  layout, canon, unknown = _canonical(state_dict)
  required, optional = _expected_keys(depth, with_classifier)
  known = required | optional
  unknown += [fk for tv, (fk, _) in canon.items() if tv not in known]
  missing = sorted(required - set(canon))
  stats = [k for k in required if re.search(r"running_(mean|var)$", k)]
  if allow_missing_stats and set(stats) <= set(missing):
    # caffe2 AffineChannel files: no statistics at all -> identity BN.
    for k in stats:
      w = canon.get(k.rsplit(".", 1)[0] + ".weight")
      if w is not None:
        fill = np.zeros if k.endswith("mean") else np.ones
        canon[k] = ("(identity: no running statistics in the file)",
                    fill(w[1].shape, np.float32))
    missing = sorted(required - set(canon))
  errors = []
  if unknown:
    errors.append(f"{len(unknown)} unknown key(s) for a ResNet-{depth}: "
                  f"{sorted(unknown)}")
  if missing:
    errors.append(f"{len(missing)} missing key(s) ({layout} names shown in "
                  f"torchvision form): {missing}")
  if errors:
    raise ValueError("weights: " + "; ".join(errors) + ".")
  out = {}
  for tv, (fk, value) in canon.items():
    if tv.startswith("fc.") and not with_classifier:
      continue
    path, axes = _tree_path(tv)
    value = np.asarray(value, np.float32)
    want = len(axes) if axes else 1
    if value.ndim != want:
      raise ValueError(f"weights: {fk} has shape {value.shape}; expected a "
                       f"{want}-D array.")
    out[path] = (fk, value.transpose(axes) if axes else value)
  return layout, out


def _nest(flat: Mapping[tuple[str, ...], tuple[str, np.ndarray]]
          ) -> tuple[dict[str, Any], dict[str, Any]]:
  trees = {"params": {}, FROZEN_BN: {}}
  for (collection, *path), (_, value) in flat.items():
    node = trees[collection]
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = value
  return trees["params"], trees[FROZEN_BN]


def torchvision_resnet_to_params(state_dict: Mapping[str, np.ndarray],
                                 depth: int, *, with_classifier: bool = False
                                 ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Maps a torchvision ResNet state dict to our backbone's variables.

  Args:
    state_dict: {key: array} in any layout of the module doc (torchvision
      names usually); conv weights f32[O, I, kh, kw], BN vectors f32[C],
      fc.weight f32[classes, C]. Running statistics are required.
    depth: 18, 34, 50 or 101; fixes the expected keys.
    with_classifier: map `fc.*` (required then) into params/fc; otherwise
      `fc.*` is ignored.
  Returns:
    (params, frozen_bn) nested dicts of f32 numpy arrays, e.g.
    params["layer1_0"]["conv1"]["kernel"] f32[kh, kw, I, O] and
    frozen_bn["bn1"]["mean"] f32[C]; use with style='pytorch' and
    'imagenet_rgb' input.
  Raises:
    ValueError: listing every unknown and missing key.
  """
  _, flat = _convert(state_dict, depth, with_classifier=with_classifier,
                     allow_missing_stats=False)
  return _nest(flat)


def caffe_resnet_to_params(state_dict: Mapping[str, np.ndarray],
                           depth: int = 50, *, with_classifier: bool = False
                           ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Maps a caffe-style (detectron2 / mmdet MSRA) ResNet to our variables.

  Same as `torchvision_resnet_to_params` but for the weights of
  `open-mmlab://detectron2/resnet50_caffe` (torchvision names), detectron2
  (`stem.conv1.weight`, `res2.0.conv1.norm.weight`, `res2.0.shortcut.*`) or
  caffe2 blobs (`conv1_w`, `res2_0_branch2a_bn_s`). A file without any
  running statistics (folded AffineChannel BN) gets mean 0 and var 1.

  Returns:
    (params, frozen_bn) as `torchvision_resnet_to_params`; use with
    style='caffe' (stride on each stage's first 1x1 conv) and 'caffe_bgr'
    input (BGR, mean (103.53, 116.28, 123.675), std 1).
  """
  _, flat = _convert(state_dict, depth, with_classifier=with_classifier,
                     allow_missing_stats=True)
  return _nest(flat)


def detect_format(state_dict: Mapping[str, np.ndarray]) -> str:
  """Guesses 'torchvision' or 'caffe' from the file's contents.

  caffe2 blob names, or batch norms without real statistics (none at all, or
  every running_mean 0 and running_var 1, as in mmdet's conversion of the
  MSRA weights) mean 'caffe'; trained statistics mean 'torchvision'. An
  untrained torchvision file (identity statistics) reads as 'caffe': pass
  the format explicitly for such files.
  """
  layout, canon, _ = _canonical(state_dict)
  if layout == "caffe2":
    return "caffe"
  means = [v for k, (_, v) in canon.items() if k.endswith("running_mean")]
  variances = [v for k, (_, v) in canon.items() if k.endswith("running_var")]
  identity = (all(np.all(np.asarray(m) == 0) for m in means)
              and all(np.all(np.asarray(v) == 1) for v in variances))
  return "caffe" if identity else "torchvision"


# --------------------------------------------------------------------------
# Into a model's variables.
# --------------------------------------------------------------------------


def leaves(tree: Any, prefix: tuple[str, ...] = ()
           ) -> dict[tuple[str, ...], Any]:
  """{path: leaf} of nested mappings."""
  if isinstance(tree, Mapping):
    out = {}
    for k, v in tree.items():
      out.update(leaves(v, prefix + (str(k),)))
    return out
  return {prefix: tree}


def _subtree(variables: Mapping[str, Any], collection: str,
             prefix: tuple[str, ...]) -> Mapping[str, Any]:
  node = variables.get(collection)
  if node is None:
    hint = (" The backbone has no frozen batch norm; importing needs "
            "backbone_norm='frozen'." if collection == FROZEN_BN else "")
    raise ValueError(f"variables: no {collection!r} collection (have "
                     f"{sorted(variables)}).{hint}")
  for i, p in enumerate(prefix):
    if not isinstance(node, Mapping) or p not in node:
      have = sorted(node) if isinstance(node, Mapping) else type(node).__name__
      raise ValueError(
          f"prefix: {'/'.join(prefix[:i + 1])!r} not in variables"
          f"[{collection!r}] (keys there: {have}).")
    node = node[p]
  return node


def _infer_depth(params: Mapping[str, Any]) -> int:
  """ResNet depth from the block names in a backbone params subtree."""
  counts = [0, 0, 0, 0]
  for k in params:
    m = re.fullmatch(r"layer([1-4])_(\d+)", k)
    if m:
      counts[int(m.group(1)) - 1] += 1
  kind = ("bottleneck" if "conv3" in params.get("layer1_0", {})
          else "basic")
  for depth, spec in _BLOCKS.items():
    if spec == (kind, tuple(counts)):
      return depth
  raise ValueError(
      f"variables: the backbone subtree is not a ResNet-18/34/50/101 "
      f"({kind} blocks per stage {counts}; keys {sorted(params)[:8]}); "
      "check `prefix`.")


def set_path(tree: Mapping[str, Any], path: tuple[str, ...], value: Any
         ) -> dict[str, Any]:
  """Copy of `tree` with `path` set, copying only the dicts on the path."""
  out = dict(tree)
  if len(path) == 1:
    out[path[0]] = value
  else:
    out[path[0]] = set_path(tree[path[0]], path[1:], value)
  return out


def as_like(value: np.ndarray, like: Any) -> Any:
  """`value` with the dtype (and, for jax arrays, the sharding) of `like`."""
  value = value.astype(like.dtype)
  if isinstance(like, jax.Array):
    return jax.device_put(value, like.sharding)
  return jnp.asarray(value)


def import_backbone(variables: Mapping[str, Any],
                    state_dict: Mapping[str, np.ndarray], *,
                    format: str = "auto",  # pylint: disable=redefined-builtin
                    prefix: str | Sequence[str] = "backbone"
                    ) -> tuple[dict[str, Any], str]:
  """Replaces a model's ResNet parameters and statistics by a state dict's.

  Args:
    variables: the model's variables {"params": ..., "frozen_bn": ...} (jax
      or numpy arrays, e.g. from `model.init`); the backbone must use frozen
      batch norm. Not modified.
    state_dict: {key: array} in any layout of the module doc, e.g. from
      `ps_jax.pretrained.load_state_dict`.
    format: 'torchvision', 'caffe' or 'auto' (`detect_format`). The model
      must have the matching style ('pytorch' / 'caffe'); this function only
      sees shapes, which are the same for both.
    prefix: where the backbone sits in each collection: 'backbone' (AlignPS)
      or a path such as 'a/b' or ('a', 'b'); '' for a bare ResNet.
  Returns:
    (new variables, input normalization): every backbone leaf replaced (same
    dtype and sharding as before) except DCN `conv_offset` leaves absent
    from the state dict, which keep their values; other modules untouched.
    The normalization is 'imagenet_rgb' (torchvision) or 'caffe_bgr'
    (caffe); the data pipeline must use it.
  Raises:
    ValueError: unknown format or prefix; unknown, missing or mis-shaped keys
      (every one listed); a width that differs from the state dict's.
  """
  if format not in FORMATS + ("auto",):
    raise ValueError(f"format: expected one of {FORMATS + ('auto',)}, got "
                     f"{format!r}.")
  if format == "auto":
    format = detect_format(state_dict)
    logging.info("weights: the state dict looks like a %s ResNet.", format)
  if isinstance(prefix, str):
    prefix = tuple(p for p in prefix.split("/") if p)
  prefix = tuple(prefix)
  params_sub = _subtree(variables, "params", prefix)
  stats_sub = _subtree(variables, FROZEN_BN, prefix)
  depth = _infer_depth(params_sub)
  _, flat = _convert(state_dict, depth, with_classifier="fc" in params_sub,
                     allow_missing_stats=format == "caffe")

  targets = {("params",) + p: v for p, v in leaves(params_sub).items()}
  targets.update({(FROZEN_BN,) + p: v for p, v in leaves(stats_sub).items()})
  unknown = [f"{fk} -> {'/'.join(p)}" for p, (fk, _) in flat.items()
             if p not in targets]
  kept = sorted("/".join(p) for p in targets
                if p not in flat and "conv_offset" in p)
  missing = sorted("/".join(p) for p in targets
                   if p not in flat and "conv_offset" not in p)
  shapes = [
      f"{fk}: {'/'.join(p)} {tuple(v.shape)} in the file, model "
      f"{tuple(targets[p].shape)}"
      for p, (fk, v) in flat.items()
      if p in targets and tuple(v.shape) != tuple(targets[p].shape)]
  errors = []
  if unknown:
    errors.append(f"{len(unknown)} key(s) with no place in the model: "
                  f"{sorted(unknown)}")
  if missing:
    errors.append(f"{len(missing)} model variable(s) not in the file: "
                  f"{missing}")
  if shapes:
    errors.append(f"{len(shapes)} mis-shaped key(s): {sorted(shapes)}")
    stem = ("params", "conv1", "kernel")
    if stem in flat and stem in targets:
      file_c, model_c = flat[stem][1].shape[-1], targets[stem].shape[-1]
      if file_c != model_c:
        errors.append(
            f"the file's stem has {file_c} channels and the model's "
            f"{model_c}: set width_multiplier={file_c / 64:g} (ImageNet "
            "ResNets are full width, width_multiplier=1.0; other widths "
            "cannot take these weights)")
  if errors:
    raise ValueError("import_backbone: " + "; ".join(errors) + ".")

  new = dict(variables)
  for (collection, *p), (_, value) in flat.items():
    new[collection] = set_path(new[collection], prefix + tuple(p),
                           as_like(value, targets[(collection, *p)]))
  if kept:
    logging.info("weights: %d DCN offset variables not in the file keep "
                 "their init: %s", len(kept), kept)
  logging.info("weights: imported %d arrays into %r (%s, input %s).",
               len(flat), "/".join(prefix) or "<root>", format,
               NORMALIZATION_FOR_FORMAT[format])
  return new, NORMALIZATION_FOR_FORMAT[format]
