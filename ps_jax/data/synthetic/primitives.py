"""Drawing primitives: the format every figure is drawn in.

A drawable is a list of primitives in image pixels:
  ("poly", [(x, y), ...], rgb)   ("ellipse", (x0, y0, x1, y1), rgb)
  ("line", [(x, y), ...], rgb, width)   ("shadow", (x0, y0, x1, y1))
Boxes are the extent of the primitives (`prims_box`), so a person's box is
exactly what is drawn (`draw_prims`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw

# One primitive, as in the module docstring.
Prim = tuple


def prims_box(prims: Sequence[Prim]) -> np.ndarray:
  """f64[4] xyxy extent of the primitives (shadows excluded)."""
  xs, ys = [], []
  for p in prims:
    if p[0] == "poly":
      xs += [q[0] for q in p[1]]
      ys += [q[1] for q in p[1]]
    elif p[0] == "ellipse":
      xs += [p[1][0], p[1][2]]
      ys += [p[1][1], p[1][3]]
    elif p[0] == "line":
      r = p[3] / 2
      xs += [q[0] - r for q in p[1]] + [q[0] + r for q in p[1]]
      ys += [q[1] for q in p[1]]
  return np.array([min(xs), min(ys), max(xs), max(ys)])


def quad(x0a, x1a, ya, x0b, x1b, yb):
  """A quadrilateral with top edge x0a..x1a at ya, bottom x0b..x1b at yb."""
  return [(x0a, ya), (x1a, ya), (x1b, yb), (x0b, yb)]


def draw_prims(im: Image.Image, prims: Sequence[Prim]) -> None:
  """Draws primitives onto an RGB image in place (shadows blended)."""
  d = ImageDraw.Draw(im, "RGBA")
  for p in prims:
    kind = p[0]
    if kind == "shadow":
      d.ellipse(p[1], fill=(0, 0, 0, 70))
    elif kind == "poly":
      d.polygon(p[1], fill=tuple(int(v) for v in p[2]))
    elif kind == "ellipse":
      x0, y0, x1, y1 = p[1]
      d.ellipse((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)),
                fill=tuple(int(v) for v in p[2]))
    elif kind == "line":
      d.line(p[1], fill=tuple(int(v) for v in p[2]),
             width=int(round(p[3])))
