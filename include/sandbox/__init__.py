"""Loopback servers that answer as the vendors document (and the recorded PSRP boundary).

A package: tests import ``sandbox.<name>`` (``include/`` is on their path); ``make run`` starts the
servers as ``python -m sandbox.<name>``. See README.md here for what each one speaks.
"""
