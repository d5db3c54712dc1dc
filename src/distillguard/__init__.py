"""distillguard: protect a served language model from unauthorized distillation."""

__version__ = "0.1.0"
