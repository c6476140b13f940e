"""`tiny-phi-3`: a Phi-3-architecture model small enough for one CPU.

This is a *test and demo model, not a real one*: random weights from a fixed seed and a byte-level
BPE tokenizer trained on the spot on a small built-in corpus. Nothing is downloaded (no hub is
reachable on the machines kaiflow's tests run on). It has Phi-3's chat template and its `<|end|>`
end-of-turn token, so the tuning and serving code paths are the same as for the real presets.

Sizes follow what vLLM's CPU backend accepts: head_dim 32 (it rejects 16 at the first request).
The build takes well under a second and is cached under ``$KAIFLOW_HOME/models/tiny-phi-3``;
``BUILD_VERSION`` is part of the cache so a change here rebuilds it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from presets import home as home_setting

NAME = "tiny-phi-3"
BUILD_VERSION = "2"
SEED = 0
LM_HEAD_STD = 0.2

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>", "<|pad|>"]

CONFIG = {
    "vocab_size": 1024,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 1024,
    "original_max_position_embeddings": 1024,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}

_CORPUS = """\
The quick brown fox jumps over the lazy dog. What is the capital of France? The capital of France is Paris.
Question: how many legs does a spider have? Answer: eight. A kilometre is one thousand metres.
Kaiflow fine-tunes and serves open language models on GPU clusters with Prefect workflows.
Hello, how are you today? I am fine, thank you. Please summarise the following paragraph.
Numbers 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000. Colours: red green blue yellow purple orange.
def main(): return 42  # code, JSON {"key": "value"}, lists [1, 2, 3] and punctuation ?!.,;:
Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May June
The model answers questions, writes poems, explains science and translates between languages.
"""


def default_path(home: Path | None = None) -> Path:
    """Where the build is cached: ``HOME/models/tiny-phi-3-vN``; ``home`` defaults to ``KAIFLOW_HOME``."""
    if home is None:
        home = home_setting.home_dir()
    return Path(home) / "models" / f"{NAME}-v{BUILD_VERSION}"


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=CONFIG["vocab_size"],
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines() * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|end|>",
        unk_token="<|endoftext|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = CONFIG["max_position_embeddings"]
    return fast


def build(dest: Path) -> Path:
    """Build the tiny model into ``dest`` (a new directory) and return it."""
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    tokenizer = _train_tokenizer()
    config = Phi3Config(
        **CONFIG,  # type: ignore[arg-type]
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(SEED)
    model = Phi3ForCausalLM(config)
    # With the default init (std 0.02) the logits of a random model can never exceed ~2.5, so a
    # LoRA on the decoder layers cannot make any answer confident (loss floor ~4.4 over 1024
    # tokens). A larger output projection lets tuning reach near-zero loss on a few pairs.
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, LM_HEAD_STD)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    (dest / "kaiflow-tiny.json").write_text(json.dumps({"name": NAME, "build": BUILD_VERSION, "seed": SEED}))
    return dest


def ensure(path: Path | None = None, *, home: Path | None = None) -> Path:
    """Return the cached tiny model directory (``path``, else under ``home``, else under
    ``KAIFLOW_HOME``), building it (atomically) if it is missing."""
    path = Path(path) if path else default_path(home)
    if (path / "kaiflow-tiny.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        build(tmp)
        try:
            tmp.rename(path)
        except OSError:  # another process won the race; its copy is identical
            if not (path / "kaiflow-tiny.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
