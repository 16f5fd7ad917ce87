"""Label-free fine-tuning: train a (compressed) student to reproduce a teacher's outputs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._progress import progress as _progress
from .calibrate import _first_tensor, calibration_batches

LOSSES = ("mse", "kl")


def distill(student: nn.Module, teacher: nn.Module, data: Any, *, epochs: int = 1, lr: float = 1e-3,
            loss: str = "mse", temperature: float = 1.0, batch_size: int = 64, seed: int = 0,
            train_mode: bool = False, progress: bool = True) -> nn.Module:
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
    like = next(student.parameters())
    single = isinstance(data, torch.Tensor) or type(data).__name__ == "ndarray"
    batches = calibration_batches(data, like, int(batch_size) if single else 1 << 62)
    inputs = torch.cat(batches) if single else None
    t_flag, s_flag = teacher.training, student.training
    teacher.eval()
    student.train(train_mode)
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    F = torch.nn.functional
    steps = epochs * len(batches)
    devices = [like.device] if like.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            gen = torch.Generator().manual_seed(seed)

            def schedule() -> Any:
                for _ in range(epochs):
                    if inputs is not None:
                        perm = torch.randperm(len(inputs), generator=gen).to(inputs.device)
                        yield from (inputs[idx] for idx in perm.split(int(batch_size)))
                    else:
                        yield from (batches[i] for i in torch.randperm(len(batches), generator=gen).tolist())

            for x in _progress(schedule(), total=steps, desc="sekron distill", enabled=progress):
                with torch.no_grad():
                    target = _first_tensor(teacher(x)).detach()
                out = _first_tensor(student(x))
                if loss == "mse":
                    value = F.mse_loss(out, target)
                else:
                    value = F.kl_div(F.log_softmax(out / temperature, -1), F.log_softmax(target / temperature, -1),
                                     reduction="batchmean", log_target=True) * temperature ** 2
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
    finally:
        teacher.train(t_flag)
        student.train(s_flag)
    return student
