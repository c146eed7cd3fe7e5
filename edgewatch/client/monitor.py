"""``edgewatch.attach(...)``: the hook that lives in the training loop.

Per optimizer step the training thread does only this: at the end of backward, one
fused gradient-norm kernel (``gradnorm.py``: the norm before any clipping or
unscaling); an optimizer step pre-hook reads the param groups' learning rates (before
``zero_grad`` and before the scheduler moves the LR on); ``mon.step(loss)`` appends one
tuple to a list. Every 64 steps, or 0.5 s, the list goes to the sender
thread in one piece. No lock, no socket, no GPU sync on the training thread: scalars
on a GPU stay there until the sender reads a whole chunk back (``readback.py``).

Every failure inside the monitor is caught, counted in ``stats`` and logged once; the
training loop never sees an exception from edgewatch.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from edgewatch.client.arguments import (
    DEFAULT_ENDPOINT,
    check_arguments,
    curve_keys,
    endpoint_list,
    open_spool,
)
from edgewatch.client.capture import (
    describe_optimizer,
    global_grad_norm,
    process_identity,
    single_group,
    trainable_params,
)
from edgewatch.client.curvature import CurvatureSchedule, Kind
from edgewatch.client.gradnorm import BackwardGradNorm
from edgewatch.client.options import AttachOptions
from edgewatch.client.plan_tracker import PlanTracker
from edgewatch.client.readback import Row, Value, host_value, loss_scale, pack
from edgewatch.client.records import PlanItem, RecordItem, StepChunk
from edgewatch.client.schedule import PlanSource
from edgewatch.client.sender import Sender
from edgewatch.client.signals import StepSignals
from edgewatch.monitor.thresholds import OptimizerSpec
from edgewatch.schemas import Event, JobEnd, Sharpness

log = logging.getLogger("edgewatch.client")

# The sender's cost is mostly per frame (a wakeup, a send, an Ack: bench/RESULTS.md),
# so records travel in few, large frames; half a second of delay costs a monitor
# scraped every few seconds nothing.
CHUNK_STEPS = 64
CHUNK_SECONDS = 0.5


class Monitor:
    """Returned by ``edgewatch.attach`` (``client/attach.py``): ``step(loss)`` per
    optimizer step, ``close()`` at the end.

    Options beyond DESIGN.md's ``attach`` signature (keyword-only, through ``attach``)
    are the fields of :class:`~edgewatch.client.options.AttachOptions`, each documented
    there: buffering (``max_buffered``, ``flush_interval``, ``close_timeout``), the
    disk spool (``spool_dir``, ``spool_max_bytes``), CURVE (``server_key``,
    ``client_key``), what is measured (``hook_grad_norm``, ``step_signals``,
    ``critical_sharpness``, ``grad_scaler``, ``probe_batch``), ``all_ranks`` and the
    ``preflight`` report.
    ``scheduler`` (a torch LR scheduler, or a function step -> LR): the planned LR of the
    coming steps (``client/schedule.py``) goes to the daemon at the first step and whenever
    the LR leaves the plan, so that warmups and scheduled jumps are forecast.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model: torch.nn.Module | None = None,
        *,
        job: str,
        endpoint: str | Sequence[str] = DEFAULT_ENDPOINT,
        probe: Callable[[], torch.Tensor] | None = None,
        scheduler: Any = None,
        total_steps: int | None = None,
        budget: float = 0.02,
        options: AttachOptions | None = None,
    ) -> None:
        endpoints = endpoint_list(endpoint)
        check_arguments(optimizer, job, endpoints, budget, total_steps)
        options = AttachOptions() if options is None else options
        self.options = options
        probe_batch, grad_scaler = options.probe_batch, options.grad_scaler
        hook_grad_norm = options.hook_grad_norm
        self.job = job
        self.optimizer = optimizer
        self.spec = OptimizerSpec.of(optimizer)  # read once: kind and hyper-parameters
        self.model = model
        self.probe = probe
        self.scheduler = scheduler
        self._plans = PlanSource.create(scheduler, optimizer)  # the LR plan, looked ahead
        self._plan_tracker = PlanTracker() if self._plans is not None else None
        self.budget = budget
        self.close_timeout = options.close_timeout
        self.probe_batch = probe_batch  # the probe's batch size, reported with each estimate
        self.grad_scaler = grad_scaler
        self.hook_grad_norm = hook_grad_norm
        self.errors = 0
        self.closed = False
        self._logged: set[str] = set()
        self._step = 0
        self._rows: list[Row] = []  # (step, wall time, group LRs, loss, grad norm)
        self._last_ship = time.monotonic()
        self._lrs: list[float] | None = None
        self._grad_norm: Value = None
        self._signals: tuple[Value, Value] = (None, None)  # update norm, moment ratio
        self._params = trainable_params(optimizer)
        self._one_group = single_group(self._params)
        identity = process_identity()
        # Under torchrun every rank runs this line; by default rank 0 alone reports.
        self.enabled = options.all_ranks or identity["rank"] == 0
        self._off = not self.enabled  # one test on the hot path: disabled or closed
        # The run id is drawn from the OS, never from the user's RNG: a seeded re-run must
        # be a new run (the same id would make the daemon take its records for resends),
        # and drawing from ``random`` would change the run being watched.
        self.run = secrets.randbits(62)
        self._backward_norm: BackwardGradNorm | None = None
        if self.enabled and hook_grad_norm:
            self._backward_norm = BackwardGradNorm(self._params, grad_scaler)
        self._hooks = [optimizer.register_step_pre_hook(self._before_optimizer_step)]
        self._step_signals: StepSignals | None = None
        if self.enabled and options.step_signals:
            self._step_signals = StepSignals(optimizer, self.spec.preconditioned)
            self._hooks.append(optimizer.register_step_post_hook(self._after_optimizer_step))
        self.curvature: CurvatureSchedule | None = None
        if probe is not None and self.enabled:
            # Under DDP the sharpness is that of the local replica: HVPs on model.module,
            # whose forward issues no collective (DDP's would wait for the other ranks).
            target: torch.nn.Module | list[torch.Tensor] = self._params
            if isinstance(model, torch.nn.parallel.DistributedDataParallel):
                target = model.module
            elif model is not None:
                target = model
            self.curvature = CurvatureSchedule(
                target,
                optimizer,
                probe,
                budget,
                critical=options.critical_sharpness,
                total_steps=total_steps,
                plans=self._plans,  # rises of the plan are measured before they come
            )
        self.sender: Sender | None = None
        if self.enabled:
            start = dict(
                identity,
                wall_time=time.time(),
                optimizer=describe_optimizer(self.spec),
                total_steps=total_steps,
                budget=budget,
                preflight=None if options.preflight is None else options.preflight.to_record(),
            )
            self.sender = Sender(
                endpoints,
                job,
                self.run,
                start,
                max_buffered=options.max_buffered,
                flush_interval=options.flush_interval,
                curve=curve_keys(options.server_key, options.client_key),
                spool=open_spool(options.spool_dir, job, self.run, options.spool_max_bytes),
                plan_news=self._plan_tracker.news if self._plan_tracker is not None else None,
            )
            self.sender.start()

    # -- hot path ---------------------------------------------------------------------

    def _before_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._off:
            return
        try:
            self._lrs = [group["lr"] for group in optimizer.param_groups]
            if self._backward_norm is not None:
                backward_ran, norm = self._backward_norm.take()
                if not backward_ran:  # gradients set by hand: nothing else to measure
                    norm = global_grad_norm(self._params, self._one_group)
                self._grad_norm = host_value(norm)
        except Exception as exc:
            self._fail("hook", exc)

    def _after_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._off or self._step_signals is None:
            return
        try:
            update, ratio = self._step_signals()
            self._signals = (host_value(update), host_value(ratio))
        except Exception as exc:
            self._fail("signals", exc)

    def step(
        self,
        loss: torch.Tensor | float | None = None,
        *,
        step: int | None = None,
        grad_norm: torch.Tensor | float | None = None,
    ) -> None:
        """Record the optimizer step just taken. Never blocks, never raises.

        ``grad_norm``: a norm measured by the caller (an integration that reads it before
        gradient clipping), used instead of the one the optimizer hook took.
        """
        if self._off:
            return
        # Kept short on purpose: inside a real loop, with caches cold from the forward
        # and backward passes, each line here costs several times its microbenchmark.
        try:
            if type(loss) is torch.Tensor and loss.is_cpu:
                loss = loss.item()  # raises for a tensor of several elements: counted below
            elif loss is not None:
                loss = host_value(loss)
            lrs = self._lrs
            skipped = lrs is None and self.grad_scaler is not None
            if lrs is None:  # optimizer.step() did not run: an AMP skip, or no hook fired
                lrs = [group["lr"] for group in self.optimizer.param_groups]
                if self._backward_norm is not None:
                    self._backward_norm.discard()  # that backward led to no step
            scale = loss_scale(self.grad_scaler) if self.grad_scaler is not None else None
            number = self._step if step is None else int(step)
            self._step = number + 1
            rows = self._rows
            norm = self._grad_norm if grad_norm is None else host_value(grad_norm)
            rows.append((number, time.time(), lrs, loss, norm, scale, *self._signals))
            self._lrs = self._grad_norm = None
            self._signals = (None, None)
            if len(rows) >= CHUNK_STEPS or time.monotonic() - self._last_ship > CHUNK_SECONDS:
                self._ship()
        except Exception as exc:
            self._fail("step", exc)
            return
        plans = self._plan_tracker
        if plans is not None and (plans.wanted or plans.news) and plans.due() and self._plans:
            self._send_plan(number + 1)
        if skipped:  # inf/NaN gradients: the scaler's business, not divergence
            self.event("skipped_step", "GradScaler skipped the optimizer step", step=number)
        if self.curvature is not None and self.sender is not None:
            self.curvature.follow(self.sender.stability_ratio)
        if self.curvature is not None:
            kind = self.curvature.due(number, lrs[0], loss, norm)
            if kind is not None:
                self._measure(kind, number, lrs[0])

    def _measure(self, kind: Kind, number: int, lr: float) -> None:
        """One curvature measurement (or slice of one); its record when it is done."""
        assert self.curvature is not None
        started = time.perf_counter()
        try:
            fields = self.curvature.measure(kind, float(lr))
        except Exception as exc:
            self.curvature.failed(kind, time.perf_counter() - started)
            self._fail(kind, exc)
            return
        if fields is not None and self.sender is not None:
            self._ship()  # the steps before this estimate go first
            fields |= {"step": number, "wall_time": time.time(), "probe_batch": self.probe_batch}
            self.sender.put(RecordItem(Sharpness, fields))

    def _send_plan(self, first_step: int) -> None:
        """Snapshot the schedule from the next step on; the sender steps it ahead."""
        assert self._plans is not None and self._plan_tracker is not None
        assert self.sender is not None
        self._plan_tracker.sending()
        try:
            lookahead = self._plans.snapshot(first_step)
        except Exception as exc:
            self._plans = None  # a schedule that cannot be copied will not copy next time
            self._plan_tracker.failed()
            self._fail("plan", exc)
            return
        self._ship()
        self.sender.put(PlanItem(lookahead))

    def _ship(self) -> None:
        if self._rows and self.sender is not None:
            self.sender.put(StepChunk(self._rows, pack(self._rows)))
        self._rows = []
        self._last_ship = time.monotonic()

    # -- everything else --------------------------------------------------------------

    def event(self, kind: str, detail: str = "", *, step: int | None = None) -> None:
        """Report something that happened (``checkpoint_saved``, ``data_reshuffled``, ...)."""
        if not self.enabled or self.closed or self.sender is None:
            return
        try:
            self._ship()  # keep the event behind the steps before it
            at = self._step if step is None else step
            self.sender.put(
                RecordItem(
                    Event, {"step": at, "wall_time": time.time(), "kind": kind, "detail": detail}
                )
            )
        except Exception as exc:
            self._fail("event", exc)

    @property
    def stats(self) -> dict[str, int | str]:
        """Counters: records sent/acknowledged/rejected/dropped, errors, unacknowledged,
        spooled (written to the disk spool) and spool_torn_bytes (discarded, torn); the
        endpoint sent to now and failovers (moves to the next endpoint so far); with
        a probe, sharpness estimates per reason and the curvature spending
        (``CurvatureSchedule.stats``)."""
        s = self.sender.stats if self.sender else None
        out: dict[str, int | str] = {}
        if self.curvature is not None:
            out |= self.curvature.stats()
        return out | {
            "steps": self._step,
            "records": s.records if s else 0,
            "acknowledged": s.acknowledged if s else 0,
            "rejected": s.rejected if s else 0,
            "dropped": s.dropped if s else 0,
            "unacknowledged": self.sender.unacknowledged if self.sender else 0,
            "errors": self.errors + (s.errors if s else 0),
            "spooled": s.spooled if s else 0,
            "spool_torn_bytes": s.spool_torn_bytes if s else 0,
            "endpoint": self.sender.endpoint if self.sender else "",
            "failovers": self.sender.failovers if self.sender else 0,
        }

    def close(self, status: str = "finished", timeout: float | None = None) -> None:
        """Send what is left and wait (at most ``timeout`` s) for acknowledgements.

        Returns at once when no daemon is connected. Safe to call twice.
        """
        if self.closed:
            return
        self.closed = self._off = True
        try:
            for hook in self._hooks:
                hook.remove()
            if self._backward_norm is not None:
                self._backward_norm.remove()
            if self.sender is None:
                return
            self._ship()
            end = {"step": max(self._step - 1, 0), "wall_time": time.time(), "status": status}
            self.sender.put(RecordItem(JobEnd, end))
            wait = self.close_timeout if timeout is None else timeout
            self.sender.finish(wait)
            self.sender.join(wait + 1.0)
            left = self.sender.unacknowledged
            if left:
                log.warning(
                    "edgewatch: closed with %d record(s) not acknowledged by %s",
                    left,
                    self.sender.endpoint,
                )
        except Exception as exc:
            self._fail("close", exc)

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self.close(
            "finished"
            if exc_type is None
            else ("interrupted" if exc_type is KeyboardInterrupt else "failed")
        )

    def _fail(self, where: str, exc: BaseException) -> None:
        self.errors += 1
        if where not in self._logged:
            self._logged.add(where)
            log.warning(
                "edgewatch: error in %s, training continues (further errors counted): %r",
                where,
                exc,
            )
