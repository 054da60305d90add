"""`mmft archs` and `mmft make-tiny`: the tiny-VLM zoo from the command line."""

from __future__ import annotations

import argparse


def _archs(args: argparse.Namespace) -> int:
    from mmft.testing.zoo import ARCHS

    width = max(len(name) for name in ARCHS)
    for name, spec in ARCHS.items():
        print(f"{name:<{width}}  {spec.notes}")
    return 0


def _make_tiny(args: argparse.Namespace) -> int:
    from mmft.testing.zoo import make_tiny_vlm

    model, _ = make_tiny_vlm(args.arch, args.output, image_size=args.image_size, seed=args.seed,
                             pad_equals_eos=args.pad_equals_eos)
    n = sum(p.numel() for p in model.parameters())
    print(f"Wrote a tiny {args.arch} ({n / 1e6:.2f}M parameters) and its processor to {args.output}")
    return 0


def add_parser(subparsers) -> None:
    from mmft.testing.zoo import ARCHS

    p = subparsers.add_parser("archs", help="List the supported VLM architectures.")
    p.set_defaults(func=_archs)
    p = subparsers.add_parser("make-tiny", help="Build a tiny random VLM of a real architecture, offline.")
    p.add_argument("--arch", required=True, choices=list(ARCHS))
    p.add_argument("--output", required=True, help="Folder to write the model and processor to.")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pad-equals-eos", action="store_true", help="Make pad and EOS the same token (test case).")
    p.set_defaults(func=_make_tiny)
