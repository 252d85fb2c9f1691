"""Props: street objects as drawing primitives (occluders and furniture)."""

from __future__ import annotations

from collections.abc import Sequence

from ps_jax.data.synthetic import primitives


def object_prims(kind: str, size: float, cx: float, bottom: float,
                 colour: Sequence[float], facing: int
                 ) -> list[primitives.Prim]:
  """A street object standing at (cx, bottom); `size` is a person height."""
  s = size
  c = tuple(colour)
  dark = (40, 40, 45)
  if kind == "car":
    ch, cw = 0.5 * s, 1.2 * s
    x0, x1 = cx - cw / 2, cx + cw / 2
    yb = bottom - 0.08 * s
    cab0 = cx - cw * (0.3 if facing > 0 else 0.15)
    cab1 = cx + cw * (0.15 if facing > 0 else 0.3)
    return [("shadow", (x0 - 0.05 * s, bottom - 0.05 * s, x1 + 0.05 * s,
                        bottom + 0.02 * s)),
            ("poly", [(cab0, yb - ch), (cab1, yb - ch),
                      (cab1 + 0.12 * s, yb - ch * 0.55),
                      (cab0 - 0.12 * s, yb - ch * 0.55)], c),
            ("poly", [(cab0 + 0.03 * s, yb - ch * 0.93),
                      (cab1 - 0.03 * s, yb - ch * 0.93),
                      (cab1 + 0.07 * s, yb - ch * 0.6),
                      (cab0 - 0.07 * s, yb - ch * 0.6)], (150, 190, 210)),
            ("poly", primitives.quad(x0, x1, yb - ch * 0.58, x0, x1, yb), c),
            ("poly", primitives.quad(x0, x1, yb - ch * 0.2, x0, x1,
                                     yb - ch * 0.14), dark),
            ("ellipse", (x0 + 0.1 * s, bottom - 0.2 * s, x0 + 0.3 * s,
                         bottom), dark),
            ("ellipse", (x1 - 0.3 * s, bottom - 0.2 * s, x1 - 0.1 * s,
                         bottom), dark)]
  if kind == "bench":
    w = 0.55 * s
    return [("poly", primitives.quad(cx - w, cx + w, bottom - 0.42 * s,
                                     cx - w, cx + w, bottom - 0.34 * s), c),
            ("poly", primitives.quad(cx - w, cx + w, bottom - 0.26 * s,
                                     cx - w * 1.03, cx + w * 1.03,
                                     bottom - 0.2 * s), c),
            ("line", [(cx - w * 0.85, bottom - 0.2 * s),
                      (cx - w * 0.85, bottom)], dark, max(1.0, 0.03 * s)),
            ("line", [(cx + w * 0.85, bottom - 0.2 * s),
                      (cx + w * 0.85, bottom)], dark, max(1.0, 0.03 * s))]
  if kind == "crate":
    w = 0.2 * s
    return [("shadow", (cx - w * 1.2, bottom - 0.04 * s, cx + w * 1.2,
                        bottom + 0.02 * s)),
            ("poly", primitives.quad(cx - w, cx + w, bottom - 0.4 * s, cx - w,
                                     cx + w, bottom), c),
            ("line", [(cx - w, bottom - 0.4 * s), (cx + w, bottom)], dark,
             max(1.0, 0.015 * s)),
            ("line", [(cx + w, bottom - 0.4 * s), (cx - w, bottom)], dark,
             max(1.0, 0.015 * s))]
  if kind == "planter":
    w = 0.25 * s
    return [("ellipse", (cx - w * 1.2, bottom - 0.5 * s, cx + w * 1.2,
                         bottom - 0.15 * s), (45, 110, 50)),
            ("ellipse", (cx - w * 0.8, bottom - 0.6 * s, cx + w * 0.6,
                         bottom - 0.3 * s), (60, 135, 60)),
            ("poly", primitives.quad(cx - w, cx + w, bottom - 0.22 * s,
                                     cx - w * 0.8, cx + w * 0.8, bottom), c)]
  if kind == "pole":
    w = max(1.0, 0.025 * s)
    return [("poly", primitives.quad(cx - w, cx + w, bottom - 1.35 * s,
                                     cx - w, cx + w, bottom), dark),
            ("poly", primitives.quad(cx - w, cx + 0.2 * s * facing,
                                     bottom - 1.35 * s, cx - w,
                                     cx + 0.2 * s * facing, bottom - 1.3 * s),
             dark)]
  if kind == "bin":
    w = 0.13 * s
    return [("poly", primitives.quad(cx - w, cx + w, bottom - 0.38 * s,
                                     cx - w * 0.85, cx + w * 0.85, bottom), c),
            ("poly", primitives.quad(cx - w * 1.1, cx + w * 1.1,
                                     bottom - 0.42 * s, cx - w * 1.1,
                                     cx + w * 1.1, bottom - 0.37 * s), dark)]
  raise ValueError(f"unknown object kind {kind!r}")


OCCLUDER_KINDS = ("car", "bench", "crate", "planter", "pole")
