"""The savanna's hidden truth as a value: herd scaling and the success model's coefficients.

``players.simulator.Savanna`` holds ``Regime()`` throughout, or switches to another
regime at a given time (a regime change: the feature distributions and the truth behind
the labels shift together).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MIGRATION", "Regime"]


@dataclass(frozen=True, slots=True)
class Regime:
    """The hidden truth: how herds and zebra shares are scaled, and the success logit

    ``animal_weight * ln(window mean animals / reference_animals) + zebra_weight * (zebra
    share - 0.5) + hour_weight * cos(2 pi (hour - peak_hour) / 24) + bias``.
    """

    animal_factor: float = 1.0  # multiplies every latent animal count
    zebra_shift: float = 0.0  # added to every latent zebra share (clipped to [0.02, 0.98])
    reference_animals: float = 25.0
    animal_weight: float = 1.6
    zebra_weight: float = 2.5
    hour_weight: float = 0.9
    peak_hour: float = 18.0
    bias: float = -0.2

    def logit(self, mean_animals: np.ndarray, zebras: np.ndarray,
              hour: np.ndarray) -> np.ndarray:
        """The log-odds of a successful hunt."""
        return (self.animal_weight * np.log(mean_animals / self.reference_animals)
                + self.zebra_weight * (zebras - 0.5)
                + self.hour_weight * np.cos(2 * np.pi * (hour - self.peak_hour) / 24.0)
                + self.bias)


#: A migration: herds three times larger, a zebra share 0.3 lower, and hunts succeed where the
#: herd is small for its new size, mostly at dawn.
MIGRATION = Regime(animal_factor=3.0, zebra_shift=-0.3, reference_animals=75.0,
                   animal_weight=-1.6, zebra_weight=2.5, peak_hour=6.0)
