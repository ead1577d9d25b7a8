"""Torch helpers shared by the neural policies: device, seeded generators, a batched MLP,
the training loop and lossless conversion of a network to numpy arrays.

Everything random takes an explicit :class:`torch.Generator` (kept on the CPU, so that a
seed gives the same numbers with or without CUDA); nothing reads torch's global RNG.

One network class serves the three neural policies:

* ``members = 1``: the encoder of neural-linear Thompson sampling (Riquelme, Tucker &
  Snoek, ICLR 2018, §3 "NeuralLinear");
* ``members = M``: M independent networks evaluated in one batched pass (the bootstrapped
  ensemble of Osband, Blundell, Pritzel & Van Roy, NeurIPS 2016);
* explicit dropout masks: MC dropout (Gal & Ghahramani, ICML 2016), where S stochastic
  passes are one forward call whose masks broadcast over a leading pass axis.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from bandit_core._validation import FloatArray

_SEED_BOUND = 2**63 - 1

#: Every network computes in float64: φ feeds a float64 Bayesian head, and it must not
#: depend on how rows were batched (float32 matrix products round differently for
#: different batch shapes, about 1e-7 relative; float64 keeps that near 1e-16).
DTYPE = torch.float64


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; any other string is passed to torch.

    Raises
    ------
    ValueError
        For a string torch does not recognise, or ``"cuda"`` on a machine without CUDA.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"The 'device' option must be 'auto', 'cpu' or a CUDA device such as 'cuda:0'; "
            f"got {device!r}."
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"The 'device' option is {device!r} but CUDA is not available here.")
    return resolved


def generator_from(rng: np.random.Generator) -> torch.Generator:
    """A CPU :class:`torch.Generator` seeded from one draw of ``rng``."""
    gen = torch.Generator()
    gen.manual_seed(int(rng.integers(0, _SEED_BOUND)))
    return gen


def generator_state(gen: torch.Generator) -> NDArray[np.uint8]:
    """The generator's state as a uint8 array (for ``PolicyState.arrays``)."""
    out: NDArray[np.uint8] = gen.get_state().numpy().copy()
    return out


def restore_generator(state: NDArray[Any]) -> torch.Generator:
    """A CPU generator in ``state`` (:func:`generator_state`); ``ValueError`` for an array
    that is not one (torch's own error is a ``RuntimeError``)."""
    gen = torch.Generator()
    try:
        gen.set_state(torch.from_numpy(np.ascontiguousarray(state, dtype=np.uint8)))
    except RuntimeError as exc:
        raise ValueError(f"not the state of a torch generator: {exc}") from exc
    return gen


