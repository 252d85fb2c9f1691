"""Tests of ps_jax.search.visualize: layout, query pixels, box colours."""

import numpy as np
from PIL import Image
import pytest

from ps_jax.search import index as index_lib
from ps_jax.search import query as query_lib
from ps_jax.search import visualize as vis

RED = (230, 20, 20)
GREY = (90, 90, 90)


def hit(rank, image, box, det=0.9, sim=0.8):
  return query_lib.Hit(image=image, box=box, det_score=det, similarity=sim,
                       score=sim, rank=rank, image_index=rank - 1,
                       detection=rank - 1)


@pytest.fixture
def gallery(tmp_path):
  """Two gallery files: 64x48 (w x h) and 40x120, uniform grey."""
  paths = []
  for i, (h, w) in enumerate([(48, 64), (120, 40)]):
    p = tmp_path / f"g{i}.png"
    Image.fromarray(np.full((h, w, 3), GREY, np.uint8)).save(p)
    paths.append(str(p))
  return paths


def query_image():
  im = np.zeros((80, 100, 3), np.uint8)
  im[20:80, 10:40] = RED  # the query person, box (10, 20, 40, 80)
  return im


def expected_size(tile_widths, tile_height):
  widths = [max(w, vis.MIN_TILE_WIDTH) for w in tile_widths]
  width = (2 * vis.MARGIN + sum(widths) + vis.SEPARATOR +
           vis.MARGIN * (len(widths) - 2))
  return width, 2 * vis.MARGIN + vis.HEADER + tile_height


@pytest.mark.parametrize("tile_height", [64, 200])
def test_layout_size_and_query_pixels(gallery, tile_height):
  hits = [hit(1, gallery[0], (4, 4, 30, 40)),
          hit(2, gallery[1], (0, 0, 40, 60)),
          hit(3, gallery[0], (1, 1, 2, 2))]
  pic = vis.render_results(query_image(), (10, 20, 40, 80), hits, top_k=2,
                           tile_height=tile_height)
  assert pic.mode == "RGB"
  # Crop 30x60 -> height H, width H/2; gallery 64x48 -> 4H/3; 40x120 -> H/3.
  crop_w = round(30 * tile_height / 60)
  assert pic.size == expected_size(
      [crop_w, round(64 * tile_height / 48), round(40 * tile_height / 120)],
      tile_height)
  arr = np.asarray(pic)
  top = vis.MARGIN + vis.HEADER
  left = arr[top:top + tile_height, vis.MARGIN:vis.MARGIN + crop_w]
  assert left.shape == (tile_height, crop_w, 3)
  np.testing.assert_array_equal(left, np.broadcast_to(RED, left.shape))
  # The first gallery image starts after the query tile and separator.
  x0 = vis.MARGIN + vis.MIN_TILE_WIDTH + vis.SEPARATOR
  assert tuple(arr[top + tile_height - 2, x0 + 2]) == GREY


def test_hit_box_colours_follow_ground_truth(gallery):
  hits = [hit(r, gallery[0], (8, 8, 40, 40)) for r in (1, 2, 3)]
  h = 48  # the gallery image's own height: no scaling of the boxes
  pic = np.asarray(vis.render_results(
      query_image(), (10, 20, 40, 80), hits, correct=[True, False, None],
      tile_height=h))
  top = vis.MARGIN + vis.HEADER
  x0 = vis.MARGIN + vis.MIN_TILE_WIDTH + vis.SEPARATOR
  step = vis.MIN_TILE_WIDTH + vis.MARGIN
  colours = [vis.CORRECT_COLOUR, vis.WRONG_COLOUR, vis.UNKNOWN_COLOUR]
  for i, colour in enumerate(colours):
    x = x0 + i * step
    assert tuple(pic[top + 8, x + 20]) == colour  # on the box's top edge
    assert tuple(pic[top + 20, x + 20]) == GREY  # inside the box
  assert tuple(pic[top - 2, x0 + 30]) == vis.CORRECT_COLOUR  # tile frame
  assert tuple(pic[top - 2, x0 + step + 30]) == vis.WRONG_COLOUR
  assert tuple(pic[top - 2, x0 + 2 * step + 30]) == vis.BACKGROUND


@pytest.mark.parametrize("box", [(5, 5, 6, 7), (10, 10, 10, 10),
                                 (20, 5, 19, 30), (-4, -4, 80, 60)])
def test_tiny_degenerate_and_outside_boxes_are_drawn(gallery, box):
  pic = np.asarray(vis.render_results(
      query_image(), (10, 20, 40, 80), [hit(1, gallery[0], box)],
      tile_height=48))
  x0 = vis.MARGIN + vis.MIN_TILE_WIDTH + vis.SEPARATOR
  tile = pic[vis.MARGIN + vis.HEADER:, x0:x0 + 64]
  assert np.any(np.all(tile == vis.UNKNOWN_COLOUR, axis=-1))


def test_no_hits_and_custom_loader(gallery):
  pic = vis.render_results(query_image(), (10, 20, 40, 80), [], tile_height=32)
  # An empty tile with "no hits" follows the query.
  assert pic.size == expected_size([16, vis.MIN_TILE_WIDTH], 32)
  calls = []

  def loader(h):
    calls.append(h.image)
    return np.zeros((10, 20, 3), np.uint8)

  vis.render_results(query_image(), (10, 20, 40, 80),
                     [hit(1, "tfds_id_7", (0, 0, 5, 5))], load_image=loader,
                     tile_height=32)
  assert calls == ["tfds_id_7"]
  with pytest.raises(index_lib.SearchError, match="correct has 0 entries"):
    vis.render_results(query_image(), (10, 20, 40, 80),
                       [hit(1, gallery[0], (0, 0, 5, 5))], correct=[])
  with pytest.raises(index_lib.SearchError, match="empty inside"):
    vis.render_results(query_image(), (50, 20, 40, 80), [])


def test_long_titles_are_shortened():
  assert vis._fit("short", 500) == "short"
  long = "/a/very/long/path/to/some/image_with_a_long_name.jpg"
  fitted = vis._fit(long, 80)
  assert fitted.startswith("...") and fitted.endswith(".jpg")
  assert vis._font().getlength(fitted) <= 80
