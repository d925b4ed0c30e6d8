"""The ``sensorlstm`` command line: generate, ingest, pretrain, retrain, score.

Every subcommand accepts ``--config FILE`` (repeatable, merged in order), ``--set key=value``
(repeatable, e.g. ``--set train.epochs=3``) and ``--json``, which prints the command's summary
as one JSON object on the last line of standard output for scripts. Logs go to standard error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Quiet, offline-friendly defaults for the embedded Prefect API; users' own settings win.
for _key, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}.items():
    os.environ.setdefault(_key, _value)

from sensorlstm.config import Config, load_config  # noqa: E402

logger = logging.getLogger("sensorlstm")


def _config(args: argparse.Namespace, **updates: str | None) -> Config:
    overrides = list(args.set or [])
    overrides += [f"{key}={json.dumps(value)}" for key, value in updates.items() if value]
    return load_config(args.config or None, overrides)


def cmd_generate(args: argparse.Namespace) -> dict[str, Any]:
    """Write the synthetic sample fleet as long-format Parquet."""
    from sensorlstm.synthetic import generate_fleet, write_fleet

    config = _config(args)
    frame = generate_fleet(config.generate)
    files = write_fleet(frame, args.out)
    labels = frame["label"] if "label" in frame.columns else None
    summary = {
        "out": str(Path(args.out).resolve()),
        "files": [str(f) for f in files],
        "recordings": int(frame["recording_id"].nunique()),
        "rows": len(frame),
        "anomalous_rows": int(labels.sum()) if labels is not None else 0,
    }
    logger.info("Wrote %d recordings (%d rows) to %s", summary["recordings"], len(frame), args.out)
    return summary


def cmd_ingest(args: argparse.Namespace) -> dict[str, Any]:
    """Validate recordings, quarantine bad ones, write the data set and report; log to MLflow."""
    from flows.ingest import ingest_flow
    from sensorlstm.ingest import dataset_sources

    config = _config(args, **{"data.path": args.data})
    dataset_sources(config.data)  # no --data and no source in the config: fail before Prefect
    return ingest_flow(config, out_dir=args.out, track=True)


def cmd_pretrain(args: argparse.Namespace) -> dict[str, Any]:
    """Pre-train the base model and register it with alias ``pretrained``."""
    from flows.pretrain import pretrain_flow

    return pretrain_flow(_config(args))


def cmd_retrain(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune on the fleet's recordings, evaluate, register, promote if better."""
    from flows.retrain import retrain_flow

    return retrain_flow(_config(args, **{"data.path": args.data, "train.device": args.device}))


def cmd_score(args: argparse.Namespace) -> dict[str, Any]:
    """Score recordings with a registered model (default: the champion)."""
    from flows.score import score_flow

    config = _config(args, **{"data.path": args.data})
    return score_flow(config, model_uri=args.model, out=args.out)


def _print_human(summary: dict[str, Any]) -> None:
    for key, value in summary.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for sub_key, sub_value in value.items():
                print(f"  {sub_key}: {_fmt(sub_value)}")
        else:
            print(f"{key}: {_fmt(value)}")


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; each subcommand's help is its function's docstring."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", action="append", metavar="FILE", help="YAML config (repeatable, merged)"
    )
    common.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override, e.g. train.epochs=3"
    )
    common.add_argument("--json", action="store_true", help="summary as JSON on the last line")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    parser = argparse.ArgumentParser(prog="sensorlstm", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler: Callable[[argparse.Namespace], dict[str, Any]]):
        sub = commands.add_parser(name, parents=[common], help=handler.__doc__)
        sub.set_defaults(handler=handler)
        return sub

    add("generate", cmd_generate).add_argument(
        "--out", required=True, help="folder for the Parquet files"
    )
    ingest = add("ingest", cmd_ingest)
    ingest.add_argument(
        "--data",
        help="file, folder, glob or fsspec URL (default: the config's data.path, or its "
        "data.train_path/val_path/test_path)",
    )
    ingest.add_argument("--out", required=True, help="folder for data set, quarantine, report")
    add("pretrain", cmd_pretrain)
    retrain = add("retrain", cmd_retrain)
    retrain.add_argument("--data", help="recordings to fine-tune on (default: data.path)")
    retrain.add_argument("--device", help="auto, cpu, cuda, cuda:1, mps (default: train.device)")
    score = add("score", cmd_score)
    score.add_argument("--data", required=True, help="recordings to score")
    score.add_argument(
        "--model", default=None, help="model URI (default: models:/<model_name>@champion)"
    )
    score.add_argument("--out", required=True, help="Parquet file for per-timestep scores")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sensorlstm`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Prefect's client logs every HTTP request at INFO; keep them for --verbose.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        summary = args.handler(args)
    except (FileNotFoundError, ValueError, KeyError, LookupError) as error:
        logger.error("%s", error)
        if args.json:
            print(json.dumps({"error": str(error), "type": type(error).__name__}))
        return 2
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        _print_human(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
