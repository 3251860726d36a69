"""The `cosnap-metrics` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path

from schemas.health import ServiceHealth
from schemas.settings import (
    BROKER_COUNTS,
    CommonSettings,
    IngestSettings,
    RunnerSettings,
    SinkSettings,
    StreamsSettings,
)


def _logging(
    service: str, settings: CommonSettings, args: argparse.Namespace, secrets: Iterable[str] = ()
) -> None:
    """First thing of every service: its logs (JSON lines by default; `--log-format` overrides
    COSNAP_LOG_FORMAT and, under the runner, puts every line on the console) and, with a DSN,
    Sentry."""
    from plumbing.logs import configure_logging
    from plumbing.sentry import init_sentry

    log_format = args.log_format or settings.log_format
    configure_logging(
        service, settings.log_level, log_format, settings.log_dir, console_share=args.log_format is None
    )
    init_sentry(service, settings, secrets)


def _run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from cosnap_metrics.supervisor import run_pipeline

    overrides = {"brokers": args.brokers} if args.brokers is not None else {}
    try:
        settings = RunnerSettings(**overrides)
    except ValidationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run_pipeline(settings, args.log_format)


# The ingest's share of its stop deadline (plumbing/stopping.py) for requests still waiting for
# Kafka; the producer's close then has CLOSE_FLUSH_S for the envelopes queued.
INGEST_GRACEFUL_S = 2


def _ingest(args: argparse.Namespace) -> int:
    import logging
    import signal
    from types import FrameType

    import uvicorn

    from ingest.app import create_app
    from plumbing.kafka import AckedProducer
    from plumbing.outage import Outage, watch_kafka
    from plumbing.stopping import EXIT_UNFLUSHED, Shutdown

    settings = IngestSettings()
    _ensure_dev_sentry_secret(settings)
    _logging("ingest", settings, args)
    log = logging.getLogger("cosnap.ingest")
    producer = AckedProducer(
        settings.kafka_bootstrap, timeout_s=settings.produce_timeout_s, client_id="cosnap-ingest"
    )

    def held() -> str:
        return f"{n} envelopes Kafka has not acknowledged" if (n := producer.queued()) else ""

    watch_kafka(settings.kafka_bootstrap, Outage("Kafka", log, held))

    class Server(uvicorn.Server):
        """uvicorn's server, stopped through a Shutdown: a deadline on the stop, and a second
        signal exits at once."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            shutdown.request(sig)

    config = uvicorn.Config(
        create_app(settings, producer),
        host=settings.ingest_host,
        port=settings.ingest_port,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's records go to the root logger's handler, as JSON
        access_log=False,  # the app logs each request with its request id (ingest/request_ids.py)
        timeout_graceful_shutdown=INGEST_GRACEFUL_S,
        timeout_keep_alive=settings.ingest_keep_alive_s,
    )
    server = Server(config)
    shutdown = Shutdown(lambda signum: uvicorn.Server.handle_exit(server, signum, None), held)
    # uvicorn raises the signals it handled again once it has stopped, with the handlers it found:
    # ignored, so that the stop ends with this function's exit status, not with the signal.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    server.run()
    if producer.unflushed:
        log.error(
            "stopped with %d envelopes Kafka did not acknowledge: their requests got no 202, "
            "and their clients send them again",
            producer.unflushed,
        )
        return EXIT_UNFLUSHED
    return 0


def _streams(args: argparse.Namespace) -> int:
    from streams.app import run_worker

    settings = StreamsSettings()
    _logging("streams", settings, args)
    return run_worker(settings)


def _sink(args: argparse.Namespace) -> int:
    from plumbing.status import answering, serve_status
    from sinks.clickhouse.service import create_sink, open_store, run_until_signalled, sink_health
    from sinks.query.service import start_alerting_measures, start_query_service

    settings = SinkSettings()
    _logging("sink", settings, args)
    client = open_store(settings)
    sink = create_sink(settings, client)

    def health() -> ServiceHealth:
        return sink_health(client, sink)

    # chDB holds its data directory for one process: on the embedded store the query service
    # runs in the sink's process, and serves the sink's health beside the reads (and the alerting
    # measures on its /metrics; with a server, the status port has them).
    query = start_query_service(settings, answering(health)) if settings.embedded_clickhouse else None
    if query is None:
        serve_status(settings.metrics_host, settings.sink_metrics_port, health)
        start_alerting_measures(settings)
    try:
        return run_until_signalled(sink)
    finally:
        if query is not None:
            query.stop()
        client.close()  # chDB's handles closed before the interpreter exits (QueryService.stop)


