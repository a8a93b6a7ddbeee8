"""``python -m skyflow_vault_plugin.emulator``: same as the ``skyflow-emulator`` script."""

from .cli import main

raise SystemExit(main())
