"""Replay diagnostics: how good is what a generator hands the learner?

Generative replay only works if the replayed images look like their classes. Accepted-sample
counts say nothing about that (a committed `fast` JDCL run had 1000/1000 accepted bird and cat
images and ended at 8.6 % on them), so every method with a generator measures its replay here,
after each generation, against a fixed instrument:

- a **reference classifier** per dataset (a small ResNet trained once on the real training set of
  all classes, cached beside the dataset cache, keyed by the dataset's content hash). It is a
  measuring instrument only: nothing it says reaches training, replay selection or labels.
- **replay fidelity**: how often the reference classifier, restricted to the replay's classes,
  agrees with the label the replay carries; next to its accuracy on real test images of the same
  classes, and chance (1 / number of classes).
- **Fréchet distance** between replay and real test images of the same classes, in the reference
  classifier's penultimate features (an FID with a dataset-specific network; small sets, so
  compare values within one dataset, not to published FIDs). The real value is the distance
  between real training and real test images of the classes.
- **pixel health**: the share of saturated values (0 or 255) and the share of spectral power
  above half the Nyquist frequency, each next to the real test images' value. Briefly trained
  diffusion models sampled without clipping give saturated colour noise, which both expose.

Hand-written because no dependency computes these on a dataset-specific classifier (torchmetrics'
FID is Inception-based, for 299-pixel natural images, and is not a dependency of the suite).
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ---- the reference classifier ------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceSpec:
    """How the reference classifier is built and trained; part of its cache key."""

    widths: tuple[int, int, int] = (64, 128, 256)
    epochs: int = 16
    min_steps: int = 300   # small datasets (digits, synthetic) train for at least this many steps
    batch_size: int = 512
    lr: float = 0.2
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    seed: int = 0
    version: int = 1  # bump when the training code changes what it produces

    @classmethod
    def for_images(cls, image_size: int) -> "ReferenceSpec":
        """A quarter of the widths for small images (digits, synthetic: 8x8), where tests train it on a CPU."""
        return cls(widths=(16, 32, 64), min_steps=150) if image_size <= 16 else cls()


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Stage(nn.Module):
    """conv-bn-relu, 2x max-pool, then a residual pair of conv-bn-relu (the ResNet-9 pattern)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.down = nn.Sequential(_conv_bn(cin, cout), nn.MaxPool2d(2))
        self.res = nn.Sequential(_conv_bn(cout, cout), _conv_bn(cout, cout))

    def forward(self, x):
        x = self.down(x)
        return x + self.res(x)


