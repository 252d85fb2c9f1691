"""Pictures of search results: the query beside its top-k gallery hits.

Layout, left to right in one row on a light background:
  * the query crop, resized to `tile_height`, framed in blue, titled "query";
  * a separator;
  * one tile per hit: the whole gallery image resized to `tile_height` with
    the hit box drawn, titled "#rank  sim S" over "det D  file name".
Every tile is at least `MIN_TILE_WIDTH` wide (so its title fits); images
sit at the tile's left edge, `MARGIN + HEADER` pixels from the top.
If ground truth is given (`correct`), a hit's box, frame and title are green
when it is the query person and red when it is not; otherwise boxes are
orange. Thin white lines either side keep a box visible on any colour.
Boxes are [x1, y1, x2, y2] pixels of the image they belong to.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from ps_jax.eval import plots
from ps_jax.search import images as images_lib
from ps_jax.search import index as index_lib
from ps_jax.search import query as query_lib

MARGIN = 8          # px around and between tiles
SEPARATOR = 24      # px between the query tile and the first hit
TEXT_SIZE = 15      # px font size of the titles
LINE = TEXT_SIZE + 4
HEADER = 2 * LINE + 4  # px of title above each image
MIN_TILE_WIDTH = 150   # px, so "#10  sim -0.123" fits
BACKGROUND = (245, 245, 245)
TEXT = (20, 20, 20)
QUERY_COLOUR = (30, 90, 230)
UNKNOWN_COLOUR = (255, 140, 0)
CORRECT_COLOUR = (0, 160, 60)
WRONG_COLOUR = (220, 30, 30)
HALO = (255, 255, 255)

# Returns uint8[h, w, 3] RGB pixels of a hit's gallery image.
ImageLoader = Callable[[query_lib.Hit], np.ndarray]


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
  return plots.font(TEXT_SIZE)


def _fit(text: str, width: int) -> str:
  """`text` shortened from the left with "..." to fit `width` pixels."""
  font = _font()
  if font.getlength(text) <= width:
    return text
  while text and font.getlength("..." + text) > width:
    text = text[1:]
  return "..." + text


def _resize_to_height(image: np.ndarray, height: int) -> Image.Image:
  h, w = image.shape[:2]
  new_w = max(1, round(w * height / h))
  return Image.fromarray(np.asarray(image, np.uint8)).resize(
      (new_w, height), Image.Resampling.BILINEAR)


def render_results(query_image: np.ndarray, query_box: Sequence[float],
                   hits: Sequence[query_lib.Hit], top_k: int | None = None, *,
                   load_image: ImageLoader | None = None,
                   correct: Sequence[bool | None] | None = None,
                   tile_height: int = 256) -> Image.Image:
  """Draws the query crop beside the gallery images of the top hits.

  Args:
    query_image: uint8[H, W, 3] RGB image holding the query person.
    query_box: (x1, y1, x2, y2) pixels of the query person in it.
    hits: ranked hits (from `query.search`).
    top_k: draw only the first `top_k` hits (None: all).
    load_image: returns uint8[h, w, 3] RGB pixels of a hit's gallery image;
      default reads `hit.image` as a file (pass
      `lambda h: index.load_image(h.image_index)` for TFDS indexes).
    correct: per hit, True / False if it is / is not the query person, None
      if unknown; colours boxes green / red.
    tile_height: pixel height every image is resized to.
  Returns:
    An RGB PIL image (save with `.save(path)` as PNG).
  """
  if tile_height < 16:
    raise index_lib.SearchError(f"tile_height must be >= 16, got {tile_height}")
  hits = list(hits)[:top_k] if top_k is not None else list(hits)
  if correct is not None and len(correct) < len(hits):
    raise index_lib.SearchError(
        f"correct has {len(correct)} entries for {len(hits)} hits")
  load_image = load_image or (lambda h: images_lib.read_image(h.image))
  query_image = np.asarray(query_image)
  x1, y1, x2, y2 = query_lib.check_box(query_box, query_image.shape[1],
                                       query_image.shape[0])
  crop = query_image[int(np.floor(y1)):int(np.ceil(y2)),
                     int(np.floor(x1)):int(np.ceil(x2))]
  tiles = [(_resize_to_height(crop, tile_height), None, None)]
  for i, h in enumerate(hits):
    pixels = load_image(h)
    scale = tile_height / pixels.shape[0]
    box = [v * scale for v in h.box]
    ok = None if correct is None else correct[i]
    tiles.append((_resize_to_height(pixels, tile_height), box, ok))

  widths = [max(t[0].width, MIN_TILE_WIDTH) for t in tiles]
  if not hits:
    widths.append(MIN_TILE_WIDTH)  # room for "no hits"
  total_w = (2 * MARGIN + sum(widths) + SEPARATOR +
             MARGIN * max(0, len(widths) - 2))
  canvas = Image.new("RGB", (total_w, 2 * MARGIN + HEADER + tile_height),
                     BACKGROUND)
  draw = ImageDraw.Draw(canvas)
  font = _font()
  top = MARGIN + HEADER
  line_w = max(2, round(tile_height / 90))
  x = MARGIN
  for i, ((im, box, ok), w) in enumerate(zip(tiles, widths)):
    canvas.paste(im, (x, top))
    frame = [x - 2, top - 2, x + im.width + 1, top + im.height + 1]
    if i == 0:
      draw.rectangle(frame, outline=QUERY_COLOUR, width=2)
      draw.text((x, MARGIN), "query", fill=QUERY_COLOUR, font=font)
      x += w + SEPARATOR
      draw.line([x - SEPARATOR // 2, MARGIN, x - SEPARATOR // 2,
                 top + tile_height], fill=(160, 160, 160), width=2)
      continue
    h = hits[i - 1]
    colour = (UNKNOWN_COLOUR if ok is None else
              CORRECT_COLOUR if ok else WRONG_COLOUR)
    if ok is not None:
      draw.rectangle(frame, outline=colour, width=2)
    # Clipped to the image, so a box reaching past its border stays in the
    # tile; tiny or degenerate detections still get a visible (small) box.
    cx1, cx2 = np.clip([box[0], box[2]], 0, im.width - 2)
    cy1, cy2 = np.clip([box[1], box[3]], 0, im.height - 2)
    bx1, by1 = x + float(cx1), top + float(cy1)
    bx2, by2 = max(x + float(cx2), bx1 + 1), max(top + float(cy2), by1 + 1)
    # Thin white lines inside and outside keep the box visible on clothes
    # or backgrounds of its own colour.
    draw.rectangle([bx1 - 1, by1 - 1, bx2 + 1, by2 + 1], outline=HALO)
    if min(bx2 - bx1, by2 - by1) > 2 * line_w + 2:
      draw.rectangle([bx1 + line_w, by1 + line_w, bx2 - line_w, by2 - line_w],
                     outline=HALO)
    draw.rectangle([bx1, by1, bx2, by2], outline=colour, width=line_w)
    title_colour = TEXT if ok is None else colour
    draw.text((x, MARGIN), _fit(f"#{h.rank}  sim {h.similarity:.3f}", w),
              fill=title_colour, font=font)
    name = os.path.basename(h.image) or h.image
    draw.text((x, MARGIN + LINE), _fit(f"det {h.det_score:.2f}  {name}", w),
              fill=TEXT, font=font)
    x += w + MARGIN
  if not hits:
    draw.text((x, top + tile_height // 2), "no hits", fill=TEXT, font=font)
  return canvas
