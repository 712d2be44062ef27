"""The models a process keeps loaded between calls: a few on the CPU, one at a time per GPU.

Every local model user (the transformers and vLLM backends, the encoder, the reward judge)
loads through the one cache `LOADED`, so a multi-round run loads each model once, and a model
step frees the GPUs it used with `release_gpu_models` when it ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


class LoadedModels:
    """Models kept in memory between calls: a few on the CPU, and one at a time per GPU.

    A model step that needs another model on a GPU first frees the one there (two vLLM engines
    that each reserve most of a GPU's memory cannot both start); `release` frees the GPUs
    explicitly at the end of a step. vLLM engines on the CPU build are held one at a time too
    (each reserves its KV-cache space).
    """

    def __init__(self, cpu_slots: int = 4):
        import threading

        self.cpu_slots = cpu_slots
        self._entries: dict[tuple, tuple[str | None, object, Callable[[object], None] | None]] = {}
        self._lock = threading.RLock()

    def get(
        self,
        key: tuple,
        slot: str | None,
        build: Callable[[], object],
        free: Callable[[object], None] | None = None,
    ):
        """The cached value of `key`, or `build()`. `slot` None shares the CPU's LRU slots;
        any other slot (a GPU, the vLLM CPU engine) holds one model at a time."""
        with self._lock:
            if key in self._entries:
                entry = self._entries.pop(key)
                self._entries[key] = entry  # most recently used last
                return entry[1]
            if slot is None:
                cpu = [k for k, e in self._entries.items() if e[0] is None]
                for old in cpu[: max(0, len(cpu) - self.cpu_slots + 1)]:
                    self._drop(old)
            else:
                for old in [k for k, e in self._entries.items() if e[0] == slot]:
                    log.info("freeing %s on %s for %s", old[0], slot, key[0])
                    self._drop(old)
            value = build()
            self._entries[key] = (slot, value, free)
            return value

    def _drop(self, key: tuple) -> None:
        slot, value, free = self._entries.pop(key)
        if free is not None:
            try:
                free(value)
            except Exception as exc:  # freeing must never fail the step that needs the room
                log.warning("could not free %s cleanly: %s", key[0], exc)
        del value
        import gc

        gc.collect()
        if slot and slot.startswith("cuda"):
            import torch  # a GPU slot was filled, so torch is loaded already

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def release(self, prefix: str = "") -> int:
        """Free every model whose slot starts with `prefix` ("" = every slotted model)."""
        with self._lock:
            keys = [k for k, e in self._entries.items() if e[0] and e[0].startswith(prefix)]
            for key in keys:
                self._drop(key)
            return len(keys)

    def clear(self) -> None:
        with self._lock:
            for key in list(self._entries):
                self._drop(key)


LOADED = LoadedModels()


def release_gpu_models() -> int:
    """Free every model held on a GPU (and any vLLM engine): called when a model step ends."""
    return LOADED.release()
