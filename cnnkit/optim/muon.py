"""Muon: momentum, then the update orthogonalised by a Newton–Schulz iteration (Keller Jordan, 2024).

For a matrix parameter W the update is ≈ U·Vᵀ of the momentum's SVD U·S·Vᵀ: every direction the
gradient moves in moves by the same amount, so rare directions are not drowned by common ones.
Conv filters (O, I, kH, kW) are treated as O × (I·kH·kW) matrices; torch.optim.Muon refuses 4-D
parameters, hence this small one. As in airbench's version, each filter bank is renormalised to a
fixed norm before its step (`normalize_weights`), which stands in for weight decay.

A step costs a handful of ops per parameter group, not per parameter: the momentum, the
renormalisation and the final update are torch's foreach ops over the group's list, and off the
CPU filter banks of the same shape are stacked and orthogonalised by one batched matmul chain (a
ResNet's dozens of same-shape 3×3 banks are a few chains), compiled on CUDA. `_stacks` and
`_orthogonalizer` say why neither is done on the CPU by default.
"""

from __future__ import annotations

import torch

from cnnkit.device import bf16_native

# Coefficients of the quintic iteration from Keller Jordan's Muon: they push every singular value
# into roughly [0.7, 1.2] in a few steps instead of converging exactly (which needs many more).
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalize(matrix: torch.Tensor, steps: int = 3, eps: float = 1e-7,
                  dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """≈ U·Vᵀ for matrix = U·S·Vᵀ, by `steps` quintic Newton–Schulz iterations in `dtype`; `matrix` is
    (m, n), or (k, m, n) for k same-shape matrices, each orthogonalised on its own (one batched
    matmul per step for all k). bf16 where the device multiplies it natively (the iteration
    tolerates the rounding, and those are the fast matmuls there); Muon passes fp32 elsewhere: on
    an AVX2-only CPU the bf16 iteration over the fast model's six filter banks took 1.28 s a step
    against 74 ms in fp32."""
    a, b, c = NS_COEFFS
    x = matrix.to(dtype)  # (..., m, n)
    # Each matrix by its own norm: spectral ≤ Frobenius ≤ 1, inside the iteration's basin.
    x = x / (torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True) + eps)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT  # iterate on the wide side: the Gram matrix is the smaller one
    for _ in range(steps):
        gram = x @ x.mT  # (..., m, m)
        poly = b * gram + c * gram @ gram  # (..., m, m)
        x = a * x + poly @ x  # (..., m, n)
    return x.mT if tall else x


_COMPILED: dict[str, object] = {}


def _orthogonalizer(device: torch.device, setting: bool | None):
    """`orthogonalize`, compiled where that pays: on CUDA by default (`compile=None`), where the eager
    chain is ~8 kernels per Newton–Schulz step, each a launch, and inductor fuses the elementwise
    ones between the matmuls. Not on the CPU, where it does not pay: measured on this project's
    2-core Xeon (AMX bf16, torch 2.14, 1 thread, `scripts/bench_optim.py --threads 1 --compile`),
    fast.yaml's six banks took 14.8 ms a step compiled against 17.6 eager, but the first calls
    compiled for 12 s (30 s with 2 threads on the busy machine; 2.5 s from inductor's disk cache),
    and a 14-epoch fast.yaml run has 350 steps: ~1 s saved. `compile=True` forces it anywhere,
    `False` nowhere."""
    if not (setting if setting is not None else device.type == "cuda"):
        return orthogonalize
    if "fn" not in _COMPILED:
        # dynamic=True, and always a (k, m, n) stack: one graph serves every shape and bank count,
        # with variants only for k = 1 (torch specialises sizes of 1) and for tall banks, so a ResNet's
        # many shapes stay within dynamo's recompile limit (8) instead of falling back to eager.
        _COMPILED["fn"] = torch.compile(orthogonalize, dynamic=True)
    return _compiled


