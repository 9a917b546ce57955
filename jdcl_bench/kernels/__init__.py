"""The UNet's fast path: layout-keeping forms of its steps (layout.py), GroupNorm-FiLM-SiLU-dropout
as one function (norm_act.py) and a Triton kernel for the inference norms (triton_norm.py).

Every step is on by default; :class:`FastPath` turns steps off for a model
(``jdcl_bench.jdcl.unet.apply_fast_path``), which only `jdcl-bench bench` and the tests do, to time
or check a path against the one before it. Nothing here imports the UNet.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FastPath:
    """Which of the UNet's optimised steps run (all, unless the bench times the ones before them)."""
    layout_norm: bool = True     # GroupNorm and attention keep a channels_last map channels_last
    fused_norm_act: bool = True  # norm-FiLM-SiLU-dropout through kernels.norm_act (ResBlocks, output head)
    triton_norm: bool = True     # inference norms through the Triton kernel where it applies
    cast_early: bool = True      # attention casts its normalised input to the autocast dtype at once
    subpixel: bool = True        # Upsample as four 2x2 phase convolutions instead of interpolate + 3x3
    layout_cat: bool = True      # the decoder's skip concatenation keeps channels_last gradients