def _physical_memory_bytes() -> int | None:
    """The machine's physical memory, or None where the platform does not say."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def _check_fits_in_memory(widths: Sequence[int], members: int) -> None:
    """Refuse, by name, a network whose parameters alone exceed the machine's memory.

    Without it ``hidden = [10**6, 10**6]`` reaches torch's allocator, which raises a bare
    ``RuntimeError`` (or, for sizes the kernel overcommits, gets the process killed while
    the weights are initialised).
    """
    layers = [*widths, 1]
    count = members * sum((a + 1) * b for a, b in itertools.pairwise(layers))
    need = count * DTYPE.itemsize
    have = _physical_memory_bytes()
    if have is not None and need > have:
        raise ValueError(
            f"hidden = {list(widths[1:])} on {widths[0]} inputs"
            + (f" × {members} members" if members > 1 else "")
            + f" makes a network of {count:,} parameters ({need / 2**30:,.1f} GiB), more "
            f"than this machine's {have / 2**30:,.1f} GiB of memory; use narrower layers."
        )


class MemberMLP(torch.nn.Module):
    """``members`` independent ReLU networks ``dim_in → hidden… → 1`` in one module.

    Weights have shape ``(members, fan_in, fan_out)`` and biases ``(members, 1, fan_out)``;
    inputs of shape ``(..., N, dim_in)`` broadcast against the member axis through
    :func:`torch.matmul`, so ``(1, N, dim_in)`` gives ``(members, N, ·)`` and, with
    ``members = 1``, masks of shape ``(S, …, 1, width)`` give ``(S, …, N, ·)``: S dropout
    passes in one call. Initialisation is PyTorch's default for ``nn.Linear``
    (uniform in ``±1/√fan_in``) drawn from ``generator``.
    """

    def __init__(
        self,
        dim_in: int,
        hidden: Sequence[int],
        members: int = 1,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("hidden must list at least one layer width; got an empty tuple.")
        widths = [dim_in, *hidden]
        _check_fits_in_memory(widths, members)
        self.hidden = tuple(int(h) for h in hidden)
        self.members = members
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for fan_in, fan_out in itertools.pairwise(widths):
            w, b = self._init_layer(members, fan_in, fan_out, generator)
            self.weights.append(w)
            self.biases.append(b)
        self.out_weight, self.out_bias = self._init_layer(members, widths[-1], 1, generator)

    @staticmethod
    def _init_layer(
        members: int, fan_in: int, fan_out: int, generator: torch.Generator | None
    ) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
        bound = 1.0 / float(np.sqrt(fan_in))
        w = torch.empty(members, fan_in, fan_out, dtype=DTYPE)
        w.uniform_(-bound, bound, generator=generator)
        b = torch.empty(members, 1, fan_out, dtype=DTYPE)
        b.uniform_(-bound, bound, generator=generator)
        return torch.nn.Parameter(w), torch.nn.Parameter(b)

    @property
    def dim_features(self) -> int:
        """Width of the last hidden layer (the encoder output φ)."""
        return self.hidden[-1]

    def features(
        self, x: torch.Tensor, masks: Sequence[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Last hidden layer, shape ``(broadcast(members, masks, ...), N, hidden[-1])``.

        ``masks[l]`` multiplies the output of hidden layer ``l`` (already scaled by
        ``1/(1−p)``, inverted dropout).
        """
        h = x
        for layer, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.relu(torch.matmul(h, w) + b)
            if masks is not None:
                h = h * masks[layer]
        return h

    def forward(self, x: torch.Tensor, masks: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Network output with the trailing unit axis dropped: ``(..., N)``."""
        out: torch.Tensor = torch.matmul(self.features(x, masks), self.out_weight) + self.out_bias
        return out.squeeze(-1)


def dropout_masks(
    shape: tuple[int, ...],
    widths: Sequence[int],
    rates: float | Sequence[float],
    generator: torch.Generator,
) -> list[torch.Tensor]:
    """Inverted-dropout masks ``1[u ≥ p_l] / (1 − p_l)`` of shape ``(*shape, width_l)``.

    ``rates`` is one drop probability for every layer or one per layer.
    """
    per_layer = [float(rates)] * len(widths) if isinstance(rates, (int, float)) else list(rates)
    return [
        (torch.rand((*shape, w), generator=generator, dtype=DTYPE) >= p).to(DTYPE) / (1.0 - p)
        for w, p in zip(widths, per_layer, strict=True)
    ]


class ConcreteDropout(torch.nn.Module):
    """Learned dropout rates, one per hidden layer (Gal, Hron & Kendall, NeurIPS 2017).

    Training uses the relaxed ("concrete") Bernoulli mask
    ``z = σ((logit p + log u − log(1 − u)) / t)``, keep ``(1 − z)/(1 − p)``, so the rate
    gets gradients, and adds for each layer l (eq. 3 of the paper, with the prior length
    scale ``ℓ`` and N data points)::

        ℓ²/N · ‖W_{l+1}‖² / (1 − p_l)  +  2 K_l / N · (p_l log p_l + (1 − p_l) log(1 − p_l))

    where ``W_{l+1}`` consumes the dropped units and ``K_l`` is their number. The entropy
    term holds p near ½ when N is small; as N grows the data term wins and p falls, so the
    spread of MC-dropout passes shrinks with data (a fixed p keeps it roughly constant).
    """

    def __init__(
        self, n_layers: int, init_rate: float, temperature: float = 0.1, length_scale: float = 1e-2
    ) -> None:
        super().__init__()
        logit = float(np.log(init_rate) - np.log1p(-init_rate))
        self.logit_p = torch.nn.Parameter(torch.full((n_layers,), logit, dtype=DTYPE))
        self.temperature = temperature
        self.length_scale = length_scale

    def rates(self) -> list[float]:
        """Current drop probabilities p_l."""
        return [float(v) for v in torch.sigmoid(self.logit_p.detach()).cpu()]

    def relaxed_masks(
        self, shape: tuple[int, ...], widths: Sequence[int], generator: torch.Generator
    ) -> list[torch.Tensor]:
        eps = 1e-7
        p = torch.sigmoid(self.logit_p)
        masks = []
        for layer, w in enumerate(widths):
            u = torch.rand((*shape, w), generator=generator, dtype=DTYPE).to(p.device)
            noise = torch.log(u + eps) - torch.log1p(eps - u)
            z = torch.sigmoid((self.logit_p[layer] + noise) / self.temperature)
            masks.append((1.0 - z) / (1.0 - p[layer]))
        return masks

    def regulariser(self, net: MemberMLP, n: int) -> torch.Tensor:
        p = torch.sigmoid(self.logit_p)
        consumers = [*list(net.weights)[1:], net.out_weight]
        total = torch.zeros((), dtype=DTYPE, device=p.device)
        for layer, w in enumerate(consumers):
            pl = p[layer]
            weight_term = self.length_scale**2 / n * (w**2).sum() / (1.0 - pl)
            entropy = pl * torch.log(pl) + (1.0 - pl) * torch.log1p(-pl)
            total = total + weight_term + 2.0 * w.shape[-2] / n * entropy
        return total


@dataclass(frozen=True)
class TrainSpec:
    """How the slow path trains: mini-batch Adam with gradient-norm clipping.

    ``epochs`` passes over the buffer (reshuffled each time), stopping early after
    ``max_steps`` mini-batch steps; ``loss`` is ``"mse"`` or ``"bce"`` (rewards in [0, 1],
    the network output is then a logit); ``dropout`` is a fixed drop probability applied
    to every hidden layer during training (0 for none; see also :class:`ConcreteDropout`).
    """

    epochs: int
    max_steps: int
    batch_size: int
    learning_rate: float
    grad_clip: float
    loss: str = "mse"
    dropout: float = 0.0


def _pointwise_loss(out: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "bce":
        return torch.nn.functional.binary_cross_entropy_with_logits(out, target, reduction="none")
    return (out - target) ** 2


def train_network(
    net: MemberMLP,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    spec: TrainSpec,
    generator: torch.Generator,
    weights: torch.Tensor | None = None,
    concrete: ConcreteDropout | None = None,
) -> float:
    """Fit ``net`` to ``(inputs (N, D), targets (N,))``; returns the mean loss of the last epoch.

    ``weights`` (members, N) are per-member row weights (Poisson(1) bootstrap weights for
    an ensemble); each member's loss is its weighted mean over the mini-batch, and the
    members' losses are summed (their parameters are disjoint, so each gets its own
    gradient). A fresh Adam optimiser is used for every call, so training needs no state
    beyond the network and the generator. With ``concrete`` the dropout rates are learned
    with the network (its regulariser is added to the loss; ``spec.dropout`` is ignored).
    """
    n = int(inputs.shape[0])
    if n == 0:
        return float("nan")
    device = inputs.device
    params = list(net.parameters()) + ([] if concrete is None else list(concrete.parameters()))
    optimiser = torch.optim.Adam(params, lr=spec.learning_rate)
    net.train()
    steps = 0
    last = float("nan")
    batch = min(spec.batch_size, n)
    for _ in range(spec.epochs):
        order = torch.randperm(n, generator=generator).to(device)
        total, count = 0.0, 0
        for start in range(0, n, batch):
            if steps >= spec.max_steps:
                break
            idx = order[start : start + batch]
            masks = None
            shape = (net.members, int(idx.shape[0]))
            if concrete is not None:
                masks = concrete.relaxed_masks(shape, net.hidden, generator)
            elif spec.dropout > 0.0:
                masks = [
                    m.to(device) for m in dropout_masks(shape, net.hidden, spec.dropout, generator)
                ]
            out = net(inputs[idx][None], masks)  # (members, B)
            point = _pointwise_loss(out, targets[idx][None].expand_as(out), spec.loss)
            if weights is None:
                per_member = point.mean(dim=1)
            else:
                w = weights[:, idx]
                per_member = (w * point).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)
            loss = per_member.sum()
            if concrete is not None:
                loss = loss + concrete.regulariser(net, n)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
            optimiser.step()
            steps += 1
            total += float(per_member.sum().detach()) * idx.shape[0]
            count += int(idx.shape[0])
        if count:
            last = total / count / net.members
        if steps >= spec.max_steps:
            break
    net.eval()
    return last


def to_tensor(values: FloatArray, device: torch.device) -> torch.Tensor:
    """numpy → a :data:`DTYPE` tensor on ``device``."""
    return torch.as_tensor(np.ascontiguousarray(values), dtype=DTYPE, device=device)


def to_numpy(values: torch.Tensor) -> FloatArray:
    """Any tensor → float64 numpy on the CPU."""
    out: FloatArray = values.detach().to("cpu", torch.float64).numpy()
    return out


def module_arrays(module: torch.nn.Module, prefix: str) -> dict[str, NDArray[Any]]:
    """The module's ``state_dict`` as numpy arrays named ``prefix + key`` (exact copies)."""
    return {prefix + k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def load_module_arrays(
    module: torch.nn.Module, arrays: dict[str, NDArray[Any]], prefix: str
) -> None:
    """Load arrays written by :func:`module_arrays`; shapes must match exactly.

    Raises
    ------
    ValueError
        Naming the missing array or the one whose shape differs.
    """
    current = module.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    for key, tensor in current.items():
        name = prefix + key
        if name not in arrays:
            raise ValueError(f"state is missing the network array {name!r}.")
        value = np.asarray(arrays[name])
        if value.shape != tuple(tensor.shape):
            raise ValueError(
                f"state array {name!r} must have shape {tuple(tensor.shape)}; got {value.shape}."
            )
        loaded[key] = torch.as_tensor(value, dtype=tensor.dtype, device=tensor.device)
    module.load_state_dict(loaded)
