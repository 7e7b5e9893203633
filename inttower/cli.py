"""The `inttower` command line: get and import data, run a local broker, train, replay, the demo.

User errors (bad config, missing or malformed data) print one line and exit 2; only
bugs show a traceback. Third-party libraries log only warnings unless ``--verbose``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from inttower.config import AppConfig, default_config, load_config
from inttower.errors import UserError
from model.features import FeatureError
from stream.clicklog import ClickLogError
from stream.datasets import DataNotFoundError, DownloadError

EXIT_USER_ERROR = 2
EXIT_BROKER_UNAVAILABLE = 3
_USER_ERRORS = (UserError, ClickLogError, FeatureError, DataNotFoundError, DownloadError)
#: Loggers of this project: INFO by default; everything else WARNING unless --verbose.
PROJECT_LOGGERS = ("inttower", "stream", "model", "index_sync", "monitoring", "serving", "bench")


def _config(path: str | None) -> AppConfig:
    return load_config(path) if path else default_config()


def _cmd_data_movielens(args: argparse.Namespace) -> None:
    from inttower.commands import download_and_import_movielens, import_movielens_log

    if args.download:
        if len(args.paths) > 1:
            raise UserError(f"with --download give at most OUT, got {' '.join(args.paths)}")
        out = Path(args.paths[0]) if args.paths else Path("runs") / f"{args.download}.parquet"
        download_and_import_movielens(args.download, out, _config(args.config))
        return
    if len(args.paths) != 2:
        raise UserError("give PATH OUT (a GroupLens folder and the output Parquet file), or --download NAME [OUT]")
    import_movielens_log(Path(args.paths[0]), Path(args.paths[1]), _config(args.config))


def _cmd_data_table(args: argparse.Namespace) -> None:
    from inttower.commands import import_table_log

    import_table_log(Path(args.path), Path(args.out), _config(args.config))


def _cmd_broker(args: argparse.Namespace) -> None:
    from inttower.commands import run_local_broker

    run_local_broker(_config(args.config), port=args.port, partitions=args.partitions)


def _cmd_serve(args: argparse.Namespace) -> None:
    from serving.app import ServingService, run_server

    config = _config(args.config)
    if not Path(args.index_dir).is_dir():
        raise UserError(f"--index-dir {args.index_dir}: not a directory (the trainer's [index] index_dir)")
    serving = config.serving
    service = ServingService(config.model, Path(args.index_dir), serving)
    run_server(service, args.host or serving.host, serving.port if args.port is None else args.port)


def _cmd_data_synthetic(args: argparse.Namespace) -> None:
    from inttower.commands import write_synthetic_log

    write_synthetic_log(Path(args.out), _config(args.config), events=args.events, seed=args.seed, delays=args.delays)


def _cmd_demo(args: argparse.Namespace) -> None:
    from inttower.demo import run_demo

    run_demo(_config(args.config), Path(args.workdir), events=args.events)


def _cmd_train(args: argparse.Namespace) -> None:
    from inttower.allocator import use_configured_allocator

    config = _config(args.config)
    # First thing: a re-execution under jemalloc starts the process over.
    use_configured_allocator(config.daemon.allocator, config.daemon.allocator_library, config.feedback.joined,
                             args.own_process)
    from inttower.daemon import TrainingDaemon
    from inttower.distributed import coordinator_from_env

    if args.init_from:
        config = dataclasses.replace(config, daemon=dataclasses.replace(config.daemon, init_from=args.init_from))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # Under torchrun (RANK, WORLD_SIZE, ... set) this process is one rank of a job.
    coordinator = coordinator_from_env(config.train.device)
    try:
        summary = TrainingDaemon(config, stop, coordinator=coordinator).run()
    finally:
        coordinator.close()
    if coordinator.rank != 0:
        logging.getLogger("inttower.daemon").info("rank %d stopped after %d events", coordinator.rank, summary.events)
        return
    quality = ", ".join(f"{name} AUC {m['auc']:.4f} logloss {m['logloss']:.4f}" for name, m in summary.models.items())
    print(
        f"stopped after {summary.events} events in {summary.seconds:.0f} s "
        f"({summary.events / max(summary.seconds, 1e-9):.0f}/s); dead-lettered {sum(summary.dead_lettered.values())}; "
        f"{summary.checkpoints} checkpoints; {quality}"
    )


def _cmd_fit(args: argparse.Namespace) -> None:
    from inttower.commands import fit_history

    fit_history(Path(args.log), Path(args.out), _config(args.config), args.until, args.since)


def _cmd_eval(args: argparse.Namespace) -> None:
    from inttower.commands import evaluate_checkpoint

    evaluate_checkpoint(Path(args.checkpoint), Path(args.log), _config(args.config), getattr(args, "from"), args.until)


def _cmd_replay(args: argparse.Namespace) -> None:
    import dataclasses

    from stream.clicklog import read_click_log
    from stream.delays import is_feedback_log
    from stream.event_time import parse_event_time
    from stream.feedback_replay import replay_feedback
    from stream.replay import replay

    config = _config(args.config).stream
    overrides = {"topic": args.topic}
    if args.bootstrap:
        overrides["bootstrap_servers"] = tuple(args.bootstrap.split(","))
    config = dataclasses.replace(config, **overrides)
    table = read_click_log(args.log, index_ids=False)
    if is_feedback_log(table.schema):
        if args.format != "json":
            raise UserError(f"{args.log} is a feedback log (impressions and clicks): it replays as JSON only")
        end = None
        if args.end_watermark is not None:
            try:
                end = parse_event_time(args.end_watermark)
            except ValueError as exc:
                raise UserError(f"--end-watermark: {exc}") from None
        summary = replay_feedback(table, config, rate=args.rate, speedup=args.speedup, progress=True,
                                  stamp_event_times=args.stamp_event_times, end_watermark_ms=end,
                                  clicks_topic=args.clicks_topic)
        print(f"replayed {summary.events} impressions and their clicks in {summary.messages} messages, "
              f"{summary.seconds:.1f} s")
        return
    summary = replay(
        table, config, rate=args.rate, speedup=args.speedup, fmt=args.format, progress=True,
        stamp_event_times=args.stamp_event_times,
    )
    print(f"replayed {summary.events} events in {summary.messages} messages, {summary.seconds:.1f} s, {summary.events_per_s:.0f} events/s")


def _int_in(low: int, high: int):
    """An argparse type: an integer in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {low}..{high}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inttower", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="also show third-party libraries' INFO logs")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="build click logs (Parquet) from public or synthetic data")
    sources = data.add_subparsers(dest="source", required=True)
    ml = sources.add_parser(
        "movielens",
        help="GroupLens ML-100K or ML-1M -> time-ordered click log",
        usage="inttower data movielens PATH OUT | --download {ml-100k,ml-1m} [OUT]",
    )
    ml.add_argument(
        "paths", nargs="*", metavar="PATH OUT",
        help="folder holding u.data/u.user/u.item or ratings.dat/users.dat/movies.dat, then the output Parquet file",
    )
    ml.add_argument(
        "--download", choices=("ml-100k", "ml-1m"),
        help="fetch the GroupLens archive into $INTTOWER_DATA (default ~/.cache/inttower), checksum verified; "
        "OUT defaults to runs/NAME.parquet",
    )
    ml.add_argument("--config", help="TOML config ([data.movielens] sets the label thresholds)")
    ml.set_defaults(run=_cmd_data_movielens)
    syn = sources.add_parser("synthetic", help="synthetic click log with planted preferences and a shift")
    syn.add_argument("out", help="output Parquet file")
    syn.add_argument("--events", type=int, help="number of events (default: [data.synthetic] events)")
    syn.add_argument("--seed", type=int, help="random seed (default: [data.synthetic] seed)")
    syn.add_argument("--delays", action="store_true",
                     help="a feedback log: every event an impression, positives clicked after a delay ([data.delays]); "
                     "replay sends impressions and clicks for [feedback] mode = \"joined\"")
    syn.add_argument("--config", help="TOML config ([data.synthetic] sets the generator, [data.delays] the click delays)")
    syn.set_defaults(run=_cmd_data_synthetic)
    tab = sources.add_parser("table", help="your own click log (CSV, Parquet or JSON lines) -> time-ordered click log")
    tab.add_argument("path", help="CSV/TSV, Parquet or JSON-lines file (format by extension or [data.table] format)")
    tab.add_argument("out", help="output Parquet file")
    tab.add_argument("--config", required=True, help="TOML config ([data.table] maps your columns onto the click log)")
    tab.set_defaults(run=_cmd_data_table)

    train = commands.add_parser("train", help="the long-running training daemon (Kafka -> online IntTower)")
    train.add_argument("--config", help="TOML config ([stream], [model], [train], [online], [daemon])")
    train.add_argument("--init-from", metavar="CKPT",
                       help="start from this fitted checkpoint (inttower fit --out) when the daemon has none of its own "
                       "(overrides [daemon] init_from)")
    train.set_defaults(run=_cmd_train)

    fit = commands.add_parser("fit", help="batch-fit the model on a logged history (a checkpoint to start the daemon from)")
    fit.add_argument("log", help="Parquet click log, or a directory of them (read in chunks, in path order)")
    fit.add_argument("--out", required=True, help="checkpoint directory to write (then: inttower train --init-from OUT)")
    fit.add_argument("--config", help="TOML config ([model], [train]: epochs, batch size, learning rate, ...)")
    fit.add_argument("--until", metavar="TIME", help="fit on events before TIME (epoch ms or ISO-8601, UTC if no zone)")
    fit.add_argument("--since", metavar="TIME", help="and at or after TIME")
    fit.set_defaults(run=_cmd_fit)

    ev = commands.add_parser("eval", help="AUC, logloss and calibration of a checkpoint on a click log")
    ev.add_argument("checkpoint", help="a checkpoint directory (its newest) or one ckpt-* directory")
    ev.add_argument("log", help="Parquet click log, or a directory of them")
    ev.add_argument("--config", help="TOML config the checkpoint was made with ([model])")
    ev.add_argument("--from", metavar="TIME", help="only events at or after TIME (epoch ms or ISO-8601)")
    ev.add_argument("--until", metavar="TIME", help="only events before TIME")
    ev.set_defaults(run=_cmd_eval)

    rep = commands.add_parser("replay", help="produce a Parquet click log into a Kafka topic in event-time order")
    rep.add_argument("log", help="Parquet click log (inttower data ...)")
    rep.add_argument("--topic", required=True)
    rep.add_argument("--bootstrap", help="host:port[,host:port] (default: [stream] bootstrap_servers)")
    pace = rep.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, help="events per second")
    pace.add_argument("--speedup", type=float, help="replay event-time gaps divided by this factor")
    pace.add_argument("--max", action="store_true", help="as fast as possible (the default)")
    rep.add_argument("--format", choices=("json", "arrow"), default="json")
    rep.add_argument("--stamp-event-times", action="store_true",
                     help="record timestamps = event times ([stream] start_at can then seek by time; the topic needs "
                     "retention.ms = -1 or Kafka deletes old-stamped records)")
    rep.add_argument("--end-watermark", metavar="TIME",
                     help="feedback logs: the watermark sent to every partition at the end (epoch ms or ISO-8601; "
                     "default: the log's last event time); a time past the last impression's window labels every "
                     "impression, but no later traffic may then be older")
    rep.add_argument("--clicks-topic", help="feedback logs: send the clicks to this topic (the impressions go to --topic)")
    rep.add_argument("--config", help="TOML config ([stream] security settings)")
    rep.set_defaults(run=_cmd_replay)

    broker = commands.add_parser("broker", help="run the embedded Kafka-protocol broker (Tansu) in the foreground")
    broker.add_argument("--port", type=_int_in(1, 65535), default=9092, help="port on 127.0.0.1 (default 9092)")
    broker.add_argument("--partitions", type=_int_in(1, 10_000), default=4,
                        help="partitions of the [stream] topic it creates (default 4)")
    broker.add_argument("--config", help="TOML config: its [stream] topic and dead-letter topic are created")
    broker.set_defaults(run=_cmd_broker)

    serve = commands.add_parser("serve", help="HTTP scoring and retrieval over the trainer's published index versions")
    serve.add_argument("--index-dir", required=True, help="the trainer's [index] index_dir (versions are followed)")
    serve.add_argument("--config", help="TOML config: [model] as the trainer's, [serving] bounds")
    serve.add_argument("--host", help="address to bind (default [serving] host: 127.0.0.1)")
    serve.add_argument("--port", type=_int_in(0, 65535), help="port (default [serving] port: 8080; 0 picks a free one)")
    serve.set_defaults(run=_cmd_serve)

    demo = commands.add_parser("demo", help="end-to-end demo on the embedded synthetic defaults")
    demo.add_argument("--config", help="TOML config (default: the embedded defaults)")
    demo.add_argument("--events", type=int, help="synthetic events to generate")
    demo.add_argument("--workdir", default="demo-out", help="where the demo writes its report and files")
    demo.set_defaults(run=_cmd_demo)
    return parser


