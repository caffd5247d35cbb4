"""Lowering rules of the ops that are not products: FLOPs per phase and what the backward reads.

Every such op gets a forward node (reads its operands, writes its output), an input-gradient node when
a gradient flows to one of its operands (reads G, the saved tensors of its rule and its parameters;
writes the gradient of each differentiable operand), and a weight-gradient node when it owns trainable
parameters (reads G and the saved tensors; writes their gradients).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from swat_fx.backends.accel import flops
from swat_fx.backends.accel.classify import NORMS
from swat_fx.backends.accel.tensors import TensorRef


@dataclass(frozen=True)
class OpContext:
    """The operands of one op: tensor inputs (not parameters), parameters, output, and the inputs a
    gradient flows to; `window` is the pooling window in entries (1 for other ops)."""

    inputs: list[TensorRef]
    params: list[TensorRef]
    output: TensorRef
    grad_inputs: list[TensorRef]
    window: float = 1.0


Count = Callable[[OpContext], float]


@dataclass(frozen=True)
class Rule:
    fwd: Count
    bwd_input: Count
    bwd_weight: Count
    saved: Callable[[OpContext], list[TensorRef]]


def _out(ctx: OpContext) -> int:
    return ctx.output.numel


def _first_input(ctx: OpContext) -> int:
    return ctx.inputs[0].numel


def _reductions(ctx: OpContext, operands: list[TensorRef]) -> int:
    """Summing G over the broadcast dims of each operand smaller than the output."""
    return sum(_out(ctx) for ref in operands if ref.numel != _out(ctx))


def _product_grads(ctx: OpContext, operands: list[TensorRef]) -> int:
    """G times the other operand, for each operand that gets a gradient, then its broadcast sum."""
    return _out(ctx) * len(operands) + _reductions(ctx, operands)


def _nothing(ctx: OpContext) -> list[TensorRef]:
    return []


def _none(ctx: OpContext) -> float:
    return 0.0


def _norm(scale: int) -> Count:
    return lambda ctx: scale * _first_input(ctx)


_NORM = Rule(_norm(flops.NORM_FWD), _norm(flops.NORM_BWD_INPUT), _norm(flops.NORM_BWD_WEIGHT),
             lambda ctx: ctx.inputs[:1])
_ELEMENTWISE = Rule(
    fwd=lambda ctx: flops.ELEMENTWISE * _out(ctx),
    bwd_input=lambda ctx: flops.ELEMENTWISE * sum(ref.numel for ref in ctx.grad_inputs),
    bwd_weight=lambda ctx: flops.ELEMENTWISE * _out(ctx) * len(ctx.params),
    saved=lambda ctx: ctx.inputs,
)

RULES: dict[str, Rule] = {
    **dict.fromkeys(NORMS, _NORM),
    "elementwise": _ELEMENTWISE,
    "relu": Rule(_ELEMENTWISE.fwd, lambda ctx: flops.ELEMENTWISE * _out(ctx), _none, lambda ctx: [ctx.output]),
    "max_pool": Rule(
        lambda ctx: flops.max_pool_flops(_out(ctx), ctx.window), _out, _none, lambda ctx: ctx.inputs[:1]
    ),
    "avg_pool": Rule(
        lambda ctx: flops.avg_pool_flops(_out(ctx), ctx.window),
        lambda ctx: flops.avg_pool_flops(_out(ctx), ctx.window), _none, _nothing,
    ),
    "add": Rule(
        lambda ctx: flops.add_flops(_out(ctx), len(ctx.inputs) + len(ctx.params)),
        lambda ctx: _reductions(ctx, ctx.grad_inputs), lambda ctx: _reductions(ctx, ctx.params), _nothing,
    ),
    "mul": Rule(
        lambda ctx: flops.add_flops(_out(ctx), len(ctx.inputs) + len(ctx.params)),
        lambda ctx: _product_grads(ctx, ctx.grad_inputs), lambda ctx: _product_grads(ctx, ctx.params),
        lambda ctx: ctx.inputs,
    ),
    "cat": Rule(_none, _none, _none, _nothing),
}
