"""The registry of selection methods: every way a round can pick its pairs, by name.

A method is one :class:`SelectionMethod`: its name, its *family* (what chooses), what it *needs*
to choose, the function that chooses, and one line for ``auf methods``. Everything that takes a
method name looks it up here (the simulator, the round assets, ``auf methods``, the CLI's checks,
the benchmarks); nothing else keeps a list of names.

Families, and the call every ``select`` of a family answers:

``reward_model`` (acquisition functions, :mod:`auf_assets.core.acquisition`)
    ``select(mu, sigma, *, beta, seed, mask, **options) -> int64 [P, 2]``: two distinct columns
    per prompt from the reward model's mean and spread. Write the rule, wrap it with
    :func:`~auf_assets.core.acquisition.rule_select` (it checks the inputs and the picks).
``policy`` (:mod:`auf_assets.core.policy_selection`)
    ``select(rewards, mask, *, seed, identical, fraction, gradients, v_inv, lam) ->
    PolicySelection``: at most one pair per prompt from the DPO policy's implicit rewards
    (and projected gradients when the method needs them); ``fallback`` says when the method
    could not apply and the pairs are random (the first round: the policy is the reference).
``oracle`` (static baselines, :mod:`auf_assets.core.baselines`)
    ``select(scores, *, seed, mask, strong_index, weak_index) -> (pairs, labels_used)``: pairs
    from every response's oracle score. For comparisons in the simulator; a real round has no
    oracle, so the round assets refuse them.

Adding a method: write its rule in a core module and add one :class:`SelectionMethod` to
``_BUILT_IN`` below; ``auf methods``, the CLI, the simulator and the round assets pick it up.
:func:`register_method` adds one at run time (a test, a notebook): it exists in that process only
(the workers of ``auf bench`` are fresh processes and see the built-in methods).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from .acquisition import ACQUISITION_RULES
from .baselines import BASELINE_RULES
from .policy_selection import select_policy_pairs

__all__ = [
    "FAMILIES",
    "NEEDS",
    "ROUND_FAMILIES",
    "SelectionMethod",
    "get_method",
    "method_names",
    "methods",
    "register_method",
    "unregister_method",
]

#: Family -> what chooses the pairs (headings of ``auf methods``).
FAMILIES: dict[str, str] = {
    "reward_model": "the reward model's mean and spread pick 2 of N responses",
    "policy": "the DPO policy being aligned picks its own pairs",
    "oracle": "static baselines that read every response's oracle score (simulator only)",
}
#: What a method may need to choose its pairs.
NEEDS: dict[str, str] = {
    "scores": "the reward model's mu and sigma of every response",
    "log_probs": "policy and reference log-probs of every response",
    "gradients": "projected LoRA gradients of every response's implicit reward",
    "oracle": "the oracle score of every response",
    "model_names": "which model wrote each response (a strong and a weak model named)",
}
#: The families a real round can run (there is no oracle in a real round).
ROUND_FAMILIES = ("reward_model", "policy")

_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class SelectionMethod:
    """One selection method.

    ``select`` answers the call of its ``family`` (module docstring). ``needs`` lists keys of
    :data:`NEEDS` (empty: it needs nothing, e.g. ``random``). ``stochastic``: the pairs can
    depend on the seed. ``labels_per_prompt``: oracle labels a pick costs per prompt, as shown
    ("2", "4", "N" or "0"; the oracle family reads more than the two a judge labels).
    """

    name: str
    family: str
    needs: tuple[str, ...]
    select: Callable[..., Any]
    description: str
    stochastic: bool = True
    labels_per_prompt: str = "2"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(
                f"method name {self.name!r}: use lower-case letters, digits and _ (a letter first)"
            )
        if self.family not in FAMILIES:
            raise ValueError(
                f"method {self.name}: family {self.family!r} is not one of {', '.join(FAMILIES)}"
            )
        object.__setattr__(self, "needs", tuple(self.needs))
        unknown = [n for n in self.needs if n not in NEEDS]
        if unknown:
            raise ValueError(
                f"method {self.name}: unknown needs {unknown}; known: {', '.join(NEEDS)}"
            )
        if not callable(self.select):
            raise ValueError(f"method {self.name}: select must be callable")
        if not self.description.strip() or "\n" in self.description:
            raise ValueError(f"method {self.name}: the description is one non-empty line")


def _policy(name: str, needs: Sequence[str], description: str) -> SelectionMethod:
    select = partial(select_policy_pairs, name)
    return SelectionMethod(name, "policy", tuple(needs), select, description)


def _oracle(name: str, labels: str, description: str, needs=("oracle",)) -> SelectionMethod:
    return SelectionMethod(
        name, "oracle", tuple(needs), BASELINE_RULES[name], description, labels_per_prompt=labels
    )


def _reward(name: str, description: str, *, needs=("scores",), stochastic=True) -> SelectionMethod:
    return SelectionMethod(
        name, "reward_model", tuple(needs), ACQUISITION_RULES[name], description, stochastic
    )


_BUILT_IN = (
    _reward("random", "two distinct responses uniformly at random", needs=()),
    _reward("ultrafeedback", "4 random responses; best mu of them vs a random other of the 4"),
    _reward("dts", "double Thompson sampling: two distinct Thompson draws of the best response"),
    _reward("drts", "double reverse Thompson: a Thompson draw of the best vs one of the worst"),
    _reward(
        "deltaucb", "largest optimistic gap: argmax over i != j of U_i - L_j", stochastic=False
    ),
    _reward(
        "deltaquantile",
        "pair in the top-q quantile window of U_i - L_j with the largest U_i (options q, eps)",
        stochastic=False,
    ),
    _reward(
        "maxminlcb",
        "best worst-case LCB response vs its hardest competitor (seeded near-tie breaks)",
    ),
    _reward("infomax", "pair with the widest plausible range of P(i beats j)", stochastic=False),
    _reward("infogain", "Thompson draw vs the response with the widest range of P(beats it)"),
    _policy(
        "sharp",
        ["log_probs"],
        "SHARP: pair with the smallest implicit DPO margin |Delta| (Sharpe ratio coth(|Delta|/2))",
    ),
    _policy(
        "wsharp",
        ["log_probs"],
        "W-SHARP: weighted Sharpe ratio 1/|sinh(Delta/2)|, also smallest |Delta| first",
    ),
    _policy(
        "activedpo",
        ["log_probs", "gradients"],
        "ActiveDPO: greedy max sqrt(phi^T V^-1 phi) over projected reward-gradient differences, "
        "V carried across rounds",
    ),
    _policy(
        "apl",
        ["log_probs"],
        "APL: highest reward-softmax entropy prompts, then the largest implicit margin |Delta|",
    ),
    _oracle("random_pair", "2", "two distinct random responses, ordered by oracle score"),
    _oracle(
        "ultrafeedback_oracle",
        "4",
        "best of 4 random responses vs a random other of the 4 (oracle scores)",
    ),
    _oracle("maxmin", "N", "best vs worst of all responses by oracle score"),
    _oracle(
        "delta_model",
        "0",
        "a fixed strong model's response beats a fixed weak model's (no labels)",
        needs=("oracle", "model_names"),
    ),
)

_REGISTRY: dict[str, SelectionMethod] = {m.name: m for m in _BUILT_IN}


def register_method(
    name: str,
    *,
    family: str,
    needs: Sequence[str],
    select: Callable[..., Any],
    description: str,
    stochastic: bool = True,
    labels_per_prompt: str = "2",
    replace: bool = False,
) -> SelectionMethod:
    """Add a method to the registry (for this process); a taken name fails unless ``replace``."""
    method = SelectionMethod(
        name, family, tuple(needs), select, description, stochastic, labels_per_prompt
    )
    if name in _REGISTRY and not replace:
        raise ValueError(f"a selection method named {name!r} exists already (replace=True)")
    _REGISTRY[name] = method
    return method


def unregister_method(name: str) -> None:
    """Remove a method added by :func:`register_method`; the built-in ones stay."""
    if any(m.name == name for m in _BUILT_IN):
        raise ValueError(f"{name} is a built-in method and cannot be removed")
    _REGISTRY.pop(name, None)


def methods(family: str | None = None) -> list[SelectionMethod]:
    """The registered methods (of one family), built-in ones first, in registration order."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    return [m for m in _REGISTRY.values() if family is None or m.family == family]


def method_names(family: str | None = None) -> list[str]:
    return [m.name for m in methods(family)]


def get_method(name: str, *, families: Sequence[str] | None = None) -> SelectionMethod:
    """The method called ``name``; a ValueError lists the valid names otherwise.

    ``families`` limits the answer to methods of those families (the round assets: the
    :data:`ROUND_FAMILIES`); a method of another family fails and says what it is.
    """
    allowed = tuple(families) if families is not None else tuple(FAMILIES)
    valid = [m.name for m in _REGISTRY.values() if m.family in allowed]
    method = _REGISTRY.get(name) if isinstance(name, str) else None
    if method is None:
        raise ValueError(f"unknown selection method {name!r}; known: {', '.join(valid)}")
    if method.family not in allowed:
        raise ValueError(
            f"{name} is a{'n' if method.family[0] in 'aeiou' else ''} {method.family} method "
            f"({FAMILIES[method.family]}); here: {', '.join(valid)}"
        )
    return method
