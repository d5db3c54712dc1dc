"""Spot accounts, and rings of accounts, harvesting outputs to distill a model."""

from distillguard.monitor.events import MonitorEvent, MonitorHook
from distillguard.monitor.model import TIERS, RiskModel
from distillguard.monitor.monitor import AccountReport, Monitor, RingReport
from distillguard.monitor.rings import RingRules

__all__ = [
    "TIERS",
    "AccountReport",
    "Monitor",
    "MonitorEvent",
    "MonitorHook",
    "RingReport",
    "RingRules",
    "RiskModel",
]
