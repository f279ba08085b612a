"""The training loop behind every entrypoint: ``pretrain(cfg, stage, evaluators)``.

One ``Trainer`` owns the model stage, the fp32 gradient buffer, the optimizer, the schedules
and the data; what is trained (head, data, objective, model transforms, how loaded weights are
adapted) is the ``Stage`` it is given (training.stage), and in-training evaluations beyond the
validation loss are the evaluators it is given. ``train_step`` runs one global batch (all its micro-batches, gradient
accumulation in fp32, a data-parallel all-reduce overlapped with the last backward, one
optimizer step). The loss of a step is the mean over every non-masked token of the global
batch, so any split into micro-batches and data-parallel ranks gives the same number.
"""

import dataclasses
import gc
import math
import os
import random
import resource
import signal
import time
from typing import Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist

from megalite import kernels
from megalite.checkpoint.layout import find_checkpoint, load_kind, saved_settings
from megalite.checkpoint.save import refuse_later_checkpoints, save_checkpoint
from megalite.config import Config, data_parallel_size, inherit_model_settings, step_batch_sizes, validate
from megalite.errors import MegaliteError
from megalite.model.flops import peak_tflops, train_flops
from megalite.model.gpt import build_stage_model
from megalite.parallel import state
from megalite.parallel.bootstrap import setup_distributed
from megalite.parallel.data_parallel import GradBuffer, all_reduce_scalar
from megalite.parallel.grads import sync_embedding_grads, sync_tensor_parallel_grads
from megalite.parallel.init import initialize
from megalite.parallel.pipeline import forward_backward, model_chunks
from megalite.parallel.random import seed_tp_rng
from megalite.parallel.zero import FullyShardedBuffer
from megalite.training.data import build_loader, build_tokenizer_from, microbatches, padded_vocab_size
from megalite.training.metrics_log import MetricsLog
from megalite.training.optimizer import ConstantLossScaler, DynamicLossScaler, Optimizer
from megalite.training.schedules import BatchSchedule, lr_schedule
from megalite.training.stage import Stage, StepContext
from megalite.training.watchdog import StepWatchdog
from megalite.utils.lock import FolderLock


def set_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Evaluator(Protocol):
    """An in-training evaluation (lm-eval tasks, say): run every ``every`` iterations and at the
    end on the model in memory; returns the rows to log, each with its one-line summary."""

    every: int

    def __call__(self, model: torch.nn.Module, iteration: int) -> List[Tuple[Dict, str]]: ...


