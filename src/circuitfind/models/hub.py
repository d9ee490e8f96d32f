"""The Hugging Face hub and its local cache: where a model's files are, whether the hub answers,
GPT-2's tokenizer (every language task reads it), and the one line a run without its files stops with."""

from __future__ import annotations

import os
import pathlib
import socket
import threading
from urllib.parse import urlparse

HUB_PROBE_TIMEOUT_S = 3.0
# Where GPT-2's tokenizer files (vocab.json, merges.txt) live when the cache does not hold them.
GPT2_TOKENIZER_ENV = "CIRCUITFIND_GPT2_TOKENIZER"
_GPT2_TOKENIZERS: dict[tuple, object] = {}  # (folder, cache) -> GPT-2's tokenizer


class ModelUnavailableError(RuntimeError):
    """The weights or tokenizer a run needs are neither cached nor downloadable."""


def hub_cache_dir() -> str:
    """The Hugging Face hub cache, read at call time (HF_HUB_CACHE / HF_HOME / the default)."""
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as set now; huggingface_hub reads it only once, at import."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return value in {"1", "ON", "YES", "TRUE"} or constants.HF_HUB_OFFLINE


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub opens within ``timeout`` seconds.

    Without network every Hugging Face call retries for tens of seconds before failing; one bounded
    probe lets a run that needs the hub stop at once instead.  The probe runs in a daemon thread
    because name resolution itself has no timeout."""
    if hub_offline():
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    address = (url.hostname, url.port or (443 if url.scheme == "https" else 80))
    opened = threading.Event()

    def probe():
        try:
            socket.create_connection(address, timeout=timeout).close()
            opened.set()
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)  # a refused connection ends the probe at once; a silent network, the timeout
    return opened.is_set()


def cached_file(repo: str, filename: str) -> pathlib.Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=hub_cache_dir())
    return pathlib.Path(found) if isinstance(found, str) else None


def unavailable_error(model: str, what: str, plural: bool) -> ModelUnavailableError:
    """The one line a run without the files it needs stops with."""
    are, them = ("are", "them") if plural else ("is", "it")
    return ModelUnavailableError(
        f"{model}: {what} {are} not in the Hugging Face cache ({hub_cache_dir()}) and the hub cannot be "
        f"reached; run once online to download {them} (or set HF_HOME to a cache that holds {them}), "
        "or use model.pretrained=false for random weights"
    )


def cached_weights_any(repo: str) -> pathlib.Path | None:
    """A weights file of a transformers-format ``repo`` in the cache, or None."""
    return cached_file(repo, "model.safetensors") or cached_file(repo, "pytorch_model.bin")


def gpt2_tokenizer():
    """GPT-2's BPE tokenizer: from the folder named by $CIRCUITFIND_GPT2_TOKENIZER (vocab.json and
    merges.txt), else the Hugging Face cache, else the hub."""
    from transformers import GPT2TokenizerFast

    folder = os.environ.get(GPT2_TOKENIZER_ENV)
    key = ("gpt2", folder, hub_cache_dir())
    if key in _GPT2_TOKENIZERS:
        return _GPT2_TOKENIZERS[key]
    if folder:
        missing = [f for f in ("vocab.json", "merges.txt") if not (pathlib.Path(folder) / f).is_file()]
        if missing:
            raise ModelUnavailableError(f"${GPT2_TOKENIZER_ENV}={folder} lacks {' and '.join(missing)}")
        # from_pretrained(folder): transformers 5 ignores vocab_file=/merges_file= keyword arguments.
        tokenizer = GPT2TokenizerFast.from_pretrained(folder)
    elif cached_file("gpt2", "vocab.json") and cached_file("gpt2", "merges.txt"):
        tokenizer = GPT2TokenizerFast.from_pretrained("gpt2", cache_dir=hub_cache_dir(), local_files_only=True)
    elif hub_reachable():
        tokenizer = GPT2TokenizerFast.from_pretrained("gpt2", cache_dir=hub_cache_dir())
    else:
        raise ModelUnavailableError(
            f"GPT-2's tokenizer was not found: set {GPT2_TOKENIZER_ENV} to a folder holding its vocab.json "
            "and merges.txt, or run once online to cache it"
        )
    _GPT2_TOKENIZERS[key] = tokenizer
    return tokenizer
