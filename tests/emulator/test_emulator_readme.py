"""The emulator's README documents exactly the admin API the app serves."""

from __future__ import annotations

import re
from pathlib import Path

from starlette.routing import Route

import skyflow_emulator as emulator_package
from skyflow_emulator import create_app

README = Path(emulator_package.__file__).resolve().parent / "README.md"


def test_every_admin_route_is_documented_and_nothing_else() -> None:
    served: set[tuple[str, str]] = set()
    for route in create_app().routes:
        assert isinstance(route, Route)
        if route.path.startswith("/_emulator/"):
            path = re.sub(
                r"\{(\w+)\}",
                lambda m: "<clientID>" if m[1] == "client_id" else "<keyID>",
                route.path,
            )
            served.update((method, path) for method in route.methods or () if method != "HEAD")
    documented = set(
        re.findall(r"^\| `(GET|POST|DELETE) (/_emulator/\S+)`", README.read_text(), re.MULTILINE)
    )
    assert documented == served
