"""Pretrained weight files: reading them and initialising a model from them.

The models are functions of arrays and parameters; this module is where
weight files are read. `load_state_dict` turns a file into a state dict
{key: np.ndarray}; `init_backbone_from_file` is the training-time entry
point that puts an ImageNet ResNet file into a freshly initialised model's
backbone (the conversion itself is `ps_jax.models.weights`).

Formats:
  * `.npz`: numpy, read with `allow_pickle=False`.
  * `.safetensors`: read with the `safetensors` package's numpy loader;
    float16 and bfloat16 tensors keep their dtype.
  * `.pth` / `.pt`: read with `torch.load(..., weights_only=True)` (no code
    in the file runs), only when torch is installed; torch is not a
    dependency. Without it, `PTH_TO_NPZ` is the one-line conversion to run
    on a machine that has torch. bfloat16 tensors become float32.
  A checkpoint wrapped as {"state_dict": ...} (mmdet) or {"model": ...}
  (detectron2) is unwrapped.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np
import safetensors
from absl import logging
from safetensors import numpy as safetensors_numpy

from ps_jax.models import weights

StateDict = dict[str, np.ndarray]
PathLike = str | os.PathLike

PTH_TO_NPZ = (
    "python -c \"import sys, numpy as np, torch; "
    "sd = torch.load(sys.argv[1], map_location='cpu', weights_only=True); "
    "sd = sd.get('state_dict', sd.get('model', sd)); "
    "np.savez(sys.argv[2], **{k: v.float().numpy() if v.is_floating_point() "
    "else v.numpy() for k, v in sd.items() if torch.is_tensor(v)})\" "
    "in.pth out.npz")


def _read_npz(path: str) -> StateDict:
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
    raise ValueError(f"{path}: not a readable .npz file "
                     f"({type(e).__name__}: {e}).") from e


def _read_safetensors(path: str) -> StateDict:
  try:
    return dict(safetensors_numpy.load_file(path))
  except (safetensors.SafetensorError, ValueError, TypeError, KeyError,
          OSError) as e:
    raise ValueError(f"{path}: not a readable .safetensors file "
                     f"({type(e).__name__}: {e}).") from e


def _unwrap(obj: Any, path: str) -> Mapping[str, Any]:
  """{"state_dict": sd} / {"model": sd} (mmdet / detectron2) -> sd."""
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path}: expected a dict of tensors, got "
                     f"{type(obj).__name__}.")
  for wrapper in ("state_dict", "model"):
    if isinstance(obj.get(wrapper), Mapping):
      return obj[wrapper]
  return obj


def _read_torch(path: str) -> StateDict:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"{path}: reading .pth/.pt files needs torch, which is not installed. "
        "Convert the file to .npz on a machine with torch, e.g.\n  "
        f"{PTH_TO_NPZ}\n(see docs/pretrained_weights.md).") from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for a bad file.
    raise ValueError(f"{path}: torch.load(weights_only=True) failed: "
                     f"{type(e).__name__}: {e}") from e
  obj = _unwrap(obj, path)
  out, bad = {}, []
  for k, v in obj.items():
    if not torch.is_tensor(v):
      bad.append(f"{k} ({type(v).__name__})")
    elif v.dtype == torch.bfloat16:  # numpy has no native bfloat16.
      out[k] = v.float().numpy()
    else:
      out[k] = v.detach().cpu().numpy()
  if bad:
    raise ValueError(f"{path}: entries that are not tensors: {bad}.")
  return out


def load_state_dict(path: PathLike) -> StateDict:
  """Reads a state dict from `.npz`, `.safetensors` or `.pth` / `.pt`.

  Args:
    path: the weights file (module docstring for the formats).
  Returns:
    {key: array} with the file's keys and dtypes (float16 and, from
    .safetensors, bfloat16 stay as they are; bfloat16 tensors of a .pth
    become float32; `ps_jax.models.weights` casts everything to float32).
    Wrappers {"state_dict": ...} and {"model": ...} of a .pth are removed.
  Raises:
    FileNotFoundError: no such file.
    ValueError: unknown extension or a corrupt file (the message names it).
    ImportError: a `.pth` file without torch installed (the message gives
      the command that converts it to .npz).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weights file not found: {path}")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".npz":
    return _read_npz(path)
  if ext == ".safetensors":
    return _read_safetensors(path)
  if ext in (".pth", ".pt"):
    return _read_torch(path)
  raise ValueError(f"{path}: unknown weights format {ext!r}; expected .npz, "
                   ".safetensors, .pth or .pt.")


def init_backbone_from_file(variables: Mapping[str, Any],
                            path: PathLike | None, *, style: str,
                            backbone_norm: str, prefix: str = "backbone",
                            data_normalization: str | None = None
                            ) -> tuple[Mapping[str, Any], str | None]:
  """Imports ImageNet backbone weights into freshly initialised variables.

  For the training loop, after `model.init` and before restoring a
  checkpoint of the same run (a restored run already has its weights):

    variables, _ = pretrained.init_backbone_from_file(
        variables, path, style=model.style,
        backbone_norm=model.backbone_norm,
        data_normalization=config.data.normalization)

  Args:
    variables: the model's variables {"params": ..., "frozen_bn": ...}, the
      backbone under `prefix` in each collection. Not modified.
    path: the weights file (`load_state_dict`); None or '' returns
      `variables` unchanged.
    style: the built model's ResNet style; it picks the format ('caffe' ->
      caffe weights, 'pytorch' -> torchvision weights).
    backbone_norm: the built model's backbone norm; must be 'frozen'.
    prefix: where the backbone sits in each collection ('' for a bare
      ResNet; see `weights.import_backbone`).
    data_normalization: the data pipeline's `normalization`; if given, it
      must be the one the weights expect.
  Returns:
    (variables, normalization the weights expect), or (variables, None)
    without a path.
  Raises:
    ValueError: the model cannot take the file (see
      `weights.import_backbone`; the message starts with `init_from=<path>`),
      an unknown style, a backbone norm that is not 'frozen', or a
      `data_normalization` that disagrees. `load_state_dict`'s errors for
      a missing or unreadable file.
  """
  if not path:
    return variables, None
  where = f"init_from={os.fspath(path)!r}"
  if backbone_norm != "frozen":
    raise ValueError(f"{where}: ImageNet weights need backbone_norm='frozen' "
                     f"(got {backbone_norm!r}).")
  if style not in weights.FORMAT_FOR_STYLE:
    raise ValueError(f"{where}: style must be one of "
                     f"{sorted(weights.FORMAT_FOR_STYLE)}, got {style!r}.")
  fmt = weights.FORMAT_FOR_STYLE[style]
  state_dict = load_state_dict(path)
  try:
    guess = weights.detect_format(state_dict)
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from e
  if guess != fmt:
    logging.warning(
        "init_from=%s looks like a %s ResNet but the model has style=%r, so "
        "it is imported as %s; set model.style=%r if the file is %s.",
        path, guess, style, fmt, weights.STYLE_FOR_FORMAT[guess], guess)
  norm = weights.NORMALIZATION_FOR_FORMAT[fmt]
  if data_normalization is not None and data_normalization != norm:
    raise ValueError(
        f"{where} holds {fmt} weights (style={style!r}), which expect "
        f"data.normalization={norm!r}, but the config has "
        f"{data_normalization!r}.")
  try:
    variables, norm = weights.import_backbone(variables, state_dict,
                                              format=fmt, prefix=prefix)
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from e
  logging.info("%s: imported the backbone (%s weights, input %s).", where,
               fmt, norm)
  return variables, norm
