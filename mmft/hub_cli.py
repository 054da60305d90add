"""`mmft push`: publish an adapter folder to the Hugging Face Hub with a model card.

    mmft push runs/ppo/adapter --repo-id me/llava-ppo-coco [--private] [--run-dir runs/ppo]
              [--include-critic] [--dry-run --output DIR] [--commit-message MSG]

The token comes from HF_TOKEN or the saved login (`hf auth login`); it is never printed.
"""

from __future__ import annotations

import argparse
import sys


def _push(args: argparse.Namespace) -> int:
    from mmft.hub import PushError, push_adapter

    if args.dry_run and not args.output:
        print("error: --dry-run needs --output DIR (the folder to write instead of uploading).", file=sys.stderr)
        return 2
    if args.output and not args.dry_run:
        print("error: --output is only used with --dry-run.", file=sys.stderr)
        return 2
    try:
        result = push_adapter(args.adapter_dir, args.repo_id, private=args.private, run_dir=args.run_dir,
                              include_critic=args.include_critic, dry_run_output=args.output,
                              commit_message=args.commit_message)
    except PushError as err:
        # The message says what to fix; a traceback from inside the hub client would not.
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.dry_run:
        print(f"Dry run: wrote the {len(result.files)} files that would be uploaded to {args.repo_id} "
              f"into {result.folder}:")
    else:
        print(f"Pushed {len(result.files)} files to {args.repo_id}: {result.url}")
    for name in result.files:
        print(f"  {name}")
    return 0


def add_parser(subparsers) -> None:
    """Register `push` on the `mmft` console script."""
    p = subparsers.add_parser("push", help="Publish an adapter to the Hugging Face Hub with a model card.",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("adapter_dir", help="Folder holding adapter_model.safetensors and adapter_config.json.")
    p.add_argument("--repo-id", required=True, help="Hub repository, USER/NAME or ORG/NAME (created if needed).")
    p.add_argument("--private", action="store_true", help="Create the repository as private (new repos only).")
    p.add_argument("--run-dir", default=None,
                   help="Run folder with resolved_config.yaml (or config.yaml / mmft_config.json), "
                        "eval_results.json and curves.png. Default: the adapter folder or its parent, "
                        "whichever holds a config.")
    p.add_argument("--include-critic", action="store_true", help="Also upload the critic/ folder (PPO value model).")
    p.add_argument("--dry-run", action="store_true", help="Write the folder that would be uploaded; send nothing.")
    p.add_argument("--output", default=None, help="With --dry-run: the (new or empty) folder to write.")
    p.add_argument("--commit-message", default=None, help="Commit message (default names the algorithm).")
    p.set_defaults(func=_push)