def _compiled(matrix: torch.Tensor, steps: int, dtype: torch.dtype) -> torch.Tensor:
    if matrix.dim() == 3:
        return _COMPILED["fn"](matrix, steps, dtype=dtype)
    return _COMPILED["fn"](matrix.unsqueeze(0), steps, dtype=dtype).squeeze(0)


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 3, normalize_weights: bool = True, weight_decay: float = 0.0,
                 compile: bool | None = None, stack: bool | None = None):
        if lr <= 0 or not 0 <= momentum < 1 or ns_steps < 1:
            raise ValueError(f"Muon: need lr > 0, 0 ≤ momentum < 1, ns_steps ≥ 1 (got {lr}, {momentum}, {ns_steps})")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                        normalize_weights=normalize_weights, weight_decay=weight_decay, compile=compile,
                        stack=stack)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue  # e.g. a group frozen after its schedule ended
            if any(p.ndim < 2 for p in params):
                raise ValueError("Muon steps matrices and conv filters; give vectors (biases, norms) to SGD/Adam")
            grads = [p.grad for p in params]
            bufs = [self._momentum_buffer(p) for p in params]
            momentum = group["momentum"]
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, grads)
            directions = torch._foreach_add(grads, bufs, alpha=momentum) if group["nesterov"] else bufs
            if group["normalize_weights"]:
                # Fixed filter norm √(out channels): scale-invariant under BatchNorm, so only the direction
                # matters. √O / ‖p‖ as Python's `float / tensor` computes it: reciprocal, then times √O.
                scales = torch._foreach_reciprocal(torch._foreach_norm(params))
                torch._foreach_mul_(scales, [len(p) ** 0.5 for p in params])
                torch._foreach_mul_(params, scales)
            elif group["weight_decay"]:
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            self._orthogonal_steps(params, directions, group)
        return loss

    def _momentum_buffer(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p.grad)
        return state["momentum_buffer"]

    @staticmethod
    def _orthogonal_steps(params: list[torch.Tensor], directions: list[torch.Tensor], group: dict) -> None:
        """p -= lr · orthogonalize(direction); with stacking, the directions of same-shape (and
        same-device) banks go through one (k, O, I·kH·kW) batched chain. A bank alone is iterated
        as a plain matrix."""
        banks: dict[object, list[int]] = {}
        for i, p in enumerate(params):
            banks.setdefault((p.shape, p.device, p.dtype) if _stacks(p.device, group.get("stack")) else i, []).append(i)
        for members in banks.values():
            shape, device, dtype = params[members[0]].shape, params[members[0]].device, params[members[0]].dtype
            # `compile` is absent from the param groups of checkpoints saved before it existed.
            ns = _orthogonalizer(device, group.get("compile"))
            nsdtype = torch.bfloat16 if bf16_native(device) else torch.float32
            matrices = [directions[i].reshape(shape[0], -1) for i in members]  # (O, I·kH·kW) each
            stacked = matrices[0] if len(matrices) == 1 else torch.stack(matrices)  # (k, O, I·kH·kW)
            update = ns(stacked, group["ns_steps"], dtype=nsdtype).to(dtype)
            # reshape, not view: a tall bank's update is a transposed (non-contiguous) view.
            updates = [update.reshape(shape)] if len(members) == 1 else [u.reshape(shape) for u in update.unbind(0)]
            torch._foreach_add_([params[i] for i in members], updates, alpha=-group["lr"])


def _stacks(device: torch.device, setting: bool | None) -> bool:
    """Whether same-shape banks are orthogonalised as one batch: off the CPU by default, where one
    batched chain replaces k chains of small kernel launches. Not on the CPU, where there are no
    launches to save: measured on this project's 2-core Xeon (1 thread, min of 7), k banks
    stacked against one by one took, in fp32, 3.0 against 3.2 ms for 8 × (64, 576) but 51.5
    against 48.1 ms for 3 × (256, 2304) and 883 against 721 ms for 6 × (512, 4608); in bf16 (AMX)
    2.0/3.8, 13.7/14.0 and 247/181 ms. fast.yaml's six banks all differ in shape anyway."""
    return setting if setting is not None else device.type != "cpu"