class ReferenceNet(nn.Module):
    """A small ResNet-9-style classifier; ``features`` is its penultimate (pooled) layer."""

    def __init__(self, in_channels: int, num_classes: int, widths=(64, 128, 256)):
        super().__init__()
        w1, w2, w3 = widths
        self.body = nn.Sequential(_conv_bn(in_channels, w1), _Stage(w1, w2), _Stage(w2, w3), _conv_bn(w3, w3))
        self.fc = nn.Linear(w3, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_max_pool2d(self.body(x), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _normalise(x_uint8: torch.Tensor) -> torch.Tensor:
    return x_uint8.float() / 127.5 - 1


def _augment(x: torch.Tensor, gen: torch.Generator, flip: bool) -> torch.Tensor:
    """Reflect-pad-4 random crop (and a random flip where the dataset allows it), per sample."""
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    rows = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * pad)
    xp = xp.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    out = xp.gather(3, cols)
    if flip:
        f = (torch.rand(n, generator=gen) < 0.5).to(x.device).view(n, 1, 1, 1)
        out = torch.where(f, out.flip(3), out)
    return out


def train_reference(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, device: torch.device,
                    spec: ReferenceSpec = ReferenceSpec(), flip: bool = True, log=print) -> ReferenceNet:
    """Train the reference classifier: SGD with Nesterov momentum, one-cycle learning rate, label
    smoothing, crop (+ flip) augmentation, bf16 autocast on CUDA. Seeded by ``spec.seed`` alone:
    torch's global generators are forked, so the caller's randomness is untouched."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(spec.seed)
        net = ReferenceNet(train_x.shape[1], num_classes, spec.widths).to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(spec.seed)
    n = len(train_x)
    bs = min(spec.batch_size, max(1, n // 4))
    steps_per_epoch = max(1, n // bs)
    epochs = max(spec.epochs, -(-max(spec.min_steps, 8) // steps_per_epoch))  # OneCycleLR needs a few steps
    total = epochs * steps_per_epoch
    opt = torch.optim.SGD(net.parameters(), lr=spec.lr, momentum=0.9, nesterov=True, weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=total, pct_start=0.25)
    amp = device.type == "cuda"
    x_all, y_all = train_x.to(device), train_y.to(device)
    net.train()
    t0 = time.time()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        for i in range(steps_per_epoch):
            idx = perm[i * bs:(i + 1) * bs]
            x = _augment(_normalise(x_all[idx]), gen, flip)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(net(x).float(), y_all[idx], label_smoothing=spec.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    log(f"reference classifier: {epochs} epochs on {n} images in {time.time() - t0:.0f}s")
    return net.eval()


@torch.no_grad()
def _batched(fn, x: torch.Tensor, device: torch.device, batch: int = 1000) -> torch.Tensor:
    out = []
    for i in range(0, len(x), batch):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(fn(_normalise(x[i:i + batch].to(device))).float())
    return torch.cat(out)


# ---- measures -------------------------------------------------------------------------------------

def saturated_share(x_uint8: torch.Tensor) -> float:
    """Share of pixel values at 0 or 255."""
    return float(((x_uint8 == 0) | (x_uint8 == 255)).float().mean()) if len(x_uint8) else float("nan")


def high_frequency_share(x_uint8: torch.Tensor) -> float:
    """Share of each image's spectral power (per channel, mean removed) at radial frequencies above
    half the Nyquist frequency (|f| > 0.25 cycles/pixel), averaged over images."""
    if not len(x_uint8):
        return float("nan")
    x = x_uint8.float()
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.rfft2(x).abs().pow(2)
    h, w = x.shape[-2:]
    fy = torch.fft.fftfreq(h, device=x.device).view(h, 1)
    fx = torch.fft.rfftfreq(w, device=x.device).view(1, -1)
    high = (fy.pow(2) + fx.pow(2)).sqrt() > 0.25
    total = power.sum(dim=(-2, -1)).clamp_min(1e-12)
    return float((power * high).sum(dim=(-2, -1)).div(total).mean())


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float | None:
    """Fréchet distance between Gaussians fitted to two feature sets (rows are samples)."""
    from scipy import linalg

    if len(a) < 2 or len(b) < 2:
        return None
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # few samples give singular covariances: handled below
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(covmean).all():  # regularise, as the FID reference code does
            eps = np.eye(len(cov_a)) * 1e-6
            covmean = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


# ---- the diagnostics a run uses --------------------------------------------------------------------

def reference_cache_path(cache_dir: Path, identity: dict, num_classes: int, spec: ReferenceSpec) -> Path:
    key = json.dumps({"dataset": identity.get("content_hash"), "classes": num_classes, "spec": asdict(spec)},
                     sort_keys=True)
    name = identity.get("name", "dataset")
    return Path(cache_dir) / "reference" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


class ReplayDiagnostics:
    """The reference classifier of one dataset and the real-data statistics replay is compared with.

    ``train_x``/``test_x`` are uint8 (N, C, H, W) tensors. The classifier is loaded from
    ``cache_path`` when it is there (``weights_only``: nothing in it is executable), otherwise
    trained and written there atomically."""

    def __init__(self, train_x, train_y, test_x, test_y, num_classes: int, device: torch.device,
                 cache_path: Path | None, flip: bool = True, spec: ReferenceSpec = ReferenceSpec(), log=print):
        self.device, self.num_classes, self.log = device, num_classes, log
        self.train_x, self.train_y = train_x, torch.as_tensor(train_y).long()
        self.test_x, self.test_y = test_x, torch.as_tensor(test_y).long()
        self.net = self._load_or_train(cache_path, flip, spec)
        self._real: dict[int, dict] = {}
        test_pred = _batched(self.net, self.test_x, device).argmax(1).cpu()
        self.reference_acc = float((test_pred == self.test_y).float().mean())
        self.log(f"reference classifier: {100 * self.reference_acc:.1f} % on the real test set")

    def _load_or_train(self, path: Path | None, flip: bool, spec: ReferenceSpec) -> ReferenceNet:
        from . import records

        net = ReferenceNet(self.train_x.shape[1], self.num_classes, spec.widths)
        if path is not None and path.is_file():
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                net.load_state_dict(state["model"])
                self.cache_note = f"loaded from {path}"
                return net.to(self.device).eval()
            except Exception as exc:  # a damaged cache is retrained, not trusted
                self.log(f"reference classifier cache {path} unreadable ({type(exc).__name__}); retraining it")
        net = train_reference(self.train_x, self.train_y, self.num_classes, self.device, spec, flip, self.log)
        if path is not None:
            records.atomic_torch_save({"model": {k: v.cpu() for k, v in net.state_dict().items()},
                                       "spec": asdict(spec)}, path)
        self.cache_note = f"trained and cached at {path}" if path else "trained (not cached)"
        return net.float().to(memory_format=torch.contiguous_format).eval()

    @torch.no_grad()
    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        feats = _batched(self.net.features, x, self.device)
        return self.net.fc(feats).cpu(), feats.cpu().numpy()

    def _real_stats(self, k: int) -> dict:
        if k not in self._real:
            te = self.test_x[self.test_y == k]
            tr = self.train_x[self.train_y == k][: max(len(te), 2)]
            logits, feats = self._stats(te)
            _, tr_feats = self._stats(tr)
            self._real[k] = {"logits": logits, "feats": feats, "train_feats": tr_feats,
                             "fd": frechet_distance(tr_feats, feats),
                             "saturated": saturated_share(te), "hf": high_frequency_share(te)}
        return self._real[k]

    @torch.no_grad()
    def measure(self, x: torch.Tensor, y: torch.Tensor, classes: list[int]) -> dict:
        """Per class of ``classes`` and overall: fidelity, Fréchet distance and pixel health of the
        replay ``x`` (uint8 images) with labels ``y``, each with the real data's value."""
        t0 = time.time()
        x, y = x.detach().cpu(), y.detach().cpu().long()
        classes = sorted(int(k) for k in classes)
        cls_t = torch.tensor(classes)
        logits, feats = self._stats(x)
        pred = cls_t[logits[:, cls_t].argmax(1)]  # the reference's vote among the replay's classes
        per_class, all_real_feats, all_train_feats, real_hits, real_n = {}, [], [], 0, 0
        for k in classes:
            real = self._real_stats(k)
            real_pred = cls_t[real["logits"][:, cls_t].argmax(1)]
            hits = int((real_pred == k).sum())
            real_hits, real_n = real_hits + hits, real_n + len(real_pred)
            all_real_feats.append(real["feats"])
            all_train_feats.append(real["train_feats"])
            m = (y == k)
            n = int(m.sum())
            per_class[str(k)] = {
                "n": n,
                "fidelity": float((pred[m] == k).float().mean()) if n else None,
                "fidelity_real": hits / max(1, len(real_pred)),
                "fd": frechet_distance(feats[m.numpy()], real["feats"]) if n >= 2 else None,
                "fd_real": real["fd"],
                "saturated": saturated_share(x[m]), "saturated_real": real["saturated"],
                "hf": high_frequency_share(x[m]), "hf_real": real["hf"],
            }
        keep = torch.isin(y, cls_t)
        real_x = torch.cat([self.test_x[self.test_y == k] for k in classes])
        overall = {
            "n": int(keep.sum()),
            "fidelity": float((pred[keep] == y[keep]).float().mean()) if keep.any() else None,
            "fidelity_real": real_hits / max(1, real_n),
            "fd": frechet_distance(feats[keep.numpy()], np.concatenate(all_real_feats)),
            "fd_real": frechet_distance(np.concatenate(all_train_feats), np.concatenate(all_real_feats)),
            "saturated": saturated_share(x[keep]), "saturated_real": saturated_share(real_x),
            "hf": high_frequency_share(x[keep]), "hf_real": high_frequency_share(real_x),
        }
        return {"classes": classes, "chance": 1 / len(classes), "overall": overall, "per_class": per_class,
                "reference_test_acc": self.reference_acc, "seconds": round(time.time() - t0, 2)}

    @torch.no_grad()
    def accuracy_on(self, predict, classes: list[int], batch: int = 1000) -> float:
        """Top-1 accuracy (over all outputs) of ``predict`` (uint8 images -> logits) on the real test
        images of ``classes``: e.g. a local model on its own task before anything is distilled."""
        m = torch.isin(self.test_y, torch.tensor(classes))
        x, y = self.test_x[m], self.test_y[m]
        hits = 0
        for i in range(0, len(x), batch):
            hits += int((predict(x[i:i + batch].to(self.device)).argmax(1).cpu() == y[i:i + batch]).sum())
        return hits / max(1, len(x))


def for_dataset(ds, device: torch.device, flip: bool = True, log=print) -> ReplayDiagnostics:
    """The diagnostics of an ``ArrayDataset``: its reference classifier cached under the dataset
    cache (``$JDCL_BENCH_CACHE``/reference/), keyed by the dataset's content hash and the spec."""
    from .data.augment import images_to_tensor
    from .data.datasets import resolve_cache_dir

    spec = ReferenceSpec.for_images(int(np.asarray(ds.train_x).shape[1]))
    cache = None
    if ds.identity.get("content_hash"):
        cache = reference_cache_path(resolve_cache_dir(), ds.identity, len(ds.classes), spec)
    return ReplayDiagnostics(images_to_tensor(ds.train_x), np.asarray(ds.train_y), images_to_tensor(ds.test_x),
                             np.asarray(ds.test_y), len(ds.classes), device, cache, flip=flip, spec=spec, log=log)


def near_chance(report: dict, margin: float = 1.5) -> bool:
    """Replay whose fidelity is below ``margin`` x chance: the learner is shown noise."""
    fid = report["overall"]["fidelity"]
    return fid is not None and fid < margin * report["chance"]


def summary_line(tag: str, report: dict) -> str:
    o = report["overall"]

    def f(v, pct=True, nd=1):
        return "–" if v is None else (f"{100 * v:.{nd}f}%" if pct else f"{v:.{nd}f}")

    return (f"{tag}: fidelity {f(o['fidelity'])} (real {f(o['fidelity_real'])}, chance {f(report['chance'])}), "
            f"FD {f(o['fd'], False)} (real {f(o['fd_real'], False)}), "
            f"saturated {f(o['saturated'])} (real {f(o['saturated_real'])}), "
            f"HF {f(o['hf'])} (real {f(o['hf_real'])}), n={o['n']}")
