"""Cheap text statistics of a (prompt, response) pair: a feature vector without any model.

:func:`text_statistics` turns every response into :data:`N_TEXT_FEATURES` numbers: lengths (log
scale), character-class and punctuation rates, markdown structure (lists, headings, code, tables),
sentence and word statistics, repetition, refusal / apology / hedging markers and the lexical
overlap with the prompt. Every value is bounded or log-scaled, so the raw matrix can be stored as
fp16. :func:`scale_text_statistics` z-scores them with fixed reference statistics before a reward
model sees them (the pipeline and the simulator alike); :func:`standardize` z-scores the columns of
one matrix by its own statistics.

The statistics are a transparent, instant baseline encoder (thousands of responses per second on
one core) and a complement to a sentence encoder, which truncates long responses and so barely
sees their length and layout. Pure Python + numpy; no Dagster, no model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

__all__ = [
    "N_TEXT_FEATURES",
    "TEXT_FEATURE_NAMES",
    "TEXT_FEATURES_VERSION",
    "REFERENCE_STATISTICS",
    "scale_text_statistics",
    "standardize",
    "text_statistics",
]

#: Bump when a feature changes: it is part of the feature-cache key.
TEXT_FEATURES_VERSION = 1

_WORD = re.compile(r"[A-Za-z0-9']+")
_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+\u2022]\s+)")
_NUMBERED = re.compile(r"^\s*\d+[.)]\s+")
_HEADING = re.compile(r"^\s*(?:#{1,6}\s+\S|\*\*[^*]+\*\*:?\s*$|[A-Z][^.!?]{0,60}:\s*$)")
_URL = re.compile(r"https?://|www\.")
_OPENER = re.compile(r"^\s*(?:sure|certainly|of course|absolutely|great question|yes|no)\b", re.I)
_CONCLUSION = re.compile(r"\b(?:in summary|in conclusion|overall|to summarize|in short)\b", re.I)
_REFUSAL = re.compile(
    r"\b(?:i'?m sorry|i am sorry|i apologi[sz]e|i cannot|i can'?t|i can not|i'?m unable|"
    r"i am unable|i'?m not able|i am not able|as an ai|as a language model|i don'?t have access|"
    r"i do not have access|not appropriate|i won'?t|i will not)\b",
    re.I,
)
_HEDGE = re.compile(
    r"\b(?:might|may|perhaps|possibly|probably|likely|i think|i believe|it depends|"
    r"generally|typically|usually)\b",
    re.I,
)
_FIRST_PERSON = re.compile(r"\b(?:i|i'm|i've|i'd|me|my)\b", re.I)
_STOP_WORDS = (
    "a an the and or but if of to in on at for with by from as is are was were be been being "
    "it its this that these those i you he she we they me my your our their what which who how "
    "why when where do does did can could would should will shall may might must not no yes so "
    "than then there here about into over under up down out all any some"
)
_STOP = frozenset(_STOP_WORDS.split())
_PUNCT_DELETE = str.maketrans("", "", ".,;:!?-\"'()[]{}")

TEXT_FEATURE_NAMES: tuple[str, ...] = (
    "log_chars",
    "log_words",
    "log_lines",
    "log_paragraphs",
    "log_sentences",
    "log_prompt_chars",
    "log_prompt_words",
    "log_length_ratio",
    "empty",
    "newline_rate",
    "punctuation_rate",
    "digit_rate",
    "uppercase_rate",
    "whitespace_rate",
    "non_ascii_rate",
    "colon_rate",
    "paren_rate",
    "question_rate",
    "exclamation_rate",
    "list_line_frac",
    "numbered_line_frac",
    "heading_line_frac",
    "table_line_frac",
    "log_bold_markers",
    "log_code_fences",
    "inline_code_rate",
    "has_code_block",
    "log_urls",
    "mean_word_length",
    "log_words_per_sentence",
    "type_token_ratio",
    "repeated_line_frac",
    "repeated_trigram_frac",
    "log_refusals",
    "log_hedges",
    "first_person_rate",
    "opener",
    "conclusion",
    "ends_with_punctuation",
    "prompt_coverage",
    "response_in_prompt",
    "prompt_has_code",
)
N_TEXT_FEATURES = len(TEXT_FEATURE_NAMES)


def _log(x: float) -> float:
    return math.log1p(max(x, 0.0))


def _content_words(words: list[str]) -> set[str]:
    return {w for w in words if w not in _STOP and len(w) > 1}


def _one(prompt: str, response: str) -> list[float]:
    text = response or ""
    n = len(text)
    per = 1.0 / max(n, 1)
    words = [w.lower() for w in _WORD.findall(text)]
    n_words = len(words)
    prompt_words = [w.lower() for w in _WORD.findall(prompt or "")]
    lines = text.split("\n")
    nonempty = [ln for ln in lines if ln.strip()]
    n_lines = max(len(nonempty), 1)
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    sentences = max(len(_SENTENCE_END.findall(text)), 1 if text.strip() else 0)

    punct = n - len(text.translate(_PUNCT_DELETE))
    digits = sum(map(str.isdigit, text))
    upper = sum(map(str.isupper, text))
    space = sum(map(str.isspace, text))
    non_ascii = 0 if text.isascii() else sum(1 for c in text if ord(c) > 127)

    seen_lines: set[str] = set()
    repeated_lines = 0
    for ln in nonempty:
        key = ln.strip().lower()
        repeated_lines += key in seen_lines
        seen_lines.add(key)
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    repeated_tri = 1.0 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0

    prompt_content = _content_words(prompt_words)
    response_content = _content_words(words)
    coverage = (
        len(prompt_content & response_content) / len(prompt_content) if prompt_content else 0.0
    )
    in_prompt = (
        len(response_content & prompt_content) / len(response_content) if response_content else 0.0
    )
    fences = text.count("```")
    stripped = text.rstrip()

    return [
        _log(n),
        _log(n_words),
        _log(len(nonempty)),
        _log(len(paragraphs)),
        _log(sentences),
        _log(len(prompt or "")),
        _log(len(prompt_words)),
        math.log((n_words + 1) / (len(prompt_words) + 1)) / 4.0,
        float(not text.strip()),
        100.0 * text.count("\n") * per,
        10.0 * punct * per,
        10.0 * digits * per,
        10.0 * upper * per,
        10.0 * space * per,
        10.0 * non_ascii * per,
        100.0 * text.count(":") * per,
        100.0 * (text.count("(") + text.count(")")) * per,
        100.0 * text.count("?") * per,
        100.0 * text.count("!") * per,
        sum(1 for ln in nonempty if _LIST_ITEM.match(ln)) / n_lines,
        sum(1 for ln in nonempty if _NUMBERED.match(ln)) / n_lines,
        sum(1 for ln in nonempty if _HEADING.match(ln)) / n_lines,
        sum(1 for ln in nonempty if ln.count("|") >= 2) / n_lines,
        _log(text.count("**") / 2),
        _log(fences / 2),
        100.0 * (text.count("`") - 3 * fences) * per,
        float(fences >= 2),
        _log(len(_URL.findall(text))),
        min(sum(len(w) for w in words) / n_words, 20.0) / 5.0 if n_words else 0.0,
        _log(n_words / sentences) if sentences else 0.0,
        len(set(words)) / n_words if n_words else 0.0,
        repeated_lines / n_lines,
        repeated_tri,
        _log(len(_REFUSAL.findall(text))),
        _log(len(_HEDGE.findall(text))),
        10.0 * len(_FIRST_PERSON.findall(text)) / max(n_words, 1),
        float(bool(_OPENER.match(text))),
        float(bool(_CONCLUSION.search(text))),
        float(bool(stripped) and stripped[-1] in ".!?)]`\"'*"),
        coverage,
        in_prompt,
        float("```" in (prompt or "") or "def " in (prompt or "")),
    ]


def text_statistics(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """``[n, N_TEXT_FEATURES]`` float32 statistics of each (prompt, response); names in order in
    :data:`TEXT_FEATURE_NAMES`. Values are bounded rates/fractions or ``log1p`` counts (all well
    inside the fp16 range). ``None`` texts count as empty."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
    out = np.zeros((len(responses), N_TEXT_FEATURES), dtype=np.float32)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        out[i] = _one(p or "", r or "")
    return out


