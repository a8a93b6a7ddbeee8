"""The SDK's own tests: they use the SDK and its examples only, never the Skyflow engine."""

from __future__ import annotations

import sys
from pathlib import Path

# The example plugins are files next to the tests, not an installed package.
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))
