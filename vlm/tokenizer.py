"""Text tokenisation. Each model names its tokenizer in its config: open_clip's BPE (its vocabulary ships
in the package) or BERT's WordPiece (ViLT; the vocabulary is stored in the model's config)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PAD_ID = 0  # open_clip pads with 0 after the end-of-text token
VOCAB_SIZE = 49408  # BPE merges + bytes + <start_of_text> + <end_of_text>
SOT_ID = 49406
EOT_ID = 49407


class Tokenizer:
    """Callable `texts -> LongTensor (N, context_length)`, `<start_of_text> ... <end_of_text> 0 0 ...`.

    Captions longer than the context are cut and keep their end-of-text token, as in open_clip.
    """

    pad_id = PAD_ID
    mask_id = VOCAB_SIZE  # early fusion adds one [MASK] row after the BPE vocabulary
    special_ids = (SOT_ID, EOT_ID)
    vocab_size = VOCAB_SIZE  # real tokens, the candidates for MLM's random replacement

    def __init__(self, context_length: int = 77):
        from open_clip.tokenizer import SimpleTokenizer  # open_clip imports torchvision: seconds, so only here

        self.context_length = context_length
        self._bpe = SimpleTokenizer(context_length=context_length)

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        return self._bpe(list(texts), context_length=self.context_length)

    def too_long(self, texts: list[str]) -> list[bool]:
        """Which texts `__call__` cuts: more tokens, with start and end of text, than the context holds."""
        return [len(self._bpe.encode(text)) + 2 > self.context_length for text in texts]

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        ids = [int(i) for i in ids if int(i) not in (PAD_ID, SOT_ID, EOT_ID)]
        return self._bpe.decode(ids).strip()


class WordPieceTokenizer:
    """BERT's tokenizer (`[CLS] ... [SEP] [PAD] ...`) over a given vocabulary, via Hugging Face `tokenizers`:
    the same normalisation, pre-tokenisation and WordPiece as transformers' BertTokenizer."""

    def __init__(self, vocab: tuple[str, ...], context_length: int = 40, lowercase: bool = True):
        from tokenizers.implementations import BertWordPieceTokenizer

        self.context_length = context_length
        self.vocab = vocab
        index = {token: i for i, token in enumerate(vocab)}
        self.pad_id, self.mask_id = index["[PAD]"], index["[MASK]"]
        self.special_ids = (index["[CLS]"], index["[SEP]"])
        self.vocab_size = len(vocab)
        self._wp = BertWordPieceTokenizer(index, lowercase=lowercase)
        self._wp.enable_truncation(context_length)
        self._wp.enable_padding(pad_id=self.pad_id, pad_token="[PAD]", length=context_length)

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        import torch  # imported where used: `vlm --help` loads this module without torch

        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            return torch.zeros(0, self.context_length, dtype=torch.long)
        return torch.tensor([e.ids for e in self._wp.encode_batch(list(texts))], dtype=torch.long)

    def too_long(self, texts: list[str]) -> list[bool]:
        """Which texts `__call__` cuts (truncation leaves the rest in `overflowing`)."""
        return [bool(e.overflowing) for e in self._wp.encode_batch(list(texts))] if texts else []

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        return self._wp.decode([int(i) for i in ids], skip_special_tokens=True)


def padding_mask(ids: torch.Tensor, pad_id: int = PAD_ID) -> torch.Tensor:
    """True where a token is real (not padding). Both tokenizers pad with id 0 ([PAD] is 0 in BERT's vocabulary)."""
    return ids != pad_id


def cut_padding(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`ids` and `mask` without the columns after the longest text's last real token (at least one column, so an
    empty batch keeps its shape): padding is hidden from attention, so every model gives the same outputs on less
    work."""
    longest = max(1, int(mask.sum(1).max())) if len(ids) else 1
    return ids[:, :longest], mask[:, :longest]


def get_tokenizer(model) -> Tokenizer | WordPieceTokenizer:
    """The tokenizer a model expects (named by its config, at its context length), built once: loading a
    vocabulary takes ~0.1 s, too much to repeat for every evaluation."""
    config = model.config if hasattr(model, "config") else model
    if getattr(config, "tokenizer", "openclip") == "wordpiece":
        return _wordpiece(config.vocab, config.context_length, config.lowercase)
    return _tokenizer(config.context_length)


@functools.cache
def _tokenizer(context_length: int) -> Tokenizer:
    return Tokenizer(context_length)


@functools.lru_cache(maxsize=4)
def _wordpiece(vocab: tuple[str, ...], context_length: int, lowercase: bool) -> WordPieceTokenizer:
    return WordPieceTokenizer(vocab, context_length, lowercase)
