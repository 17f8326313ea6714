"""A tiny decoder trained here with a byte-level BPE chat tokenizer (the hf_llama fixture's), and a helper
that runs `python -m lmjax.main --config.mode=serve` on a free 127.0.0.1 port."""

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from experiments.configs import shakespeare_char

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def chat_config(corpus_file, cache_dir, hf_llama):
    """The tiny config with a context of 64 and the hf_llama fixture's tokenizer."""
    c = shakespeare_char.get_config("tiny")
    c.data.update(text_files=str(corpus_file), cache_dir=str(cache_dir), tokenizer_path=str(hf_llama[0]))
    c.model.max_len = 64
    c.train.update(num_steps=30, sample_tokens=0)
    return c


@pytest.fixture(scope="session")
def chat_workdir(tmp_path_factory, corpus_file, cache_dir, hf_llama):
    """A workdir holding a tiny GPT trained 30 steps; its tokenizer has a chat template and an EOS token."""
    from lmjax.modes import train as train_mode

    c = shakespeare_char.get_config("tiny")
    c.data.update(text_files=str(corpus_file), cache_dir=str(cache_dir), tokenizer_path=str(hf_llama[0]))
    c.model.max_len = 64
    c.train.update(num_steps=30, sample_tokens=0)
    workdir = tmp_path_factory.mktemp("chat_lm") / "tiny-chat"
    train_mode.run(c, workdir)
    return workdir


@pytest.fixture(scope="session")
def repo():
    return REPO


@pytest.fixture(scope="session")
def server():
    """running_server, for the tests."""
    return running_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(workdir, *overrides: str, env: dict | None = None, log_path=None):
    """Yields (base URL, process) of a server on the workdir; stops it (SIGTERM) afterwards."""
    port = free_port()
    log = open(log_path or Path(workdir).parent / f"server-{port}.log", "w")
    cmd = [sys.executable, "-m", "lmjax.main", "--config=experiments/configs/shakespeare_char.py:tiny"]
    cmd += [f"--workdir={workdir}", "--config.mode=serve", f"--config.serve.port={port}", *overrides]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=os.environ | (env or {}))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    raise RuntimeError(f"no server: {Path(log.name).read_text()[-3000:]}") from None
                time.sleep(0.2)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
        log.close()
