"""The benchmark run: bare handler, webhook-ingest, then the outbox relay.

One run prints, for the same wrk load, the requests per second and p50/p99
latency of webhook-ingest accepting distinct signed NOWPayments IPNs and of a
bare aiohttp handler that only reads the body, their ratio, and the outbox
relay's published messages per second. Everything it creates (a database, a
RabbitMQ vhost, server processes, a temporary directory) is removed at the
end, also on failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from bench import infra
from bench.bodies import write_signed_bodies
from bench.metrics import IngestMetrics, between, metrics_token, scrape
from bench.profile import HotSpots, find_py_spy, hot_spots, start_py_spy
from bench.relay import ROUTING_KEY, RelayResult, relay_throughput
from bench.wrk import Load, WrkResult, run_wrk
from shared.logging import configure_logging

IPN_PATH = "/webhooks/nowpayments/ipn"
QUEUE = "bench.webhook.nowpayments.received"
TARGET_RATIO = 0.5
BARE_BODIES = 20_000
SECRET = "bench-ipn-secret"
DELIVERIES_COUNT = "SELECT count(*) FROM webhook_ingest.deliveries"
OUTBOX_COUNT = "SELECT count(*) FROM webhook_ingest.outbox"


@dataclass(frozen=True)
class Options:
    load: Load
    bodies: int
    relay_rows: int
    relay_batches: tuple[int, ...]
    profile: bool
    keep: bool


@dataclass(frozen=True)
class Measured:
    """A measured wrk run and the CPU time the server spent meanwhile."""

    wrk: WrkResult
    server_cpu_s: float

    @property
    def cores(self) -> float:
        return self.server_cpu_s / self.wrk.duration_s if self.wrk.duration_s else 0.0

    @property
    def cpu_us_per_request(self) -> float:
        requests = self.wrk.requests
        return 1e6 * self.server_cpu_s / requests if requests else 0.0


@dataclass(frozen=True)
class IngestCheck:
    """Whether ingest's 200s were real deliveries, and what its internals did."""

    ok_responses: int
    stored: int
    in_flight_limit: int
    log_warnings: dict[str, int]
    metrics: IngestMetrics
    backlog_before: int
    backlog_after: int

    @property
    def consistent(self) -> bool:
        return 0 <= self.stored - self.ok_responses <= self.in_flight_limit


def parse_options(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="webhook-ingest vs a bare aiohttp handler, and the relay.",
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk -t (1)")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (32)")
    parser.add_argument("--duration", type=int, default=15, help="seconds (15)")
    parser.add_argument("--warmup", type=int, default=3, help="seconds (3)")
    parser.add_argument(
        "--bodies", type=int, default=100_000, help="distinct signed IPNs (100000)"
    )
    parser.add_argument(
        "--relay-rows", type=int, default=20_000, help="outbox rows (20000)"
    )
    parser.add_argument(
        "--relay-batches",
        default="200,1000",
        help="relay batch sizes, comma-separated (200,1000)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample webhook-ingest with py-spy during its run (skews its figures)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp dir (bodies, logs)"
    )
    args = parser.parse_args(argv)
    if args.connections < args.threads:
        parser.error("--connections must be at least --threads")
    return Options(
        load=Load(args.threads, args.connections, args.duration, args.warmup),
        bodies=args.bodies,
        relay_rows=args.relay_rows,
        relay_batches=tuple(int(size) for size in args.relay_batches.split(",")),
        profile=args.profile,
        keep=args.keep,
    )


