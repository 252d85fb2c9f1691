"""The CUHK-SYSU-style query protocol on the test scenes."""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

from ps_jax.data.synthetic import config
from ps_jax.data.synthetic import layout

# Hard-case query subsets, as the OIM paper reports CUHK-SYSU's occlusion
# (187 of 2,900 queries) and low-resolution (290) subsets: a query whose
# person is partly hidden (the layout's visible fraction below
# OCCLUDED_BELOW; queries are chosen with at least 0.7 visible), or shorter
# than LOW_RESOLUTION_BELOW pixels: 99 and 67 of the 523 `default` queries
# (CUHK-SYSU's are 6 % and 10 % of its queries).
OCCLUSION = "occlusion"
LOW_RESOLUTION = "low_resolution"
SUBSETS = (OCCLUSION, LOW_RESOLUTION)
OCCLUDED_BELOW = 0.85
LOW_RESOLUTION_BELOW = 80.0


def generate_queries(cfg: config.SyntheticConfig) -> list[dict[str, Any]]:
  """A CUHK-SYSU-style query protocol on the test identities.

  One query per test identity that is seen well enough somewhere (visible
  fraction >= 0.7, height >= 1.5 * min_person_px) and also appears in a scene
  of another camera. Each gallery of size n holds up to `max_gallery_targets`
  other-camera images of the target and n - (#targets) test images without
  the target; the query image is never in its gallery. Smaller galleries are
  prefixes of the larger one's distractors (same targets).

  Returns:
    A list, ordered by pid, of dicts: `index` (test scene of the query),
    `image_id`, `camera`, `query_box_xyxy` f32[4] pixels, `query_pid` int,
    `galleries` {n: [image_id, ...]} (shuffled), `target_image_ids` [str],
    `subsets` [str]: the hard-case subsets (`SUBSETS`) the query is in.
  """
  layouts = [layout.scene_layout(cfg, "test", i)
             for i in range(cfg.num_test_scenes)]
  where = collections.defaultdict(list)  # pid -> [(scene, person)]
  for s, lay in enumerate(layouts):
    for j, pid in enumerate(lay.pids):
      if pid >= 0:
        where[int(pid)].append((s, j))
  queries = []
  for pid in sorted(where):
    rng = config.make_rng(cfg.seed, config.QUERY_STREAM, pid)
    seen = where[pid]
    scenes_with = {s for s, _ in seen}
    good = []
    for s, j in seen:
      lay = layouts[s]
      box = lay.boxes_xyxy[j]
      others = [t for t in scenes_with if layouts[t].camera != lay.camera]
      if (lay.visible[j] >= 0.7 and box[3] - box[1] >= 1.5 * cfg.min_person_px
          and others):
        good.append((s, j))
    if not good:
      continue
    s, j = good[rng.integers(len(good))]
    cam = layouts[s].camera
    others = sorted(t for t in scenes_with if layouts[t].camera != cam)
    targets = sorted(rng.choice(others, min(len(others),
                                            cfg.max_gallery_targets),
                                replace=False).tolist())
    pool = np.array([t for t in range(cfg.num_test_scenes)
                     if t not in scenes_with], np.int64)
    n_max = max(cfg.gallery_sizes)
    if len(pool) < n_max - len(targets):
      continue
    distract = rng.permutation(pool)[:n_max - len(targets)]
    galleries = {}
    for n in sorted(cfg.gallery_sizes):
      members = np.concatenate([targets, distract[:n - len(targets)]])
      members = rng.permutation(members.astype(np.int64))
      galleries[n] = [layouts[t].image_id for t in members]
    box = layouts[s].boxes_xyxy[j]
    subsets = [name for name, hit in (
        (OCCLUSION, layouts[s].visible[j] < OCCLUDED_BELOW),
        (LOW_RESOLUTION, box[3] - box[1] < LOW_RESOLUTION_BELOW)) if hit]
    queries.append({
        "index": s,
        "image_id": layouts[s].image_id,
        "camera": cam,
        "query_box_xyxy": layouts[s].boxes_xyxy[j].copy(),
        "query_pid": pid,
        "galleries": galleries,
        "target_image_ids": [layouts[t].image_id for t in targets],
        "subsets": subsets,
    })
  return queries
