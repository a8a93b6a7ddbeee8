"""Soak benchmark: mixed traffic at a fixed rate against a real OpenBao and the emulator.

Run on demand (not in CI)::

    .venv/bin/python -m bench.soak --minutes 10          # writes docs/reliability.md
    .venv/bin/python -m bench.soak --minutes 1 --no-docs # a quick look

Three business-unit mounts (``skyflow/insurance``, ``skyflow/lending``, ``skyflow/clcm``), each
with its own service account and a producer, a consumer and an uncached role, receive one
request at a time at a fixed rate: creds reads (no ctx, string ctx by GET, map ctx by POST),
role and config reads and writes, role lists, health checks, and a small share of requests
that must fail (an unknown role, a bad ctx key). The emulator issues short-lived tokens
(``--token-lifetime``, 180 s by default) so that tokens expire and are renewed many times in
the run.

The figures:

* **errors**: every answer is checked against what that request must give; anything else
  (a 5xx, a transport error, a 200 where a 400 was due) is an unexpected error.
* **memory**: the plugin's RSS after the warm-up and at the end (and its peak), sampled
  every few seconds; the same PID must serve the whole run.
* **upstream calls**: a model of the token cache predicts, request by request, whether the
  plugin must call Skyflow: once per (role, ctx) per reuse window (token lifetime minus the
  role's ``min_remaining_ttl``), again after a write of that role or of the config (which
  also mints one token to validate the credentials), on every read of an uncached role, and
  for health at most once a minute. The prediction is compared with the tokens the client
  actually saw change and with the emulator's own count of token requests.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from skyflow_devtools.client import BaoClient, BaoConnectionError
from skyflow_devtools.openbao import (
    OpenBaoServer,
    install_plugin,
    plugin_pids,
    python_launcher,
)
from skyflow_emulator.process import EmulatorProcess

PLUGIN = "skyflow"
UNITS = ("insurance", "lending", "clcm")
CACHED_ROLES = {"producer": ["producer-role"], "consumer": ["consumer-role"]}
UNCACHED_ROLE = "audit"
MIN_REMAINING = 60  # the roles' min_remaining_ttl
HEALTH_MIN_REMAINING = 60.0  # path_health.HEALTH_MIN_REMAINING
HEALTH_PROBE_INTERVAL = 60.0  # path_health.HEALTH_PROBE_INTERVAL
USERS = tuple(f"user{i}" for i in range(5))
DOCS = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"

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


# ------------------------------------------------------------------------------- the model


Window = tuple[float, float]
"""An instant known to lie between two others (epoch seconds)."""


@dataclass(frozen=True)
class Held:
    """A token the model knows the plugin holds: when it expires and when it was issued."""

    expires: Window
    issued: Window


@dataclass
class CacheModel:
    """What the plugin's token cache must hold, to predict each upstream call.

    Instants are kept as ranges: a creds answer gives the exact ``expires_at``, but a health
    token's expiry and issue time are only known to lie between the request's start and end
    (plus the lifetime, to the emulator's whole second).
    """

    lifetime: int
    held: dict[tuple[str, str, str], Held] = field(default_factory=dict)
    last_token: dict[tuple[str, str, str], str] = field(default_factory=dict)
    health: dict[str, Held] = field(default_factory=dict)

    def minted(self, started: float, ended: float) -> Held:
        expires = (float(int(started) + self.lifetime), float(int(ended) + self.lifetime))
        return Held(expires, (started, ended))

    def role_written(self, mount: str, role: str) -> None:
        for key in [k for k in self.held if k[0] == mount and k[1] == role]:
            del self.held[key]

    def config_written(self, mount: str, started: float, ended: float) -> None:
        for key in [k for k in self.held if k[0] == mount]:
            del self.held[key]
        # the validation probe's token becomes the health token
        self.health[mount] = self.minted(started, ended)


def needs_call(
    held: Held | None,
    min_remaining: float,
    started: float,
    ended: float,
    max_age: float | None = None,
) -> bool | None:
    """Whether the plugin must mint: True, False, or None when it depends on the exact
    instant it decided (a boundary fell inside the request). A held token answers while it
    stays valid ``min_remaining`` seconds and, with ``max_age``, was issued less than that
    long ago (health probes Skyflow at most once a minute)."""
    if held is None:
        return True
    (exp_low, exp_high), (issued_low, issued_high) = held.expires, held.issued
    if exp_high - started < min_remaining:
        return True
    if max_age is not None and started - issued_high >= max_age:
        return True
    fresh = max_age is None or ended - issued_low < max_age
    if exp_low - ended >= min_remaining and fresh:
        return False
    return None


@dataclass
class Counters:
    requests: int = 0
    by_op: dict[str, int] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    expected_errors: int = 0
    predicted_calls: int = 0
    observed_calls: int = 0  # tokens seen to change, health "cached: false", probes, no-cache
    mispredictions: int = 0
    boundary: int = 0  # the request straddled a reuse-window boundary: either answer is right
    misprediction_samples: list[str] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    max_lag: float = 0.0


def _epoch(rfc3339: str) -> float:
    moment = datetime.datetime.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ")
    return moment.replace(tzinfo=datetime.UTC).timestamp()


# ------------------------------------------------------------------------------- the driver


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
            expires_at = _epoch(str(data["expires_at"]))
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


# ------------------------------------------------------------------------------- the run


@dataclass
class Result:
    minutes: float
    rate: float
    token_lifetime: int
    requests: int
    by_op: dict[str, int]
    unexpected_errors: int
    unexpected_samples: list[str]
    expected_errors: int
    upstream_calls: int
    predicted_calls: int
    observed_calls: int
    mispredictions: int
    boundary_cases: int
    misprediction_samples: list[str]
    rss_warm_kib: int
    rss_end_kib: int
    rss_peak_kib: int
    rss_change_pct: float
    rss_samples: list[tuple[float, int]]
    plugin_pid_changes: int
    latency_ms: dict[str, dict[str, float]]
    max_lag_s: float
    started_at: str
    duration_s: float
    openbao_version: str
    python: str

    @property
    def passed(self) -> bool:
        return (
            self.unexpected_errors == 0
            and abs(self.rss_change_pct) <= 10.0
            and self.upstream_calls == self.observed_calls
            and self.mispredictions == 0
            and self.plugin_pid_changes == 0
        )


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {
        "n": float(len(ordered)),
        "p50": pick(0.50),
        "p99": pick(0.99),
        "max": round(ordered[-1], 2),
        "mean": round(statistics.fmean(ordered), 2),
    }


@contextlib.contextmanager
def _servers(work_dir: Path, lifetime: int) -> Iterator[tuple[OpenBaoServer, EmulatorProcess]]:
    emulator = EmulatorProcess(state_dir=work_dir / "emulator", token_lifetime=lifetime).start()
    try:
        bao = OpenBaoServer.dev(
            work_dir / "bao", env={"SSL_CERT_FILE": emulator.ca_file}, log_level="info"
        )
        with bao:
            install_plugin(bao, name=PLUGIN, executable=python_launcher("skyflow_vault_plugin.cli"))
            yield bao, emulator
    finally:
        emulator.stop()


def run(
    minutes: float, rate: float, lifetime: int, seed: int, work_dir: Path, progress: bool
) -> Result:
    """Run the soak and return its figures."""
    duration = minutes * 60.0
    warm_up = min(60.0, duration / 5)
    with _servers(work_dir, lifetime) as (bao, emulator):
        soak = Soak(bao, emulator, lifetime=lifetime, seed=seed)
        soak.set_up()
        pid = soak.plugin_pid()
        pid_changes = 0
        samples: list[tuple[float, int]] = []
        rss_warm = 0
        started_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        start = time.monotonic()
        next_sample = start
        interval = 1.0 / rate
        index = 0
        while True:
            due = start + index * interval
            now = time.monotonic()
            if due - start >= duration:
                break
            if due > now:
                time.sleep(due - now)
            else:
                soak.counters.max_lag = max(soak.counters.max_lag, now - due)
            soak.step()
            index += 1
            now = time.monotonic()
            if now >= next_sample:
                current = soak.plugin_pid()
                if current != pid:
                    pid_changes += 1
                    pid = current
                if current is not None:
                    rss = _rss_kib(current)
                    samples.append((round(now - start, 1), rss))
                    if not rss_warm and now - start >= warm_up:
                        rss_warm = rss
                next_sample = now + 5.0
                if progress:
                    print(
                        f"[{now - start:6.0f} s] requests={soak.counters.requests} "
                        f"rss={samples[-1][1] if samples else 0} KiB "
                        f"unexpected={len(soak.counters.unexpected)}",
                        file=sys.stderr,
                        flush=True,
                    )
        elapsed = time.monotonic() - start
        final_pid = soak.plugin_pid()
        rss_end = _rss_kib(final_pid) if final_pid is not None else 0
        upstream = soak.upstream_calls()
        version = str(bao.cli("version").stdout.strip())
    counters = soak.counters
    rss_warm = rss_warm or (samples[0][1] if samples else 0)
    return Result(
        minutes=minutes,
        rate=rate,
        token_lifetime=lifetime,
        requests=counters.requests,
        by_op=dict(sorted(counters.by_op.items())),
        unexpected_errors=len(counters.unexpected),
        unexpected_samples=counters.unexpected[:20],
        expected_errors=counters.expected_errors,
        upstream_calls=upstream,
        predicted_calls=counters.predicted_calls,
        observed_calls=counters.observed_calls,
        mispredictions=counters.mispredictions,
        boundary_cases=counters.boundary,
        misprediction_samples=counters.misprediction_samples,
        rss_warm_kib=rss_warm,
        rss_end_kib=rss_end,
        rss_peak_kib=max((s[1] for s in samples), default=rss_end),
        rss_change_pct=round(100.0 * (rss_end - rss_warm) / rss_warm, 2) if rss_warm else 0.0,
        rss_samples=samples,
        plugin_pid_changes=pid_changes,
        latency_ms={op: _percentiles(v) for op, v in sorted(counters.latencies.items())},
        max_lag_s=round(counters.max_lag, 3),
        started_at=started_at,
        duration_s=round(elapsed, 1),
        openbao_version=version,
        python=sys.version.split()[0],
    )


# ------------------------------------------------------------------------------- reporting


def rss_slope(result: Result) -> float:
    """Least-squares RSS growth after the warm-up, in KiB per minute."""
    warm_up = min(60.0, result.duration_s / 5)
    points = [(float(t), float(kib)) for t, kib in result.rss_samples if t >= warm_up]
    if len(points) < 2:
        return 0.0
    mean_t = statistics.fmean(t for t, _ in points)
    mean_k = statistics.fmean(k for _, k in points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if not spread:
        return 0.0
    return 60.0 * sum((t - mean_t) * (k - mean_k) for t, k in points) / spread


def render(result: Result) -> str:
    """The Markdown section for docs/reliability.md."""
    verdict = "PASS" if result.passed else "FAIL"
    creds_ops = ("creds_get", "creds_post_map")
    creds_lat = [result.latency_ms[op] for op in creds_ops if op in result.latency_ms]
    lines = [
        BEGIN,
        f"Last run: {result.started_at}, {result.duration_s:.0f} s "
        f"({result.minutes:g} min requested) at {result.rate:g} requests/s, one at a time; "
        f"emulator token lifetime {result.token_lifetime} s, roles' min_remaining_ttl "
        f"{MIN_REMAINING} s; {result.openbao_version}, Python {result.python}. "
        f"Verdict: **{verdict}**.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| requests | {result.requests} |",
        f"| unexpected errors | **{result.unexpected_errors}** |",
        f"| expected errors (400 bad ctx, 404 unknown role) | {result.expected_errors} |",
        f"| plugin RSS after warm-up | {result.rss_warm_kib / 1024:.1f} MiB |",
        f"| plugin RSS at the end | {result.rss_end_kib / 1024:.1f} MiB "
        f"(**{result.rss_change_pct:+.1f}%**) |",
        f"| plugin RSS peak | {result.rss_peak_kib / 1024:.1f} MiB |",
        f"| plugin RSS trend after warm-up (least squares) | {rss_slope(result):+.0f} KiB/min |",
        f"| plugin process restarts | {result.plugin_pid_changes} |",
        f"| upstream token calls (emulator count) | **{result.upstream_calls}** |",
        f"| upstream calls predicted by the cache model | {result.predicted_calls} |",
        f"| upstream calls observed by the client | {result.observed_calls} |",
        f"| requests where prediction and observation differ | {result.mispredictions} |",
        f"| requests at a reuse-window boundary (either answer right) | {result.boundary_cases} |",
        f"| worst lag behind the fixed schedule | {result.max_lag_s:.3f} s |",
    ]
    for op, stats in zip(creds_ops, creds_lat, strict=False):
        lines.append(
            f"| `{op}` latency p50 / p99 / max | {stats['p50']} / {stats['p99']} / "
            f"{stats['max']} ms |"
        )
    lines += [
        "",
        "Requests by operation: " + ", ".join(f"{k} {v}" for k, v in result.by_op.items()),
    ]
    if result.misprediction_samples:
        lines += ["", "Mispredictions (first 20):", ""]
        lines += [f"- {sample}" for sample in result.misprediction_samples]
    if result.unexpected_samples:
        lines += ["", "Unexpected errors (first 20):", ""]
        lines += [f"- {sample}" for sample in result.unexpected_samples]
    lines.append(END)
    return "\n".join(lines)


def write_docs(section: str, path: Path = DOCS) -> None:
    """Replace the soak section of docs/reliability.md (or append one)."""
    text = path.read_text() if path.exists() else "# Reliability\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n## Soak\n\n" + section + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="duration (default 10)")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second (20)")
    parser.add_argument(
        "--token-lifetime", type=int, default=180, help="emulator token lifetime, s (180)"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--render", type=Path, help="only render this JSON into the docs")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    if args.token_lifetime <= MIN_REMAINING:
        parser.error(f"--token-lifetime must exceed the roles' min_remaining_ttl ({MIN_REMAINING})")

    if args.render:
        result = Result(**json.loads(args.render.read_text()))
    else:
        with tempfile.TemporaryDirectory(prefix="skyflow-soak-") as tmp:
            result = run(
                args.minutes, args.rate, args.token_lifetime, args.seed, Path(tmp), not args.quiet
            )
        if args.json:
            args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    section = render(result)
    print(section)
    if not args.no_docs:
        write_docs(section)
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
