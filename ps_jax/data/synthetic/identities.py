"""Identities: the fixed appearance of every labeled person.

Upper and lower clothing colours come from a shared palette (many identities
share a colour, so a mean colour does not identify anyone), plus a clothing
pattern, sleeves, hair, shoes, build and accessories. Train and test
identities are drawn together so that no two share a coarse look.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ps_jax.data.synthetic import config

# A shared, deliberately small clothing palette: many identities share their
# upper or lower colour, so re-identification has to combine cues.
CLOTH = np.array([
    (25, 25, 30), (232, 232, 226), (128, 128, 132), (32, 42, 92),
    (45, 95, 200), (125, 170, 228), (190, 32, 38), (112, 28, 40),
    (34, 122, 56), (112, 120, 52), (232, 200, 44), (236, 122, 34),
    (232, 134, 172), (112, 52, 142), (112, 72, 42), (212, 192, 152),
    (34, 142, 142),
], np.float64)
_SKIN = np.array([(250, 214, 186), (232, 184, 150), (196, 140, 100),
                  (150, 100, 68), (100, 66, 44)], np.float64)
_HAIR = np.array([(20, 16, 14), (62, 40, 26), (112, 74, 40), (214, 184, 110),
                  (160, 160, 160), (150, 60, 30)], np.float64)
_SHOES = np.array([(20, 20, 20), (240, 240, 240), (90, 60, 40),
                   (60, 60, 70), (160, 40, 40)], np.float64)
PATTERNS = ("solid", "stripes", "checks", "two_tone")
_LOWER_KINDS = ("trousers", "trousers", "shorts", "skirt")


@dataclasses.dataclass(frozen=True)
class Identity:
  """The fixed appearance of one person (colours are RGB in [0, 255])."""
  upper: tuple[float, float, float]
  upper2: tuple[float, float, float]
  pattern: str
  long_sleeves: bool
  lower: tuple[float, float, float]
  lower_kind: str
  skin: tuple[float, float, float]
  hair: tuple[float, float, float]
  long_hair: bool
  shoes: tuple[float, float, float]
  height: float
  width: float
  head: float
  hat: tuple[float, float, float] | None
  bag: tuple[float, float, float] | None
  bag_side: int
  backpack: tuple[float, float, float] | None

  def signature(self) -> tuple[Any, ...]:
    """The coarse look that no two labeled identities share."""
    return (self.upper, self.upper2 if self.pattern != "solid" else None,
            self.pattern, self.lower, self.hat is None, self.bag is None,
            self.backpack is None)


def _colour(rng: np.random.Generator, table: np.ndarray, jitter: float
            ) -> tuple[float, float, float]:
  c = table[rng.integers(len(table))] + rng.uniform(-jitter, jitter, 3)
  return tuple(float(v) for v in np.clip(c, 0, 255))


def random_identity(rng: np.random.Generator) -> Identity:
  """A random appearance drawn from `rng`."""
  upper_i = rng.integers(len(CLOTH))
  upper2_i = (upper_i + rng.integers(1, len(CLOTH))) % len(CLOTH)
  jit = rng.uniform(-8, 8, (2, 3))
  pick = lambda table: _colour(rng, table, 8.0)  # noqa: E731
  return Identity(
      upper=tuple(np.clip(CLOTH[upper_i] + jit[0], 0, 255).tolist()),
      upper2=tuple(np.clip(CLOTH[upper2_i] + jit[1], 0, 255).tolist()),
      pattern=PATTERNS[rng.choice(4, p=[0.4, 0.22, 0.18, 0.2])],
      long_sleeves=bool(rng.random() < 0.6),
      lower=pick(CLOTH),
      lower_kind=_LOWER_KINDS[rng.integers(len(_LOWER_KINDS))],
      skin=pick(_SKIN),
      hair=pick(_HAIR),
      long_hair=bool(rng.random() < 0.35),
      shoes=pick(_SHOES),
      height=float(rng.uniform(0.88, 1.1)),
      width=float(rng.uniform(0.85, 1.2)),
      head=float(rng.uniform(0.88, 1.15)),
      hat=pick(CLOTH) if rng.random() < 0.2 else None,
      bag=pick(CLOTH) if rng.random() < 0.3 else None,
      bag_side=int(rng.choice([-1, 1])),
      backpack=pick(CLOTH) if rng.random() < 0.25 else None,
  )


def make_identities(cfg: config.SyntheticConfig, split: str) -> list[Identity]:
  """The labeled identities of a split, pid order (test: pid - K).

  Train and test identities are drawn together so that no two of them share
  a coarse look (`Identity.signature`).
  """
  config.check_split(split)
  return _all_identities(cfg)[split]


_IDENTITY_CACHE: dict[tuple[int, int, int], dict[str, list[Identity]]] = {}


def _all_identities(cfg: config.SyntheticConfig) -> dict[str, list[Identity]]:
  key = (cfg.seed, cfg.num_train_ids, cfg.num_test_ids)
  if key not in _IDENTITY_CACHE:
    seen = set()
    out = {}
    for split, n in (("train", cfg.num_train_ids),
                     ("test", cfg.num_test_ids)):
      ids = []
      for k in range(n):
        for attempt in range(1000):
          ident = random_identity(config.make_rng(
              cfg.seed, config.IDENTITY_STREAM, config.SPLIT_CODE[split], k,
              attempt))
          if ident.signature() not in seen:
            break
        seen.add(ident.signature())
        ids.append(ident)
      out[split] = ids
    _IDENTITY_CACHE[key] = out
  return _IDENTITY_CACHE[key]
