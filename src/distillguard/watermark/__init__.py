"""Keyed per-tenant watermarks: the scheme, the keyed hash, and exact detection.

Importing this package never imports torch; the generation side (`processor`,
`hashing_torch`) needs the `model` extra and is imported from its own module.
"""

from distillguard.watermark.detector import (
    Attribution,
    Detection,
    DetectionReport,
    Detector,
    DocumentDetection,
    RankedKey,
)
from distillguard.watermark.key import WatermarkKey
from distillguard.watermark.scheme import Scheme, SchemeConfig, Seeding, tokenizer_fingerprint

__all__ = [
    "Attribution",
    "Detection",
    "DetectionReport",
    "Detector",
    "DocumentDetection",
    "RankedKey",
    "Scheme",
    "SchemeConfig",
    "Seeding",
    "WatermarkKey",
    "tokenizer_fingerprint",
]
