"""The engine's environment variables: defaults, and errors that name the variable."""

from __future__ import annotations

import pytest

from skyflow_vault_plugin.skyflow.engine_env import EngineEnv, EnvError, read_engine_env
from skyflow_vault_plugin.skyflow.mount import EngineSettings


def test_defaults_and_values() -> None:
    assert read_engine_env({}) == EngineEnv()
    values = read_engine_env(
        {
            "SKYFLOW_TOKEN_CACHE_MAX_ENTRIES": "5",
            "SKYFLOW_TOKEN_CACHE_MAX_BYTES": "4096",
            "SKYFLOW_REQUEST_DEADLINE": "2.5",
        }
    )
    assert values == EngineEnv(cache_max_entries=5, cache_max_bytes=4096, deadline=2.5)
    settings = EngineSettings.from_env({"SKYFLOW_TOKEN_CACHE_MAX_BYTES": "4096"})
    assert settings.cache_max_bytes == 4096


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SKYFLOW_TOKEN_CACHE_MAX_ENTRIES", "many"),
        ("SKYFLOW_TOKEN_CACHE_MAX_ENTRIES", "-1"),
        ("SKYFLOW_TOKEN_CACHE_MAX_BYTES", "1.5"),
        ("SKYFLOW_REQUEST_DEADLINE", "nan"),
        ("SKYFLOW_REQUEST_DEADLINE", "0"),
        ("SKYFLOW_REQUEST_DEADLINE", "90"),
        ("SKYFLOW_REQUEST_DEADLINE", "inf"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(EnvError, match=variable):
        read_engine_env({variable: value})