class Trainer:
    def __init__(self, cfg: Config, device: torch.device, stage: Optional[Stage] = None,
                 evaluators: Sequence[Evaluator] = ()):
        self.cfg, self.device = cfg, device
        self.stage, self.evaluators = stage or Stage(), list(evaluators)
        m, p, t = cfg.model, cfg.parallel, cfg.training
        s = state.initialize(p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.sequence_parallel,
                             p.context_parallel_size)
        if s.cp_size > 1 and not self.stage.per_token_loss:
            raise MegaliteError(f"--context-parallel-size > 1 needs a per-token loss (pretraining, SFT); "
                                f"{self.stage.name} scores whole sequences")
        kernels.set_fused_kernels(t.fused_kernels)
        set_seeds(t.seed + 100 * s.pp_rank)
        seed_tp_rng(t.seed + 100 * s.pp_rank)  # per tensor- and context-parallel rank
        self.tokenizer = build_tokenizer_from(cfg)
        vocab = self.tokenizer.vocab_size if self.tokenizer else m.vocab_size
        if not (m.padded_vocab_size and m.padded_vocab_size >= vocab and m.padded_vocab_size % s.tp_size == 0):
            m.padded_vocab_size = padded_vocab_size(vocab, m.make_vocab_size_divisible_by, s.tp_size)
        self.dtype = torch.bfloat16 if t.bf16 else torch.float16 if t.fp16 else torch.float32

        self.model = build_stage_model(cfg, t.recompute_granularity, self.stage.head)
        self.stage.transform(self.model, cfg)
        self.checkpointed = self.stage.checkpointed(self.model, cfg)
        seq = cfg.data.seq_length // s.cp_size // (s.tp_size if s.sequence_parallel else 1)
        rows = t.micro_batch_size * self.stage.rows_per_sample(cfg)
        self.activation_shape = (seq, rows, m.hidden_size)  # what stages pass on
        initialize(self.model, t.seed)
        self.model.to(device=device, dtype=self.dtype)
        self.grads, self.optimizer = gradients_and_optimizer(cfg, self.model)

        self.batches = BatchSchedule(t.global_batch_size, t.micro_batch_size, s.dp_size, t.rampup_batch_size,
                                     step_batch_sizes(cfg) if t.step_batch_size_schedule else None)
        self.train_iters = (t.train_iters if t.train_iters is not None
                            else self.batches.iterations_for(t.train_samples or 0))
        self.lr = lr_schedule(t, self.train_iters)
        self.iteration = self.consumed_samples = self.consumed_tokens = 0
        if cfg.checkpoint.load:
            with self.grads.full_params(write_back=True):
                self.iteration, self.consumed_samples, self.consumed_tokens = self.stage.load(
                    cfg, self.model, self.optimizer)

        train_samples = self.batches.samples_for(self.train_iters)
        self.train_ds, self.valid_ds, self.test_ds = self.stage.datasets(cfg, self.tokenizer, train_samples)
        self.collate = self.stage.collate(cfg)
        self.train_iter = (iter(build_loader(self.train_ds, self.consumed_samples, cfg, train_samples, self.collate))
                           if self.train_ds is not None else None)
        self.objective = self.stage.objective(cfg, StepContext(self.model, self.activation_shape, self.dtype, device,
                                                               self.train_ds, self.valid_ds, self.collate,
                                                               self.iteration, lambda: self._lrs()[0]))
        self.log = MetricsLog(s.rank == 0, cfg, self.iteration)
        self.peak = cfg.logging.peak_tflops or (peak_tflops(torch.cuda.get_device_name(device))
                                                if device.type == "cuda" else None)
        self.exit_requested = False
        self.pending_save, self.snapshot_buffers = None, {}
        self.compute_seconds = 0.0
        self.watchdog = StepWatchdog(60 * p.distributed_timeout_minutes, s.rank)
        self.start_time = time.time()

    # -- one step ------------------------------------------------------------------------------
    def train_step(self, batch: List[Dict[str, torch.Tensor]]) -> Dict:
        s = state.get()
        self.grads.zero()
        started = time.perf_counter()
        self.objective.prepare(batch)  # may rewrite the micro-batches (online RL generates into them)
        counts = self._global_counts(batch)
        tokens = all_reduce_scalar(float(sum(mb["loss_mask"].sum().item() for mb in batch)), s.dp_cp_group)
        self.objective.begin_step(counts)
        self.model.train()
        loss_sum = forward_backward(
            self.model, batch, self.objective, self.activation_shape, self.dtype, grad_buffer=self.grads,
            loss_scale=self.optimizer.loss_scale)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.compute_seconds += time.perf_counter() - started  # before waiting for other ranks' gradients
        self.grads.finish_sync()
        # the loss lives on the last pipeline stage; summing over stages hands it to every rank
        lm_loss = all_reduce_scalar(all_reduce_scalar(loss_sum, s.pp_group), s.dp_cp_group)
        extra = self._objective_metrics()
        stepped, grad_norm = False, float("nan")
        if math.isfinite(lm_loss) or self.cfg.training.fp16:  # fp16: the loss scaler skips and rescales
            self.optimizer.set_lr(*self._lrs())
            stepped, grad_norm = self.optimizer.step()  # no update when the gradient is not finite
        bad = not self.cfg.training.fp16 and not (math.isfinite(lm_loss) and stepped)
        if bad and self.cfg.training.nan_policy == "stop":
            what = f"loss is {lm_loss}" if not math.isfinite(lm_loss) else f"gradient norm is {grad_norm}"
            raise MegaliteError(
                f"{what} at iteration {self.iteration + 1}; stopping without saving (the last checkpoint is "
                f"untouched). Lower --lr, enable --clip-grad, or see --nan-policy")
        return {"lm_loss": lm_loss, "grad_norm": grad_norm, "skipped": not stepped, "tokens": tokens,
                "non_finite": bad, "extra": extra}

    def _lrs(self) -> Tuple[float, Optional[float]]:
        """The step's learning rate, and --decoupled-lr's (embedding and output layer) when given."""
        t, done = self.cfg.training, self.consumed_samples
        gbs = self.batches.global_batch_size(done)
        decoupled = None if t.decoupled_lr is None else self.lr(done, gbs, t.decoupled_lr, t.decoupled_min_lr)
        return self.lr(done, gbs), decoupled

    def _global_counts(self, batch: List[Dict[str, torch.Tensor]]) -> Dict[str, float]:
        """What the objective normalises by (loss tokens, DPO pairs), summed over the global batch
        (over the data- and context-parallel ranks: each holds part of it)."""
        dp = state.get().dp_cp_group
        return {k: all_reduce_scalar(float(sum(mb[k].sum().item() for mb in batch)), dp)
                for k in self.objective.count_keys}

    def _objective_metrics(self) -> Dict[str, float]:
        """The objective's metrics of the step: its ranks' shares summed over pipeline stages and
        data-parallel ranks (min / max for those it names in ``metric_ops``)."""
        s, ops = state.get(), getattr(self.objective, "metric_ops", {})
        return {k: all_reduce_scalar(all_reduce_scalar(v, s.pp_group, ops.get(k)), s.dp_cp_group, ops.get(k))
                for k, v in self.objective.metrics().items()}

    @torch.no_grad()
    def evaluate(self, dataset, split: str) -> Optional[Dict]:
        if dataset is None or self.cfg.training.eval_iters == 0:
            return None
        s, t = state.get(), self.cfg.training
        self.model.eval()
        total, count, extra, weights = 0.0, 0.0, {}, {}  # weights: per metric (KTO skips some in some batches)
        loader = iter(build_loader(dataset, 0, self.cfg, collate=self.collate))
        n_micro = self.batches.num_microbatches(self.consumed_samples)
        weight_key = self.objective.count_keys[0]  # batches weigh by the objective's count (tokens, pairs)
        try:
            for _ in range(t.eval_iters):
                batch = microbatches(loader, n_micro, self.device)
                self.objective.prepare(batch)
                counts = self._global_counts(batch)
                self.objective.begin_step(counts)
                total += counts[weight_key] * forward_backward(self.model, batch, self.objective,
                                                               self.activation_shape, self.dtype, forward_only=True)
                for k, v in self._objective_metrics().items():
                    extra[k] = extra.get(k, 0.0) + counts[weight_key] * v
                    weights[k] = weights.get(k, 0.0) + counts[weight_key]
                count += counts[weight_key]
        except StopIteration:
            pass
        total = all_reduce_scalar(all_reduce_scalar(total, s.pp_group), s.dp_cp_group)
        if count == 0:
            return None
        loss = total / count
        extra = {k: v / weights[k] for k, v in extra.items()}
        out = {"iteration": self.iteration, "split": split, "loss": loss}
        if weight_key == "loss_mask":  # a per-token loss (not DPO's per-pair one): perplexity means something
            out["ppl"] = math.exp(min(loss, 700.0))
        out.update(extra)
        self.log.record(out, f" {split} loss at iteration {self.iteration}: {loss:.4f}"
                        + (f" | perplexity {out['ppl']:.2f}" if "ppl" in out else "")
                        + "".join(f" | {k} {v:.4f}" for k, v in extra.items()))
        return out

    def run_evaluators(self, final: bool = False) -> List[Dict]:
        """The evaluators due at this iteration (all of them when ``final``), on the model in
        memory with its full parameters (ZeRO-3); every rank takes part. Returns the logged rows."""
        due = [e for e in self.evaluators if final or (e.every and self.iteration % e.every == 0)]
        if not due:
            return []
        self.grads.wait_params()
        rows = []
        with self.grads.full_params():
            for evaluate in due:
                rows += evaluate(self.model, self.iteration)
        for row, line in rows:
            self.log.record(row, line)
        return [row for row, _ in rows]

    # -- the loop --------------------------------------------------------------------------------
    def train(self) -> Dict:
        cfg, t, c = self.cfg, self.cfg.training, self.cfg.checkpoint
        s = state.get()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        window = {"loss": 0.0, "n": 0, "skipped": 0, "tokens": 0, "flops": 0, "t0": time.perf_counter()}
        last_saved, result = None, {}
        try:
            while self.iteration < self.train_iters and not t.skip_train:
                gbs = self.batches.global_batch_size(self.consumed_samples)
                batch = microbatches(self.train_iter, self.batches.num_microbatches(self.consumed_samples),
                                     self.device)
                self.watchdog.arm(f"iteration {self.iteration + 1}")
                out = self.train_step(batch)
                self.watchdog.disarm()
                self.iteration += 1
                self.consumed_samples += gbs
                self.consumed_tokens += gbs * cfg.data.seq_length
                if out["non_finite"]:
                    self._on_non_finite(out)
                window["n"] += 1
                window["loss"] += out["lm_loss"] if not out["skipped"] else 0.0
                extra = window.setdefault("extra", {})  # the objective's own metrics, e.g. DPO rewards
                steps = window.setdefault("extra_steps", {})  # the steps that carry each (not all do, for KTO)
                for k, v in out["extra"].items():
                    extra[k] = extra.get(k, 0.0) + v
                    steps[k] = steps.get(k, 0) + 1
                window["skipped"] += int(out["skipped"])
                window["tokens"] += out["tokens"] if self.stage.counts_loss_tokens else gbs * cfg.data.seq_length
                window["flops"] += train_flops(cfg.model, cfg.data.seq_length, gbs)
                result.setdefault("first_lm_loss", out["lm_loss"])
                result["lm_loss"] = out["lm_loss"]
                if self.iteration % cfg.logging.log_interval == 0 or self.iteration == self.train_iters:
                    self._log_window(window, out)
                    window = {"loss": 0.0, "n": 0, "skipped": 0, "tokens": 0, "flops": 0, "t0": time.perf_counter()}
                if t.eval_interval and self.iteration % t.eval_interval == 0:
                    self.evaluate(self.valid_ds, "valid")
                    self.run_evaluators()
                if c.save and c.save_interval and self.iteration % c.save_interval == 0:
                    self.save()
                    last_saved = self.iteration
                self.finish_save(only_if_written=True)
                if self._should_exit():
                    if c.save and last_saved != self.iteration:
                        self.save()
                    self.finish_save()
                    if s.rank == 0:
                        print(f"exiting at iteration {self.iteration} (checkpoint saved)", flush=True)
                    result["exited_early"] = True
                    return result
            if c.save and last_saved != self.iteration and not t.skip_train:
                self.save()
            self.finish_save()
            if t.skip_train or not (t.eval_interval and self.iteration % t.eval_interval == 0):  # not just done
                result["valid"] = self.evaluate(self.valid_ds, "valid")
                result["evaluations"] = self.run_evaluators(final=True)
            result["test"] = self.evaluate(self.test_ds, "test")
            if s.rank == 0 and "first_lm_loss" in result:
                print(f"training done: lm loss {result['first_lm_loss']:.4f} at the first iteration, "
                      f"{result['lm_loss']:.4f} at the last", flush=True)
            return result
        finally:
            self.watchdog.disarm()
            signal.signal(signal.SIGTERM, previous)
            self.log.close()

    def save(self) -> None:
        """Save now; with --async-save the files are written in the background (the previous
        save is completed first) and the checkpoint is tracked once every rank has written."""
        c = self.cfg.checkpoint
        self.grads.wait_params()
        self.finish_save()
        if hasattr(self.objective, "save"):  # a model it trains itself (PPO's critic), saved first
            self.objective.save(c.save, self.iteration, self.consumed_samples, self.consumed_tokens)
        with self.grads.full_params():
            self.pending_save = save_checkpoint(c.save, self.iteration, self.checkpointed, self.optimizer, self.cfg,
                                                self.consumed_samples, self.consumed_tokens, c.keep_last,
                                                asynchronous=c.async_save, snapshot_buffers=self.snapshot_buffers)
        if not c.async_save:
            self._report_saved()

    def finish_save(self, only_if_written: bool = False) -> None:
        """Complete a background save (all ranks call this together). ``only_if_written``:
        only when every rank's files are already on disk, so training never waits here."""
        if self.pending_save is None:
            return
        if only_if_written:
            world = dist.group.WORLD if dist.is_initialized() else None
            written = float(self.pending_save.written())
            if all_reduce_scalar(written, world, op=dist.ReduceOp.MIN if world else None) < 1:
                return
        self.pending_save.finish()
        self._report_saved()

    def _report_saved(self) -> None:
        if state.get().rank == 0:
            print(f"saved checkpoint {self.pending_save.final}", flush=True)
        self.pending_save = None

    def _on_non_finite(self, out: Dict) -> None:
        """--nan-policy skip: the update was skipped; say so. rollback: restore the weights and
        optimizer state of the last checkpoint and carry on from the current iteration and data
        position, so the samples since that checkpoint (the offending ones among them) are
        skipped and the iteration count, schedule and logs stay monotonic."""
        s, c = state.get(), self.cfg.checkpoint
        if self.cfg.training.nan_policy == "skip":
            if s.rank == 0:
                print(f"non-finite loss {out['lm_loss']} / gradient norm {out['grad_norm']} at iteration "
                      f"{self.iteration}: update skipped (--nan-policy skip)", flush=True)
            return
        self.finish_save()
        folder = c.save or c.load
        if not folder or find_checkpoint(folder) is None:
            raise MegaliteError(f"non-finite loss at iteration {self.iteration} and no checkpoint to roll back to "
                                "(--nan-policy rollback needs --save with a checkpoint already written)")
        with self.grads.full_params(write_back=True):
            restore = dataclasses.replace(c, load=folder, finetune=False, no_load_optim=False, no_load_rng=True)
            restored, first_skipped, _ = self.stage.load(dataclasses.replace(self.cfg, checkpoint=restore),
                                                   self.model, self.optimizer)
        self.log.record({"iteration": self.iteration, "restored_iteration": restored,
                         "skipped_samples": [first_skipped, self.consumed_samples]},
                        f"non-finite loss {out['lm_loss']} at iteration {self.iteration}: restored the weights and "
                        f"optimizer of iteration {restored}; samples [{first_skipped}, {self.consumed_samples}) "
                        "are skipped (--nan-policy rollback)")

    def _on_sigterm(self, signum, frame):
        self.exit_requested = True

    def _should_exit(self) -> bool:
        c = self.cfg.checkpoint
        want = self.exit_requested
        if c.exit_interval and self.iteration % c.exit_interval == 0:
            want = True
        if c.exit_duration_in_mins and (time.time() - self.start_time) / 60 >= c.exit_duration_in_mins:
            want = True
        # Every rank must agree, or some would stop while others wait in a collective.
        world = dist.group.WORLD if dist.is_initialized() else None
        return all_reduce_scalar(float(want), world, op=dist.ReduceOp.MAX if world else None) > 0

    def _log_window(self, w: Dict, last: Dict) -> None:
        s = state.get()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = max(time.perf_counter() - w["t0"], 1e-9)
        steps = max(w["n"] - w["skipped"], 1)
        tflops = w["flops"] / elapsed / s.world_size / 1e12
        metrics = {
            "iteration": self.iteration,
            "lm_loss": w["loss"] / steps,
            "lr": self.optimizer.adam.param_groups[0]["lr"],
            "grad_norm": last["grad_norm"],
            "loss_scale": self.optimizer.loss_scale,
            "skipped_iterations": w["skipped"],
            "consumed_samples": self.consumed_samples,
            "consumed_tokens": self.consumed_tokens,
            "tokens_per_sec": w["tokens"] / elapsed,
            "tflops_per_device": tflops,
            "mfu": tflops / self.peak if self.peak else None,
            "ms_per_iteration": 1000 * elapsed / w["n"],
            "memory_gb": _memory_gb(self.device),
            **self._straggler_stats(),
            **{k: v / w["extra_steps"][k] for k, v in w.get("extra", {}).items()},  # the objective's, e.g. rewards
        }
        line = (f" iteration {self.iteration:8d}/{self.train_iters} | consumed samples {self.consumed_samples:10d} | "
                f"ms/iter {metrics['ms_per_iteration']:8.1f} | lr {metrics['lr']:.3e} | "
                f"lm loss {metrics['lm_loss']:.6e} | grad norm {metrics['grad_norm']:.3f} | "
                f"tokens/s {metrics['tokens_per_sec']:.0f} | TFLOP/s/device {tflops:.2f} | "
                + (f"MFU {100 * metrics['mfu']:.1f}% | " if self.peak else "")
                + (f"loss scale {metrics['loss_scale']:.1f} | " if self.cfg.training.fp16 else "")
                + "".join(f"{k} {metrics[k]:.4f} | " for k in w.get("extra", {}))
                + f"skipped {w['skipped']} | mem {metrics['memory_gb']:.2f} GB"
                + (f" | slowest rank {metrics['slowest_rank']} (+{100 * metrics['compute_spread']:.0f}%)"
                   if metrics.get("compute_spread", 0) > 0.1 else ""))
        self.log.record(metrics, line)

    def _straggler_stats(self) -> Dict:
        """Per-rank forward/backward time over the logging window (waits for other ranks'
        gradients excluded): its spread, (max - min) / mean, and the slowest rank."""
        mine, self.compute_seconds = self.compute_seconds, 0.0
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return {}
        times = [torch.zeros(1, dtype=torch.float64, device=self.device) for _ in range(dist.get_world_size())]
        dist.all_gather(times, torch.tensor([mine], dtype=torch.float64, device=self.device))
        times = [x.item() for x in times]
        mean = sum(times) / len(times)
        return {"compute_spread": (max(times) - min(times)) / mean if mean > 0 else 0.0,
                "slowest_rank": max(range(len(times)), key=times.__getitem__)}