def say(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def _raise_interrupt(signum: int, _: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _quietly(what: str, action: Callable[[], object]) -> Callable[[], None]:
    """A cleanup step that reports its own failure instead of hiding others."""

    def run() -> None:
        try:
            action()
        except Exception as error:
            print(f"[bench] cleanup: could not {what}: {error}", file=sys.stderr)

    return run


def main(argv: list[str] | None = None) -> None:
    options = parse_options(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    # The relay runs in this process; keep its info lines out of the report.
    configure_logging("bench", "warning", "console")
    try:
        wrk = infra.require_wrk()
        with contextlib.ExitStack() as cleanup:
            run(options, wrk, cleanup)
    except infra.BenchError as error:
        print(f"[bench] {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("[bench] interrupted; cleaned up", file=sys.stderr)
        raise SystemExit(130) from None


def run(options: Options, wrk: str, cleanup: contextlib.ExitStack) -> None:
    started = time.monotonic()
    load = options.load
    name = f"bitloot_bench_{uuid.uuid4().hex[:10]}"
    workdir = Path(tempfile.mkdtemp(prefix="bitloot-bench-"))
    if options.keep:
        say(f"keeping {workdir}")
    else:
        cleanup.callback(
            _quietly("remove the temp dir", lambda: shutil.rmtree(workdir))
        )

    bodies = workdir / "ipn-bodies.tsv"
    say(f"signing {options.bodies} distinct IPNs into {bodies.name}")
    signing = time.monotonic()
    write_signed_bodies(bodies, SECRET, options.bodies)
    say(f"signed in {time.monotonic() - signing:.1f}s")

    dsn = infra.create_database(name)
    cleanup.callback(
        _quietly(f"drop database {name}", lambda: infra.drop_database(name))
    )
    amqp_url = infra.create_vhost(name)
    cleanup.callback(_quietly(f"delete vhost {name}", lambda: infra.delete_vhost(name)))
    asyncio.run(infra.bind_queue(amqp_url, QUEUE, ROUTING_KEY))
    machine = infra.machine(dsn)
    say(f"database and vhost {name} ready; {machine.describe()}")
    say(f"load average before the runs: {infra.load_average()}")

    bare = _measure_bare(options, wrk, bodies, workdir, cleanup)
    ingest, check, spots = _measure_ingest(
        options, wrk, bodies, workdir, dsn, amqp_url, cleanup
    )

    relays: list[RelayResult] = []
    for batch_size in options.relay_batches:
        say(f"outbox relay: {options.relay_rows} rows, batch size {batch_size}")
        relays.append(
            asyncio.run(
                relay_throughput(dsn, amqp_url, QUEUE, batch_size, options.relay_rows)
            )
        )

    for line in report(load, machine, bare, ingest, check, relays, spots):
        print(line)
    say(f"done in {time.monotonic() - started:.0f}s")


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}{IPN_PATH}"


def _measure_bare(
    options: Options,
    wrk: str,
    bodies: Path,
    workdir: Path,
    cleanup: contextlib.ExitStack,
) -> Measured:
    load = options.load
    port = infra.free_port()
    server = infra.start_server(
        "bare handler", ["-m", "bench.bare", str(port)], port, workdir / "bare.log"
    )
    cleanup.callback(_quietly("stop the bare handler", server.stop))
    infra.wait_healthy(server)
    lines = (0, min(options.bodies, BARE_BODIES))
    say(f"bare handler: {load.warmup_s}s warm-up, then {load.duration_s}s measured")
    with _stopping(server):
        _run(wrk, load, server.port, bodies, lines, load.warmup_s, distinct=False)
        cpu = server.cpu_seconds()
        result = _run(wrk, load, server.port, bodies, lines, load.duration_s, False)
        return Measured(result, server.cpu_seconds() - cpu)


def _measure_ingest(
    options: Options,
    wrk: str,
    bodies: Path,
    workdir: Path,
    dsn: str,
    amqp_url: str,
    cleanup: contextlib.ExitStack,
) -> tuple[Measured, IngestCheck, HotSpots | None]:
    load = options.load
    port = infra.free_port()
    log = workdir / "webhook-ingest.log"
    public_key, token = metrics_token(workdir / "keys")
    env = {
        "BITLOOT_JWT_PUBLIC_KEY_FILE": str(public_key),
        "BITLOOT_DATABASE_URL": dsn,
        "BITLOOT_AMQP_URL": amqp_url,
        "BITLOOT_HTTP_HOST": "127.0.0.1",
        "BITLOOT_HTTP_PORT": str(port),
        "BITLOOT_SD_DIR": str(workdir / "targets"),
        "BITLOOT_NOWPAYMENTS_IPN_SECRET": SECRET,
        "BITLOOT_LOG_LEVEL": "info",
        "BITLOOT_LOG_FORMAT": "json",
    }
    server = infra.start_server(
        "webhook-ingest", ["-m", "services.webhook_ingest"], port, log, env
    )
    cleanup.callback(_quietly("stop webhook-ingest", server.stop))
    infra.wait_healthy(server)
    base_url = f"http://127.0.0.1:{port}"

    # Warm-up and measured run take disjoint, duration-proportional line ranges
    # of the bodies file, so no IPN is ever sent twice.
    split = options.bodies * load.warmup_s // (load.warmup_s + load.duration_s)
    say(f"webhook-ingest: {load.warmup_s}s warm-up, then {load.duration_s}s measured")
    py_spy = find_py_spy() if options.profile else None
    if options.profile and py_spy is None:
        say("--profile: py-spy not found (pip install py-spy); not profiling")
    folded = workdir / "webhook-ingest.folded"
    with _stopping(server):
        _run(wrk, load, port, bodies, (0, split), load.warmup_s, distinct=True)
        before = _settled_deliveries(dsn)
        backlog_before = _count(dsn, OUTBOX_COUNT)
        scraped = scrape(base_url, token)
        sampler = None
        if py_spy is not None:
            sampler = start_py_spy(py_spy, server.process.pid, load.duration_s, folded)
        cpu = server.cpu_seconds()
        result = _run(
            wrk, load, port, bodies, (split, options.bodies), load.duration_s, True
        )
        measured = Measured(result, server.cpu_seconds() - cpu)
        if sampler is not None:
            sampler.wait(timeout=60)
        stored = _settled_deliveries(dsn) - before
        backlog_after = _count(dsn, OUTBOX_COUNT)
        metrics = between(scraped, scrape(base_url, token), ROUTING_KEY)
    check = IngestCheck(
        ok_responses=result.ok,
        stored=stored,
        in_flight_limit=load.connections,
        log_warnings=_warnings(log),
        metrics=metrics,
        backlog_before=backlog_before,
        backlog_after=backlog_after,
    )
    spots = hot_spots(folded) if sampler is not None and folded.exists() else None
    return measured, check, spots


@contextlib.contextmanager
def _stopping(server: infra.Server) -> Iterator[None]:
    """Stop the server once its runs are done; on failure, show its log."""
    try:
        yield
    except Exception:
        print(f"[bench] {server.name} log tail:\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        server.stop()


def _run(
    wrk: str,
    load: Load,
    port: int,
    bodies: Path,
    lines: tuple[int, int],
    seconds: int,
    distinct: bool,
) -> WrkResult:
    return run_wrk(
        wrk,
        _url(port),
        bodies,
        lines,
        load.threads,
        load.connections,
        seconds,
        distinct,
    )


def _count(dsn: str, query: str) -> int:
    return int(str(asyncio.run(infra.fetch_value(dsn, query))))


def _settled_deliveries(dsn: str, timeout: float = 10.0) -> int:
    """The deliveries count once requests still in flight have been stored."""
    deadline = time.monotonic() + timeout
    previous = -1
    while True:
        current = _count(dsn, DELIVERIES_COUNT)
        if current == previous or time.monotonic() > deadline:
            return current
        previous = current
        time.sleep(0.3)


def report(
    load: Load,
    machine: infra.Machine,
    bare: Measured,
    ingest: Measured,
    check: IngestCheck,
    relays: list[RelayResult],
    spots: HotSpots | None,
) -> list[str]:
    ratio = ingest.wrk.rps / bare.wrk.rps if bare.wrk.rps else 0.0
    verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "",
        f"BitLoot bench, {when}",
        f"machine: {machine.describe()}",
        f"load:    wrk -t{load.threads} -c{load.connections}, "
        f"{load.warmup_s}s warm-up then {load.duration_s}s measured, per server",
        "",
        f"{'server':<22}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'requests':>10}"
        f"{'non-2xx':>8}{'sock err':>9}{'cpu':>6}{'cpu us/req':>11}",
    ]
    rows = (("bare aiohttp handler", bare), ("webhook-ingest IPN", ingest))
    for label, measured in rows:
        result = measured.wrk
        lines.append(
            f"{label:<22}{result.rps:>8.0f}{result.p50_ms:>8.2f}{result.p99_ms:>8.2f}"
            f"{result.requests:>10}{result.non_2xx:>8}{result.socket_errors:>9}"
            f"{measured.cores:>6.2f}{measured.cpu_us_per_request:>11.0f}"
        )
    lines += [
        f"{'ingest / bare':<22}{ratio:>8.2f}   (target >= {TARGET_RATIO:.2f}: "
        f"{verdict})",
        "cpu: cores the server process used; cpu us/req: its CPU time per request",
        "",
        f"ingest check: {check.ok_responses} responses 200, "
        f"{ingest.wrk.non_2xx} non-2xx (wrk); {check.stored} deliveries stored "
        f"during the run ({'consistent' if check.consistent else 'MISMATCH'}: "
        f"up to {check.in_flight_limit} more may be in flight when wrk stops)",
    ]
    if ingest.wrk.repeated:
        lines.append("ingest check: WARNING wrk ran out of distinct IPNs (--bodies)")
    for event, count in check.log_warnings.items():
        lines.append(f"ingest check: the service logged {event} x{count}")
    metrics = check.metrics
    seconds = ingest.wrk.duration_s
    lines += [
        f"ingest group commit: {metrics.commits} commits, "
        f"{metrics.mean_batch:.1f} deliveries per commit on average",
        f"ingest's own relay: published {metrics.published} events during the run "
        f"({metrics.published / seconds:.0f}/s, {metrics.publish_retries} retries); "
        f"outbox backlog {check.backlog_before} -> {check.backlog_after}",
    ]
    lines += [
        "",
        f"{'outbox relay':<22}{'rows':>8}{'seconds':>8}{'msgs/s':>8}{'queued':>10}"
        f"{'cpu us/msg':>11}",
    ]
    for relay in relays:
        flag = "" if relay.queued == relay.rows and relay.left == 0 else "  MISMATCH"
        lines.append(
            f"{f'batch size {relay.batch_size}':<22}{relay.rows:>8}"
            f"{relay.seconds:>8.2f}{relay.rate:>8.0f}{relay.queued:>10}"
            f"{relay.cpu_us_per_message:>11.0f}{flag}"
        )
    lines.append("queued: messages in the bound queue afterwards; must equal rows")
    if spots is not None:
        lines += ["", f"py-spy, webhook-ingest, {spots.samples} samples: self time"]
        lines += [f"  {share:5.1f}%  {frame}" for frame, share in spots.self_time]
        lines.append("py-spy: inclusive time (below the event loop)")
        lines += [f"  {share:5.1f}%  {frame}" for frame, share in spots.inclusive]
    return lines


def _warnings(log: Path) -> dict[str, int]:
    """Warning and error events in a JSON log, by event name."""
    found: Counter[str] = Counter()
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("warning", "error"):
            found[str(entry.get("event"))] += 1
    return dict(found)
