"""The `inttower` command line: import data, run the demo, (later) train and replay.

User errors (bad config, missing or malformed data) print one line and exit 2; only
bugs show a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from inttower.config import AppConfig, default_config, load_config
from inttower.errors import UserError
from model.features import FeatureError
from stream.clicklog import ClickLogError

EXIT_USER_ERROR = 2
_USER_ERRORS = (UserError, ClickLogError, FeatureError)


def _config(path: str | None) -> AppConfig:
    return load_config(path) if path else default_config()


def _cmd_data_movielens(args: argparse.Namespace) -> None:
    from inttower.commands import import_movielens_log

    import_movielens_log(Path(args.path), Path(args.out), _config(args.config))


def _cmd_data_synthetic(args: argparse.Namespace) -> None:
    from inttower.commands import write_synthetic_log

    write_synthetic_log(Path(args.out), _config(args.config), events=args.events, seed=args.seed)


def _cmd_demo(args: argparse.Namespace) -> None:
    from inttower.commands import run_demo

    run_demo(_config(args.config), Path(args.workdir), events=args.events)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inttower", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="build click logs (Parquet) from public or synthetic data")
    sources = data.add_subparsers(dest="source", required=True)
    ml = sources.add_parser("movielens", help="GroupLens ML-100K or ML-1M directory -> time-ordered click log")
    ml.add_argument("path", help="directory holding u.data/u.user/u.item or ratings.dat/users.dat/movies.dat")
    ml.add_argument("out", help="output Parquet file")
    ml.add_argument("--config", help="TOML config ([data.movielens] sets the label thresholds)")
    ml.set_defaults(run=_cmd_data_movielens)
    syn = sources.add_parser("synthetic", help="synthetic click log with planted preferences and a shift")
    syn.add_argument("out", help="output Parquet file")
    syn.add_argument("--events", type=int, help="number of events (default: [data.synthetic] events)")
    syn.add_argument("--seed", type=int, help="random seed (default: [data.synthetic] seed)")
    syn.add_argument("--config", help="TOML config ([data.synthetic] sets the generator)")
    syn.set_defaults(run=_cmd_data_synthetic)

    demo = commands.add_parser("demo", help="end-to-end demo on the embedded synthetic defaults")
    demo.add_argument("--config", help="TOML config (default: the embedded defaults)")
    demo.add_argument("--events", type=int, help="synthetic events to generate")
    demo.add_argument("--workdir", default="runs/demo", help="where the demo writes its files")
    demo.set_defaults(run=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except _USER_ERRORS as exc:
        print(f"inttower: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("inttower: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