def gradients_and_optimizer(cfg: Config, model: torch.nn.Module):
    """(the fp32 gradient buffer, the optimizer) of ``model``, this rank's stage of a model being
    trained (the run's; PPO's critic): data-parallel reduction, ZeRO and loss scaling as configured."""
    p, t, s = cfg.parallel, cfg.training, state.get()
    chunks = model_chunks(model)
    layers = [layer for c in chunks for layer in c.layers.values()]
    if p.zero_stage >= 2 and s.dp_cp_group is not None:  # context-parallel ranks hold the same weights
        grads = FullyShardedBuffer(chunks, layers, s.dp_cp_group, _sync_model_parallel,
                                   shard_params=p.zero_stage == 3)
    else:
        grads = GradBuffer(list(model.parameters()), s.dp_cp_group, p.ddp_bucket_size, p.overlap_grad_reduce,
                           p.use_distributed_optimizer, p.overlap_param_gather, _sync_model_parallel,
                           reduce_dtype=torch.bfloat16 if p.grad_reduce_in_bf16 else torch.float32)
        grads.attach_param_waits(chunks, layers)
    if t.fp16:
        scaler = (ConstantLossScaler(t.loss_scale) if t.loss_scale else
                  DynamicLossScaler(t.initial_loss_scale, t.min_loss_scale, t.loss_scale_window, t.hysteresis))
    else:
        scaler = ConstantLossScaler(1.0)
    optimizer = Optimizer(list(model.named_parameters()), grads, t.weight_decay, (t.adam_beta1, t.adam_beta2),
                          t.adam_eps, t.clip_grad, scaler, s.model_parallel_group, decoupled=t.decoupled_lr is not None)
    return grads, optimizer