def _notify(args: argparse.Namespace) -> int:
    from plumbing.sentry import secret_forms
    from schemas.settings import NotifierSettings
    from sinks.notify.notifier import run_notifier

    settings = NotifierSettings()
    _logging("notify", settings, args, secret_forms(settings.webhook_secret.get_secret_value()))
    return run_notifier(settings)


def _alerts_tail(args: argparse.Namespace) -> int:
    from cosnap_metrics.alerts_tail import tail

    settings = CommonSettings()
    return tail(
        settings.kafka_bootstrap,
        settings.topics.alerts,
        sys.stdout,
        from_beginning=args.from_beginning,
        raw_json=args.json,
        max_records=args.max,
    )


def _alerts_report(args: argparse.Namespace) -> int:
    from datetime import UTC

    from cosnap_metrics.alerts_report import alerting_report, format_report
    from cosnap_metrics.errors import QueryError

    settings = SinkSettings()
    days = args.days or settings.alerting_days
    now = datetime.now(UTC)
    try:
        result = alerting_report(settings, days, now)
    except QueryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([dict(zip(result.columns, row, strict=True)) for row in result.rows]))
    else:
        print(format_report(result, days, now))
    return 0


def _alerts_ack(args: argparse.Namespace) -> int:
    from kafka.errors import KafkaError

    from cosnap_metrics.alerts_ack import acknowledge
    from cosnap_metrics.errors import QueryError

    try:
        ack = acknowledge(CommonSettings(), args.id, noise=args.noise, note=args.note)
    except (ValueError, QueryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KafkaError as exc:
        print(f"error: Kafka did not take the acknowledgement: {exc!r}", file=sys.stderr)
        return 1
    print(f"acknowledged {args.id} ({ack.rule}, project {ack.project}){' as noise' if ack.noise else ''}")
    return 0


def _topics(_args: argparse.Namespace) -> int:
    from cosnap_metrics.provision import ensure_topics

    settings = CommonSettings()
    created = ensure_topics(settings.kafka_bootstrap, settings.topics, settings.kafka_replication)
    print(f"created: {', '.join(created) or 'none (all present)'}")
    return 0


def _query(args: argparse.Namespace) -> int:
    from cosnap_metrics.errors import QueryError
    from cosnap_metrics.query import format_tsv, run_query

    try:
        result = run_query(CommonSettings(), args.sql)
    except QueryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps(result.model_dump(), indent=2))
    else:
        print(format_tsv(result))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from cosnap_metrics.validate import DEFAULT_LISTEN, Target, parse_listen, validate, webhook_secret
    from plumbing.keys import DEV_KEY_FILE

    settings = RunnerSettings()
    key = args.write_key
    if key is None:
        key_file = settings.data_dir / DEV_KEY_FILE
        if not key_file.exists():
            print(f"error: no write key: give --write-key ({key_file} does not exist)", file=sys.stderr)
            return 2
        key = key_file.read_text().strip()
    try:
        listen = parse_listen(args.webhook_listen or DEFAULT_LISTEN)
    except ValueError as exc:
        print(f"error: --webhook-listen: {exc}", file=sys.stderr)
        return 2
    url = (args.url or f"http://{settings.ingest_host}:{settings.ingest_port}").rstrip("/")
    target = Target(url, key, webhook_secret(settings, args.webhook_secret), listen)
    return validate(settings, target, sys.stdout, timeout_s=args.timeout)


def _reconcile(args: argparse.Namespace) -> int:
    from cosnap_metrics.errors import QueryError
    from cosnap_metrics.reconcile import check, print_report

    try:
        result = check(
            StreamsSettings(),
            start=args.start,
            end=args.end,
            project=args.project,
            granularity=args.granularity,
            settle_s=args.settle,
        )
    except QueryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_report(result, sys.stdout)
    return 0 if result.clean else 1


