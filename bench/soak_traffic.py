"""The soak's traffic: the request mix and the driver that sends one request at a time and
checks every answer against the model."""

from __future__ import annotations

import json
import random
import time
from typing import Any

from bench.soak_model import CacheModel, Counters, Held, epoch_seconds, needs_call
from skyflow_devtools.client import BaoClient, BaoConnectionError
from skyflow_devtools.openbao import OpenBaoServer
from skyflow_devtools.processes import plugin_pids
from skyflow_emulator.process import EmulatorProcess

PLUGIN = "skyflow"
UNITS = ("insurance", "lending", "clcm")
CACHED_ROLES = {"producer": ["producer-role"], "consumer": ["consumer-role"]}
UNCACHED_ROLE = "audit"
MIN_REMAINING = 60  # the roles' min_remaining_ttl
HEALTH_MIN_REMAINING = 60.0  # path_health.HEALTH_MIN_REMAINING
HEALTH_PROBE_INTERVAL = 60.0  # path_health.HEALTH_PROBE_INTERVAL
USERS = tuple(f"user{i}" for i in range(5))

# (operation, weight): the traffic mix.
MIX: tuple[tuple[str, float], ...] = (
    ("creds_get", 40.0),  # no ctx, or a string ctx in the query string
    ("creds_post_map", 38.0),  # a map ctx in the body
    ("creds_uncached", 0.5),
    ("role_read", 5.0),
    ("role_list", 1.0),
    ("role_write", 0.7),
    ("config_read", 5.0),
    ("config_write", 0.3),
    ("health", 6.0),
    ("bad_ctx", 2.0),  # must answer 400
    ("unknown_role", 1.5),  # must answer 404
)


