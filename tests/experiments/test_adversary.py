"""The adversary harness's figures: every reported test is paid for."""

from __future__ import annotations

import math

from distillguard.experiments.adversary import base_free, bonferroni_best, headline, ring_named


def test_the_best_of_several_tests_pays_for_all_of_them() -> None:
    assert math.isclose(bonferroni_best([-5.0, -2.0]), -5.0 + math.log10(2))
    assert bonferroni_best([-0.1, -0.2, -0.1]) == 0.0


def test_headline_figures_correct_over_the_tests_they_report() -> None:
    scored = {
        "provider_focused": -8.0,
        "provider_shift": -3.0,
        "provider_plain": -1.0,
        "provider_top1": -0.5,
        "provider_mass": -4.0,
        "ring_focused": -2.0,
        "ring_shift": -6.0,
    }
    assert math.isclose(headline(scored), -8.0 + math.log10(2))
    assert headline(scored, black_box_only=True) == -8.0  # neutralization: one test reported
    assert math.isclose(ring_named(scored), -6.0 + math.log10(2))
    assert math.isclose(base_free(scored), -4.0 + math.log10(3))
