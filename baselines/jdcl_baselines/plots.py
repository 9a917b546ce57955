"""Figures the baselines write into a run's artefacts (matplotlib, the ``plot`` extra, imported when used)."""
from __future__ import annotations

import torch


def plot_feature_generator(path, k, classes, gen_means, real_means, stats) -> None:
    """GFR's generator after task k: generated and real class-mean features, and the head's accuracy on
    generated features, per class (a PNG when matplotlib is installed; the JSON beside it has the numbers)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the JSON says the same in numbers
        return
    # the 48 feature dimensions that differ most between the generated class means
    dims = gen_means.var(0).argsort(descending=True)[:48].sort().values
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.35 * len(classes) + 2.2),
                             gridspec_kw={"width_ratios": [3, 3, 1.4]})
    real = torch.full((len(classes), len(dims)), float("nan"))
    for i, cls in enumerate(classes):
        if cls in real_means:
            real[i] = real_means[cls][dims]
    vmax = max(float(gen_means[:, dims].max()), float(real.nan_to_num(0).max())) or 1.0  # one colour scale
    axes[0].imshow(gen_means[:, dims].numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=vmax)
    axes[0].set_title("generated: class-mean feature")
    im = axes[1].imshow(real.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=vmax)
    fig.colorbar(im, ax=axes[1], fraction=0.05)
    axes[1].set_title("real (current task's classes)")
    for ax in axes[:2]:
        ax.set_yticks(range(len(classes)), [str(x) for x in classes])
        ax.set_xlabel("feature dimension (48 most class-dependent)")
    accs = [stats[int(cls)]["head_accuracy_on_generated"] for cls in classes]
    axes[2].barh(range(len(classes)), accs, color="tab:blue")
    axes[2].set_xlim(0, 1)
    axes[2].invert_yaxis()
    axes[2].set_yticks(range(len(classes)), [str(x) for x in classes])
    axes[2].set_title("head acc. on generated")
    fig.suptitle(f"GFR feature generator after task {k}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
