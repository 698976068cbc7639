"""The training loop: :meth:`Trainer.fit` as a short loop over named steps, each step a method below."""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from types import FrameType
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from mcn_training.checkpoints import BEST_WEIGHTS_NAME, LAST_WEIGHTS_NAME
from mcn_training.distributed import StopRequest, all_reduce_stop_flags, barrier
from mcn_training.errors import DataError, TrainError
from mcn_training.reporting import (
    LossWindow,
    open_tensorboard,
    progress_bar,
    report_evaluation,
    report_losses,
    write_run_config,
)
from mcn_training.sampling import train_loader
from mcn_training.training_run import TrainingRun

LOG = logging.getLogger("mcn_training")

#: Consecutive non-finite losses tolerated with fp16 (the GradScaler skips those steps) before stopping.
MAX_SKIPPED_FP16_STEPS = 20
#: Batch entries that are not loss targets.
NON_TARGET_KEYS = frozenset({"image", "image_id", "letterbox", "orig_size"})


class EvaluationStopped(BaseException):
    """A signal during an evaluation (as KeyboardInterrupt, a BaseException: ``except Exception`` passes)."""


@contextlib.contextmanager
def signals_stop_evaluation(stop: StopRequest, distributed: bool) -> Iterator[None]:
    """SIGTERM/SIGINT abandon the evaluation inside (raising :class:`EvaluationStopped`) and request the
    stop, as do those that came before it since the last step.

    One process only: with several, the others would wait in the evaluation's collectives, so the
    evaluation finishes and the stop follows it (the end of the run saved its checkpoint before).
    """
    if distributed or threading.current_thread() is not threading.main_thread():
        yield
        return
    if stop.requested:
        raise EvaluationStopped
    armed = True

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.requested = True
        stop.signum = stop.signum or signum
        if armed:  # not once the evaluation is over: the stop is then the loop's, after the next step
            raise EvaluationStopped

    previous: dict[signal.Signals, Any] = {}
    try:  # installed inside: a signal between the two still finds the first restored
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handle)
        yield
    finally:
        try:
            armed = False
        finally:  # a signal raising just before that line still finds the handlers restored
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class Trainer(TrainingRun):
    """A training run that trains: :meth:`fit` runs the loop, :meth:`train_step` is one optimizer step."""

    def fit(self) -> dict[str, Any]:
        """Train until the schedule (or max_steps / max_minutes / a signal) ends; returns a summary."""
        self._start_run()
        loader = self._make_loader()
        self.model.train()
        self._nonfinite_steps = 0
        self._saved_step: int | None = None
        self._stop = StopRequest()
        try:
            with self._stop:  # until the last file is written: a signal never kills the run half-way
                interrupted = self._train(loader)
        except DataError:
            # Between steps (the loader fetches the next batch after a step's evaluation and checkpoint) or
            # in an evaluation: the state is that of the last finished step, without that evaluation (the
            # resumed run evaluates). With several processes the others are still in a collective, which a
            # checkpoint would need: torchrun ends them, the last checkpoint stays.
            if self.dist.world_size == 1:
                self.save_checkpoint()
                LOG.error(
                    "a sample could not be loaded after global step %d: checkpoint saved; repair or "
                    "replace that file, then --resume (removing a training image changes the epoch's order: "
                    "resume from an epoch checkpoint then)", self.state.global_step,
                )  # fmt: skip
            raise
        summary = self.summary(interrupted)
        if interrupted:  # where only another rank got a signal: SIGTERM, what schedulers send to stop a job
            summary["stop_signal"] = self._stop.signum or int(signal.SIGTERM)
        return summary

    def _train(self, loader: DataLoader[Any]) -> bool:
        """The evaluation a stop left undone, the epochs, the end of the run; returns whether a signal
        stopped it."""
        interrupted = stop = not self._catch_up()
        while not stop and not self._schedule_done():
            interrupted, stop = self._train_epoch(loader)
            if self.state.step_in_epoch == self.steps_per_epoch and not self._end_epoch(stop):
                interrupted = stop = True  # a signal during the epoch's evaluation
        return self._finish(interrupted)

    def _train_epoch(self, loader: DataLoader[Any]) -> tuple[bool, bool]:
        """Train the rest of the current epoch, or until the run ends or must stop.

        Returns (a rank was interrupted by a signal, the run stops: interrupted or out of time).
        """
        bar, window = self._start_epoch()
        interrupted = stop = False
        step_start = time.perf_counter()
        for batch in loader:
            losses, interrupted, out_of_time = self._run_step(batch, step_start)
            stop = interrupted or out_of_time
            bar.update(1)
            window.add(losses, batch["image"].shape[0] * self.dist.world_size)
            self._maybe_log(window, bar)
            if self._schedule_done() or stop:
                break
            # Evaluate before checkpointing (as at epoch ends): the checkpoint then holds this evaluation,
            # so a resumed run neither forgets it nor replaces best.safetensors with worse weights.
            if self._due_by_steps() and not self._evaluate_and_track():
                interrupted = stop = True
                break
            self._maybe_checkpoint()
            step_start = time.perf_counter()
        bar.close()
        self._log_rest_of_window(window)
        return interrupted, stop

    def _evaluate_and_track(self) -> bool:
        """Evaluate, record it in the history, export best weights if it is the best so far; False where a
        signal stopped the evaluation (nothing recorded: the resumed run evaluates, see :meth:`_catch_up`).

        An evaluation that fails (a DataError aside, which :meth:`fit` handles) saves the checkpoint of the
        last step first, without that evaluation, in a single process; with several, the other ranks are in
        a collective that a checkpoint would need, and the last checkpoint stays."""
        step = self.state.global_step
        try:
            with signals_stop_evaluation(self._stop, self.dist.distributed):
                metrics = self.evaluate()
        except EvaluationStopped:
            LOG.warning("signal %s: evaluation of global step %d left to --resume", self._stop.signum, step)
            self.model.train()
            return False
        except DataError:
            raise
        except Exception:
            if self.dist.world_size == 1:
                self.save_checkpoint()
                LOG.error(
                    "evaluation of global step %d failed: checkpoint saved; fix the cause, then --resume",
                    step,
                )
            raise
        st = self.state
        if st.record_evaluation(metrics, self.metric, round(self._epoch_float(), 4)):
            self.export(BEST_WEIGHTS_NAME, metrics)
        if self.dist.is_main:
            history = {"metric": self.metric, "best": self._best(), "evaluations": st.history}
            report_evaluation(self.out, self.writer, metrics, st.global_step, history)
        self.model.train()
        return True

    def _due_by_steps(self) -> bool:
        """Whether eval.every_steps asks for an evaluation of the current weights, not yet made."""
        every, st = self.cfg.eval.every_steps, self.state
        due = bool(every) and st.global_step > 0 and st.global_step % every == 0
        return due and st.last_eval_step != st.global_step

    def _due_at_epoch_end(self) -> bool:
        """Whether an epoch has just ended that eval.every_epochs evaluates, and these weights are not
        evaluated yet (not again where eval.every_steps just did)."""
        every, st = self.cfg.eval.every_epochs, self.state
        ended = st.step_in_epoch == 0 and st.epoch > 0
        return bool(every) and ended and st.epoch % every == 0 and st.last_eval_step != st.global_step

    def _catch_up(self) -> bool:
        """A resumed run's first job: the evaluation due at its checkpoint's step that a stop skipped (a
        signal, a failed evaluation), then the checkpoint holding it; False where a signal stops it again.
        The end of the run's evaluation is left to :meth:`_finish`."""
        if self._schedule_done() or not (self._due_by_steps() or self._due_at_epoch_end()):
            return True
        if not self._evaluate_and_track():
            return False
        self._save_and_export()
        return True

    def _start_run(self) -> None:
        """Write the run's config, open TensorBoard and log what is about to be trained."""
        if self.dist.is_main:
            write_run_config(self.out, self.cfg, self.model_config, self.command)
            if self.cfg.runtime.tensorboard:
                self.writer = open_tensorboard(self.out, self.state.global_step)
        cfg, st = self.cfg, self.state
        assert self.data.train is not None
        late = cfg.schedule.drops_past_end()
        if late and self.dist.is_main:
            sched = cfg.schedule
            end = "a fraction of 1" if sched.lr_drop_unit == "fraction" else f"schedule.epochs {sched.epochs}"
            LOG.warning(
                "schedule.lr_drops: %s at or past the end of training (%s): the learning rate never drops "
                "there", ", ".join(f"{d:g}" for d in late), end,
            )  # fmt: skip
        LOG.info(
            "training %s (%s, tasks %s): %d train / %d val images, %d process(es) x %d images per step, "
            "%d steps per epoch, steps %d..%d, device %s, amp %s, output %s",
            cfg.name,
            self.model_config.name,
            ",".join(sorted(self.model_config.tasks)),
            len(self.data.train),
            len(self.data.val),  # type: ignore[arg-type]
            self.dist.world_size,
            self.per_rank_batch,
            self.steps_per_epoch,
            st.global_step,
            self.total_steps,
            self.device,
            self.amp_dtype,
            self.out,
        )

    def _make_loader(self) -> DataLoader[Any]:
        rt = self.cfg.runtime
        return train_loader(
            self.train_set, self.sampler, self.per_rank_batch, self.cfg.data.workers, self.device, rt.seed
        )

    def _start_epoch(self) -> tuple[Any, LossWindow]:
        """Point the sampler at the epoch's first untrained sample; returns a progress bar, a loss window."""
        st = self.state
        self.sampler.set_epoch(st.epoch)
        self.sampler.skip = st.step_in_epoch * self.per_rank_batch
        desc = f"epoch {st.epoch + 1}/{self.cfg.schedule.epochs}"
        enabled = self.cfg.runtime.progress and self.dist.is_main
        return progress_bar(self.steps_per_epoch, st.step_in_epoch, desc, enabled), LossWindow(self.device)

    def _run_step(
        self, batch: Mapping[str, torch.Tensor], step_start: float
    ) -> tuple[dict[str, torch.Tensor], bool, bool]:
        """Train on ``batch`` and count the step; returns the loss terms and whether any rank was
        interrupted by a signal / ran out of time (the same answer on every rank)."""
        st = self.state
        losses = self.train_step(batch)
        loss_value, interrupted, out_of_time = all_reduce_stop_flags(
            self.dist, losses["total"], self._stop.requested, self._out_of_time(step_start)
        )
        self._check_finite(loss_value, losses)
        st.train_time_s += time.perf_counter() - step_start
        st.global_step += 1
        st.step_in_epoch += 1
        return losses, interrupted, out_of_time

    def train_step(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One optimizer step on one batch; returns the detached loss terms."""
        images = batch["image"].to(self.device, non_blocking=True)
        if self.cfg.runtime.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = {
            k: v.to(self.device, non_blocking=True) for k, v in batch.items() if k not in NON_TARGET_KEYS
        }
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            outputs = self.model(images)
        losses = self.criterion({k: v.float() for k, v in outputs.items()}, targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["total"]).backward()
        if self.cfg.optim.grad_clip_norm is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {k: v.detach() for k, v in losses.items()}

    def _out_of_time(self, step_start: float) -> bool:
        """Whether schedule.max_minutes of training time are used up, counting the step in progress."""
        max_minutes = self.cfg.schedule.max_minutes
        if max_minutes is None:
            return False
        return self.state.train_time_s + time.perf_counter() - step_start >= max_minutes * 60.0

    def _check_finite(self, loss_value: float, losses: Mapping[str, torch.Tensor]) -> None:
        """Raise TrainError on a non-finite loss, with fp16 only after a run of them."""
        # fp16: the GradScaler skips a step with overflowing values; only a run of them is fatal.
        self._nonfinite_steps = 0 if math.isfinite(loss_value) else self._nonfinite_steps + 1
        if self._nonfinite_steps > (MAX_SKIPPED_FP16_STEPS if self.scaler.is_enabled() else 0):
            terms = {k: float(v) for k, v in losses.items()}
            raise TrainError(
                f"loss is {loss_value} at global step {self.state.global_step + 1} ({terms}); stopping. "
                f"The last checkpoint in {self.out} is intact: lower optim.lr or check the data."
            )

    def _maybe_log(self, window: LossWindow, bar: Any) -> None:
        """Every runtime.log_every_steps steps: log the window's mean losses and start a new window."""
        if self.state.global_step % self.cfg.runtime.log_every_steps == 0:
            self._log_losses(window, bar)
            window.reset()

    def _log_rest_of_window(self, window: LossWindow) -> None:
        """At the end of an epoch's loop: log the steps not logged yet."""
        if window.count and self.state.global_step % self.cfg.runtime.log_every_steps:
            self._log_losses(window, None)

    def _maybe_checkpoint(self) -> None:
        every = self.cfg.checkpoint.every_steps
        if every and self.state.global_step % every == 0:
            self.save_checkpoint()

    def _end_epoch(self, stop: bool) -> bool:
        """After an epoch's last step: count the epoch, evaluate if due, checkpoint (and keep a copy), export
        last weights; returns False where a signal stopped the evaluation.

        Not evaluated here where the run stops (``stop``, or its schedule is done): a stopping run saves
        first, since an evaluation (minutes on COCO) can outlast a scheduler's grace period; the run's end
        evaluates after it (:meth:`_finish`), a resumed run before going on (:meth:`_catch_up`).
        """
        st = self.state
        st.epoch += 1
        st.step_in_epoch = 0
        evaluated = True
        if not stop and not self._schedule_done() and self._due_at_epoch_end():
            evaluated = self._evaluate_and_track()
        self._save_and_export()
        return evaluated

    def _finish(self, interrupted: bool) -> bool:
        """After the loop: checkpoint and last weights, then, unless a signal stopped the run, the final
        evaluation and both again; returns whether a signal stopped the run."""
        st = self.state
        if self._saved_step != st.global_step:
            self._save_and_export()  # first: a final evaluation that fails or is stopped loses no training
        due = self.cfg.eval.at_end and st.last_eval_step != st.global_step
        if not interrupted and (due or self._due_at_epoch_end()):
            interrupted = not self._evaluate_and_track()
            if not interrupted:
                self._save_and_export()
        barrier(self.dist)
        if self.writer is not None:
            self.writer.flush()
        if interrupted:
            LOG.warning("stopped by a signal at global step %d; --resume continues", st.global_step)
        return interrupted

    def _save_and_export(self) -> None:
        """checkpoint.pt, at an epoch end its copy (checkpoint.keep_epochs), and last.safetensors."""
        st = self.state
        self.save_checkpoint()
        if self.cfg.checkpoint.keep_epochs and st.step_in_epoch == 0 and st.epoch > 0:
            self.save_checkpoint(self.out / f"checkpoint_epoch{st.epoch:04d}.pt")  # every rank: syncs buffers
        self.export(LAST_WEIGHTS_NAME, st.current_metrics())
        self._saved_step = st.global_step

    def _log_losses(self, window: LossWindow, bar: Any) -> None:
        """Add the window's mean losses (over ranks) to the learning curve and report them (rank 0)."""
        lr = float(self.optimizer.param_groups[0]["lr"])
        rate = window.rate()
        means = window.means(self.dist)
        st = self.state
        epoch = self._epoch_float()
        st.losses.append(
            {
                "step": st.global_step,
                "epoch": round(epoch, 4),
                "train_time_s": round(st.train_time_s, 3),
                **means,
                "lr": lr,
            }
        )
        if self.dist.is_main:
            report_losses(means, lr, rate, st.global_step, epoch, self.writer, bar)
