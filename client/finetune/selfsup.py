"""Self-pretraining: continue training the pulled body on the client's own unlabelled examples, then fine-tune.

Krishna et al. (ACL 2023, "Downstream datasets make surprisingly good
pretraining corpora") pretrain on nothing but the downstream task's own
text and come close to models pretrained on corpora 10-500x larger;
Gururangan et al. (ACL 2020) continue pretraining a general model on the
task's data ("task-adaptive pretraining") before fine-tuning. Here either
starts from the pulled model (or from random initialisation) and trains its
body — never its head — with a self-supervised objective on the examples the
client has: the training split (labels unused) and, in few-label mode, the
rest of it that came without labels. Validation and test splits are never
used. Two objectives:

- ``masked`` (masked-image modelling, SimMIM-style, Xie et al. CVPR 2022):
  hide a random `mask_ratio` of square patches (about a 7x7 grid of the
  image; single features for non-image inputs), encode the masked input
  with the body, and reconstruct the original input from the pooled
  features through a two-layer decoder; mean squared error on the hidden
  values only. An example's loss depends on that example alone, so it runs
  under DP-SGD (Opacus, per-example clipping, Poisson sampling, the same
  accounting as fine-tuning).
- ``contrastive`` (SimCLR, Chen et al. ICML 2020): two random augmentations
  of each example (affine warp, brightness/contrast jitter, noise; for
  vectors noise and feature dropout), a projection MLP, NT-Xent with the
  rest of the batch as negatives. Not under DP: one example's loss depends
  on every other example in its batch.

The decoder or projector is discarded afterwards; the model keeps its
architecture, so everything downstream (strategies, DP, ONNX export, the
card) works unchanged. Under DP the run's ε is split: `epsilon_share` for
self-pretraining, the rest for fine-tuning, each at half of δ (basic
composition: the released model satisfies the run's (ε, δ) for every
example, including those only in the unlabelled part).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
import warnings

import torch
from torch import nn

from xfer.client.dp_delta import resolve_delta
from xfer.client.finetune.budget import default_batch_size, plan_budget, size_bucket
from xfer.client.finetune.config import FinetuneConfig, PrivacyConfig, SelfPretrainConfig
from xfer.client.finetune.data import TargetData, TensorData
from xfer.client.finetune.devices import resolve_device, seed_everything, to_device
from xfer.client.finetune.errors import DataError, FinetuneError, PrivacyError
from xfer.client.finetune.ledger import PrivacyLedger
from xfer.client.finetune.privacy import (
    AccountedRun,
    PrivacyReport,
    make_compatible,
)
from xfer.client.finetune.schedules import cosine
from xfer.models.base import XferModel

log = logging.getLogger(__name__)

#: Hidden width of the reconstruction decoder and the contrastive projector; projection size.
DECODER_WIDTH = 256
PROJECTION_DIM = 64
#: Patches per image side for masking (a 28x28 image gets 4x4-pixel patches).
MASK_GRID = 7
#: Contrastive needs negatives: the default batch is at least this.
MIN_CONTRASTIVE_BATCH = 16
#: DP clipping norm of self-pretraining when the privacy config gives none (the body and decoder train).
DP_CLIP = 1.0


@dataclasses.dataclass(frozen=True)
class SelfPretrainResult:
    """What self-pretraining did. `model` is a trained copy (head untouched), on the CPU, in eval mode."""

    model: XferModel
    objective: str
    steps_applied: int
    batch_size: int
    #: Size bucket of the unlabelled pool (a power of two: the only size reported).
    bucket: int
    #: Mean loss per tenth of the run (local only).
    losses: tuple[float, ...]
    privacy: PrivacyReport | None
    #: The privacy config fine-tuning gets afterwards (the rest of ε and δ); None without DP.
    finetune_privacy: PrivacyConfig | None
    seconds: float
    config: SelfPretrainConfig

    def hyperparameters(self) -> dict[str, str]:
        """What a report says about it: functions of the config and the pool's size bucket only."""
        out = {
            "self_pretrain": self.objective,
            "self_pretrain_steps": str(self.config.steps),
            "self_pretrain_batch_size": str(self.batch_size),
            "self_pretrain_lr": f"{self.config.lr:g}",
            "self_pretrain_bucket": str(self.bucket),
        }
        if self.objective == "masked":
            out["self_pretrain_mask_ratio"] = f"{self.config.mask_ratio:g}"
        else:
            out["self_pretrain_temperature"] = f"{self.config.temperature:g}"
        if self.privacy is not None:
            out["self_pretrain_epsilon_share"] = f"{self.config.epsilon_share:g}"
        return out


def pretext_pool(target: TargetData) -> TensorData:
    """The examples self-pretraining may use: the training split and the extra unlabelled ones, without labels."""
    parts = [target.train] + ([target.unlabeled] if target.unlabeled is not None else [])
    return TensorData(torch.cat([p.x for p in parts]), None, torch.cat([p.index for p in parts]))


