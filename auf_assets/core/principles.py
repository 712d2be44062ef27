"""System prompts per principle, UltraFeedback style.

Each generation request gets a system prompt that stresses one principle: helpfulness, honesty,
truthfulness or verbalized calibration. Which principle is drawn depends on the prompt's source
(factual questions lean towards truthfulness and honesty, creative tasks towards helpfulness),
and the draw is a pure function of ``(source, key, seed)`` so a rerun asks the same thing.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "PRINCIPLES",
    "SOURCE_PRINCIPLE_WEIGHTS",
    "choose_system_prompt",
    "principle_weights",
]

PRINCIPLES: dict[str, tuple[str, ...]] = {
    "helpfulness": (
        "You are a capable assistant. Work out what the user actually needs and answer it "
        "directly, with enough detail to be useful and no filler.",
        "You are a friendly, practical assistant. Give accurate, relevant answers, and where "
        "it helps, add a short example or a next step the user can take.",
        "As an assistant, aim to be genuinely useful: answer the question that was asked, "
        "organise longer answers so they are easy to follow, and keep them correct.",
        "You help people get things done. Be clear and specific, cover what matters for the "
        "task, and leave out anything that does not serve it.",
    ),
    "honesty": (
        "You are an assistant that values honesty above sounding impressive. If you do not know "
        "something, or a question cannot be answered, say so plainly instead of guessing.",
        "Answer as an honest assistant: state only what you believe is true, make clear which "
        "parts of your answer you are unsure about, and never invent sources or facts.",
        "You are a candid assistant. When a request rests on a mistaken assumption, point it out "
        "politely. Admit the limits of what you know rather than covering them up.",
    ),
    "truthfulness": (
        "You are a careful assistant whose first duty is factual accuracy. Do not make up "
        "names, numbers or events; if the question contains a false premise, correct it.",
        "Stay grounded in well-established facts. Keep your answer consistent with the user's "
        "message and with what is reliably known, and do not add invented details.",
        "As an assistant, be truthful: check each claim against what you reliably know, avoid "
        "speculation presented as fact, and say when something is disputed or unknown.",
    ),
    "verbalized_calibration": (
        "You are an assistant that reports its own confidence. After answering, add a line "
        "'Confidence: N%' that reflects how likely your answer is to be correct.",
        "Answer the question, then state how sure you are as a percentage, and briefly say "
        "what would change your mind. Keep the stated confidence honest, not inflated.",
        "Give your best answer and express your certainty in words and as a percentage at the "
        "end, for example 'Confidence: 70%'. Lower it when you are relying on guesswork.",
    ),
}

# Per-source weights over the principles. Keys are lower-case source names; the demo categories
# come first, then the source names used by the UltraFeedback prompt pool, then "default" for
# anything else. Weights need not sum to 1 (they are normalised when drawing).
SOURCE_PRINCIPLE_WEIGHTS: dict[str, dict[str, float]] = {
    # demo categories (auf_assets/core/data/demo_prompts.jsonl)
    "general": {
        "helpfulness": 0.7,
        "honesty": 0.1,
        "truthfulness": 0.1,
        "verbalized_calibration": 0.1,
    },
    "coding": {"helpfulness": 0.8, "honesty": 0.1, "truthfulness": 0.1},
    "math": {
        "helpfulness": 0.6,
        "honesty": 0.1,
        "truthfulness": 0.1,
        "verbalized_calibration": 0.2,
    },
    "reasoning": {
        "helpfulness": 0.6,
        "honesty": 0.1,
        "truthfulness": 0.1,
        "verbalized_calibration": 0.2,
    },
    "factual": {
        "helpfulness": 0.2,
        "honesty": 0.3,
        "truthfulness": 0.4,
        "verbalized_calibration": 0.1,
    },
    "creative": {"helpfulness": 1.0},
    "advice": {"helpfulness": 0.7, "honesty": 0.2, "truthfulness": 0.1},
    "safety": {"helpfulness": 0.4, "honesty": 0.3, "truthfulness": 0.3},
    # UltraFeedback prompt sources
    "evol_instruct": {"helpfulness": 1.0},
    "sharegpt": {"helpfulness": 0.6, "honesty": 0.2, "truthfulness": 0.2},
    "ultrachat": {"helpfulness": 0.6, "honesty": 0.2, "truthfulness": 0.2},
    "flan": {"helpfulness": 0.75, "verbalized_calibration": 0.25},
    "false_qa": {"honesty": 0.5, "truthfulness": 0.5},
    "truthful_qa": {"honesty": 0.5, "truthfulness": 0.5},
    # anything else
    "default": {
        "helpfulness": 0.7,
        "honesty": 0.1,
        "truthfulness": 0.1,
        "verbalized_calibration": 0.1,
    },
}


def principle_weights(source: str) -> dict[str, float]:
    """The weights used for ``source``.

    Lookup is case-insensitive; a source that starts with a known key followed by ``_`` or ``-``
    (``flan_v2_cot`` -> ``flan``) uses that key; everything else uses ``"default"``.
    """
    key = (source or "").strip().lower()
    if key in SOURCE_PRINCIPLE_WEIGHTS:
        return SOURCE_PRINCIPLE_WEIGHTS[key]
    for known in sorted(SOURCE_PRINCIPLE_WEIGHTS, key=len, reverse=True):
        if known != "default" and key.startswith((known + "_", known + "-")):
            return SOURCE_PRINCIPLE_WEIGHTS[known]
    return SOURCE_PRINCIPLE_WEIGHTS["default"]


def _unit_floats(source: str, key: str, seed: int) -> tuple[float, float]:
    """Two independent floats in [0, 1) from a SHA-256 of the inputs (stable across runs)."""
    material = f"auf-principle\x1f{int(seed)}\x1f{source}\x1f{key}".encode()
    digest = hashlib.sha256(material).digest()
    scale = float(1 << 64)
    return (
        int.from_bytes(digest[:8], "big") / scale,
        int.from_bytes(digest[8:16], "big") / scale,
    )


def choose_system_prompt(source: str, key: str, seed: int) -> tuple[str, str]:
    """Pick ``(principle, system prompt)`` for one request.

    The principle is drawn from :func:`principle_weights` of ``source``, the system prompt
    uniformly among that principle's prompts. ``key`` identifies the request (for example
    ``f"{prompt_id}/{model}"``); the result depends only on ``(source, key, seed)``.
    """
    weights = principle_weights(source)
    names = [n for n in sorted(weights) if weights[n] > 0]
    unknown = [n for n in names if n not in PRINCIPLES]
    if unknown or not names:
        raise ValueError(f"bad principle weights for source {source!r}: {weights}")
    total = sum(weights[n] for n in names)
    u_principle, u_prompt = _unit_floats(source, key, seed)

    target = u_principle * total
    chosen = names[-1]
    acc = 0.0
    for name in names:
        acc += weights[name]
        if target < acc:
            chosen = name
            break
    prompts = PRINCIPLES[chosen]
    return chosen, prompts[int(u_prompt * len(prompts))]