def configure_logging(verbose: bool) -> None:
    """The project's own INFO lines; third parties (FAISS's loader, kafka-python) only from WARNING.

    kafka-python logs every failed connection attempt (``kafka.conn``, ``kafka.client``)
    and every cancelled or retried group request (``kafka.coordinator``, e.g. a consumer
    closed mid-join) as an ERROR, and retries them itself; the project reports an
    unreachable broker, failed commits and lag in its own lines, so those loggers are
    quiet unless ``verbose``. kafka-python's other errors still show.
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S"
    )
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    if not verbose:
        # Which C allocator runs the trainer: in the memory reports ("malloc (jemalloc) ..."); the start-up lines on -v.
        logging.getLogger("inttower.allocator").setLevel(logging.WARNING)
        logging.getLogger("kafka").setLevel(logging.ERROR)
        logging.getLogger("kafka.conn").setLevel(logging.CRITICAL)
        logging.getLogger("kafka.client").setLevel(logging.CRITICAL)  # "No node available", retries
        logging.getLogger("kafka.coordinator").setLevel(logging.CRITICAL)  # cancelled / retried group requests
        logging.getLogger("apscheduler").setLevel(logging.ERROR)  # "job skipped: still running" is expected


def launched_as_command(orig_argv: Sequence[str] | None = None) -> bool:
    """This process is ``inttower ...`` or ``python -m inttower.cli ...``, not a program that calls `main`."""
    args = iter(list(sys.orig_argv if orig_argv is None else orig_argv)[1:])
    for arg in args:  # the interpreter's options, up to the module or script they run
        if arg.startswith("-m"):
            return (arg[2:] or next(args, "")) == "inttower.cli"
        if arg.startswith("-c"):
            return False
        if arg in ("-X", "-W"):
            next(args, None)
        elif not arg.startswith("-"):
            return Path(arg).name == "inttower"
    return False


def main(argv: Sequence[str] | None = None) -> int:
    from stream.broker import BrokerUnavailableError

    args = build_parser().parse_args(argv)
    args.own_process = argv is None and launched_as_command()  # `train` may re-execute it
    configure_logging(args.verbose)
    try:
        args.run(args)
    except BrokerUnavailableError as exc:
        print(f"inttower: error: {exc}", file=sys.stderr)
        return EXIT_BROKER_UNAVAILABLE
    except _USER_ERRORS as exc:
        print(f"inttower: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("inttower: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
