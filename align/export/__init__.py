"""``align export``: a trained policy as merged safetensors, GGUF (f16, q8_0) and an Ollama Modelfile.

    align export recipes/export.yaml model.name_or_path=runs/dpo

- ``stage``: ``run(ExportRecipe)``: merge a LoRA adapter, save the model, tokenizer and chat
  template, write the model card, the GGUF files (checked by loading them back) and the Modelfile;
- ``gguf``: the Llama GGUF writer (tensor names, rope permutation, hyperparameters, tokenizer);
- ``ollama``: the Modelfile, with the chat template translated when it is ChatML;
- ``card``: the model card, from the source run's recipe.yaml and stage_result.json.

Importing this package imports nothing heavy.
"""

from align.recipe import RecipeError


class ExportError(RecipeError):
    """An export the recipe asks for cannot be done; the message says what was written anyway."""


__all__ = ["ExportError"]
