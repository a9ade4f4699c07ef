"""Paraphrase and back-translation: rewrites sampled from a causal LM through ``align.sampling.sample``.

Each text is sent as one user prompt (rendered with the model's chat template, as every stage
renders prompts), e.g. "Paraphrase the following text. Reply with the paraphrase only.\\n\\n<text>";
back-translation asks for the pivot language, then for the data's language again. A rewrite is
the sampled answer, stripped; an empty one counts as failed.
"""

from __future__ import annotations

from typing import Any

from align.config import AugmentMethod
from align.sampling import sample

INSTRUCTIONS = {
    "paraphrase": "Paraphrase the following text. Reply with the paraphrase only.\n\n{text}",
    "back_translation": "Translate the following text into {language}. Reply with the translation only.\n\n{text}",
}


class ModelRewriter:
    """``rewriter(texts, copy) -> rewrites``, one per text, for a paraphrase or back_translation method.

    Copy ``c`` samples with seed ``seed + c x len(texts)`` (``sample`` seeds batch ``start`` with
    ``seed + start``), so copies differ and the same recipe gives the same rows.
    """

    def __init__(self, model: Any, tokenizer: Any, method: AugmentMethod, seed: int) -> None:
        self.model, self.tokenizer, self.method, self.seed = model, tokenizer, method, seed
        self.instruction = method.instruction or INSTRUCTIONS[method.kind]

    def __call__(self, texts: list[str], copy: int) -> list[str]:
        seed = self.seed + copy * len(texts)
        if self.method.kind == "paraphrase":
            return self._ask(texts, "", seed)
        pivot = self._ask(texts, self.method.pivot_language, seed)
        return self._ask(pivot, self.method.language, seed)

    def _ask(self, texts: list[str], language: str, seed: int) -> list[str]:
        settings = self.method.generation
        prompts = [self.instruction.replace("{language}", language).replace("{text}", text) for text in texts]
        samples = sample(self.model, self.tokenizer, prompts, **settings.sample_kwargs(), seed=seed)
        return [text.strip() for text in samples.texts]
