"""A small SDK for writing HashiCorp Vault / OpenBao backend plugins in Python.

It has two halves:

* :mod:`~vault_plugin_sdk.framework` -- paths, typed fields, operations, requests,
  responses and errors: the Python counterpart of Vault's ``sdk/framework`` and
  ``sdk/logical``;
* :mod:`~vault_plugin_sdk.plugin` -- the process side: go-plugin handshake, automatic
  mTLS, the gRPC services the host calls and the broker that reaches the host's storage.

The SDK never imports the Skyflow engine; it is meant to be reusable for other plugins.
"""
