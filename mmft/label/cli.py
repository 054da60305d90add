"""`mmft label serve | add-labeler | export`.

    mmft label add-labeler alice --db labels.sqlite          # prints alice's token
    mmft label serve --pairs pairs.jsonl --db labels.sqlite   # http://127.0.0.1:8000/
    mmft label export --db labels.sqlite --output prefs/      # datasets.load_from_disk("prefs")

`python -m mmft.label ...` runs the same commands without the other `mmft` subcommands.
Heavy imports (fastapi, uvicorn, datasets) happen inside the command that needs them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _serve(args: argparse.Namespace) -> int:
    from mmft.label.server import serve

    serve(args.pairs, args.db, host=args.host, port=args.port)
    return 0


def _add_labeler(args: argparse.Namespace) -> int:
    from mmft.label.storage import add_labeler

    token = add_labeler(args.db, args.name)
    print(token)
    # The token alone on stdout, so `TOKEN=$(mmft label add-labeler ...)` works.
    print(f"labeler {args.name!r} added to {args.db}; the token above is shown only once", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    from mmft.label.export import export_preferences

    summary = export_preferences(args.db, args.output, pairs_path=args.pairs)
    print(summary.format())
    return 0


def _run_reporting_errors(func):
    """Wrap a command so that a user error prints `error: ...` and returns 1, no traceback."""

    def run(args: argparse.Namespace) -> int:
        from mmft.label.export import ExportError
        from mmft.label.pairs import PairsFileError
        from mmft.label.storage import LabelStoreError

        try:
            return func(args)
        except (PairsFileError, LabelStoreError, ExportError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1

    return run


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `label` and its subcommands on `subparsers`; each sets `func(args) -> int`."""
    parser = subparsers.add_parser(
        "label",
        help="preference labelling web app: serve pairs, add labelers, export a DPO dataset",
        description="Humans compare two captions of an image in the browser; export the choices for DPO.",
    )
    commands = parser.add_subparsers(dest="label_command", required=True)

    serve = commands.add_parser("serve", help="run the labelling web app")
    serve.add_argument(
        "--pairs",
        type=Path,
        required=True,
        help="PAIRS.jsonl with pair_id, image, prompt, caption_a, caption_b",
    )
    serve.add_argument(
        "--db", type=Path, required=True, help="SQLite database of labelers and labels (created if missing)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.set_defaults(func=_run_reporting_errors(_serve))

    add = commands.add_parser("add-labeler", help="register a labeler and print their access token")
    add.add_argument("name", help="labeler name, unique in the database")
    add.add_argument("--db", type=Path, required=True, help="SQLite database (created if missing)")
    add.set_defaults(func=_run_reporting_errors(_add_labeler))

    export = commands.add_parser("export", help="write the A/B labels as a datasets preference dataset")
    export.add_argument("--db", type=Path, required=True, help="SQLite database to read")
    export.add_argument("--output", type=Path, required=True, help="new or empty folder for save_to_disk")
    export.add_argument(
        "--pairs",
        type=Path,
        default=None,
        help="export only this file's pairs, reading images from its paths",
    )
    export.set_defaults(func=_run_reporting_errors(_export))
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m mmft.label ARGS` is `mmft label ARGS`."""
    parser = argparse.ArgumentParser(prog="python -m mmft.label")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["label", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))
