"""Small CLIP-format tokenizers, for nano SDXL and the toy SDXL of the tests.

SDXL's tokenizers have a vocabulary of 49,408 byte-level BPE tokens learnt on web text. A
model that only ever reads a few dozen words needs a vocabulary of just those words, in
the same format, so that the same `CLIPTokenizer`, the same `tokenize` and the same text
encoders read it: byte symbols first (so `!`, bigG's pad token, keeps id 0), merges until
each word is one token, `<|startoftext|>` and `<|endoftext|>` last.
"""

from transformers import CLIPTokenizer

from ..model.text import BOS, EOS, MAX_LENGTH


def build_clip_tokenizer(words: list[str], pad_token: str = EOS) -> CLIPTokenizer:
    """A CLIP-format BPE tokenizer whose vocabulary is the 512 byte symbols plus `words`.

    Laid out as OpenAI's: ids 0-255 are the byte symbols (so `!` is 0, bigG's pad), then
    their end-of-word forms, then the merged tokens (`gr`, `gre`, ..., `green</w>`), then `<|startoftext|>` and
    `<|endoftext|>` last, so the end-of-text token has the largest id (transformers finds
    the pooled position with an argmax over ids, as the released config asks). Merges are
    added until every word is a single token. Used by the tests and by nano SDXL.

    >>> tok = build_clip_tokenizer(["red", "green"])
    >>> tok.convert_ids_to_tokens(tok("green red")["input_ids"])
    ['<|startoftext|>', 'green</w>', 'red</w>', '<|endoftext|>']
    >>> tok.convert_tokens_to_ids(["!", EOS]), len(tok)
    ([0, 519], 520)
    """
    symbols = byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    merges: list[tuple[str, str]] = []
    for _ in range(64):  # a handful of rounds reaches the fixed point for any word list
        tokenizer = _clip_tokenizer(vocab, merges, pad_token)
        split = [w for w in words if len(tokenizer.tokenize(w)) > 1]
        if not split:
            return tokenizer
        for word in split:
            a, b = tokenizer.tokenize(word)[:2]  # merge the first pair; the next round goes on
            if (a, b) not in merges:
                merges.append((a, b))
                vocab.setdefault(a + b, len(vocab))
    raise RuntimeError(f"could not make single tokens of {split}")


def byte_symbols() -> list[str]:
    """The 256 symbols byte-level BPE uses for the bytes 0-255, in CLIP's vocabulary order:
    printable bytes stand for themselves (`!` first), the others are shifted to U+0100 on.

    >>> symbols = byte_symbols()
    >>> len(symbols), symbols[0], symbols[-1]
    (256, '!', 'Ń')
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(shifted))]


def _clip_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]], pad_token: str) -> CLIPTokenizer:
    vocab = {**vocab, BOS: len(vocab), EOS: len(vocab) + 1}
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=MAX_LENGTH)