def split_privacy(privacy: PrivacyConfig, *, share: float, bucket: int) -> tuple[PrivacyConfig, PrivacyConfig]:
    """(self-pretraining, fine-tuning) configs: ε split by `share`, δ halved (`bucket`: the pool's size bucket)."""
    delta = resolve_delta(privacy.delta, bucket=bucket, error=PrivacyError)
    first = dataclasses.replace(privacy, epsilon=privacy.epsilon * share, delta=delta / 2, ghost_clipping=False)
    rest = dataclasses.replace(privacy, epsilon=privacy.epsilon * (1 - share), delta=delta / 2)
    return first, rest


# -- objectives ---------------------------------------------------------------------------------------


def _is_image(shape: tuple[int, ...]) -> bool:
    return len(shape) == 3


class MaskedReconstruction(nn.Module):
    """body(masked x) -> pooled features -> decoder -> the whole input, scored on the hidden part only."""

    def __init__(self, model: XferModel, *, example_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.model = model
        self.example_shape = example_shape
        size = math.prod(example_shape)
        self.decoder = nn.Sequential(
            nn.Linear(model.feature_dim, DECODER_WIDTH), nn.GELU(), nn.Linear(DECODER_WIDTH, size)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.model.forward_features(x)).view(len(x), *self.example_shape)

    def mask(self, n: int, *, ratio: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """(n, *example_shape) float mask, 1 where hidden: whole patches of images, single features otherwise."""
        shape = self.example_shape
        if _is_image(shape):
            c, h, w = shape
            patch = max(1, math.ceil(h / MASK_GRID))
            gh, gw = math.ceil(h / patch), math.ceil(w / patch)
            cells = gh * gw
        else:
            cells = math.prod(shape)
        hidden = max(1, round(ratio * cells))
        order = torch.rand(n, cells, generator=generator).argsort(dim=1)
        grid = torch.zeros(n, cells)
        grid.scatter_(1, order[:, :hidden], 1.0)
        if _is_image(shape):
            grid = grid.view(n, 1, gh, gw).repeat_interleave(patch, 2).repeat_interleave(patch, 3)[:, :, :h, :w]
            grid = grid.expand(n, c, h, w)
        return grid.reshape(n, *shape).to(device)

    @staticmethod
    def loss(recon: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of each example's mean squared error on its hidden values."""
        per = ((recon - x) ** 2 * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1.0)
        return per.mean()


class Contrastive(nn.Module):
    """body -> projector; NT-Xent between two augmented views of each example."""

    def __init__(self, model: XferModel, *, example_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.model = model
        self.example_shape = example_shape
        self.projector = nn.Sequential(
            nn.Linear(model.feature_dim, DECODER_WIDTH), nn.ReLU(), nn.Linear(DECODER_WIDTH, PROJECTION_DIM)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.model.forward_features(x))

    def augment(self, x: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """One random view of each example (inputs are normalised, so 0 is the mean value)."""
        n = len(x)

        def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
            return (lo + (hi - lo) * torch.rand(n, *shape, generator=generator)).to(x.device)

        if not _is_image(self.example_shape):
            keep = (torch.rand(x.shape, generator=generator) > 0.2).to(x.device, x.dtype)
            return x * keep + 0.1 * torch.randn(x.shape, generator=generator).to(x.device)
        angle = uniform(-0.26, 0.26)  # ±15°
        scale = uniform(0.85, 1.15)
        shift = uniform(-0.12, 0.12, 2)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
        view = nn.functional.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
        view = view * uniform(0.7, 1.3, 1, 1, 1) + uniform(-0.3, 0.3, 1, 1, 1)
        return view + 0.1 * torch.randn(view.shape, generator=generator).to(x.device)

    @staticmethod
    def loss(z1: torch.Tensor, z2: torch.Tensor, *, temperature: float) -> torch.Tensor:
        """NT-Xent (SimCLR): each view's positive is the other view of its example, all 2n−2 others negatives."""
        z = nn.functional.normalize(torch.cat([z1, z2]), dim=1)
        sim = z @ z.T / temperature
        n = len(z1)
        sim.fill_diagonal_(float("-inf"))
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        return nn.functional.cross_entropy(sim, target)


# -- the loop ------------------------------------------------------------------------------------------


def _batch_size(config: SelfPretrainConfig, *, bucket: int, dp: bool) -> int:
    if config.batch_size is not None:
        return config.batch_size
    batch = default_batch_size(bucket, dp=dp)
    return max(batch, MIN_CONTRASTIVE_BATCH) if config.objective == "contrastive" else batch


def self_pretrain(
    model: XferModel,
    *,
    data: TensorData,
    config: SelfPretrainConfig,
    privacy: PrivacyConfig | None = None,
    device: str = "auto",
    seed: int = 0,
    ledger: PrivacyLedger | None = None,
    dataset_id: str | None = None,
) -> SelfPretrainResult:
    """Trains a copy of `model`'s body on `data` (labels ignored) with `config.objective`; the head is untouched.

    With `privacy`, runs DP-SGD at `privacy.epsilon × config.epsilon_share` (the result's `finetune_privacy`
    is what fine-tuning may spend afterwards); a `ledger` is checked for the whole ε first and charged
    for this part. A run that applied no optimizer step raises.
    """
    started = time.perf_counter()
    n = len(data)
    if n < 2:
        raise DataError(f"self-pretraining needs unlabelled examples; got {n}")
    bucket = size_bucket(n)
    dp = privacy is not None
    if dp and config.objective != "masked":
        raise PrivacyError(
            f"self-pretraining objective {config.objective!r} cannot run under DP (its loss couples "
            f"the examples of a batch); use 'masked'"
        )
    sp_privacy = ft_privacy = None
    if privacy is not None:
        sp_privacy, ft_privacy = split_privacy(privacy, share=config.epsilon_share, bucket=bucket)
        if ledger is not None:
            if not dataset_id:
                raise FinetuneError("a privacy ledger needs the dataset_id to charge")
            status = ledger.status(dataset_id, budget=privacy.budget)
            if status.remaining is not None and status.remaining < privacy.epsilon:
                from xfer.client.finetune.errors import PrivacyBudgetExceededError

                raise PrivacyBudgetExceededError(
                    f"self-pretraining plus fine-tuning needs epsilon {privacy.epsilon:g} on {dataset_id}, but only "
                    f"{status.remaining:.3g} of its budget {status.budget:g} is left; lower --dp-epsilon or raise "
                    f"--privacy-budget"
                )
    setup = resolve_device(device)
    seed_everything(seed)
    batch = _batch_size(config, bucket=bucket, dp=dp)
    budget = plan_budget(
        n=n,
        config=FinetuneConfig(steps=config.steps, batch_size=batch, lr=config.lr, privacy=sp_privacy),
        strategy_lr=config.lr,
        strategy_clip=DP_CLIP,
    )
    work = copy.deepcopy(model)
    if dp:
        work = make_compatible(work)
    shape = tuple(data.x.shape[1:])
    wrapper: MaskedReconstruction | Contrastive = (
        MaskedReconstruction(work, example_shape=shape)
        if config.objective == "masked"
        else Contrastive(work, example_shape=shape)
    )
    for p in work.head_layer.parameters():
        p.requires_grad_(False)  # the head is not part of the objective: no update, no DP hooks
    wrapper.to(setup.device).train()
    params = [p for p in wrapper.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed + 104_729)
    x = to_device(data.x, setup)
    accounted = run = None
    net: nn.Module = wrapper
    if sp_privacy is not None:
        # sp_privacy keeps the caller's budget (split_privacy), so the ledger checks the same total.
        accounted = AccountedRun.start(
            sp_privacy,
            budget=budget,
            n=n,
            seed=seed,
            device=setup.device,
            ledger=ledger,
            dataset_id=dataset_id,
            note=f"self-pretrain {config.objective}",
        )
        run = accounted.run
        net, optimizer, _ = run.wrap(wrapper, optimizer, nn.MSELoss())
    losses: list[float] = []
    applied = 0
    order, pos = torch.randperm(n, generator=generator), 0
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for step in range(budget.steps):
                if run is not None:
                    idx = run.poisson_batch(generator)
                else:
                    if pos >= n:
                        order, pos = torch.randperm(n, generator=generator), 0
                    idx, pos = order[pos : pos + batch], pos + batch
                empty = idx.numel() == 0
                if empty:
                    idx = torch.zeros(1, dtype=torch.long)  # a noise-only step still counts for the accountant
                xb = x[idx.to(x.device)]
                if isinstance(wrapper, MaskedReconstruction):
                    mask = wrapper.mask(len(xb), ratio=config.mask_ratio, generator=generator, device=xb.device)
                    loss = wrapper.loss(net(xb * (1 - mask)), xb, mask)
                else:
                    if len(xb) < 2:
                        continue
                    z = net(
                        torch.cat([wrapper.augment(xb, generator=generator), wrapper.augment(xb, generator=generator)])
                    )
                    loss = wrapper.loss(z[: len(xb)], z[len(xb) :], temperature=config.temperature)
                if empty:
                    loss = loss * 0.0
                for g in optimizer.param_groups:
                    g["lr"] = config.lr * cosine(step, budget.steps)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                applied += 1
                if not empty:
                    losses.append(float(loss.detach()))
    finally:
        if run is not None:
            run.unwrap(net)
        for p in work.parameters():
            p.requires_grad_(True)
    if applied == 0:
        raise FinetuneError("self-pretraining applied no optimizer step; raise the step budget or the batch size")
    report = accounted.finish(ledger=ledger, dataset_id=dataset_id) if accounted is not None else None
    work.cpu().eval()
    tenth = max(1, len(losses) // 10)
    curve = tuple(sum(losses[i : i + tenth]) / len(losses[i : i + tenth]) for i in range(0, len(losses), tenth))
    log.info(
        "self-pretrained (%s) for %d steps at batch %d: loss %s",
        config.objective,
        applied,
        batch,
        " -> ".join(f"{v:.4f}" for v in curve[:1] + curve[-1:]),
    )
    return SelfPretrainResult(
        model=work,
        objective=config.objective,
        steps_applied=applied,
        batch_size=batch,
        bucket=bucket,
        losses=curve,
        privacy=report,
        finetune_privacy=ft_privacy,
        seconds=time.perf_counter() - started,
        config=config,
    )
