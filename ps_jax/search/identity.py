"""Which model made an index: what index.json records and how it is checked.

Embeddings of two models do not compare: a gallery embedded by one
checkpoint and a query embedded by a later one give similarities that mean
nothing. A predictor tells what identifies its model (`model_identity`):
its checkpoint `step` and a `fingerprint` (the real predictor hashes its
weights, its system's options and its input settings); an index records
them with the workdir, and `check_same_model` compares two such records.
Indexes of format version 1, and predictors without a fingerprint, leave
the model unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ps_jax.search.images import SearchError

REEMBED_HINT = ("re-embed the whole index with this model (ps-search index "
                "--reembed, or GalleryIndex.reembed)")


def model_identity(predictor: Any) -> dict[str, Any]:
  """What `predictor` tells about its model, as index.json records it.

  Returns:
    Those of "step", "fingerprint", "variables_fingerprint" and "system"
    (from `system_description`) that the predictor has and are not None.
  """
  out = {}
  for attr, key in (("step", "step"), ("fingerprint", "fingerprint"),
                    ("variables_fingerprint", "variables_fingerprint"),
                    ("system_description", "system")):
    v = getattr(predictor, attr, None)
    if v is None:
      continue
    if key == "step":
      out[key] = int(v)
    elif isinstance(v, Mapping):
      out[key] = {str(k): str(x) for k, x in v.items()}
    else:
      out[key] = str(v)
  return out


def model_label(model_info: Mapping[str, Any], fingerprint: bool = True
                ) -> str:
  """E.g. "step 3 of /runs/a (fingerprint 1a2b3c4d)", for messages."""
  step, workdir = model_info.get("step"), model_info.get("workdir")
  fp = model_info.get("fingerprint")
  text = "unknown step" if step is None else f"step {step}"
  if workdir:
    text += f" of {workdir}"
  elif model_info.get("exported"):
    text += f" exported to {model_info['exported']}"
  if not fingerprint:
    return text
  return text + (f" (fingerprint {fp[:8]})" if fp else " (no fingerprint)")


def check_same_model(index_model: Mapping[str, Any],
                     other: Mapping[str, Any], *,
                     allow_unknown: bool = False) -> bool:
  """Checks that `other` names the model of an index's embeddings.

  The fingerprints decide when both are known. When neither is (indexes of
  predictors without one), the two descriptions must be equal if both are
  given. When only one is known, whether the models agree cannot be told.

  Args:
    index_model: the index's `model_info`.
    other: the other model's description (`model_identity` keys, workdir).
    allow_unknown: return False instead of raising when it cannot be told.
  Returns:
    True if the models agree, False if it cannot be told and
    `allow_unknown`.
  Raises:
    SearchError naming both models (step, workdir, shortened fingerprint)
    if they differ, or if it cannot be told and not `allow_unknown`.
  """
  mine, other = dict(index_model), dict(other)
  fp_mine, fp_other = mine.get("fingerprint"), other.get("fingerprint")
  if fp_mine and fp_other:
    if fp_mine == fp_other:
      return True
    weights = (mine.get("variables_fingerprint"),
               other.get("variables_fingerprint"))
    why = ""
    if all(weights):
      why = (" (other weights)" if weights[0] != weights[1] else
             " (same weights, other system or input settings)")
    raise SearchError(
        f"the index holds embeddings of {model_label(mine)}, this model is "
        f"{model_label(other)}{why}: embeddings of different models do not "
        f"compare; {REEMBED_HINT}, or use the index's model")
  if allow_unknown:
    return False
  if fp_other:
    raise SearchError(
        "the index does not record the fingerprint of its model ("
        f"{model_label(mine, fingerprint=False)}; indexes of format version "
        f"1 do not), so embeddings of {model_label(other)} cannot be checked "
        f"against its own: {REEMBED_HINT}")
  if fp_mine:
    raise SearchError(
        f"this model has no fingerprint, so {model_label(other)} cannot be "
        f"checked against the model of the index, {model_label(mine)}: "
        f"{REEMBED_HINT}")
  if mine and other and mine != other:
    raise SearchError(
        f"the index was made by model {mine}, not {other}: embeddings of "
        f"different models do not compare; {REEMBED_HINT}")
  return True
