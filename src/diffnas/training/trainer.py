"""Training a discrete network from scratch (``diffnas train``).

The loop uses the search's data path: the whole split stays on the device in a
:class:`~diffnas.data.loader.DeviceLoader` (random crop + flip there), extended here with cutout
(DARTS's ``Cutout``: one square of zeros per image, applied after normalisation, centre uniform over
the image, clipped at the border). Per epoch: the learning rate is set (cosine per epoch, as DARTS's
``CosineAnnealingLR``), the drop-path probability rises linearly (``p · epoch / epochs``), every step
adds the auxiliary loss (weight ``auxiliary_weight``) when the network has an auxiliary head, clips
the gradient norm and steps SGD; then the network is evaluated on the test split (and on the valid
half when ``train_split: train``), a line is added to ``metrics.jsonl`` and ``checkpoint.pt`` is
written, both atomically. ``result.json`` holds the final test accuracy, parameters (M) and FLOPs
(M, multiply-adds; :func:`~diffnas.training.networks.count_flops`).

Run directory: ``train_recipe.yaml``, ``genotype.json``, ``metrics.jsonl``, ``checkpoint.pt``,
``result.json``. ``diffnas train --resume RUN_DIR`` continues from the last finished epoch.
"""

from __future__ import annotations

import io
import json
import logging
import random
import time
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from torch import nn

from ..core.engine import lr_at, make_optimizer, seed_everything
from ..core.errors import DiffnasError, NonFiniteError, RecipeError, RunError
from ..core.genotype import Genotype
from ..core.outputs import load_checkpoint
from ..core.protocols import DataBundle, Split
from ..core.rundir import RunDir, atomic_write, write_json, write_text
from ..data.loader import DeviceLoader
from .networks import DartsEvalNetwork, count_flops, count_parameters
from .recipe import TrainRecipe, resolve_train_recipe

log = logging.getLogger(__name__)

TRAIN_CHECKPOINT_FORMAT = 1
RECIPE_FILE = "train_recipe.yaml"
CHECKPOINT = "checkpoint.pt"
#: what a training writes into its run directory (a new training refuses a directory holding any of them)
TRAIN_OUTPUTS = ("train_recipe.yaml", "genotype.json", "metrics.jsonl", CHECKPOINT, "result.json")


# --------------------------------------------------------------------------- data


def cutout(x: torch.Tensor, length: int, gen: torch.Generator) -> torch.Tensor:
    """Zero one ``length``×``length`` square per image (clipped at the border), centre uniform."""
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b,), generator=gen, device=x.device).view(b, 1, 1)
    cx = torch.randint(0, w, (b,), generator=gen, device=x.device).view(b, 1, 1)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    half = length // 2
    inside = (rows >= cy - half) & (rows < cy + half) & (cols >= cx - half) & (cols < cx + half)
    return x * (~inside).unsqueeze(1).to(x.dtype)


