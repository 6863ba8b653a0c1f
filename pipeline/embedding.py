"""The embedding map the report draws (section `#<dataset>-embedding`): what each model's last
layer sees of the test images (the input of its final linear layer: the penultimate features;
the pixels for a linear model), projected to 2-D by the evaluate stage, so the record holds two
coordinates per image instead of hundreds of features.

PCA always; t-SNE as well where the points are few enough for it to take seconds (measured:
docs/performance.md, "Embedding map"). At most MAX_POINTS test images are placed, the same ones
for every model of a dataset (a class-stratified choice that depends on the labels only).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.forward import batched_logits

MAX_POINTS = 2000
TSNE_MAX_POINTS = 2000
SEED = 0


def shown_points(labels: np.ndarray, limit: int = MAX_POINTS) -> np.ndarray:
    """The test images placed on the map (sorted indices): all of them up to `limit`, else
    `limit` of them, each class's share of it (largest remainders round), chosen by a fixed
    seed, so every model of a dataset shows the same images."""
    if len(labels) <= limit:
        return np.arange(len(labels), dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    shares = limit * counts / len(labels)
    take = np.floor(shares).astype(int)
    for k in np.argsort(-(shares - take), kind="stable")[: limit - int(take.sum())]:
        take[k] += 1
    rng = np.random.default_rng(SEED)
    chosen = [rng.choice(np.flatnonzero(labels == label), size=int(n), replace=False)
              for label, n in zip(classes, take, strict=True)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def penultimate_features(model: nn.Module, images: torch.Tensor, bf16: bool,
                         channels_last: bool) -> np.ndarray:
    """The input of the model's last linear layer for every image (float32, N x features),
    from the same batched CPU pass as the logits, in eval mode (no dropout)."""
    model.eval()
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    captured: list[torch.Tensor] = []
    hook = last.register_forward_pre_hook(
        lambda _module, inputs: captured.append(inputs[0].detach().float().flatten(1)))
    try:
        batched_logits(model, images, "cpu", bf16, channels_last)
    finally:
        hook.remove()
    return torch.cat(captured)[: len(images)].numpy().astype(np.float32)


def _unit_box(points: np.ndarray) -> np.ndarray:
    """Points shifted and scaled (one factor for both axes) into [0, 1], rounded to 1e-4."""
    low = points.min(axis=0)
    span = float((points.max(axis=0) - low).max()) or 1.0
    return np.round((points - low) / span, 4).astype(np.float32)


def project(features: np.ndarray) -> dict[str, np.ndarray | None]:
    """2-D maps of the features: PCA (the two directions of most variance) always, t-SNE
    (scikit-learn, fixed seed, PCA start) up to TSNE_MAX_POINTS points; each in a unit box."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    count = len(features)
    if count < 3:
        return {"pca": np.zeros((count, 2), np.float32), "tsne": None}
    data = features.astype(np.float64)
    pca = PCA(n_components=2, random_state=SEED).fit_transform(data)
    tsne = None
    if count <= TSNE_MAX_POINTS:
        tsne = TSNE(n_components=2, perplexity=min(30.0, (count - 1) / 3), init="pca",
                    random_state=SEED, n_jobs=1).fit_transform(data)
    return {"pca": _unit_box(pca), "tsne": None if tsne is None else _unit_box(tsne)}


def embedding_record(model: nn.Module, images: np.ndarray, labels: np.ndarray, bf16: bool,
                     channels_last: bool) -> dict:
    """What the evaluation record keeps of the map: the placed images' test indices, the
    feature count, and their PCA and t-SNE coordinates (None where t-SNE was not run)."""
    index = shown_points(labels)
    features = penultimate_features(model, torch.from_numpy(images[index]), bf16, channels_last)
    return {"index": index, "features": int(features.shape[1]), **project(features)}
