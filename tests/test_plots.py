"""Figures drawn in a pool of processes come out as drawn one by one, each where it belongs."""

from __future__ import annotations

import numpy as np

from pipeline import plots


def queue_some(queue: plots.FigureQueue) -> tuple[dict, dict]:
    section, model = {}, {}
    classes = ["a", "b", "c"]
    queue.add(section, "balance", plots.class_balance,
              {"train": [5, 3, 2], "test": [1, 1, 1]}, classes, "balance")
    queue.add(section, "params", plots.parameter_bars, {"x": 650, "y": 26_194},
              {"x": 0.9, "y": 0.95}, "params")
    labels = np.array([0, 1, 2])
    # nothing misclassified: the figure function returns None, and the slot says so
    queue.add(model, "misclassified", plots.misclassified_gallery,
              np.zeros((3, 1, 4, 4), np.uint8), labels, labels, np.ones(3), classes, "wrong")
    return section, model


def test_a_pool_draws_the_same_bytes_as_one_process_and_keeps_the_order():
    pooled, alone = plots.FigureQueue(), plots.FigureQueue()
    pooled_section, pooled_model = queue_some(pooled)
    alone_section, alone_model = queue_some(alone)
    pooled.draw(workers=2)
    alone.draw(workers=1)
    assert pooled_section == alone_section and pooled_model == alone_model
    assert set(pooled_section) == {"balance", "params"}
    assert all(uri.startswith("data:image/png;base64,") for uri in pooled_section.values())
    assert pooled_section["balance"] != pooled_section["params"]
    assert pooled_model == {"misclassified": None}
    assert pooled.jobs == [] and alone.jobs == []
