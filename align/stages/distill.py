"""Knowledge distillation: a student learns from a teacher that shares its tokenizer.

    align distill recipes/distill.yaml training.max_steps=20

``distill.mode``:

- ``token``: the divergence (``distill.beta``; default 0, forward KL(teacher || student)) between
  the teacher's and the student's next-token distributions on every completion token of the data;
- ``on_policy``: the same on the student's own samples, drawn each step for the batch's prompts
  (GKD, https://arxiv.org/abs/2306.13649; default beta 1, reverse KL(student || teacher));
- ``sequence``: the teacher answers every prompt once before training (``teacher_samples.jsonl``)
  and the student is trained on those answers by NLL (sequence-level KD, https://arxiv.org/abs/1606.07947).

Teacher and student may differ in size. Logit modes compare distributions token by token, so the
two tokenizers must be the same (checked: ``check_same_tokenizer``). Rows are laid out as the
sampler lays them out: ``prompt_ids`` then the completion's tokens and EOS (``align.sampling``).
``eval/kl_teacher_student_{before,after}``: forward KL per token on the held-out rows' completions,
or on the teacher's answers to the held-out prompts (prompt-only data, and ``sequence`` mode, whose
student learns the teacher's answers, not the data's). TRL's ``DistillationTrainer`` (on-policy
only) and experimental ``GKDTrainer`` render and sample prompts themselves, hence this small
``Trainer`` subclass.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from align.config import DistillRecipe
from align.data import DataError, chat_to_prompt_completion, load_records, response_text
from align.models import load_policy, partial_callbacks
from align.ops.distill import generalized_jsd
from align.ops.logprobs import token_logprobs
from align.ops.stats import masked_mean
from align.run import StageResult, append_metrics, finish_stage, prepare_run_dir
from align.sampling import eos_token_ids, prompt_ids, sample
from align.training import hf_training_kwargs, save_final_model, train_with_resume, trainer_callbacks

logger = logging.getLogger("align.distill")


def run(recipe: DistillRecipe) -> StageResult:
    out = prepare_run_dir(recipe, recipe.training.output_dir)
    options = recipe.distill
    data = load_records(recipe.data, default_kind="sft", want="prompt" if options.mode != "token" else "sft")
    student, tokenizer = load_policy(recipe.model)
    teacher, teacher_tokenizer = load_policy(options.teacher, trainable=False)
    check_same_tokenizer(tokenizer, teacher_tokenizer, recipe.model.name_or_path, options.teacher.name_or_path)
    teacher.to(next(student.parameters()).device)
    train, held_out = _rows(data.train), _rows(data.eval) if data.eval is not None else []
    if options.mode == "token" and "completion" not in train[0]:
        raise DataError(recipe.data.path, "distill.mode 'token' needs completions (prompt/completion or chat rows); "
                        "for prompts alone use mode on_policy or sequence", "completion")
    if options.mode == "sequence":
        train = teacher_answers(teacher, tokenizer, train, recipe, out / "teacher_samples.jsonl")
    if held_out and (options.mode == "sequence" or "completion" not in held_out[0]):
        held_out = teacher_answers(teacher, tokenizer, held_out, recipe, out / "eval_teacher_samples.jsonl")
    collate = PromptCompletionCollator(tokenizer, eos_token_ids(student, tokenizer)[0], recipe.training.max_length)
    metrics: dict[str, Any] = {}
    if held_out:
        metrics["eval/kl_teacher_student_before"] = teacher_student_kl(student, teacher, collate(held_out))
    trainer = DistillTrainer(
        model=student,
        teacher=teacher,
        recipe=recipe,
        args=TrainingArguments(**hf_training_kwargs(recipe.training), remove_unused_columns=False),
        train_dataset=train,
        data_collator=collate,
        processing_class=tokenizer,
        callbacks=trainer_callbacks(recipe.training, out) + partial_callbacks(recipe.model),
    )
    metrics.update(train_with_resume(trainer, recipe.training, evaluate=False))
    if held_out:
        metrics["eval/kl_teacher_student_after"] = teacher_student_kl(student, teacher, collate(held_out))
        append_metrics(out, {"step": trainer.state.global_step, **{k: v for k, v in metrics.items() if "kl_" in k}})
        logger.info("KL(teacher || student) per token on held-out rows: %.4f -> %.4f",
                    metrics["eval/kl_teacher_student_before"], metrics["eval/kl_teacher_student_after"])
    save_final_model(trainer, recipe.model, out)
    return finish_stage(out, recipe, metrics, card_title=f"Distillation of {options.teacher.name_or_path} into "
                                                         f"{recipe.model.name_or_path}")


def check_same_tokenizer(student: Any, teacher: Any, student_name: str, teacher_name: str) -> None:
    """Logit distillation compares distributions over one vocabulary: the tokenizers must map text to the same ids."""
    if student.get_vocab() != teacher.get_vocab():
        only_student = len(set(student.get_vocab().items()) - set(teacher.get_vocab().items()))
        raise ValueError(
            f"distill: the student ({student_name}, {len(student)} tokens) and the teacher ({teacher_name}, "
            f"{len(teacher)} tokens) do not share a tokenizer ({only_student} student tokens differ); logit "
            "distillation needs one vocabulary. Pick a teacher from the student's family."
        )


class PromptCompletionCollator:
    """Rows ``{prompt, completion}`` -> right-padded ``input_ids``, ``attention_mask``, ``completion_mask`` ``(B, T)``.

    A row is ``prompt_ids(prompt) + tokens(completion) + [eos]``, cut to ``max_length``; ``prompts``
    passes the raw prompts on (on-policy sampling). Example, prompt ids [5, 6], completions "a" -> [7]
    and "bc" -> [8, 9], eos 2, pad 0::

        input_ids      [[5, 6, 7, 2, 0],    completion_mask [[0, 0, 1, 1, 0],
                        [5, 6, 8, 9, 2]]                     [0, 0, 1, 1, 1]]
    """

    def __init__(self, tokenizer: Any, eos_id: int, max_length: int) -> None:
        self.tokenizer, self.eos_id, self.max_length = tokenizer, eos_id, max_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        ids, scored = [], []
        for row in rows:
            prompt = prompt_ids(self.tokenizer, row["prompt"])
            completion = self.tokenizer(response_text(row.get("completion", "")), add_special_tokens=False)["input_ids"]
            completion = completion + [self.eos_id] if "completion" in row else []
            ids.append((prompt + completion)[: self.max_length])
            scored.append(([0] * len(prompt) + [1] * len(completion))[: self.max_length])
        width = max(map(len, ids))
        return {
            "input_ids": torch.tensor([x + [self.pad_id] * (width - len(x)) for x in ids]),
            "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids]),
            "completion_mask": torch.tensor([m + [0] * (width - len(m)) for m in scored]),
            "prompts": [row["prompt"] for row in rows],
        }


class DistillTrainer(Trainer):
    """``Trainer`` whose loss is the recipe's distillation loss; logs ``distill/kl`` (forward KL per token)."""

    def __init__(self, *args: Any, teacher: torch.nn.Module, recipe: DistillRecipe, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher
        self.options = recipe.distill
        self._sums: dict[str, float] = defaultdict(float)
        self._count = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001 - HF signature
        if self.options.mode == "on_policy":
            inputs = self._student_samples(model, inputs)
        ids, attention = inputs["input_ids"], inputs["attention_mask"]
        mask = inputs["completion_mask"][:, 1:]  # (B, T-1): position t predicts token t+1
        student_logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits[:, :-1]
        with torch.no_grad():
            teacher_logits = self.teacher(input_ids=ids, attention_mask=attention, use_cache=False).logits[:, :-1]
        vocab = min(student_logits.shape[-1], teacher_logits.shape[-1])  # padded embedding tables may differ
        student_logits, teacher_logits = student_logits[..., :vocab], teacher_logits[..., :vocab]
        if self.options.mode == "sequence":
            loss = -masked_mean(token_logprobs(student_logits, ids[:, 1:]), mask)
        else:
            divergence = generalized_jsd(student_logits, teacher_logits, self.options.divergence_beta,
                                         self.options.temperature)
            loss = masked_mean(divergence, mask)
        with torch.no_grad():
            kl = masked_mean(generalized_jsd(student_logits, teacher_logits, 0.0), mask)
        self._sums["distill/kl"] += float(kl)
        self._sums["distill/completion_tokens"] += float(mask.sum())
        self._count += 1
        return (loss, {"logits": student_logits}) if return_outputs else loss

    def _student_samples(self, model: torch.nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
        """The batch's prompts answered by the student now: (B, P + T) ids, masks from ``align.sampling``."""
        generation = self.options.generation
        student = self.accelerator.unwrap_model(model)
        samples = sample(student, self.processing_class, inputs["prompts"], **generation.sample_kwargs(),
                         seed=self.args.seed + 7919 * self.state.global_step)
        completion = torch.cat([torch.zeros_like(samples.query_mask), samples.response_mask.long()], dim=1)
        return {"input_ids": samples.sequences, "attention_mask": samples.attention_mask, "completion_mask": completion}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._count:
            logs.update({key: value / self._count for key, value in self._sums.items()})
            self._sums.clear()
            self._count = 0
        super().log(logs, start_time)


@torch.no_grad()
def teacher_student_kl(student: torch.nn.Module, teacher: torch.nn.Module, batch: dict[str, Any]) -> float:
    """Forward KL(teacher || student) per completion token of ``batch`` (from ``PromptCompletionCollator``)."""
    device = next(student.parameters()).device
    was_training = student.training
    student.eval()
    try:
        ids, attention = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        s = student(input_ids=ids, attention_mask=attention, use_cache=False).logits[:, :-1]
        t = teacher(input_ids=ids, attention_mask=attention, use_cache=False).logits[:, :-1]
        vocab = min(s.shape[-1], t.shape[-1])
        kl = generalized_jsd(s[..., :vocab], t[..., :vocab], 0.0)
        return float(masked_mean(kl, batch["completion_mask"][:, 1:].to(device)))
    finally:
        student.train(was_training)


def teacher_answers(teacher: torch.nn.Module, tokenizer: Any, rows: list[dict[str, Any]], recipe: DistillRecipe,
                    path: Path) -> list[dict[str, Any]]:
    """``{prompt, completion}`` with the teacher's sampled answer to each row's prompt; also written to ``path``."""
    generation = recipe.distill.generation
    prompts = [row["prompt"] for row in rows]
    texts = sample(teacher, tokenizer, prompts, **generation.sample_kwargs(), seed=recipe.training.seed).texts
    answered = [{"prompt": prompt, "completion": text} for prompt, text in zip(prompts, texts)]
    path.write_text("".join(json.dumps(row) + "\n" for row in answered))
    logger.info("teacher answered %d prompts -> %s", len(answered), path)
    return answered


def _rows(dataset: Any) -> list[dict[str, Any]]:
    """Dataset rows as ``{prompt, completion}`` (chats: the last answer is the completion) or ``{prompt}``."""
    return chat_to_prompt_completion(dataset.to_list())
