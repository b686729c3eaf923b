"""Byte-level BPE tokenizer (vocabulary 4096) for the bundled tiny MTP model.

Trained with the `tokenizers` library on a fixed, deterministic sample of the TRAIN side of the mix
(see tinymtp_data.py). `<|endoftext|>` is the only special token (id 0); it is the model's bos and eos.
"""

from __future__ import annotations

from pathlib import Path

from tinymtp_data import EOT

VOCAB_SIZE = 4096

# characters taken from each training document for the tokenizer sample
SAMPLE_CHARS = {"gutenberg": 30_000, "python": 6_000, "tinystories_cased": 10**9, "tinystories_lower": 10**9}


def tokenizer_sample(split: dict) -> list[str]:
    texts = []
    for name, cap in SAMPLE_CHARS.items():
        for d in split[name]["train"]:
            texts.append(d[:cap])
    return texts


def train_tokenizer(split: dict, out_path: str | Path, vocab_size: int = VOCAB_SIZE):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = tokenizer_sample(split)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    assert tok.token_to_id(EOT) == 0
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_path))
    return tok
