raise ImportError(
    "recipes/ holds runnable training scripts, not a package: run them with "
    "`accelerate launch recipes/<name>.py` instead of importing them."
)
