"""Rehearse the fight: harnesses that drive the whole system.

The traffic simulator (`simulate`) and the monitor's evaluation (`evaluate`) over named prompt
sets (`sources`); the distillation loop (`distill`: harvest through the gateway, train a
student, audit it) and the demo (`demo`). With `cli`, the only package that may import the
gateway: everything below it is library code that the gateway and these harnesses use.
"""

__all__: list[str] = []
