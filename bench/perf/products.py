"""Exact (double-backward) against difference Hessian-vector products, side by side, on
the instability benchmark's models and the nanoGPT-sized GPT of ``make bench-client``.

Each model is trained SETTLE steps on its own plan (so that Adam's second moment is
there and the preconditioned operator is the one the tracker sees), then, on its probe,
at the same parameters and dropout masks:

- the milliseconds of a training step, of the exact operator's probe graph (forward and
  backward with ``create_graph``), of one exact product, and of one difference product
  (a plain forward and backward), each the median of REPEAT;
- on the top Ritz vector of an exact estimate: the difference product's relative error
  ‖D·v − H·v‖/‖H·v‖ at each relative step of ``monitor.difference.REL_STEPS``, and the
  step ``calibrate`` keeps (none where no step agrees to 1%: those models' estimates
  stay exact);
- on a random unit vector, the error at the step kept (1e-5 where none is): why a
  restarted estimate, whose start mixes in a random vector, goes on exact products.

Usage: python -m bench.perf.products
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from bench.common import header
from bench.instability import families
from edgewatch.monitor.curvature import preconditioner_scale
from edgewatch.monitor.difference import REL_STEPS, DifferenceOperator, calibrate
from edgewatch.monitor.hvp import HessianOperator
from edgewatch.monitor.isolation import seed_globals, untouched
from edgewatch.monitor.tracking import SharpnessTracker
from edgewatch_testkit import corpus
from edgewatch_testkit.gpt import GPT, adamw_groups, next_token_loss

SETTLE = 60  # training steps before the measurement
REPEAT = 15  # timings per quantity (the median is kept)
SEED = 7  # of the probe's dropout masks


def _ms(work: Callable[[], object]) -> float:
    work()  # one-off set-up out of the timing
    times = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


class Case:
    """A model with its optimizer, probe and a training step."""

    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        probe: Callable[[], torch.Tensor],
        train: Callable[[int], None],
    ) -> None:
        self.name, self.model, self.optimizer, self.probe = name, model, optimizer, probe
        self.train = train


def family_case(name: str) -> Case:
    spec = next(s for s in families.specs([0], [name]))
    setup = families.build(spec)

    def train(step: int) -> None:
        for group in setup.optimizer.param_groups:
            group["lr"] = setup.planned_lr(step)
        setup.optimizer.zero_grad(set_to_none=True)
        setup.loss(setup.batch(step)).backward()  # type: ignore[no-untyped-call]
        setup.optimizer.step()

    return Case(f"{name} ({spec.name})", setup.model, setup.optimizer, setup.probe, train)


def gpt_case() -> Case:
    torch.manual_seed(0)
    model = GPT(corpus.VOCAB, 64, 128, 2, 4)
    optimizer = torch.optim.AdamW(adamw_groups(model, 0.1), lr=1e-3)
    batch = corpus.batch_sampler(0, 16, 64)
    rows = corpus.fixed_windows(corpus.train_tokens(), 4, 64)

    def train(step: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        next_token_loss(model, batch(step)).backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    return Case(
        "GPT of make bench-client", model, optimizer, lambda: next_token_loss(model, rows), train
    )


def measure(case: Case) -> str:
    for step in range(SETTLE):
        case.train(step)
    step_ms = _ms(lambda: case.train(SETTLE))
    tracker = SharpnessTracker(
        case.model, case.probe, case.optimizer, hvps_per_step=30, seed=0, hvp="exact"
    )
    while (est := tracker.advance()) is None:
        pass
    params = tracker.params
    scale = preconditioner_scale(case.optimizer, params)
    with untouched(case.model, params):
        seed_globals(SEED, params)
        exact = HessianOperator(params, case.probe, scale)
        vector = est.vector
        product = exact(vector)
        graph_ms = _ms(lambda: HessianOperator(params, case.probe, scale))
        exact_ms = _ms(lambda: exact(vector))
        reseed = lambda: seed_globals(SEED, params)  # noqa: E731
        errors = []
        for rel_step in REL_STEPS:
            difference = DifferenceOperator(
                params, case.probe, scale, reseed, rel_step, at=(exact.loss, exact.gradient)
            )
            moved = difference(vector).to(product.dtype)
            errors.append(float(torch.linalg.vector_norm(moved - product) / product.norm()))
        difference_ms = _ms(lambda: difference(vector))
        kept = calibrate(exact, vector, product, case.probe, reseed).rel_step
        generator = torch.Generator().manual_seed(0)
        random = torch.randn(exact.dim, generator=generator, dtype=torch.float64)
        random = random / random.norm()
        reference = exact(random)
        difference.rel_step = kept if kept is not None else REL_STEPS[0]
        moved = difference(random).to(reference.dtype)
        random_error = float(torch.linalg.vector_norm(moved - reference) / reference.norm())
    cells = " | ".join(f"{e:.1e}" for e in errors)
    return (
        f"| {case.name} | {step_ms:.2f} | {graph_ms:.2f} | {exact_ms:.2f} | {difference_ms:.2f} "
        f"| {exact_ms / difference_ms:.2f} | {cells} | {kept if kept is not None else 'none'} "
        f"| {random_error:.1e} |"
    )


def main() -> None:
    torch.set_num_threads(1)
    print(header("Exact and difference Hessian-vector products", "python -m bench.perf.products"))
    print(
        f"Trained {SETTLE} steps, then at the same parameters: milliseconds (median of "
        f"{REPEAT}) and the difference product's relative error on the top Ritz vector "
        "at each relative step.\n"
    )
    steps = " | ".join(f"error at {s:g}" for s in REL_STEPS)
    print(
        f"| model | step (ms) | probe graph (ms) | exact product (ms) | difference product "
        f"(ms) | exact / difference | {steps} | step kept | error on a random vector |"
    )
    print("|---|" + "---|" * (7 + len(REL_STEPS)))
    cases = [family_case(name) for name in families.FAMILIES]
    for case in [*cases, gpt_case()]:
        print(measure(case), flush=True)


if __name__ == "__main__":
    main()
