"""Text tokenisation shared by both model families: open_clip's BPE (its vocabulary ships in the package)."""

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

    def __init__(self, context_length: int = 77):
        from open_clip.tokenizer import SimpleTokenizer  # open_clip imports torchvision: seconds, so only here

        self.context_length = context_length
        self._bpe = SimpleTokenizer(context_length=context_length)

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        return self._bpe(list(texts), context_length=self.context_length)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        ids = [int(i) for i in ids if int(i) not in (PAD_ID, SOT_ID, EOT_ID)]
        return self._bpe.decode(ids).strip()


def padding_mask(ids: torch.Tensor) -> torch.Tensor:
    """True where a token is real (not padding)."""
    return ids != PAD_ID


def get_tokenizer(model) -> Tokenizer:
    """The tokenizer a model expects (its context length), built once per context length: loading the BPE
    vocabulary takes ~0.1 s, too much to repeat for every evaluation."""
    return _tokenizer(model.config.context_length)


@functools.cache
def _tokenizer(context_length: int) -> Tokenizer:
    return Tokenizer(context_length)
