"""Hosted Exchange over PowerShell remoting: one module per thread (see ``include/catalog/exchange.yaml``),
the servers, their answers and the loop over them in ``_backend``."""