def _sync_model_parallel(params) -> None:
    sync_tensor_parallel_grads(params)
    sync_embedding_grads(params)


def _memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def start_from(c) -> None:
    """Check what --load names (megalite.checkpoint.layout.load_kind); the resume-or-start folder
    without a checkpoint yet (--save D --load D, a first launch) starts from scratch, saying so."""
    if not c.load:
        return
    kind = load_kind(c.load, c.save, c.finetune)
    if kind == "hf":
        raise MegaliteError(f"--load {c.load}: a Hugging Face folder; pretrain() takes megalite checkpoints (the "
                            "entrypoints import such a folder first: megalite.hf.source.import_load)")
    if kind == "empty":
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"--load {c.load}: no checkpoint yet; starting from scratch (it is also --save: the same command "
                  "resumes from it)", flush=True)
        c.load = None


def pretrain(cfg: Config, stage: Optional[Stage] = None, evaluators: Sequence[Evaluator] = ()) -> Dict:
    """Let ``stage`` (default: pretraining) settle ``cfg``, validate it, join the process group,
    train, evaluate. Returns the final metrics."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    stage = stage or Stage()
    stage.prepare(cfg)
    start_from(cfg.checkpoint)
    saved = saved_settings(cfg.checkpoint.load) if cfg.checkpoint.load else None
    if saved is not None:
        inherit_model_settings(cfg, saved)
    validate(cfg, world)
    owns_group = not dist.is_initialized()
    device = setup_distributed(cfg.parallel.distributed_backend, cfg.parallel.distributed_timeout_minutes)
    trainer = lock = None
    writer = cfg.checkpoint.save and (dist.get_rank() if dist.is_initialized() else 0) == 0
    try:
        if writer:  # the writing rank owns --save for the run's life
            lock = FolderLock(cfg.checkpoint.save, "--save")
        trainer = Trainer(cfg, device, stage, evaluators)
        if writer:
            refuse_later_checkpoints(cfg.checkpoint.save, trainer.iteration)
        if state.get().rank == 0:
            n = sum(p.numel() for p in trainer.model.parameters())
            trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
            print(f"model: {n / 1e6:.2f}M parameters ({trainable / 1e6:.3f}M trainable) | world {world} "
                  f"(dp {data_parallel_size(cfg, world)}) | "
                  f"{trainer.train_iters} iterations of {cfg.training.global_batch_size} x "
                  f"{cfg.data.seq_length} tokens | {trainer.dtype}", flush=True)
            summary = getattr(trainer.train_ds, "summary", None)  # SFT / DPO data: what was kept, cut, dropped
            if summary:
                print(summary(), flush=True)
        return trainer.train()
    finally:
        # Free the trainer (its hooks make reference cycles holding the process groups and the
        # data loader's workers) now, not at interpreter exit, where gloo's threads can abort.
        del trainer
        gc.collect()
        if lock is not None:
            lock.release()
        state.destroy()
        if owns_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()  # leaving it to interpreter exit can abort gloo threads
