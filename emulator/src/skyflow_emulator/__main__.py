"""``python -m skyflow_emulator``: same as the ``skyflow-emulator`` script."""

from .cli import main

raise SystemExit(main())
