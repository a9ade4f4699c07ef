"""Libraries of ``align export`` (``align.stages.export``): merged safetensors, GGUF (f16, q8_0), Ollama.

    align export recipes/export.yaml model.name_or_path=runs/dpo

- ``gguf``: the Llama GGUF writer (tensor names, rope permutation, hyperparameters, tokenizer);
- ``ollama``: the Modelfile, with the chat template translated when it is ChatML;
- ``card``: the model card, from the source run's recipe.yaml and stage_result.json.

Importing this package imports nothing heavy.
"""

from align.recipe import RecipeError


class ExportError(RecipeError):
    """An export the recipe asks for cannot be done; the message says what was written anyway."""


__all__ = ["ExportError"]