class TrainLoader(DeviceLoader):
    """A :class:`DeviceLoader` that also applies cutout to augmented batches."""

    def __init__(self, *args: Any, cutout: int = 0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.cutout = cutout

    def make_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = super().make_batch(idx)
        if self.augment and self.cutout > 0:
            x = cutout(x, self.cutout, self.gen)
        return x, y


def _cat(a: Split, b: Split) -> Split:
    return Split(torch.cat([a.x, b.x]), torch.cat([a.y, b.y]))


# --------------------------------------------------------------------------- network


def build_network(genotype: Genotype, recipe: TrainRecipe, num_classes: int, catalogue: Any) -> nn.Module:
    """The discrete network of ``genotype``: :class:`DartsEvalNetwork` for the DARTS space, else the
    search space's ``build_network`` (NB201: ``DiscreteNB201Network``) with the recipe's overrides."""
    n = recipe.network
    if genotype.space == "darts" or (genotype.space not in catalogue.entries["search_space"]
                                     and set(genotype.cells) == {"normal", "reduce"}):
        return DartsEvalNetwork(genotype, n.C or 36, n.layers or 20, num_classes, n.auxiliary, n.drop_path_prob)
    if genotype.space not in catalogue.entries["search_space"]:
        raise DiffnasError(f"no search space {genotype.space!r} is installed to build this genotype's network; "
                           f"known: {', '.join(catalogue.names('search_space'))}")
    space = catalogue.build("search_space", genotype.space)
    overrides = {k: v for k, v in (("C", n.C), ("N", n.N), ("layers", n.layers)) if v is not None}
    if n.auxiliary:
        overrides["auxiliary"] = True
    if n.drop_path_prob:
        overrides["drop_path_prob"] = n.drop_path_prob
    try:
        return space.build_network(genotype, num_classes, **overrides)
    except (NotImplementedError, ValueError) as exc:  # no discrete network, or a network key it does not take
        raise DiffnasError(f"{genotype.space} network: {exc}") from None


# --------------------------------------------------------------------------- the loop


class Trainer:
    """Trains ``genotype``'s discrete network with ``recipe``; writes into ``out_dir`` (optional).

    :param data: preloaded data (tests); ``None`` loads ``recipe.data`` through the catalogue.
    """

    def __init__(self, genotype: Genotype, recipe: TrainRecipe, catalogue: Any, out_dir: str | Path | None = None,
                 data: DataBundle | None = None, overwrite: bool = False):
        self.genotype, self.recipe, self.catalogue = genotype, recipe, catalogue
        #: replace an earlier run in ``out_dir`` (moved aside until our first checkpoint) instead of refusing
        self.overwrite = overwrite
        #: True once :meth:`load_state_dict` restored a checkpoint
        self.resumed = False
        self._replaced: Path | None = None
        t = recipe.trainer
        self.out_dir = Path(out_dir) if out_dir is not None else None
        dev = catalogue.pm.hook.diffnas_resolve_device(requested=t.device)
        if dev is None:
            raise RecipeError([(f"no plugin could resolve device {t.device!r}", "recipe.trainer.device")])
        self.device = dev
        seed_everything(t.seed, t.deterministic)
        if dev.type == "cuda" and not t.deterministic:
            torch.backends.cudnn.benchmark = True  # fixed shapes every step
        if data is None:
            data = catalogue.build("dataset", recipe.data.dataset).load(recipe.data, t.seed)
        self.data = data
        train = _cat(data.train, data.valid) if t.train_split == "train+valid" else data.train
        self.train_loader = TrainLoader(train, t.batch_size, self.device, data.mean, data.std, recipe.data.augment, t.seed, 0,
                                        channels_last=t.channels_last, cutout=t.cutout)
        self.steps_per_epoch = min(len(self.train_loader), t.steps_per_epoch or len(self.train_loader))
        test = data.test if data.test is not None else data.valid
        if t.eval_limit is not None:
            test = Split(test.x[: t.eval_limit], test.y[: t.eval_limit])
        eb = t.eval_batch_size or max(t.batch_size, 256)
        self.eval_loaders = {"test": DeviceLoader(test, eb, self.device, data.mean, data.std, False, t.seed, 2,
                                                  channels_last=t.channels_last)}
        if t.train_split == "train":
            valid = data.valid if t.eval_limit is None else Split(data.valid.x[: t.eval_limit], data.valid.y[: t.eval_limit])
            self.eval_loaders["valid"] = DeviceLoader(valid, eb, self.device, data.mean, data.std, False, t.seed, 3,
                                                      channels_last=t.channels_last)
        self.model = build_network(genotype, recipe, data.num_classes, catalogue)
        self.input_shape = tuple(self.train_loader.x.shape[1:])
        self.params = count_parameters(self.model)
        self.params_total = count_parameters(self.model, exclude_auxiliary=False)
        self.model = self.model.to(self.device)
        self.flops = count_flops(self.model, self.input_shape)
        if t.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(t.optimizer, self.model.parameters(), t.cuda_graphs)
        self.autocast_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[t.autocast]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.autocast == "fp16")
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self._lock: RunDir | None = None
        # the epoch's sums (loss·n, correct, count, all-finite), updated in place by every step
        self._sums = {k: torch.zeros((), device=self.device) for k in ("loss", "correct", "count")}
        self._finite = torch.ones((), dtype=torch.bool, device=self.device)
        self._step_graph = None
        if t.cuda_graphs:
            from ..core.graphs import StepGraph, refuse

            reasons = ([f"needs a CUDA device (training runs on {self.device.type})"] if self.device.type != "cuda" else [])
            if t.autocast == "fp16":
                reasons.append("fp16 autocast's gradient scaler decides on the host at every step (use bf16)")
            if reasons:
                raise refuse("; ".join(reasons))
            self._step_graph = StepGraph(self._train_step, capture=True)

    # ------------------------------------------------------------------ pieces

    @property
    def epochs(self) -> int:
        return self.recipe.trainer.epochs

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.autocast_dtype is not None:  # no cast-weight cache inside a CUDA graph (stale after updates)
            with torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=not self.recipe.trainer.cuda_graphs):
                return self.model(x).float()
        return self.model(x)

    def train_epoch(self, epoch: int, on_step: Callable[[], None] | None = None) -> dict[str, float]:
        """Train one epoch; ``on_step()`` is called after each step (the progress bar)."""
        t = self.recipe.trainer
        lr = lr_at(t.optimizer, epoch, t.epochs)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        dpp = self.recipe.network.drop_path_prob * epoch / t.epochs
        if hasattr(self.model, "drop_path_prob"):
            self.model.drop_path_prob = dpp
        self.model.train()
        for v in self._sums.values():
            v.zero_()
        self._finite.fill_(True)
        if self._step_graph is not None:  # capture afresh: the learning rate and drop-path rate changed
            self._step_graph.reset()
        step_fn = self._step_graph or self._train_step
        for step in range(self.steps_per_epoch):
            step_fn(self.train_loader.batch(epoch, step), None)
            if on_step is not None:
                on_step()
        if not bool(self._finite):  # the epoch's host synchronisation
            raise NonFiniteError(f"non-finite training loss in epoch {epoch}; the last good checkpoint is kept")
        n = max(float(self._sums["count"]), 1.0)
        return {"lr": lr, "drop_path_prob": dpp, "train_loss": float(self._sums["loss"]) / n,
                "train_acc": 100.0 * float(self._sums["correct"]) / n}

    def _train_step(self, batch: tuple[torch.Tensor, torch.Tensor], _unused: Any = None) -> dict[str, torch.Tensor]:
        """One optimiser step on ``batch`` and the epoch's sums, on the device and in place (what
        ``trainer.cuda_graphs`` captures)."""
        t = self.recipe.trainer
        x, y = batch
        logits = self._forward(x)
        loss = nn.functional.cross_entropy(logits, y)
        aux = getattr(self.model, "aux_logits", None)
        if aux is not None and t.auxiliary_weight > 0:
            loss = loss + t.auxiliary_weight * nn.functional.cross_entropy(aux.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if t.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        loss = loss.detach()
        self._finite &= torch.isfinite(loss)
        self._sums["loss"].add_(loss * y.numel())
        self._sums["correct"].add_((logits.detach().argmax(1) == y).sum())
        self._sums["count"].add_(y.numel())
        return {"loss": loss}

    @torch.no_grad()
    def evaluate(self, name: str = "test") -> dict[str, float]:
        """Loss and top-1 accuracy (%) of the network on a whole evaluation split (no augmentation)."""
        loader = self.eval_loaders[name]
        self.model.eval()
        tot = torch.zeros((), device=self.device)
        cor = torch.zeros((), device=self.device)
        for start in range(0, loader.n, loader.batch_size):
            idx = torch.arange(start, min(start + loader.batch_size, loader.n), device=self.device)
            x, y = loader.make_batch(idx)
            logits = self._forward(x)
            tot += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
            cor += (logits.argmax(1) == y).sum()
        return {f"{name}_loss": float(tot) / loader.n, f"{name}_acc": 100.0 * float(cor) / loader.n}

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": TRAIN_CHECKPOINT_FORMAT,
            "recipe_sha256": self.fingerprint(),
            "epoch": self.epoch,
            "history": self.history,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "loader": self.train_loader.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "python": list(random.getstate()[1]), "python_pos": random.getstate()[2]},
        }

    def fingerprint(self) -> str:
        """SHA-256 of what this training computes: its resolved recipe (less ``output``) and the
        genotype; saved in each checkpoint so that a resume under an edited recipe or genotype is refused."""
        from ..core.recipe import document_fingerprint

        return document_fingerprint({**self.recipe.to_dict(), "genotype": self.genotype.to_dict()})

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        if ckpt.get("format") != TRAIN_CHECKPOINT_FORMAT:
            raise RunError(f"training checkpoint format {ckpt.get('format')!r} is not {TRAIN_CHECKPOINT_FORMAT}")
        self.epoch = int(ckpt["epoch"])
        self.history = list(ckpt["history"])
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.train_loader.load_state_dict(ckpt["loader"])
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate((3, tuple(rng["python"]), rng["python_pos"]))
        self.resumed = True

    def _checkpoint(self) -> None:
        state = self.state_dict()

        def save(f: Any) -> None:
            buf = io.BytesIO()
            torch.save(state, buf)
            f.write(buf.getbuffer())

        atomic_write(self.out_dir / CHECKPOINT, save)
        RunDir.drop_replaced(self._replaced)  # the new run can be resumed now: the old one is not needed
        self._replaced = None

    def _write_metrics(self) -> None:
        write_text(self.out_dir / "metrics.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.history))

    # ------------------------------------------------------------------ run

    def summary(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        out = {
            "genotype": str(self.genotype),
            "genotype_json": self.genotype.to_dict(),
            "network": type(self.model).__name__,
            "epochs_run": self.epoch,
            "params_M": round(self.params / 1e6, 6),
            "params_with_auxiliary_M": round(self.params_total / 1e6, 6),
            "flops_M": round(self.flops / 1e6, 4),
            "flops_note": "multiply-adds of one image, FlopCounterMode / 2, eval mode (no auxiliary head)",
            "input_shape": list(self.input_shape),
            "device": str(self.device),
            "train_time_s": round(sum(r.get("time_s", 0.0) for r in self.history), 3),
        }
        for k in ("test_acc", "test_loss", "valid_acc", "valid_loss", "train_acc", "train_loss"):
            if k in last:
                out[k if k.startswith(("test", "valid")) else f"final_{k}"] = last[k]
        return out

    def run(self, progress: bool | None = None, max_epochs: int | None = None) -> dict[str, Any]:
        """Train to the last epoch (or continue); return the summary written to ``result.json``.

        :param max_epochs: stop after this many more epochs (time-boxed jobs; ``--resume`` continues).
        """
        progress = self.recipe.output.progress if progress is None else progress
        rd = None
        self._replaced = None
        if self.out_dir is not None:
            rd = RunDir(self.out_dir).prepare().lock()
            recipe_text = yaml.safe_dump(self.recipe.to_dict(), sort_keys=False)
            genotype_text = json.dumps(self.genotype.to_dict(), indent=2, sort_keys=True) + "\n"
            try:
                if not self.resumed:  # a new run never replaces an earlier one unasked
                    self._replaced = rd.claim(TRAIN_OUTPUTS, {RECIPE_FILE: recipe_text, "genotype.json": genotype_text},
                                              self.overwrite)
                write_text(self.out_dir / RECIPE_FILE, recipe_text)
                write_text(self.out_dir / "genotype.json", genotype_text)
            except BaseException:
                rd.unlock()
                raise
        from ..core.progress import progress_bar

        # per step, as a search's bar: an epoch of a full training takes minutes
        bar = progress_bar(self.epochs * self.steps_per_epoch, bool(progress), initial=self.epoch * self.steps_per_epoch,
                           unit="step", desc="train")
        try:
            stop_at = self.epochs if max_epochs is None else min(self.epochs, self.epoch + max_epochs)
            while self.epoch < stop_at:
                t0 = time.perf_counter()
                rec: dict[str, Any] = {"epoch": self.epoch}
                rec.update(self.train_epoch(self.epoch, on_step=None if bar is None else lambda: bar.update(1)))
                for name in self.eval_loaders:
                    rec.update(self.evaluate(name))
                rec["time_s"] = round(time.perf_counter() - t0, 3)
                self.history.append(rec)
                self.epoch += 1
                if self.out_dir is not None:
                    self._write_metrics()
                    self._checkpoint()
                if bar is not None:
                    test = f" test {rec['test_acc']:.2f}%" if "test_acc" in rec else ""
                    bar.set_postfix_str(f"ep {rec['epoch']} train {rec['train_acc']:.1f}%{test}", refresh=False)
            summary = self.summary()
            if self.out_dir is not None:
                write_json(self.out_dir / "result.json", summary)
            return summary
        finally:
            if bar is not None:
                bar.close()
            if rd is not None:
                rd.unlock()


def resume_trainer(run_dir: str | Path, catalogue: Any, data: DataBundle | None = None) -> Trainer:
    """A :class:`Trainer` restored from ``RUN_DIR`` (its recipe, genotype and checkpoint)."""
    from ..core.recipe import read_yaml

    run_dir = Path(run_dir)
    for name in (RECIPE_FILE, "genotype.json", CHECKPOINT):
        if not (run_dir / name).exists():
            raise RunError(f"nothing to resume in {run_dir}: no {name} (is it a `diffnas train` run directory?)")
    recipe = resolve_train_recipe(read_yaml(run_dir / RECIPE_FILE), catalogue, str(run_dir / RECIPE_FILE))
    from ..core.limits import MAX_JSON_BYTES, read_text

    gpath = run_dir / "genotype.json"
    try:
        genotype = Genotype.from_json(read_text(gpath, MAX_JSON_BYTES, "genotype file"))
    except OSError as exc:
        raise RunError(f"cannot read {gpath}: {exc.strerror or exc}") from None
    except DiffnasError as exc:
        raise RunError(f"{gpath}: {exc}") from None
    tr = Trainer(genotype, recipe, catalogue, run_dir, data=data)
    ckpt = load_checkpoint(run_dir / CHECKPOINT, map_location=tr.device)
    old = ckpt.get("recipe_sha256") if isinstance(ckpt, dict) else None
    if old is not None and old != tr.fingerprint():  # checkpoints from before fingerprints resume unchecked
        raise RunError(f"{run_dir / RECIPE_FILE} or {gpath} differs from what {run_dir / CHECKPOINT} was made with "
                       f"(fingerprint {str(old)[:12]} in the checkpoint, {tr.fingerprint()[:12]} now); resuming "
                       f"would mix two settings in one training. Restore them, or start a new training")
    try:
        tr.load_state_dict(ckpt)
    except RunError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise RunError(f"checkpoint {run_dir / CHECKPOINT} does not fit the training's recipe {run_dir / RECIPE_FILE} "
                       f"({type(exc).__name__}: {first[:200]})") from None
    return tr
