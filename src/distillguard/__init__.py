"""distillguard: protect a served language model from unauthorized distillation."""

# the project's loggers redact secrets from the first import on (see redact.PROJECT_LOGGERS)
from distillguard import redact as _redact  # noqa: F401

__version__ = "0.1.0"
