"""People and person-like distractors as drawing primitives.

A person is drawn from an identity, a facing direction (front, back, left,
right) and a stride, so a bag or a backpack is seen from different sides.
Distractors look like people but get no box: headless mannequins and
two-coloured banners.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ps_jax.data.synthetic import identities
from ps_jax.data.synthetic import primitives

FACINGS = ("front", "back", "left", "right")


def _patterned(top_l, top_r, y0, bot_l, bot_r, y1, ident: identities.Identity,
               scale: float) -> list[primitives.Prim]:
  """A trapezoid (the torso) filled with the identity's pattern."""
  base, second = ident.upper, ident.upper2
  prims = [("poly", primitives.quad(top_l, top_r, y0, bot_l, bot_r, y1),
            base)]

  def at(t, u):  # t across [0, 1] left to right, u down [0, 1]
    xl = top_l + (bot_l - top_l) * u
    xr = top_r + (bot_r - top_r) * u
    return (xl + (xr - xl) * t, y0 + (y1 - y0) * u)

  def cell(t0, t1, u0, u1, c):
    prims.append(("poly", [at(t0, u0), at(t1, u0), at(t1, u1), at(t0, u1)],
                  c))

  # Pattern periods scale with the person (about 7 bands over the torso) but
  # never drop below 2 px, so patterns survive on small people.
  n_bands = int(np.clip((y1 - y0) / max(2.0, 0.045 * scale), 2, 8))
  if ident.pattern == "stripes":
    for b in range(0, n_bands, 2):
      cell(0, 1, (b + 0.5) / n_bands, (b + 1.5) / n_bands, second)
  elif ident.pattern == "checks":
    cols = max(2, n_bands // 2)
    for b in range(n_bands):
      for c in range(cols):
        if (b + c) % 2:
          cell(c / cols, (c + 1) / cols, b / n_bands, (b + 1) / n_bands,
               second)
  elif ident.pattern == "two_tone":
    cell(0, 1, 0.5, 1, second)
  return prims


class _Body(NamedTuple):
  """Body geometry shared by `person_prims` and `person_keypoints`.

  Vertical positions and widths are fractions of the person's height; y is
  measured down from the top of the person (the top of the hat if any).
  """
  profile: bool  # facing "left" or "right": seen from the side
  fwd: float  # profile: the image-x direction the nose points (-1 or +1)
  head_h: float  # head height
  head_w: float  # head width
  y_head: float  # top of the head (below the hat's crown)
  y_sh: float  # shoulder line: top of the torso, base of the neck
  y_hip: float  # hip line: bottom of the torso
  sw: float  # half shoulder width
  hw: float  # half hip width


def _body(ident: identities.Identity, facing: str) -> _Body:
  """The body geometry of `ident` seen facing `facing`."""
  profile = facing in ("left", "right")
  wf = ident.width
  head_h = 0.125 * ident.head
  y_head = 0.03 if ident.hat is not None else 0.0
  y_sh = y_head + head_h + 0.012
  return _Body(
      profile=profile,
      fwd=-1.0 if facing == "left" else 1.0,
      head_h=head_h,
      head_w=head_h * (0.72 if profile else 0.8),
      y_head=y_head,
      y_sh=y_sh,
      y_hip=y_sh + 0.33,
      sw=(0.085 if profile else 0.125) * wf,
      hw=(0.075 if profile else 0.105) * wf)


KEYPOINTS = ("head_top", "neck", "left_hip", "right_hip")


def person_keypoints(ident: identities.Identity, facing: str, stride: float,
                     height: float, cx: float, top: float) -> np.ndarray:
  """f64[4, 2] (x, y) image pixels of the KEYPOINTS of a person.

  The same person as `person_prims(ident, facing, stride, height, cx, top)`,
  from the same body geometry (`_body`); pure computation, no random draws.

  * head_top: (cx, top of the head), the top of the head ellipse; a hat's
    crown sits above it.
  * neck: (cx, shoulder line), the base of the neck at the top centre of
    the torso (OpenPose's "neck").
  * left_hip, right_hip: the ends of the hip line (bottom edge of the
    torso), the person's own left and right. Facing the camera ("front") the
    person's left hip is on the image right (cx + half hip width); seen from
    the back it is on the image left. In profile ("left", "right") the hips
    are one behind the other: both are put at the centre of the hip line,
    (cx, hip line), so the two points coincide.

  Args:
    ident, facing, stride, height, cx, top: as for `person_prims` (the hips
      do not move with the stride).
  """
  del stride  # The legs swing below the hips.
  if facing not in FACINGS:
    raise ValueError(f"facing {facing!r}: expected one of {FACINGS}")
  g = _body(ident, facing)
  side = {"front": 1.0, "back": -1.0}.get(facing, 0.0)  # image x of the left
  y_hip = top + g.y_hip * height
  return np.array([
      (cx, top + g.y_head * height),
      (cx, top + g.y_sh * height),
      (cx + side * g.hw * height, y_hip),
      (cx - side * g.hw * height, y_hip),
  ], np.float64)


def person_prims(ident: identities.Identity, facing: str, stride: float,
                 height: float, cx: float, top: float
                 ) -> list[primitives.Prim]:
  """The primitives of one person, `height` px tall, top-centre at (cx, top).

  Args:
    ident: the appearance.
    facing: one of FACINGS; "left"/"right" are seen in profile.
    stride: in [0, 1], how far the legs are apart (walking).
    height: person height in pixels (feet at top + height).
    cx, top: horizontal centre and top of the person in image pixels.
  """
  h = height
  x = lambda f: cx + f * h  # noqa: E731  (fractions of the height)
  y = lambda f: top + f * h  # noqa: E731
  prims: list[primitives.Prim] = []
  g = _body(ident, facing)
  profile, fwd, wf = g.profile, g.fwd, ident.width
  head_h, head_w, y_head = g.head_h, g.head_w, g.y_head
  y_sh, y_hip, sw, hw = g.y_sh, g.y_hip, g.sw, g.hw
  y_foot = 0.965
  aw = 0.05 * wf  # arm width
  # Image side of the bag: a person's left is on the image right when they
  # face the camera; in profile only one side is seen.
  if facing == "front":
    bag_x, bag_near = -ident.bag_side, True
  elif facing == "back":
    bag_x, bag_near = ident.bag_side, True
  else:
    bag_x, bag_near = -fwd * 0.3, (ident.bag_side == -1) == (facing == "left")

  prims.append(("shadow", (x(-0.16 - 0.1 * stride), y(0.95),
                           x(0.16 + 0.1 * stride), y(1.0))))
  # Behind the body: long hair, a backpack seen in profile, a far-side bag.
  if ident.long_hair and facing != "front":
    prims.append(("poly", primitives.quad(
        x(-head_w / 2), x(head_w / 2), y(y_head + head_h * 0.5),
        x(-head_w * 0.6), x(head_w * 0.6), y(y_sh + 0.08)), ident.hair))
  if ident.backpack is not None and profile:
    bx0 = -fwd * sw * 0.6
    bx1 = -fwd * (sw + 0.075)
    prims.append(("poly", primitives.quad(
        x(min(bx0, bx1)), x(max(bx0, bx1)), y(y_sh + 0.02),
        x(min(bx0, bx1)), x(max(bx0, bx1)), y(y_sh + 0.2)), ident.backpack))
  bag_prims = []
  if ident.bag is not None:
    bs = 0.11
    if profile:
      b0 = bag_x * sw - bs / 2
    else:
      b0 = bag_x * (sw + aw * 0.6) - (bs if bag_x < 0 else 0)
    bag_prims = [
        ("line", [(x(-bag_x * sw * 0.8), y(y_sh + 0.01)),
                  (x(b0 + bs / 2), y(y_hip - 0.08))], ident.bag,
         max(1.0, 0.012 * h)),
        ("poly", primitives.quad(x(b0), x(b0 + bs), y(y_hip - 0.08), x(b0),
                                 x(b0 + bs), y(y_hip + 0.03)), ident.bag)]
    if not bag_near:
      prims += bag_prims[1:]
      bag_prims = []

  # Legs and lower clothing.
  ankle = 0.045 * wf
  if profile:
    spread = 0.03 + 0.13 * stride
    legs = [(-spread, -spread + 0.07 * wf), (spread - 0.07 * wf, spread)]
    tops = [(-hw * 0.8, hw * 0.2), (-hw * 0.2, hw * 0.8)]
  else:
    spread = 0.04 * stride
    legs = [(-hw * 0.85 - spread, -hw * 0.85 + 2 * ankle - spread),
            (hw * 0.85 - 2 * ankle + spread, hw * 0.85 + spread)]
    tops = [(-hw, -0.006), (0.006, hw)]
  cut = {"trousers": 1.0, "shorts": 0.4, "skirt": 0.0}[ident.lower_kind]
  for (fl, fr), (tl, tr) in zip(legs, tops):
    y_cut = y_hip + (y_foot - y_hip) * cut
    mid = lambda a, b, t: a + (b - a) * t  # noqa: E731
    t = (y_cut - y_hip) / (y_foot - y_hip)
    if cut < 1.0:
      prims.append(("poly", primitives.quad(
          x(mid(tl, fl, t)), x(mid(tr, fr, t)), y(y_cut), x(fl), x(fr),
          y(y_foot)), ident.skin))
    if cut > 0.0:
      prims.append(("poly", primitives.quad(
          x(tl), x(tr), y(y_hip - 0.01), x(mid(tl, fl, t)),
          x(mid(tr, fr, t)), y(y_cut)), ident.lower))
    toe = fwd * 0.04 if profile else 0.0
    prims.append(("poly", primitives.quad(
        x(min(fl, fl + toe) - 0.005), x(max(fr, fr + toe) + 0.005),
        y(y_foot - 0.012), x(min(fl, fl + toe) - 0.005),
        x(max(fr, fr + toe) + 0.005), y(1.0)), ident.shoes))
  if ident.lower_kind == "skirt":
    prims.append(("poly", primitives.quad(
        x(-hw * 1.02), x(hw * 1.02), y(y_hip - 0.01), x(-hw * 1.5),
        x(hw * 1.5), y(y_hip + 0.2)), ident.lower))

  # Arms (both in front/back views, drawn beside the torso), torso, head.
  def arm(xa, xb, swing):
    sleeve = ident.upper if ident.long_sleeves else ident.skin
    y_el = y_sh + 0.13
    y_hand = y_hip + 0.03
    if not ident.long_sleeves:
      prims.append(("poly", primitives.quad(
          x(xa), x(xb), y(y_sh + 0.01), x(xa), x(xb), y(y_el)), ident.upper))
    prims.append(("poly", primitives.quad(
        x(xa), x(xb), y(y_el if not ident.long_sleeves else y_sh + 0.01),
        x(xa + swing), x(xb + swing), y(y_hand - 0.03)), sleeve))
    prims.append(("poly", primitives.quad(
        x(xa + swing), x(xb + swing), y(y_hand - 0.03), x(xa + swing),
        x(xb + swing), y(y_hand)), ident.skin))

  if not profile:
    arm(-sw - aw * 0.7, -sw + aw * 0.3, -0.01)
    arm(sw - aw * 0.3, sw + aw * 0.7, 0.01)
  prims += _patterned(x(-sw), x(sw), y(y_sh), x(-hw), x(hw), y(y_hip), ident,
                      h)
  if ident.backpack is not None and not profile:
    if facing == "back":
      prims.append(("poly", primitives.quad(
          x(-sw * 0.75), x(sw * 0.75), y(y_sh + 0.03), x(-sw * 0.7),
          x(sw * 0.7), y(y_sh + 0.22)), ident.backpack))
    else:
      for s in (-1, 1):
        prims.append(("line", [(x(s * sw * 0.55), y(y_sh)),
                               (x(s * sw * 0.5), y(y_sh + 0.17))],
                      ident.backpack, max(1.0, 0.018 * h)))
  if profile:
    arm(-aw * 0.5, aw * 0.5, fwd * 0.06 * stride)
  prims += bag_prims

  # Neck and head.
  prims.append(("poly", primitives.quad(
      x(-0.025), x(0.025), y(y_head + head_h * 0.8), x(-0.025), x(0.025),
      y(y_sh + 0.005)), ident.skin))
  hx0, hx1 = x(-head_w / 2), x(head_w / 2)
  hy0, hy1 = y(y_head), y(y_head + head_h)
  if facing == "back":
    prims.append(("ellipse", (hx0, hy0, hx1, hy1), ident.hair))
  else:
    prims.append(("ellipse", (hx0, hy0, hx1, hy1), ident.skin))
    if facing == "front":
      prims.append(("poly", primitives.quad(
          hx0, hx1, hy0 + head_h * h * 0.1, hx0, hx1,
          hy0 + head_h * h * 0.3), ident.hair))
      prims.append(("ellipse", (hx0 + 0.05 * head_w * h, hy0,
                                hx1 - 0.05 * head_w * h,
                                hy0 + head_h * h * 0.45), ident.hair))
      if head_h * h >= 9:
        for s in (-1, 1):
          ex = cx + s * head_w * h * 0.2
          ey = hy0 + head_h * h * 0.55
          r = max(0.6, head_h * h * 0.06)
          prims.append(("ellipse", (ex - r, ey - r, ex + r, ey + r),
                        (30, 25, 25)))
    else:
      # Profile: hair over the back of the head, an eye and a nose in front.
      back0 = cx - fwd * head_w * h * 0.55
      prims.append(("poly", [(cx + fwd * head_w * h * 0.15, hy0),
                             (back0, hy0 + head_h * h * 0.15),
                             (back0, hy0 + head_h * h * 0.8),
                             (cx - fwd * head_w * h * 0.1,
                              hy0 + head_h * h * 0.55)], ident.hair))
      prims.append(("ellipse", (hx0, hy0, hx1, hy0 + head_h * h * 0.4),
                    ident.hair))
      nose_x = cx + fwd * head_w * h * 0.58
      prims.append(("poly", [(cx + fwd * head_w * h * 0.45,
                              hy0 + head_h * h * 0.45),
                             (nose_x, hy0 + head_h * h * 0.62),
                             (cx + fwd * head_w * h * 0.45,
                              hy0 + head_h * h * 0.68)], ident.skin))
      if head_h * h >= 9:
        ex = cx + fwd * head_w * h * 0.25
        ey = hy0 + head_h * h * 0.5
        r = max(0.6, head_h * h * 0.06)
        prims.append(("ellipse", (ex - r, ey - r, ex + r, ey + r),
                      (30, 25, 25)))
  if ident.hat is not None:
    prims.append(("ellipse", (x(-head_w * 0.55), y(0.0), x(head_w * 0.55),
                              y(y_head + head_h * 0.55)), ident.hat))
    if profile:
      b0, b1 = sorted((0.0, fwd * head_w * 0.95))
    else:
      b0, b1 = -head_w * 0.7, head_w * 0.7
    prims.append(("poly", primitives.quad(
        x(b0), x(b1), y(y_head + head_h * 0.3), x(b0), x(b1),
        y(y_head + head_h * 0.42)), ident.hat))
  return prims


def mannequin_prims(ident: identities.Identity, height: float, cx: float,
                    top: float) -> list[primitives.Prim]:
  """A headless shop mannequin dressed like a person, on a stand (no box)."""
  h = height
  x = lambda f: cx + f * h  # noqa: E731
  y = lambda f: top + f * h  # noqa: E731
  sw, hw = 0.125 * ident.width, 0.1 * ident.width
  y_sh, y_hip = 0.12, 0.47
  grey = (150, 150, 155)
  prims = [("shadow", (x(-0.12), y(0.96), x(0.12), y(1.0))),
           ("poly", primitives.quad(x(-0.012), x(0.012), y(0.7), x(-0.012),
                                    x(0.012), y(0.98)), (60, 60, 60)),
           ("poly", primitives.quad(x(-0.12), x(0.12), y(0.97), x(-0.12),
                                    x(0.12), y(1.0)), (60, 60, 60)),
           ("poly", primitives.quad(x(-0.02), x(0.02), y(0.0), x(-0.02),
                                    x(0.02), y(y_sh)), grey)]
  if ident.lower_kind != "skirt":
    prims.append(("poly", primitives.quad(x(-hw), x(hw), y(y_hip - 0.01),
                                          x(-hw * 0.7), x(hw * 0.7), y(0.72)),
                  ident.lower))
  else:
    prims.append(("poly", primitives.quad(x(-hw), x(hw), y(y_hip - 0.01),
                                          x(-hw * 1.5), x(hw * 1.5), y(0.66)),
                  ident.lower))
  for s in (-1, 1):
    prims.append(("poly", primitives.quad(
        x(s * sw), x(s * (sw + 0.045)), y(y_sh + 0.01), x(s * (sw - 0.005)),
        x(s * (sw + 0.04)), y(y_hip)), ident.upper))
  prims += _patterned(x(-sw), x(sw), y(y_sh), x(-hw), x(hw), y(y_hip), ident,
                      h)
  return prims


def banner_prims(ident: identities.Identity, height: float, cx: float,
                 top: float) -> list[primitives.Prim]:
  """A person-sized two-coloured banner on a post (no box)."""
  h = height
  w = 0.13 * ident.width * h
  split = top + h * 0.45
  return [("poly", primitives.quad(cx - 0.01 * h, cx + 0.01 * h, top,
                                   cx - 0.01 * h, cx + 0.01 * h, top + h),
           (70, 70, 75)),
          ("poly", primitives.quad(cx - w, cx + w, top + 0.05 * h, cx - w,
                                   cx + w, split), ident.upper),
          ("poly", primitives.quad(cx - w * 0.8, cx + w * 0.8, split,
                                   cx - w * 0.8, cx + w * 0.8, top + h * 0.8),
           ident.lower)]
