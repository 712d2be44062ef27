"""Prompt ingestion: read a prompt pool, validate it, and hand back a clean table.

Every reader ends in the same validation path (`validation._batch_from_records`), so a prompt
pool behaves the same whether it came from JSON Lines, JSON, CSV, Parquet, a Hugging Face
dataset saved with ``save_to_disk``, a dataset on the Hugging Face Hub (:func:`load_hub_prompts`)
or a polars frame. The result is a :class:`PromptBatch` whose ``prompts`` frame has the columns
``prompt_id``, ``prompt`` and ``source``, one row per distinct prompt, in input order.

Where the prompt is (``prompt_column=None``, the default, means "recognise the layout"):

1. a ``prompt`` column (HuggingFaceH4/ultrafeedback_binarized and most prompt files). If it
   holds chat messages instead of text (TRL's conversational layout), the first user turn is used;
2. an ``instruction`` column (openbmb/UltraFeedback, AlpacaEval);
3. a chat column ``messages``, ``conversations`` or ``chosen`` whose values are lists of
   ``{"role", "content"}`` messages (ShareGPT's ``{"from", "value"}`` too): the prompt is the
   content of the first user turn (``role == "user"``, or ``from`` ``human``/``user``).

The first rule whose column is there wins (for rule 3 the column must also hold chat messages;
a ``chosen`` column of plain text, as in Anthropic HH, is not a prompt). A ``prompt_column``
given by name is used as is: text, or chat messages (first user turn). Without a ``source``
column a text ``dataset`` column (AlpacaEval) is the source, when ``source_column`` is the
default ``"source"``.

Rules, in short:

* Row numbers in messages and reports are 1-based, as a person counts them. For JSON Lines the
  row is the line number in the file (blank lines count as lines but hold no prompt); for CSV it
  is the data row (the header line is not counted); otherwise it is the record's position.
* A missing id column means ids are derived from the text (:func:`stable_prompt_id`). A missing
  source column means every prompt gets ``default_source`` or, failing that, the file's stem.
* Empty or whitespace-only prompts are dropped and reported. Repeats (the same id with the same
  text, or the same whitespace-normalised text) are dropped and reported, the first one is kept.
* Prompts longer than ``max_prompt_chars`` characters (default :data:`MAX_PROMPT_CHARS`, about
  4,000 tokens of English; ``None``: no maximum) are dropped and reported with their ids: a
  pasted document of megabytes would otherwise be generated for at the speed of its whole
  context, or cut to it. Where a prompt still exceeds a model's context, generation keeps its
  start and its end (:func:`auf_assets.core.truncation.head_and_tail`), so an instruction at
  either end survives.
* Anything else that is wrong raises :class:`PromptInputError` and nothing is returned: the file
  is missing or unreadable, it holds no rows, no prompt column is found, a prompt is not text, a
  chat has no user turn, an id is not a string or an integer, or one id names two different
  prompts. Hub errors (bad id, not cached while offline, unknown split or config) are
  :class:`PromptInputError` too.
* ``limit`` keeps the first N valid prompts; rows after the N-th kept prompt are not examined.

The modules: ``loading`` (files, saved datasets, frames, the demo set), ``hub`` (Hub datasets),
``readers`` (one reader per input kind), ``validation`` (the shared path), ``batch`` (the
result and prompt ids) and ``errors`` (:class:`PromptInputError`).
"""

from auf_assets.core.prompts.batch import (
    MAX_PROMPT_CHARS,
    MAX_PROMPT_FILE_BYTES,
    PromptBatch,
    normalise_prompt,
    stable_prompt_id,
)
from auf_assets.core.prompts.errors import PromptInputError
from auf_assets.core.prompts.hub import load_hub_prompts
from auf_assets.core.prompts.loading import (
    DEMO_PROMPTS_PATH,
    SUPPORTED_SUFFIXES,
    demo_prompts,
    load_prompts,
    prompts_from_frame,
)

__all__ = [
    "DEMO_PROMPTS_PATH",
    "MAX_PROMPT_CHARS",
    "MAX_PROMPT_FILE_BYTES",
    "SUPPORTED_SUFFIXES",
    "PromptBatch",
    "PromptInputError",
    "demo_prompts",
    "load_hub_prompts",
    "load_prompts",
    "normalise_prompt",
    "prompts_from_frame",
    "stable_prompt_id",
]
