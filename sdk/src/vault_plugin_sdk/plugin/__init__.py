"""The plugin process: handshake, automatic mTLS, gRPC services and the broker.

Plugin authors call :func:`serve` from their executable's entry point.
"""

from .serve import serve

__all__ = ["serve"]
