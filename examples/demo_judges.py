"""A stand-in judge for the demo loop: labels candidates when no annotators are at hand.

    align label auto --project demo --judge examples.demo_judges:complete_and_concise

A judge takes (prompts, responses) and returns one float per response, higher is better.
This one prefers what annotators of a small chat model usually prefer: an answer that
finishes its sentence, stays short, and does not repeat itself. It is deliberately simple:
swap in a reward model directory or your own function for real work.
"""

from __future__ import annotations


def complete_and_concise(prompts: list[str], responses: list[str]) -> list[float]:
    scores = []
    for response in responses:
        words = response.split()
        if not words:
            scores.append(-3.0)
            continue
        finished = 1.0 if response.rstrip().endswith((".", "!", "?")) else 0.0
        distinct = len({w.lower() for w in words}) / len(words)  # 1.0 = no word repeated
        length = -abs(len(words) - 25) / 25  # best near 25 words
        scores.append(finished + 2.0 * distinct + length)
    return scores
