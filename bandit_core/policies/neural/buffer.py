"""The replay buffer of the neural policies: every observation the slow path trains on."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from bandit_core._validation import FloatArray


class ReplayBuffer:
    """Encoder inputs, rewards and per-member bootstrap weights of stored observations.

    Parameters
    ----------
    dim : int
        Width of one encoder input row.
    capacity : int or None
        Keep at most this many rows (the oldest are overwritten first); ``None`` keeps all.
    n_weights : int
        Number of per-row weights (ensemble members); 0 for none.

    Storage grows by doubling, so adding a row is amortised O(dim). Row order is not
    kept once the buffer wraps; nothing downstream depends on it (training shuffles,
    and the head rebuild sums additive statistics).
    """

    def __init__(self, dim: int, capacity: int | None = None, n_weights: int = 0) -> None:
        self.dim = dim
        self.capacity = capacity
        self.n_weights = n_weights
        self._size = 0
        self._next = 0
        self._inputs: FloatArray = np.zeros((0, dim))
        self._rewards: FloatArray = np.zeros(0)
        self._weights: FloatArray = np.zeros((0, n_weights))

    def __len__(self) -> int:
        return self._size

    @property
    def inputs(self) -> FloatArray:
        """(n, dim) stored encoder inputs (a view)."""
        return self._inputs[: self._size]

    @property
    def rewards(self) -> FloatArray:
        return self._rewards[: self._size]

    @property
    def weights(self) -> FloatArray:
        """(n, n_weights) bootstrap weights."""
        return self._weights[: self._size]

    def _grow(self, needed: int) -> None:
        alloc = self._inputs.shape[0]
        if needed <= alloc:
            return
        new = max(needed, 2 * alloc, 64)
        if self.capacity is not None:
            new = min(new, self.capacity)
        for name in ("_inputs", "_rewards", "_weights"):
            old = getattr(self, name)
            grown = np.zeros((new, *old.shape[1:]))
            grown[: old.shape[0]] = old
            setattr(self, name, grown)

    def add(
        self, inputs: FloatArray, rewards: FloatArray, weights: FloatArray | None = None
    ) -> None:
        """Append rows ``inputs (n, dim)``, ``rewards (n,)``, ``weights (n, n_weights)``."""
        w = np.zeros((inputs.shape[0], self.n_weights)) if weights is None else weights
        for row in range(inputs.shape[0]):
            if self.capacity is not None and self._size == self.capacity:
                slot = self._next
                self._next = (self._next + 1) % self.capacity
            else:
                self._grow(self._size + 1)
                slot = self._size
                self._size += 1
            self._inputs[slot] = inputs[row]
            self._rewards[slot] = rewards[row]
            self._weights[slot] = w[row]

    def find(self, inputs: FloatArray, reward: float) -> int:
        """Index of the latest stored row equal to ``inputs`` (dim,) with ``reward``.

        Raises ``ValueError`` when no such row is stored.
        """
        match = (self.inputs == inputs).all(axis=1) & (self.rewards == reward)
        hits = np.flatnonzero(match)
        if hits.size == 0:
            raise ValueError("no stored observation has these inputs and this reward.")
        return int(hits[-1])

    def set_reward(self, index: int, reward: float) -> None:
        self._rewards[index] = reward

    def to_arrays(self, prefix: str = "buffer.") -> dict[str, NDArray[Any]]:
        return {
            prefix + "inputs": self.inputs.copy(),
            prefix + "rewards": self.rewards.copy(),
            prefix + "weights": self.weights.copy(),
            prefix + "next": np.array(self._next, dtype=np.int64),
        }

    def load_arrays(self, arrays: dict[str, NDArray[Any]], prefix: str = "buffer.") -> None:
        """Restore rows written by :meth:`to_arrays` (shapes checked)."""
        inputs = np.asarray(arrays[prefix + "inputs"], dtype=np.float64)
        rewards = np.asarray(arrays[prefix + "rewards"], dtype=np.float64)
        weights = np.asarray(arrays[prefix + "weights"], dtype=np.float64)
        n = inputs.shape[0]
        if (
            inputs.shape != (n, self.dim)
            or rewards.shape != (n,)
            or weights.shape != (n, self.n_weights)
        ):
            raise ValueError(
                "replay buffer arrays must have shapes "
                f"(n, {self.dim}), (n,), (n, {self.n_weights}); "
                f"got {inputs.shape}, {rewards.shape}, {weights.shape}."
            )
        if self.capacity is not None and n > self.capacity:
            raise ValueError(f"replay buffer holds {n} rows but its capacity is {self.capacity}.")
        self._inputs, self._rewards, self._weights = inputs.copy(), rewards.copy(), weights.copy()
        self._size = n
        nxt = int(arrays[prefix + "next"])
        full = self.capacity is not None and n == self.capacity
        if not 0 <= nxt < (self.capacity or 1) or (nxt and not full):
            # a later add wrote past the arrays, after the head had learnt the row
            raise ValueError(
                f"replay buffer 'next' must be in [0, capacity) and 0 until the buffer is "
                f"full; got {nxt} with {n} rows of capacity {self.capacity}."
            )
        self._next = nxt