def _time(text: str) -> datetime:
    """An argparse type: a time for `reconcile` (ISO 8601, `now`, or an age such as `2h`)."""
    from cosnap_metrics.reconcile import parse_time

    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: give ISO 8601 (2026-11-27T10:00Z), now, or an age (90s, 30m, 2h, 7d)"
        ) from None


def _demo(args: argparse.Namespace) -> int:
    from cosnap_metrics.demo import run_demo
    from plumbing.keys import DEV_KEY_FILE

    settings = IngestSettings()
    key = args.key or (settings.data_dir / DEV_KEY_FILE).read_text().strip()
    url = args.url or f"http://{settings.ingest_host}:{settings.ingest_port}"
    return run_demo(url, key, args.minutes, args.rate, speed=args.speed, seed=args.seed)


def _import(args: argparse.Namespace) -> int:
    from cosnap_metrics.backfill import ImportOptions, Target, run_import
    from plumbing.keys import DEV_KEY_FILE

    settings = IngestSettings()
    missing = [str(path) for path in args.files if not path.is_file()]
    if missing:
        print(f"error: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.rejected is not None and len(args.files) > 1:
        print("error: --rejected names the file of one import; give one FILE", file=sys.stderr)
        return 2
    key = args.key
    if key is None:
        key_file = args.key_file or settings.data_dir / DEV_KEY_FILE
        try:
            key = key_file.read_text().strip()
        except OSError as exc:
            print(
                f"error: no write key: {key_file}: {exc.strerror} (give --key-file or --key)", file=sys.stderr
            )
            return 2
    url = (args.url or f"http://{settings.ingest_host}:{settings.ingest_port}").rstrip("/")
    options = ImportOptions(
        state_dir=args.state_dir or settings.data_dir / "imports",
        batch=args.batch,
        concurrency=args.concurrency,
        max_rate=args.max_rate,
        restart=args.restart,
        rejected=args.rejected,
        fmt=None if args.format == "auto" else args.format,
        retry_for=args.retry_for,
    )
    return run_import(args.files, Target(url, key), options, sys.stdout, as_json=args.json)


def _ensure_dev_sentry_secret(settings: IngestSettings) -> None:
    """In the embedded default (a data directory with the development write key, as `make run`
    keeps it), a development Sentry client secret of project `default` in `dev-sentry-secret`."""
    from plumbing.keys import DEV_KEY_FILE, KeyStore, ensure_dev_sentry_secret

    if (settings.data_dir / DEV_KEY_FILE).exists():
        ensure_dev_sentry_secret(KeyStore(settings.keys_file), settings.data_dir)


def _sentry_add(args: argparse.Namespace) -> int:
    from plumbing.keys import KeyStore

    secret = KeyStore(CommonSettings().keys_file).add_sentry_secret(args.project, args.secret)
    print(secret)
    print(
        f"Sentry client secret for project {args.project!r}: set it in the integration, whose webhook URL is "
        f"<ingest>/v1/integrations/sentry/{args.project}",
        file=sys.stderr,
    )
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    from plumbing.keys import KeyStore

    if args.read and args.origin:
        raise SystemExit(
            "cosnap-metrics keys create: --origin is for write keys (browser pages posting events)"
        )
    key = KeyStore(CommonSettings().keys_file).create(args.project, tuple(args.origin), read=args.read)
    print(key)
    kind = (
        "read key (ClickHouse clients: user = the project, password = the key)" if args.read else "write key"
    )
    print(f"{kind} for project {args.project!r}; it is shown once and stored only as a hash", file=sys.stderr)
    return 0


def _compose_env(args: argparse.Namespace) -> int:
    from cosnap_metrics.compose_env import COMPOSE_PASSWORDS, write_compose_env

    try:
        write_compose_env(args.file, args.brokers)
    except FileExistsError:
        print(
            f"error: {args.file} exists; it is never overwritten (its passwords are in use)", file=sys.stderr
        )
        return 1
    print(f"wrote {args.file} (mode 0600): {', '.join(COMPOSE_PASSWORDS)}", file=sys.stderr)
    return 0


def _alertmanager_config(args: argparse.Namespace) -> int:
    from cosnap_metrics.alertmanager_config import ConfigError, write_config

    owner = None
    if args.owner:
        uid, _, gid = args.owner.partition(":")
        owner = (int(uid), int(gid or uid))
    try:
        rendered = write_config(args.out, owner=owner)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for note in rendered.left_out:
        print(note, file=sys.stderr)
    print(f"wrote {args.out} (mode 0600) and its notification texts beside it", file=sys.stderr)
    return 0


def _schemas_export(args: argparse.Namespace) -> int:
    from schemas.export import export

    for path in export(args.dir) if args.dir else export():
        print(path)
    return 0


def _rules_check(args: argparse.Namespace) -> int:
    from schemas.rules import RulesError, load_rules

    try:
        rules = load_rules(args.file)
    except RulesError as exc:
        print(exc, file=sys.stderr)
        return 1
    problems = [problem for rule in rules.rules for problem in rule.template_problems()]
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{args.file}: {len(rules.rules)} rules, {len(problems)} problems")
    return 1 if problems else 0


def _rules_test(args: argparse.Namespace) -> int:
    from schemas.rules import RulesError, format_duration, load_rule_tests
    from streams.alerts import transitions

    try:
        rules, tests = load_rule_tests(args.file)
    except RulesError as exc:
        print(exc, file=sys.stderr)
        return 1
    by_name = {rule.name: rule for rule in rules.rules}
    failed = 0
    for n, test in enumerate(tests.tests, 1):
        got = transitions(by_name[test.rule], test.series(), test.interval)
        wanted = [(change.at, change.state) for change in test.expect]
        if got != wanted:
            failed += 1
            expected = ", ".join(f"{state} at {format_duration(at)}" for at, state in wanted)
            actual = ", ".join(f"{state} at {format_duration(at)}" for at, state in got)
            print(f"FAIL test {n} ({test.rule}): expected [{expected}], got [{actual}]", file=sys.stderr)
    print(f"{args.file}: {len(tests.tests) - failed} passed, {failed} failed")
    return 1 if failed else 0


def _dashboards_export(_args: argparse.Namespace) -> int:
    from sinks.query.grafana_dashboard import export

    print(export())
    return 0


def _healthcheck(args: argparse.Namespace) -> int:
    from cosnap_metrics.healthcheck import healthcheck

    status, line = healthcheck(args.service, RunnerSettings())
    print(line, file=sys.stdout if status == 0 else sys.stderr)
    return status


def _bounded(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer from `low` to `high`."""

    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not within {low}-{high}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    from cosnap_metrics.healthcheck import SERVICES

    parser = argparse.ArgumentParser(prog="cosnap-metrics", description="Cosnap Metrics event pipeline")
    commands = parser.add_subparsers(dest="command", required=True)
    logs = argparse.ArgumentParser(add_help=False)
    logs.add_argument(
        "--log-format",
        choices=["json", "text"],
        help="every log line to the console in this format (default: COSNAP_LOG_FORMAT; under `run`, "
        "only warnings, state changes and a status line)",
    )
    run = commands.add_parser(
        "run", parents=[logs], help="run the whole embedded pipeline (Kafka, sink, streams, ingest)"
    )
    run.add_argument(
        "--brokers",
        type=int,
        choices=BROKER_COUNTS,
        help="Kafka nodes to start on loopback: 1, or 3 (a cluster: topics with 3 replicas, "
        "min.insync.replicas 2); default COSNAP_BROKERS, 1",
    )
    run.set_defaults(func=_run)
    commands.add_parser("ingest", parents=[logs], help="run the ingest API").set_defaults(func=_ingest)
    commands.add_parser("streams", parents=[logs], help="run the Faust worker").set_defaults(func=_streams)
    commands.add_parser(
        "sink", parents=[logs], help="run the ClickHouse sink (and, on chDB, the query service)"
    ).set_defaults(func=_sink)
    commands.add_parser("topics", help="create the pipeline's Kafka topics").set_defaults(func=_topics)
    probe = commands.add_parser(
        "healthcheck",
        help="exit 0 when a service's health endpoint answers 200, else 1 (the containers' HEALTHCHECK)",
        description="Asks the service's /health (the ingest's /health/ready) on this host; `topics` checks "
        "that the pipeline's topics exist. Without SERVICE, the service process 1 runs (in a container).",
    )
    probe.add_argument("service", nargs="?", choices=SERVICES)
    probe.set_defaults(func=_healthcheck)
    commands.add_parser(
        "notify", parents=[logs], help="deliver the alerts topic to Alertmanager and signed webhooks"
    ).set_defaults(func=_notify)

    alerts = commands.add_parser("alerts", help="alert state changes").add_subparsers(
        dest="alerts", required=True
    )
    alerts_tail = alerts.add_parser("tail", help="print alert state changes as they arrive")
    alerts_tail.add_argument("--from-beginning", action="store_true", help="start at the oldest record")
    alerts_tail.add_argument("--json", action="store_true", help="print the records as JSON, one per line")
    alerts_tail.add_argument("--max", type=int, metavar="N", help="stop after N records")
    alerts_tail.set_defaults(func=_alerts_tail)
    alerts_report = alerts.add_parser(
        "report",
        help="how alerting did per rule: alerts/day, delivery %%, time to detect, MTTR, flapping, noise",
        description="Per rule and for all rules, each beside its target: alerts fired and per day "
        "(< 10), delivery %% of every state change at every target (> 99.9 %%), mean time to detect, "
        "mean time to resolve (< 5 min), flapping alerts, alerts acknowledged as noise (< 2 %%). "
        "Exit status: 0, or 2 when the store cannot be read.",
    )
    alerts_report.add_argument(
        "--days",
        type=_bounded(1, 90),
        metavar="N",
        help="the N days before now (default COSNAP_ALERTING_DAYS, 7)",
    )
    alerts_report.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    alerts_report.set_defaults(func=_alerts_report)
    alerts_ack = alerts.add_parser(
        "ack",
        help="acknowledge an alert episode; --noise marks it a false positive",
        description="Exit status: 0 recorded, 1 Kafka did not take it, 2 no such alert or a bad id.",
    )
    alerts_ack.add_argument(
        "id", help="the alert's id, as alerts tail prints it: <fingerprint>-<starts_at ms>"
    )
    alerts_ack.add_argument("--noise", action="store_true", help="the alert was noise (a false positive)")
    alerts_ack.add_argument("--note", default="", help="a word on why (at most 1000 characters)")
    alerts_ack.set_defaults(func=_alerts_ack)

    query = commands.add_parser("query", help="run read-only SQL against the pipeline's ClickHouse")
    query.add_argument("sql")
    query.add_argument("--format", choices=["tsv", "json"], default="tsv")
    query.set_defaults(func=_query)

    reconcile = commands.add_parser(
        "reconcile",
        help="compare every final window of metrics.windows with a recount of metrics.events",
        description="Recount count, sum, min and max of every window from metrics.events FINAL (per "
        "project, type, series name, currency, granularity and window start) and print the windows "
        "of metrics.windows that differ. Windows the worker may not have written yet are skipped "
        "and counted. Exit status: 0 all equal, 1 mismatches, 2 the query failed.",
    )
    reconcile.add_argument(
        "--from", dest="start", type=_time, metavar="T", help="windows starting at or after T (default: all)"
    )
    reconcile.add_argument(
        "--to", dest="end", type=_time, metavar="T", help="windows ending at or before T (default: all final)"
    )
    reconcile.add_argument("--project", metavar="P", help="one project (default: all)")
    reconcile.add_argument(
        "--granularity", choices=["10s", "1m", "1h"], help="one granularity (default: all)"
    )
    reconcile.add_argument(
        "--settle",
        type=float,
        default=15.0,
        metavar="S",
        help="seconds an event may take from its 202 to its window in the store (default 15)",
    )
    reconcile.set_defaults(func=_reconcile)

    validate = commands.add_parser(
        "validate",
        help="check a running deployment end to end: health, synthetic events, a signed alert",
        description="Check the health endpoints, post one synthetic event of each type (tagged "
        "synthetic=true) and read them back from ClickHouse, and receive the alert they fire "
        "(rule cosnap_validate), verifying its webhook signature. One PASS/FAIL line per step; exit "
        "status 0 only when every step passed, 1 otherwise, 2 usage error.",
    )
    validate.add_argument("--url", help="ingest API base URL (default: this machine's, from COSNAP_INGEST_*)")
    validate.add_argument(
        "--write-key", help="a write key (default: the development key in the data directory)"
    )
    validate.add_argument(
        "--webhook-listen",
        metavar="HOST:PORT",
        help="where to receive the alert: the address COSNAP_VALIDATE_WEBHOOK_URL of the notifier "
        "names (default 127.0.0.1:8129, where `run` sends it)",
    )
    validate.add_argument(
        "--webhook-secret",
        help="the notifier's COSNAP_WEBHOOK_SECRET (default: that variable, or the runner's "
        "<data dir>/validate-webhook-secret)",
    )
    validate.add_argument(
        "--timeout",
        type=float,
        default=90.0,
        metavar="S",
        help="wait this long for the rows and the alert (and at most this long, up to 30 s, for "
        "each health answer)",
    )
    validate.set_defaults(func=_validate)

    demo = commands.add_parser("demo", help="post realistic Cosnap traffic to the ingest API")
    demo.add_argument("--minutes", type=float, default=5.0)
    demo.add_argument("--rate", type=float, default=200.0, help="events per (simulated) second")
    demo.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="simulate MINUTES of traffic in MINUTES/SPEED of wall time, ending now (10: ten times faster)",
    )
    demo.add_argument("--seed", type=int, help="reproducible traffic")
    demo.add_argument("--url", help="ingest API base URL (default: this machine's)")
    demo.add_argument("--key", help="write key (default: the development key in the data directory)")
    demo.set_defaults(func=_demo)

    backfill = commands.add_parser(
        "import",
        help="backfill events from NDJSON (plain or gzip) or CSV files through the ingest API",
        description="Post the events of each FILE to the ingest API (same validation and idempotency "
        "as any client), resumably. Exit status: 0 every event accepted, 1 some rejected, 2 usage "
        "error, 130 interrupted (run the same command to resume).",
    )
    backfill.add_argument("files", nargs="+", type=Path, metavar="FILE")
    backfill.add_argument(
        "--format", choices=["auto", "ndjson", "csv"], default="auto", help="default: from the content"
    )
    backfill.add_argument("--url", help="ingest API base URL (default: this machine's, from COSNAP_INGEST_*)")
    backfill.add_argument("--key", help="write key (prefer --key-file: a command line is visible to others)")
    backfill.add_argument(
        "--key-file",
        type=Path,
        help="file holding the write key (default: the data directory's dev-write-key)",
    )
    backfill.add_argument(
        "--batch", type=_bounded(1, 1000), default=500, metavar="N", help="events per request (1-1000)"
    )
    backfill.add_argument(
        "--concurrency", type=_bounded(1, 64), default=4, metavar="N", help="requests in flight"
    )
    backfill.add_argument(
        "--max-rate", type=float, default=0.0, metavar="EV/S", help="at most this many events/s (0: no cap)"
    )
    backfill.add_argument(
        "--rejected",
        type=Path,
        metavar="PATH",
        help="where rejected lines go (default: FILE.rejected.ndjson)",
    )
    backfill.add_argument(
        "--restart", action="store_true", help="ignore the saved progress and post every line again"
    )
    backfill.add_argument(
        "--state-dir", type=Path, metavar="DIR", help="resume state (default: <data dir>/imports)"
    )
    backfill.add_argument(
        "--retry-for",
        type=float,
        default=300.0,
        metavar="S",
        help="stop when the ingest acknowledges nothing for this long (default 300)",
    )
    backfill.add_argument("--json", action="store_true", help="print each file's summary as one JSON line")
    backfill.set_defaults(func=_import)

    schemas = commands.add_parser("schemas", help="the JSON Schema files of the contract").add_subparsers(
        dest="schemas", required=True
    )
    export = schemas.add_parser("export", help="write schemas/json/*.schema.json from the models")
    export.add_argument("--dir", type=Path, help="another directory to write to")
    export.set_defaults(func=_schemas_export, private=False)

    dashboards = commands.add_parser(
        "dashboards", help="the Grafana dashboard of docker-compose"
    ).add_subparsers(dest="dashboards", required=True)
    dashboards.add_parser(
        "export", help="write sinks/query/grafana/dashboards/executive.json from sinks/query/panels.py"
    ).set_defaults(func=_dashboards_export, private=False)

    compose_env = commands.add_parser(
        "compose-env",
        help="write the .env of docker-compose.yml: new passwords, mode 0600, never overwritten",
    )
    compose_env.add_argument("--file", type=Path, default=Path(".env"), help="where to write (default: .env)")
    compose_env.add_argument(
        "--brokers",
        type=int,
        choices=BROKER_COUNTS,
        default=1,
        help="3: the profile `cluster`, three Kafka nodes with every service on all three (default 1)",
    )
    compose_env.set_defaults(func=_compose_env)

    alertmanager = commands.add_parser("alertmanager", help="Alertmanager's configuration").add_subparsers(
        dest="alertmanager", required=True
    )
    am_config = alertmanager.add_parser(
        "config", help="render the shipped configuration with the secrets of the environment (mode 0600)"
    )
    am_config.add_argument("--out", type=Path, required=True, help="the file to write, e.g. alertmanager.yml")
    am_config.add_argument(
        "--owner", metavar="UID[:GID]", default="", help="give the files to Alertmanager's user"
    )
    am_config.set_defaults(func=_alertmanager_config)

    keys = commands.add_parser("keys", help="manage project write and read keys").add_subparsers(
        dest="keys", required=True
    )
    create = keys.add_parser("create", help="issue a write key (or with --read a read key) for a project")
    create.add_argument("--project", required=True)
    create.add_argument(
        "--read",
        action="store_true",
        help="a read key: reads the project's rows only, through ClickHouse's HTTP interface",
    )
    create.add_argument(
        "--origin",
        action="append",
        default=[],
        help="a browser origin allowed to post for the project (repeatable; patterns like https://*.cosnap.ai)",
    )
    create.set_defaults(func=_keys_create)

    sentry = commands.add_parser("sentry", help="Sentry integrations").add_subparsers(
        dest="sentry", required=True
    )
    sentry_add = sentry.add_parser(
        "add", help="keep a client secret of a project's Sentry integration (a new one unless --secret)"
    )
    sentry_add.add_argument("--project", required=True)
    sentry_add.add_argument("--secret", help="the client secret Sentry shows for the integration")
    sentry_add.set_defaults(func=_sentry_add)

    rules = commands.add_parser("rules", help="alert rules files").add_subparsers(dest="rules", required=True)
    check = rules.add_parser("check", help="validate a rules file and its annotation templates")
    check.add_argument("file", type=Path)
    check.set_defaults(func=_rules_check, private=False)
    test = rules.add_parser("test", help="run rule tests: values in, expected state changes out")
    test.add_argument("file", type=Path)
    test.set_defaults(func=_rules_test, private=False)
    return parser


# Commands that keep state in the data directory: it is made 0700 (also one an older release made).
_KEEP_STATE = frozenset({"run", "ingest", "streams", "sink", "notify", "keys", "sentry"})


def main(argv: Sequence[str] | None = None) -> int:
    from plumbing.private_files import PRIVATE_UMASK, private_dir

    args = build_parser().parse_args(argv)
    if getattr(args, "private", True):
        # Before anything is created: every file 0600 and directory 0700, here and in the
        # processes started from here (Kafka's segments, chDB's parts, the worker's state).
        # Only the commands that write files of this repository (exports) or none (rules) keep
        # the caller's umask.
        os.umask(PRIVATE_UMASK)
    if args.command in _KEEP_STATE:
        private_dir(CommonSettings().data_dir)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
