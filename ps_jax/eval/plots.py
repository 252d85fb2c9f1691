"""Line charts of evaluation curves as PNG, drawn with Pillow.

  line_chart({"mAP": (x, y), "mAP, CWS": (x, y2)}, "detections per image",
             "%", "title", "curve.png")

Pillow is already a dependency (images, search pictures); a plotting
library is not, and these charts need only axes, ticks, a legend and
polylines.
"""

from __future__ import annotations

import functools
import math
import pathlib
from collections.abc import Mapping, Sequence

from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14),
           (148, 103, 189), (140, 86, 75))
# A series named "<name>+cws" is drawn dashed in the colour of "<name>".
DASHED_SUFFIX = "+cws"


@functools.cache
def font(size: int = 13) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
  """Pillow's built-in TrueType font at `size` px (its bitmap font where
  Pillow has no FreeType)."""
  try:
    return ImageFont.load_default(size=size)
  except (OSError, ImportError, TypeError):
    return ImageFont.load_default()


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
  """About `count` round tick values (1, 2 or 5 x 10^k apart) from the
  last one at or below `lo` to the first at or above `hi`."""
  if not hi > lo:
    hi = lo + 1.0
  raw = (hi - lo) / max(count, 1)
  mag = 10 ** math.floor(math.log10(raw))
  step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
  first = math.floor(lo / step) * step
  ticks = []
  t = first
  while True:
    ticks.append(round(t, 10))
    if t >= hi - 1e-9 * step:
      return ticks
    t += step


def _dashed(draw: ImageDraw.ImageDraw, points, fill, width: int,
            dash: float = 8.0) -> None:
  on, left = True, dash
  for (x0, y0), (x1, y1) in zip(points, points[1:]):
    length = math.hypot(x1 - x0, y1 - y0)
    pos = 0.0
    while pos < length:
      step = min(left, length - pos)
      a, b = pos / length, (pos + step) / length
      if on:
        draw.line([(x0 + a * (x1 - x0), y0 + a * (y1 - y0)),
                   (x0 + b * (x1 - x0), y0 + b * (y1 - y0))], fill=fill,
                  width=width)
      pos += step
      left -= step
      if left <= 0:
        on, left = not on, dash


def line_chart(series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
               x_label: str, y_label: str, title: str,
               path: str | pathlib.Path, *, size: tuple[int, int] = (720, 480),
               x_ticks: Sequence[tuple[float, str]] | None = None
               ) -> pathlib.Path:
  """Draws `series` ({name: (x values, y values)}) as polylines with
  markers, axes with round ticks (or the given (x, label) `x_ticks`), and a
  legend; writes a PNG to `path`.

  Raises:
    ValueError: no series, or a series whose x and y differ in length.
  """
  if not series:
    raise ValueError("line_chart: no series to draw")
  for name, (x, y) in series.items():
    if len(x) != len(y):
      raise ValueError(f"line_chart: series {name!r} has {len(x)} x and "
                       f"{len(y)} y values")
  xs = [v for x, _ in series.values() for v in x]
  ys = [v for _, y in series.values() for v in y]
  labels = None
  if x_ticks:
    x_ticks, labels = [t for t, _ in x_ticks], [l for _, l in x_ticks]
  else:
    x_ticks = nice_ticks(min(xs, default=0.0), max(xs, default=1.0))
  y_ticks = nice_ticks(min(min(ys, default=0.0), 0.0), max(ys, default=1.0))
  x_lo, x_hi = x_ticks[0], x_ticks[-1]
  y_lo, y_hi = y_ticks[0], y_ticks[-1]
  w, h = size
  left, right, top, bottom = 70, 20, 40, 60
  img = Image.new("RGB", size, "white")
  draw = ImageDraw.Draw(img)
  draw.font = font()

  def px(x: float, y: float) -> tuple[float, float]:
    fx = (x - x_lo) / ((x_hi - x_lo) or 1.0)
    fy = (y - y_lo) / ((y_hi - y_lo) or 1.0)
    return (left + fx * (w - left - right), h - bottom - fy * (h - top - bottom))

  for t in y_ticks:
    _, y = px(x_lo, t)
    draw.line([(left, y), (w - right, y)], fill=(230, 230, 230))
    draw.text((left - 8, y), f"{t:g}", fill="black", anchor="rm")
  for i, t in enumerate(x_ticks):
    x, _ = px(t, y_lo)
    draw.line([(x, top), (x, h - bottom)], fill=(230, 230, 230))
    draw.text((x, h - bottom + 8), labels[i] if labels else f"{t:g}",
              fill="black", anchor="mt")
  draw.rectangle([left, top, w - right, h - bottom], outline="black")
  draw.text((w / 2, 14), title, fill="black", anchor="mt")
  draw.text(((left + w - right) / 2, h - 22), x_label, fill="black",
            anchor="mt")
  draw.text((8, top - 16), y_label, fill="black")
  bases = list(dict.fromkeys(n.removesuffix(DASHED_SUFFIX) for n in series))
  for i, (name, (x, y)) in enumerate(series.items()):
    colour = COLOURS[bases.index(name.removesuffix(DASHED_SUFFIX))
                     % len(COLOURS)]
    points = [px(a, b) for a, b in zip(x, y)]
    if len(points) > 1:
      if name.endswith(DASHED_SUFFIX):
        _dashed(draw, points, colour, 2)
      else:
        draw.line(points, fill=colour, width=2)
    for cx, cy in points:
      draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour)
    ly = top + 10 + 16 * i
    lx = w - right - 170
    if name.endswith(DASHED_SUFFIX):
      _dashed(draw, [(lx, ly), (lx + 24, ly)], colour, 2, dash=5.0)
    else:
      draw.line([(lx, ly), (lx + 24, ly)], fill=colour, width=2)
    draw.text((lx + 30, ly), name, fill="black", anchor="lm")
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  img.save(path)
  return path


__all__ = ["line_chart", "nice_ticks"]
