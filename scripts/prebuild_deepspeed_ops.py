"""Build DeepSpeed's CPU ops once, before any multi-process run.

The first `accelerate launch` with DeepSpeed JIT-compiles its shared-memory comm op;
two ranks compiling it at the same time crashed a run on this kind of machine, so
`make install` builds it here, in one process, and the ranks then load the cached build.
Does nothing (and says so) when DeepSpeed is not installed.
"""

import sys


def main() -> int:
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        print("DeepSpeed not installed; skipping its op prebuild.")
        return 0
    from deepspeed.ops.op_builder import ShareMemCommBuilder

    builder = ShareMemCommBuilder()
    if not builder.is_compatible(verbose=False):
        print("DeepSpeed's shared-memory comm op is not compatible with this machine; ranks will use gloo.")
        return 0
    builder.load(verbose=False)
    print("DeepSpeed shared-memory comm op built and cached.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