def standardize(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Z-score every column over the rows (constant columns become 0); float32.

    Unsupervised: it uses no labels, so standardising over a whole pool (held-out prompts
    included) leaks nothing about the oracle.
    """
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"expected a [n, d] matrix, got shape {arr.shape}")
    if arr.shape[0] == 0:
        return arr.copy()
    mean = arr.mean(axis=0, dtype=np.float64)
    std = arr.std(axis=0, dtype=np.float64)
    scale = np.where(std > eps, std, 1.0)
    out = (arr - mean) / scale
    out[:, std <= eps] = 0.0
    return out.astype(np.float32)


#: (feature, mean, standard deviation) of every statistic over a reference set of responses: the
#: 11,595 responses of 29 models to 400 instructions of the simulated-oracle dev pool. Fixed
#: numbers, not refitted per pool: a round's features must mean the same in every round of a home
#: (its reward model is trained on them round after round), whatever responses the home has seen
#: so far. They only set each statistic's scale; nothing here depends on the oracle's scores.
REFERENCE_STATISTICS: tuple[tuple[str, float, float], ...] = (
    ("log_chars", 6.32527, 1.22693),
    ("log_words", 4.53884, 1.15307),
    ("log_lines", 1.81551, 1.01682),
    ("log_paragraphs", 1.3517, 0.728909),
    ("log_sentences", 1.98052, 0.911731),
    ("log_prompt_chars", 4.73203, 0.859595),
    ("log_prompt_words", 3.06883, 0.799404),
    ("log_length_ratio", 0.367522, 0.348519),
    ("empty", 0.000948685, 0.0307861),
    ("newline_rate", 1.12402, 1.53516),
    ("punctuation_rate", 0.38378, 0.322104),
    ("digit_rate", 0.131026, 0.325109),
    ("uppercase_rate", 0.320821, 0.427379),
    ("whitespace_rate", 1.70794, 0.42019),
    ("non_ascii_rate", 0.0191884, 0.325876),
    ("colon_rate", 0.290819, 0.590696),
    ("paren_rate", 0.290778, 0.967905),
    ("question_rate", 0.0436584, 0.24946),
    ("exclamation_rate", 0.0515814, 0.278999),
    ("list_line_frac", 0.123477, 0.261398),
    ("numbered_line_frac", 0.157762, 0.309925),
    ("heading_line_frac", 0.0450589, 0.100224),
    ("table_line_frac", 0.0177673, 0.121628),
    ("log_bold_markers", 0.328615, 0.863324),
    ("log_code_fences", 0.041289, 0.204717),
    ("inline_code_rate", 0.0438924, 0.31809),
    ("has_code_block", 0.0451919, 0.207725),
    ("log_urls", 0.00754551, 0.105447),
    ("mean_word_length", 0.956328, 0.180819),
    ("log_words_per_sentence", 2.85367, 0.643103),
    ("type_token_ratio", 0.639171, 0.187341),
    ("repeated_line_frac", 0.0148245, 0.0691563),
    ("repeated_trigram_frac", 0.0548577, 0.0929636),
    ("log_refusals", 0.0204277, 0.134756),
    ("log_hedges", 0.230531, 0.468667),
    ("first_person_rate", 0.101871, 0.297219),
    ("opener", 0.106339, 0.308271),
    ("conclusion", 0.100388, 0.300517),
    ("ends_with_punctuation", 0.900819, 0.298904),
    ("prompt_coverage", 0.52815, 0.287259),
    ("response_in_prompt", 0.195434, 0.234292),
    ("prompt_has_code", 0, 0),
)


def scale_text_statistics(x: np.ndarray) -> np.ndarray:
    """Z-score the statistics with :data:`REFERENCE_STATISTICS` (float32, same shape).

    A statistic constant on the reference set (std 0) is only centred.
    """
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != N_TEXT_FEATURES:
        raise ValueError(f"expected a [n, {N_TEXT_FEATURES}] matrix, got shape {arr.shape}")
    mean = np.array([m for _, m, _ in REFERENCE_STATISTICS], dtype=np.float32)
    std = np.array([s for _, _, s in REFERENCE_STATISTICS], dtype=np.float32)
    return ((arr - mean) / np.where(std > 1e-6, std, 1.0)).astype(np.float32)
