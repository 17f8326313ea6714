"""One module per --config.mode, each with `run(config, workdir, ...)`: the leaves that main.py dispatches to;
no other lmjax module imports them."""