class Soak:
    """One soak run against an already started OpenBao and emulator."""

    def __init__(
        self,
        bao: OpenBaoServer,
        emulator: EmulatorProcess,
        *,
        lifetime: int,
        seed: int,
    ) -> None:
        self.bao = bao
        self.emulator = emulator
        self.client: BaoClient = bao.client()
        self.rng = random.Random(seed)
        self.model = CacheModel(lifetime)
        self.counters = Counters()
        self.mounts: dict[str, str] = {}
        self.credentials: dict[str, dict[str, str]] = {}
        self.role_versions: dict[tuple[str, str], int] = {}

    # -- set-up ----------------------------------------------------------------------------

    def set_up(self) -> None:
        for unit in UNITS:
            mount = f"skyflow/{unit}"
            self.client.enable_secrets(mount, PLUGIN)
            creds = self.emulator.admin.create_account(client_name=f"soak-{unit}")
            self.credentials[mount] = creds
            self.client.write(f"{mount}/config", {"credentials_json": json.dumps(creds)})
            self.model.config_written(mount, time.time(), time.time())
            for role, ids in CACHED_ROLES.items():
                self.client.write(
                    f"{mount}/roles/{role}",
                    {"role_ids": ids, "min_remaining_ttl": MIN_REMAINING},
                )
            self.client.write(
                f"{mount}/roles/{UNCACHED_ROLE}",
                {"role_ids": ["auditor-role"], "cache_tokens": False},
            )
            self.mounts[unit] = mount
        self.emulator.admin.reset()  # count upstream calls from here on

    def upstream_calls(self) -> int:
        stats = self.emulator.admin.stats()
        ids = {creds["clientID"] for creds in self.credentials.values()}
        return sum(int(counts["calls"]) for cid, counts in stats["by_client"].items() if cid in ids)

    def plugin_pid(self) -> int | None:
        pids = plugin_pids(self.bao, PLUGIN)
        return pids[0] if len(pids) == 1 else None

    # -- one request -------------------------------------------------------------------------

    def _choose(self) -> str:
        ops = [op for op, _ in MIX]
        weights = [w for _, w in MIX]
        return self.rng.choices(ops, weights)[0]

    def _ctx(self, *, as_map: bool) -> tuple[Any, str]:
        user = self.rng.choice(USERS)
        if as_map:
            return {"user": user}, json.dumps({"user": user}, sort_keys=True)
        if self.rng.random() < 0.3:
            return None, ""
        return user, user

    def _unexpected(self, op: str, detail: str) -> None:
        self.counters.unexpected.append(f"{op}: {detail}")

    def step(self) -> None:
        op = self._choose()
        unit = self.rng.choice(UNITS)
        mount = self.mounts[unit]
        role = self.rng.choice(list(CACHED_ROLES))
        started = time.perf_counter()
        now = time.time()
        try:
            self._run(op, mount, role, now)
        except BaoConnectionError as exc:
            self._unexpected(op, f"transport error {type(exc).__name__}")
        elapsed = time.perf_counter() - started
        self.counters.requests += 1
        self.counters.by_op[op] = self.counters.by_op.get(op, 0) + 1
        self.counters.latencies.setdefault(op, []).append(elapsed * 1000)

    def _run(self, op: str, mount: str, role: str, now: float) -> None:
        client = self.client
        if op in ("creds_get", "creds_post_map"):
            as_map = op == "creds_post_map"
            ctx, canonical = self._ctx(as_map=as_map)
            if as_map:
                response = client.request("POST", f"{mount}/creds/{role}", json={"ctx": ctx})
            else:
                params = {"ctx": ctx} if ctx is not None else None
                response = client.request("GET", f"{mount}/creds/{role}", params=params)
            if response.status_code != 200:
                self._unexpected(op, f"HTTP {response.status_code}")
                return
            self._account_creds((mount, role, canonical), response.json()["data"], now)
        elif op == "creds_uncached":
            response = client.request("GET", f"{mount}/creds/{UNCACHED_ROLE}")
            if response.status_code != 200:
                self._unexpected(op, f"HTTP {response.status_code}")
                return
            self._tally("uncached creds", True, True)
        elif op == "role_read":
            response = client.request("GET", f"{mount}/roles/{role}")
            if response.status_code != 200 or response.json()["data"]["name"] != role:
                self._unexpected(op, f"HTTP {response.status_code}")
        elif op == "role_list":
            response = client.request("LIST", f"{mount}/roles")
            keys = response.json().get("data", {}).get("keys", [])
            if response.status_code != 200 or sorted(keys) != sorted([*CACHED_ROLES, "audit"]):
                self._unexpected(op, f"HTTP {response.status_code}")
        elif op == "role_write":
            version = self.role_versions.get((mount, role), 0) + 1
            self.role_versions[(mount, role)] = version
            response = client.request(
                "POST", f"{mount}/roles/{role}", json={"description": f"revision {version}"}
            )
            if response.status_code != 200:
                self._unexpected(op, f"HTTP {response.status_code}")
                return
            self.model.role_written(mount, role)
        elif op == "config_read":
            response = client.request("GET", f"{mount}/config")
            body = response.json() if response.status_code == 200 else {}
            if body.get("data", {}).get("client_id") != self.credentials[mount]["clientID"]:
                self._unexpected(op, f"HTTP {response.status_code}")
        elif op == "config_write":
            creds = self.credentials[mount]
            response = client.request(
                "POST", f"{mount}/config", json={"credentials_json": json.dumps(creds)}
            )
            if response.status_code != 200:
                self._unexpected(op, f"HTTP {response.status_code}")
                return
            self._tally("config probe", True, True)
            self.model.config_written(mount, now, time.time())
        elif op == "health":
            response = client.request("GET", f"{mount}/health")
            ended = time.time()
            if response.status_code != 200:
                self._unexpected(op, f"HTTP {response.status_code}")
                return
            skyflow = response.json()["data"]["checks"]["skyflow"]
            observed = not skyflow.get("cached", False)
            predicted = needs_call(
                self.model.health.get(mount),
                HEALTH_MIN_REMAINING,
                now,
                ended,
                max_age=HEALTH_PROBE_INTERVAL,
            )
            self._tally(f"health {mount}", predicted, observed)
            if observed:
                self.model.health[mount] = self.model.minted(now, ended)
        elif op == "bad_ctx":
            response = client.request(
                "POST", f"{mount}/creds/{role}", json={"ctx": {"not a key!": "x"}}
            )
            self._expect_error(op, response.status_code, 400)
        elif op == "unknown_role":
            response = client.request("GET", f"{mount}/creds/no-such-role")
            self._expect_error(op, response.status_code, 404)
        else:  # pragma: no cover - MIX and this method list the same operations
            raise AssertionError(op)

    def _expect_error(self, op: str, status: int, wanted: int) -> None:
        if status == wanted:
            self.counters.expected_errors += 1
        else:
            self._unexpected(op, f"HTTP {status}, expected {wanted}")

    def _account_creds(self, key: tuple[str, str, str], data: dict[str, Any], now: float) -> None:
        predicted = needs_call(self.model.held.get(key), MIN_REMAINING, now, time.time())
        token = str(data["access_token"])
        observed = self.model.last_token.get(key) != token
        self._tally(f"creds {key}", predicted, observed)
        self.model.last_token[key] = token
        if observed:
            expires_at = epoch_seconds(str(data["expires_at"]))
            self.model.held[key] = Held((expires_at, expires_at), (now, time.time()))

    def _tally(self, what: str, predicted: bool | None, observed: bool) -> None:
        """Count one prediction; ``None`` (a boundary case) counts as right either way."""
        if predicted is None:
            self.counters.boundary += 1
            predicted = observed
        self.counters.predicted_calls += int(predicted)
        self.counters.observed_calls += int(observed)
        if predicted != observed:
            self.counters.mispredictions += 1
            if len(self.counters.misprediction_samples) < 20:
                self.counters.misprediction_samples.append(
                    f"{what}: predicted {predicted}, observed {observed}"
                )
