"""Core components for honeypot detection."""
# Vendored from f0rw4rd/potsnitch (see ../../README.md): the registry module,
# which imports every detector, is left out.

from .base import BaseDetector, register_detector
from .result import DetectionResult, Indicator, Confidence

__all__ = [
    "BaseDetector",
    "register_detector",
    "DetectionResult",
    "Indicator",
    "Confidence",
]
