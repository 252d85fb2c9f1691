"""Procedural person-search scenes, deterministic from a seed.

Stylised street, mall, park and station scenes with several people, drawn
with PIL and numpy only, so the whole person-search task (detect, then
re-identify across cameras) is real but needs no download:

* Identities have a fixed appearance: upper and lower clothing colours from
  a shared palette (many identities share a colour, so a mean colour does not
  identify anyone), a clothing pattern (solid, stripes, checks, two-tone),
  sleeves, hair, shoes, build (height, width, head size) and accessories (hat,
  shoulder bag on one side, backpack). Train and test identities are disjoint
  (test pids continue after the K train pids).
* Cameras change the background style, horizon and person scale, brightness,
  colour cast, gamma, sensor noise and blur; each appearance of a person has
  its own facing direction (front, back, left, right), stride and size, so a
  bag or a backpack is seen from different sides.
* Scenes hold 0..N people placed on a ground plane with perspective (farther
  people are smaller and drawn first), partial occlusion by people and by
  objects (cars, benches, crates, planters, poles), cluttered textured
  backgrounds and person-like distractors without boxes (headless mannequins,
  two-coloured banners). Some people are unlabeled (pid -1, one-off looks).

One job per module; this package re-exports the public names:
  config.py      `SyntheticConfig`, the splits, the random streams and
                 `image_id`.
  identities.py  `Identity`, `random_identity`, `make_identities` (the
                 labeled people of each split, with no two looking alike).
  cameras.py     `Camera`, `make_camera` (style and image formation).
  primitives.py  the drawing primitives every figure is made of: `Prim`,
                 `prims_box` (their extent, hence the boxes), `draw_prims`.
  figures.py     people (`person_prims`) and person-like distractors
                 (`mannequin_prims`, `banner_prims`).
  props.py       street objects (`object_prims`): occluders and furniture.
  layout.py      `SceneLayout`, `scene_layout`: who stands where, what hides
                 whom, and the boxes, without pixels.
  render.py      `render_layout` (pixels) and the generators
                 `generate_scene`, `generate_split`.
  protocol.py    `generate_queries`, the CUHK-SYSU-style query protocol.

Conventions:
  * `image` is uint8[H, W, 3] RGB.
  * `boxes_xyxy` is f32[N, 4] absolute pixels [x1, y1, x2, y2] of the image,
    the full extent of the drawn person (hat, bag and stride included) even
    where it is occluded, clipped to the image (as in CUHK-SYSU annotations).
  * `pids` is i32[N]: train ids in [0, K), test ids in [K, K + T), -1 for
    unlabeled people.
  * Randomness: every scene, identity, camera and query draws from its own
    `np.random.default_rng([seed, stream, ...])`, so scene i of a split is the
    same whatever other scenes are generated.
  * `image_id` is f"{split}_{index:06d}.jpg".
"""

from ps_jax.data.synthetic.cameras import Camera
from ps_jax.data.synthetic.cameras import make_camera
from ps_jax.data.synthetic.config import SPLITS
from ps_jax.data.synthetic.config import SyntheticConfig
from ps_jax.data.synthetic.config import image_id
from ps_jax.data.synthetic.figures import FACINGS
from ps_jax.data.synthetic.figures import banner_prims
from ps_jax.data.synthetic.figures import mannequin_prims
from ps_jax.data.synthetic.figures import person_prims
from ps_jax.data.synthetic.identities import PATTERNS
from ps_jax.data.synthetic.identities import Identity
from ps_jax.data.synthetic.identities import make_identities
from ps_jax.data.synthetic.identities import random_identity
from ps_jax.data.synthetic.layout import SceneLayout
from ps_jax.data.synthetic.layout import scene_layout
from ps_jax.data.synthetic.primitives import Prim
from ps_jax.data.synthetic.primitives import draw_prims
from ps_jax.data.synthetic.primitives import prims_box
from ps_jax.data.synthetic.props import OCCLUDER_KINDS
from ps_jax.data.synthetic.props import object_prims
from ps_jax.data.synthetic.protocol import generate_queries
from ps_jax.data.synthetic.render import generate_scene
from ps_jax.data.synthetic.render import generate_split
from ps_jax.data.synthetic.render import render_layout

__all__ = [
    "Camera", "FACINGS", "Identity", "OCCLUDER_KINDS", "PATTERNS", "Prim",
    "SPLITS", "SceneLayout", "SyntheticConfig", "banner_prims", "draw_prims",
    "generate_queries", "generate_scene", "generate_split", "image_id",
    "make_camera", "make_identities", "mannequin_prims", "object_prims",
    "person_prims", "prims_box", "random_identity", "render_layout",
    "scene_layout",
]
