"""``edgewatch`` command line: serve | jobs | show JOB | plot JOB | replay | keygen | schema |
demo.

``serve`` runs the daemon; ``jobs``, ``show`` and ``plot`` read the daemon's HTTP API
(``--server``, default ``$EDGEWATCH_SERVER`` or http://127.0.0.1:9108); ``replay`` reads
the database (or a trace file) itself, so it works with no daemon running.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import msgspec

from edgewatch import api_client
from edgewatch._version import __version__
from edgewatch.api_client import DEFAULT_SERVER, api_get
from edgewatch.errors import ApiError, ConfigError
from edgewatch.schemas import views
from edgewatch.server.config import forecast_flags, forecast_overrides, predictor_from_flags


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


def _ago(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    seconds = max(0.0, datetime.datetime.now().timestamp() - timestamp)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def cmd_jobs(args: argparse.Namespace) -> int:
    jobs = api_client.jobs(args.server)
    if args.json:
        print(json.dumps(msgspec.to_builtins(jobs), indent=2))
        return 0
    if not jobs:
        print("no jobs yet: attach a training run with edgewatch.attach(optimizer, job=...)")
        return 0
    rows = [
        [j.job_id, j.status, _fmt(j.last_step), _fmt(j.loss), _fmt(j.records), _ago(j.last_seen)]
        for j in jobs
    ]
    print(table(["JOB", "STATUS", "LAST STEP", "LAST LOSS", "RECORDS", "LAST SEEN"], rows))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    job = api_client.job(args.server, args.job)
    last = job.last_step or 0
    start = max(0, last - args.steps + 1)  # of the current run (a job re-attached has more)
    steps = api_get(args.server, api_client.job_path(args.job, "steps", start=start, run=job.run))
    if args.json:
        print(json.dumps({"job": msgspec.to_builtins(job), "steps": steps}, indent=2))
        return 0
    opt = job.optimizer
    print(f"job {job.job_id}  ({job.status}, run {job.run}, host {job.host or '-'})")
    print(f"  optimizer   {opt.get('kind')}  lr={_fmt(opt.get('lr'))}  params={opt.get('params')}")
    when = _ago(job.last_seen)
    print(f"  last step   {_fmt(job.last_step)}  of {_fmt(job.total_steps)}  ({when})")
    print(f"  records     {job.records} stored, {job.dropped} dropped by the client")
    now = f"lr={_fmt(job.lr)}  loss={_fmt(job.loss)}  grad_norm={_fmt(job.grad_norm)}"
    print(f"  now         {now}")
    if job.sharpness is not None:
        kind = "preconditioned sharpness" if job.preconditioned else "sharpness"
        print(f"  {kind} {_fmt(job.sharpness)} (step {job.sharpness_step})")
        print(
            f"  stability   threshold {_fmt(job.stability_threshold)} at the current lr; "
            f"ratio {_fmt(job.stability_ratio)} (1.0 is the edge)"
        )
    _print_analysis(job.analysis, api_client.alerts(args.server, args.job, job.run))
    if steps:
        print(f"\n  last {len(steps)} steps:")
        rows = [
            [_fmt(s["step"]), _fmt(s["lr"]), _fmt(s["loss"]), _fmt(s["grad_norm"])] for s in steps
        ]
        print(
            "\n".join(
                "  " + line
                for line in table(["STEP", "LR", "LOSS", "GRAD NORM"], rows).splitlines()
            )
        )
    return 0


def _print_analysis(analysis: views.Analysis, alerts: list[views.Alert]) -> None:
    to_go = analysis.steps_to_instability
    forecast = "none within the plan" if to_go is None else f"in {to_go:.0f} steps"
    print(f"  state       {analysis.state.upper()}  (instability forecast: {forecast})")
    lr = analysis.recommended_lr
    if analysis.resume_step is not None:
        at = f" with lr <= {_fmt(lr)}" if lr is not None else ""
        step = analysis.resume_step
        print(f"  recommend   resume from the last checkpoint at or before step {step}{at}")
    elif lr is not None:
        warmup = analysis.recommended_warmup_steps
        extra = f", or warm up over {warmup} steps" if warmup else ""
        print(f"  recommend   lr <= {_fmt(lr)}{extra}")
    print(f"  why         {analysis.reason}")
    if alerts:
        print(f"\n  alerts ({len(alerts)}, latest last):")
        print("\n".join("  " + line for line in _alert_table(alerts[-5:]).splitlines()))


def _alert_table(alerts: Sequence[views.Alert]) -> str:
    rows = [
        [
            _fmt(a.step),
            a.state,
            _fmt(a.steps_to_instability),
            _fmt(a.recommended_lr),
            _fmt(a.recommended_warmup_steps),
            a.reason,
        ]
        for a in alerts
    ]
    return table(
        ["STEP", "STATE", "STEPS TO INSTABILITY", "REC. LR", "REC. WARMUP", "REASON"], rows
    )


def _existing_sqlite(url: str) -> None:
    """Refuse a SQLite file that is not there: replay reads a database, and opening one
    would create an empty file (and a job 'not found' in it)."""
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return  # the store says what is wrong with it
    path = parsed.database
    file = parsed.get_backend_name() == "sqlite" and path and path != ":memory:"
    if file and not os.path.exists(str(path)):
        raise ConfigError(
            f"no database at {path!r}: replay reads the one `edgewatch serve` writes "
            "(--db URL, or run it where that file is)"
        )


def cmd_replay(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgewatch.server import load_settings
    from edgewatch.server.replay import export_trace, replay_stored, replay_trace
    from edgewatch.server.store import Store

    settings = predictor_from_flags(args)  # the defaults and the flags; no file, no variables
    if args.trace:
        result = replay_trace(Path(args.trace), settings)
    else:
        if not args.job:
            raise ConfigError("replay needs a JOB (from the database) or --trace FILE")
        db = args.db or load_settings(None).db
        _existing_sqlite(db)
        store = Store(db)
        try:
            if args.export:
                n = export_trace(store, args.job, Path(args.export))
                print(f"wrote {n} records of {args.job!r} to {args.export}", file=sys.stderr)
            result = replay_stored(store, args.job, settings)
        finally:
            store.close()
    alerts = [
        views.Alert(
            step=a.step,
            state=a.state,
            steps_to_instability=views.finite(a.steps_to_instability),
            steps_low=views.finite(a.steps_low),
            steps_high=views.finite(a.steps_high),
            stability_ratio=views.finite(a.ratio),
            recommended_lr=a.recommended_lr,
            recommended_warmup_steps=a.recommended_warmup_steps,
            reason=a.reason,
            resume_step=a.resume_step,
        )
        for a in result.alerts
    ]
    if args.json:
        answer = {"job_id": result.job_id, "run": result.run, "alerts": alerts}
        print(json.dumps(msgspec.to_builtins(answer), indent=2))
        return 0
    print(
        f"job {result.job_id}  run {result.run}: {result.records} records replayed, "
        f"{len(alerts)} alerts"
    )
    if alerts:
        print(_alert_table(alerts))
    if result.matches_live is not None:
        same = "the same as" if result.matches_live else "DIFFERENT from"
        print(f"(these are {same} the {len(result.live or [])} alerts the daemon raised live)")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from edgewatch.plot import fetch, plot_job

    plot_job(fetch(args.server, args.job), args.output)
    print(f"wrote {args.output}")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from edgewatch.keys import keygen

    public, secret = keygen(args.name, args.dir)
    print(f"wrote {public} (public: share it) and {secret} (secret: keep it private)")
    print(
        "daemon: curve_secret_key = <server>.key_secret, curve_clients = a folder holding "
        "each allowed client's NAME.key\nclient: attach(..., server_key=<server>.key, "
        "client_key=<client>.key_secret)"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from edgewatch.server import load_settings, serve

    overrides = {
        name: getattr(args, name, None)
        for name in (
            "db",
            "bind",
            "http",
            "log_level",
            "commit_interval",
            "job_expiry",
            "lease_seconds",
            "checkpoint_seconds",
            "retain",
            "max_frame_bytes",
            "curve_secret_key",
            "curve_clients",
            "allow_plaintext",
        )
    } | forecast_overrides(args)
    settings = load_settings(args.config, overrides=overrides)
    logging.getLogger().setLevel(settings.log_level.upper())
    return serve(settings)


def cmd_schema(_args: argparse.Namespace) -> int:
    from edgewatch.schemas.codec import json_schema_text

    print(json_schema_text())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from edgewatch.demo import run_demo

    return run_demo(steps=args.steps, workdir=args.workdir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgewatch", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"edgewatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    server_url = os.environ.get("EDGEWATCH_SERVER", DEFAULT_SERVER)

    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", help="TOML settings file (also $EDGEWATCH_CONFIG)")
    serve.add_argument("--db", help="database URL (default sqlite:///edgewatch.db)")
    serve.add_argument("--bind", help="ZeroMQ endpoint (default tcp://127.0.0.1:5555)")
    serve.add_argument("--http", help="HTTP HOST:PORT (default 127.0.0.1:9108)")
    serve.add_argument("--commit-interval", type=float, help="seconds between commits (0.1)")
    serve.add_argument(
        "--job-expiry", type=float, help="seconds before a silent job leaves /metrics"
    )
    serve.add_argument(
        "--lease-seconds",
        type=float,
        help="seconds a daemon holds a job's analysis without its records (then others may)",
    )
    serve.add_argument(
        "--checkpoint-seconds", type=float, help="seconds between checkpoints of an analysis"
    )
    serve.add_argument(
        "--retain",
        type=float,
        metavar="DAYS",
        help="days of raw step records kept (default 0: all); summaries and alerts stay",
    )
    serve.add_argument("--max-frame-bytes", type=int, help="largest frame accepted")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING (default INFO)")
    serve.add_argument("--curve-secret-key", help="the daemon's NAME.key_secret: CURVE on")
    serve.add_argument("--curve-clients", help="folder of allowed clients' NAME.key files")
    serve.add_argument(
        "--allow-plaintext",
        action="store_true",
        default=None,
        help="bind beyond loopback without CURVE (unencrypted)",
    )
    forecast_flags(serve)
    serve.set_defaults(func=cmd_serve)

    keys = sub.add_parser("keygen", help="write a CURVE certificate pair NAME.key/.key_secret")
    keys.add_argument("name", help="e.g. server, or a client's name")
    keys.add_argument("--dir", default=".", help="folder to write into (default .)")
    keys.set_defaults(func=cmd_keygen)

    jobs = sub.add_parser("jobs", help="list the jobs the daemon knows")
    show = sub.add_parser("show", help="one job: state and its latest steps")
    show.add_argument("job")
    show.add_argument("--steps", type=int, default=10, help="how many recent steps to list")
    for p in (jobs, show):
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    plot = sub.add_parser("plot", help="draw a job: sharpness vs threshold, loss, alerts")
    plot.add_argument("job")
    plot.add_argument("-o", "--output", required=True, help="image file to write (.png, .svg)")
    for p, func in ((jobs, cmd_jobs), (show, cmd_show), (plot, cmd_plot)):
        p.add_argument(
            "--server", default=server_url, help=f"daemon HTTP URL (default {server_url})"
        )
        p.set_defaults(func=func)

    replay = sub.add_parser("replay", help="run the forecast over a stored job or a trace, offline")
    replay.add_argument("job", nargs="?", help="job id in the database")
    replay.add_argument("--db", help="database URL (default: as `serve`, sqlite:///edgewatch.db)")
    replay.add_argument("--trace", help="a JSON-lines trace of wire records instead of a job")
    replay.add_argument("--export", help="also write the job's latest run as a trace here")
    replay.add_argument("--json", action="store_true", help="print JSON instead of a table")
    forecast_flags(replay, aliases=True)  # --margin, --horizon, ...: replay's older spellings
    replay.set_defaults(func=cmd_replay)

    schema = sub.add_parser("schema", help="print the wire protocol's JSON Schema")
    schema.set_defaults(func=cmd_schema)

    demo = sub.add_parser("demo", help="daemon + a small training run heading for instability")
    demo.add_argument("--steps", type=int, default=600)
    demo.add_argument("--workdir", default=".demo", help="where the demo database goes")
    demo.set_defaults(func=cmd_demo)
    from edgewatch.trial.command import add_parser  # imports no torch until it runs

    add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ApiError, ConfigError) as exc:
        print(f"edgewatch: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`edgewatch show job | head`): what it wanted was printed.
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
