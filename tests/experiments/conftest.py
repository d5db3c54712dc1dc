"""Simulated fleets for the monitor tests (small: seconds each), from the shared prompt sets."""

from __future__ import annotations

import pytest

from distillguard.experiments.population import Population
from distillguard.experiments.simulate import Simulation, simulate
from distillguard.experiments.sources import (
    BENIGN_SOURCES,
    HARVEST_SOURCES,
    SOURCE_FILES,
    PromptSources,
)

from ..conftest import data_dir


@pytest.fixture(scope="session")
def prompt_sources() -> PromptSources:
    folder = data_dir()
    missing = [name for name in SOURCE_FILES.values() if not (folder / name).is_file()]
    if missing:
        pytest.skip(f"prompt sets absent from {folder} ({missing[0]}): set DISTILLGUARD_DATA")
    return PromptSources.from_dir(folder)


@pytest.fixture(scope="session")
def fitting_simulation(prompt_sources: PromptSources) -> Simulation:
    benign, harvest = prompt_sources.select(BENIGN_SOURCES, HARVEST_SOURCES, fold=0)
    return simulate(benign, harvest, seed=11, population=Population.small(), fold=0)


@pytest.fixture(scope="session")
def held_out_simulation(prompt_sources: PromptSources) -> Simulation:
    benign, harvest = prompt_sources.select(BENIGN_SOURCES, HARVEST_SOURCES, fold=1)
    return simulate(benign, harvest, seed=12, population=Population.small(), fold=1)
