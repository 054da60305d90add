"""Preference labelling: people compare two captions of one image in a browser.

The pieces, each usable from Python and from `mmft label ...`:

- `pairs.load_pairs(path)`: read and validate a PAIRS.jsonl file.
- `storage`: the SQLite database of labelers, pairs and labels (`add_labeler`, ...).
- `server.serve(pairs_path, db_path)`: the FastAPI app and its page.
- `export.export_preferences(db_path, output_dir)`: a `datasets` preference dataset
  in the conversational vision format TRL's `DPOTrainer` takes directly.

Importing this package is cheap: fastapi, uvicorn and datasets load only in the
modules that need them.
"""
