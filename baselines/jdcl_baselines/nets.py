"""The baselines' own networks (the ResNets come from jdcl_bench.models, the UNet from
jdcl_bench.jdcl.unet): GFR's feature generator and critic, NNCSL's backbone with its heads."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jdcl_bench.models import cifar_resnet


# ---- GFR ------------------------------------------------------------------------------------------

class FeatureGenerator(nn.Module):
    """[z ‖ one-hot(y)] -> hidden -> LeakyReLU -> hidden -> LeakyReLU -> feature -> ReLU (features are
    post-ReLU averages, so non-negative)."""

    def __init__(self, latent_dim: int, num_classes: int, hidden: int, feat_dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.net = nn.Sequential(nn.Linear(latent_dim + num_classes, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, feat_dim), nn.ReLU())
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, F.one_hot(y, self.num_classes).to(z.dtype)], dim=1))


class ProjectionDiscriminator(nn.Module):
    """Critic with projection conditioning: D(f, y) = w·h + <P onehot(y), h>, h = MLP(f).
    (The official auxiliary class head is left out: its loss is never used.)"""

    def __init__(self, feat_dim: int, num_classes: int, hidden: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(feat_dim, hidden), nn.LeakyReLU(0.2),
                                  nn.Linear(hidden, hidden), nn.LeakyReLU(0.2))
        self.out = nn.Linear(hidden, 1)
        self.embed = nn.Embedding(num_classes, hidden)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.body(f)
        return self.out(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)


# ---- NNCSL ----------------------------------------------------------------------------------------

class NNCSLNet(nn.Module):
    """CIFAR ResNet-18 backbone, 3-layer projection head (z) and a linear classifier on the backbone feature."""

    def __init__(self, num_classes: int, in_chans: int, width: int, layers: tuple[int, ...], hidden: int, out: int):
        super().__init__()
        self.backbone = cifar_resnet(0, in_chans, width, layers)  # num_classes=0: no timm head
        d = self.backbone.num_features
        self.fc = nn.Sequential(nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                nn.Linear(hidden, out))
        self.classifier = nn.Linear(d, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.global_pool(self.backbone.forward_features(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return h, self.fc(h)
