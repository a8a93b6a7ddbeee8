"""A Vault/OpenBao secrets engine that issues short-lived Skyflow bearer tokens.

The package has three layers; imports point downwards only:

* :mod:`vault_plugin_sdk` -- a reusable SDK for Vault backend plugins (never imports
  the engine);
* :mod:`skyflow_vault_plugin.skyflow` -- the Skyflow secrets engine built on the SDK;
* :mod:`skyflow_emulator` -- a local Skyflow token endpoint for tests and demos.
"""

__version__ = "0.1.0"
