"""The `active_round` group: the assets of one active round, partitioned by round.

round_prompts -> completions -> response_features -> reward_scores -> selected_pairs ->
judgements -> reward_model, and the next round's reward_scores reads this round's reward_model.
One module per asset; each is thin wiring: it reads its inputs from the store, calls a pure
function (`auf_assets.core`) or a resource, and replaces its round's rows in the store.
"""

from auf_assets.round.completions import CompletionsConfig, PoolMember, completions, default_pool
from auf_assets.round.features import response_features
from auf_assets.round.judgements import JudgementsConfig, judgements
from auf_assets.round.prompts import RoundPromptsConfig, round_prompts
from auf_assets.round.reward_model import replay_fingerprint, reward_model
from auf_assets.round.scores import reward_scores
from auf_assets.round.selection import SelectedPairsConfig, selected_pairs
from auf_assets.round.shared import GROUP

ROUND_ASSETS = [
    round_prompts,
    completions,
    response_features,
    reward_scores,
    selected_pairs,
    judgements,
    reward_model,
]

__all__ = [
    "GROUP",
    "ROUND_ASSETS",
    "CompletionsConfig",
    "JudgementsConfig",
    "PoolMember",
    "RoundPromptsConfig",
    "SelectedPairsConfig",
    "completions",
    "default_pool",
    "judgements",
    "replay_fingerprint",
    "response_features",
    "reward_model",
    "reward_scores",
    "round_prompts",
    "selected_pairs",
]
