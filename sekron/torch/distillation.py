"""Label-free fine-tuning: train a (compressed) student to reproduce a teacher's outputs."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .._progress import progress as _progress
from .calibrate import _first_tensor, calibration_batches

LOSSES = ("mse", "kl")


def distill(student: nn.Module, teacher: nn.Module, data: Any, *, epochs: int = 1, lr: float = 1e-3,
            loss: str = "mse", temperature: float = 1.0, batch_size: int = 64, seed: int = 0,
            train_mode: bool = False, progress: bool = True, shift: int = 0, noise: float = 0.0,
            mixup: float = 0.0, holdout: float = 0.0, features: Sequence[str] | None = None,
            feature_weight: float = 1.0, schedule: str = "constant", cache_teacher: bool = False,
            on_epoch: Callable[[int, float | None], Any] | None = None) -> nn.Module:
    """Fine-tune ``student`` in place to match ``teacher``'s outputs on unlabeled ``data``; returns ``student``.

    Parameters
    ----------
    student : torch.nn.Module
        Trained in place (Adam); typically the model returned by :func:`sekron.torch.compress`.
    teacher : torch.nn.Module
        The reference (e.g. the dense model); run under ``no_grad`` in eval mode and left
        unchanged (its train/eval flag is restored).
    data : tensor or iterable of batches
        As ``calibration`` in :func:`sekron.torch.compress`: a tensor of inputs (split into
        shuffled batches of ``batch_size`` every epoch), or batches (tensors or ``(x, y)``
        tuples; labels ignored), visited in a shuffled order every epoch.
    epochs : int
    lr : float
        Adam learning rate.
    loss : {"mse", "kl"}
        "mse": mean squared error between outputs; "kl": KL divergence between the
        softmax distributions at ``temperature`` (times ``temperature**2``), for classifiers.
    seed : int
        Seeds the shuffling and torch's global generator inside a forked RNG state, so two
        calls with the same arguments give the same student and the caller's RNG is untouched.
    train_mode : bool
        False (default): the student runs in eval mode, so BatchNorm statistics stay those
        of the teacher's training data (a few hundred calibration inputs estimate them
        poorly); True: train mode. The student's flag is restored afterwards.
    progress : bool
        A progress bar over the steps (tqdm when installed).
    shift : int
        Augmentation that needs no labels (the teacher labels whatever it is shown): every
        training batch is translated by a random whole number of positions in
        ``[-shift, shift]`` along each spatial axis (inputs ``(N, C, *spatial)``; vacated
        entries are zero). 0: none.
    noise : float
        Gaussian noise added to every training input, its standard deviation this fraction
        of the data's (measured once over ``data``). 0: none.
    mixup : float
        Each training batch is replaced by ``lam x + (1 - lam) x[perm]`` with ``lam ~
        Beta(mixup, mixup)`` per sample; 0: none.
    holdout : float in [0, 1)
        This fraction of the inputs (a seeded random subset, at least one input) is not
        trained on; the loss on it, without augmentation, is measured before training and
        after every epoch, and the student ends with the parameters of the best of these
        points (so distillation never leaves it worse on held-out inputs than it started).
    features : sequence of str, optional
        Names of submodules (as ``named_modules`` gives them, present in both models,
        e.g. the residual blocks kept by :func:`sekron.torch.compress`) whose outputs are
        also matched: ``feature_weight`` times the mean squared difference, each relative
        to the teacher's mean square there, is added to the loss.
    feature_weight : float
        Weight of the feature terms.
    schedule : {"constant", "cosine"}
        Learning rate: ``lr`` throughout, or cosine decay from ``lr`` to 0 over all steps.
    cache_teacher : bool
        False (default): the teacher runs on every training batch. True: its outputs (and
        the ``features``) are computed once for every input, in batches of ``batch_size``,
        before training and reused every epoch, which saves one teacher pass per step (for a
        teacher as large as the student, about a quarter of the training time) at the cost
        of holding one teacher output per input. Needs unaugmented inputs (``shift``,
        ``noise`` and ``mixup`` all 0). Same result as False up to the rounding of the
        teacher's batched forward passes.
    on_epoch : callable, optional
        Called before training as ``on_epoch(0, held)`` and after every epoch as
        ``on_epoch(epoch, held)``, ``epoch`` counted from 1 and ``held`` the held-out loss
        (None without ``holdout``), before the best point is restored; e.g. to log a metric
        of the student on other data (run it under ``torch.no_grad()``; the student is in
        its training mode here).

    Examples
    --------
    >>> import torch
    >>> from sekron.torch import distill
    >>> teacher = torch.nn.Linear(4, 3)
    >>> student = torch.nn.Linear(4, 3)
    >>> x = torch.randn(64, 4)
    >>> gap = lambda: float((student(x) - teacher(x)).detach().pow(2).mean())
    >>> before = gap()
    >>> _ = distill(student, teacher, x, epochs=20, lr=1e-2, progress=False)
    >>> gap() < before
    True
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {list(LOSSES)}, got {loss!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    for name, m in (("student", student), ("teacher", teacher)):
        if not isinstance(m, nn.Module):
            raise TypeError(f"{name} must be a torch.nn.Module, got {type(m).__name__}")
    if isinstance(shift, bool) or not isinstance(shift, int) or shift < 0:
        raise ValueError(f"shift must be an int >= 0 (positions of random translation), got {shift!r}")
    for name, v in (("noise", noise), ("mixup", mixup), ("feature_weight", feature_weight)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or v == float("inf"):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 <= holdout < 1:
        raise ValueError(f"holdout must be a fraction in [0, 1) of the inputs kept out of training, got {holdout!r}")
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    if cache_teacher and (shift > 0 or noise > 0 or mixup > 0):
        raise ValueError(f"cache_teacher=True reuses the teacher's outputs on the unaugmented inputs, so it needs "
                         f"shift=0, noise=0 and mixup=0; got shift={shift!r}, noise={noise!r}, mixup={mixup!r}: "
                         f"drop the augmentation or use cache_teacher=False")
    if on_epoch is not None and not callable(on_epoch):
        raise TypeError(f"on_epoch must be callable as on_epoch(epoch, held_loss), got {type(on_epoch).__name__}")
    names = [features] if isinstance(features, str) else list(features or [])
    for name in names:
        for who, m in (("student", student), ("teacher", teacher)):
            try:
                m.get_submodule(name)
            except AttributeError:
                raise ValueError(f"features names {name!r}, which is not a submodule of the {who}; names look like "
                                 f"{[n for n, _ in m.named_modules() if n][:5]}") from None
    like = next(student.parameters())
    single = isinstance(data, torch.Tensor) or type(data).__name__ == "ndarray"
    batches = calibration_batches(data, like, int(batch_size) if single else 1 << 62)
    inputs = torch.cat(batches) if single else None
    gen = torch.Generator().manual_seed(seed)
    held: list[torch.Tensor] = []
    if holdout > 0:
        if inputs is None:  # batches: hold out whole batches only if there are several, else split them
            inputs = torch.cat(batches)
        if len(inputs) < 2:
            raise ValueError(f"holdout needs at least 2 inputs (one to train on, one held out), got {len(inputs)}")
        perm = torch.randperm(len(inputs), generator=gen).to(inputs.device)
        n_held = min(max(1, round(holdout * len(inputs))), len(inputs) - 1)
        held = list(inputs[perm[:n_held]].split(int(batch_size)))
        inputs = inputs[perm[n_held:]]
        batches = list(inputs.split(int(batch_size)))
    spatial = batches[0].ndim - 2
    if shift > 0 and spatial < 1:
        raise ValueError(f"shift translates along spatial axes of (N, C, *spatial) inputs; these have shape "
                         f"{tuple(batches[0].shape)}: use shift=0")
    data_std = 0.0
    if noise > 0:
        data_std = float(torch.cat([b.reshape(-1) for b in batches]).double().std()) if batches[0].numel() > 1 else 1.0
    t_flag, s_flag = teacher.training, student.training
    teacher.eval()
    student.train(train_mode)
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    steps = epochs * len(batches)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1)) if schedule == "cosine" else None
    devices = [like.device] if like.device.type == "cuda" else []
    grab: dict[str, dict[str, torch.Tensor]] = {"student": {}, "teacher": {}}
    handles = []
    for name in names:
        for who, m in (("student", student), ("teacher", teacher)):
            def hook(mod: nn.Module, args: Any, out: Any, who: str = who, name: str = name) -> None:
                grab[who][name] = _first_tensor(out)
            handles.append(m.get_submodule(name).register_forward_hook(hook))

    def teacher_outputs(x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.no_grad():
            target = _first_tensor(teacher(x)).detach()
        return target, {name: grab["teacher"][name].detach() for name in names}

    def objective(x: torch.Tensor, cached: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None) -> torch.Tensor:
        target, feats = teacher_outputs(x) if cached is None else cached
        out = _first_tensor(student(x))
        value = _loss(out, target, loss, temperature)
        for name in names:
            t = feats[name]
            value = value + feature_weight * (grab["student"][name] - t).pow(2).mean() / t.pow(2).mean().clamp_min(
                1e-30)
        return value

    def cache(xs: list[torch.Tensor]) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        return [teacher_outputs(x) for x in xs] if cache_teacher else []

    def gather(parts: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> tuple[torch.Tensor,
                                                                                   dict[str, torch.Tensor]]:
        return torch.cat([p[0] for p in parts]), {n: torch.cat([p[1][n] for p in parts]) for n in names}

    def held_loss() -> float:
        flag = student.training
        student.eval()
        try:
            with torch.no_grad():
                return sum(float(objective(x, held_cache[i] if held_cache else None)) * len(x)
                           for i, x in enumerate(held)) / sum(len(x) for x in held)
        finally:
            student.train(flag)

    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            held_cache = cache(held)
            # one target per input, indexed like the inputs (a tensor input, or batches split for holdout)
            whole = gather(cache(list(inputs.split(int(batch_size))))) if inputs is not None and cache_teacher else None
            batch_cache = cache(batches) if inputs is None else []
            best = (held_loss(), copy.deepcopy(student.state_dict())) if held else None
            if on_epoch is not None:
                on_epoch(0, None if best is None else best[0])

            def order() -> Any:
                for _ in range(epochs):
                    if inputs is not None:
                        perm = torch.randperm(len(inputs), generator=gen).to(inputs.device)
                        for idx in perm.split(int(batch_size)):
                            yield inputs[idx], (None if whole is None else
                                                (whole[0][idx], {n: f[idx] for n, f in whole[1].items()}))
                    else:
                        for i in torch.randperm(len(batches), generator=gen).tolist():
                            yield batches[i], batch_cache[i] if cache_teacher else None
                    yield None  # end of an epoch

            bar = _progress(order(), total=steps + epochs, desc="sekron distill", enabled=progress)
            epoch = 0
            for item in bar:
                if item is None:
                    epoch += 1
                    cur = held_loss() if held else None
                    if best is not None and cur is not None and cur < best[0]:
                        best = (cur, copy.deepcopy(student.state_dict()))
                    if on_epoch is not None:
                        on_epoch(epoch, cur)
                    continue
                x, cached = item
                x = _augmented(x, shift, noise * data_std, mixup, gen)
                value = objective(x, cached)
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
                if sched is not None:
                    sched.step()
            if best is not None:
                student.load_state_dict(best[1])
    finally:
        for h in handles:
            h.remove()
        teacher.train(t_flag)
        student.train(s_flag)
    return student


def _loss(out: torch.Tensor, target: torch.Tensor, loss: str, temperature: float) -> torch.Tensor:
    F = torch.nn.functional
    if loss == "mse":
        return F.mse_loss(out, target)
    return F.kl_div(F.log_softmax(out / temperature, -1), F.log_softmax(target / temperature, -1),
                    reduction="batchmean", log_target=True) * temperature ** 2


def _augmented(x: torch.Tensor, shift: int, sigma: float, mixup: float, gen: torch.Generator) -> torch.Tensor:
    """Label-free augmentation of a batch (a new tensor; ``x`` is never written to)."""
    if shift > 0 and x.is_floating_point():
        out = torch.zeros_like(x)
        n, spatial = x.shape[0], x.ndim - 2
        offsets = torch.randint(-shift, shift + 1, (n, spatial), generator=gen)
        for i in range(n):
            src, dst = [slice(None), slice(None)], [slice(None), slice(None)]
            for d in range(spatial):
                o, size = int(offsets[i, d]), x.shape[2 + d]
                o = max(-size, min(size, o))
                src.append(slice(max(0, -o), size - max(0, o)))
                dst.append(slice(max(0, o), size - max(0, -o)))
            out[i][tuple(dst[1:])] = x[i][tuple(src[1:])]
        x = out
    if sigma > 0 and x.is_floating_point():
        x = x + sigma * torch.randn(x.shape, generator=gen).to(x)
    if mixup > 0 and x.is_floating_point() and x.shape[0] > 1:
        lam = torch.distributions.Beta(float(mixup), float(mixup)).sample((x.shape[0],)).to(x)
        perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
        lam = lam.reshape((-1,) + (1,) * (x.ndim - 1))
        x = lam * x + (1 - lam) * x[perm]
    return x
