"""Inference for the evaluate stage: run a checkpoint's seed copies on the test split and
compute the evaluation record (pipeline/evaluation.py) the report draws from."""

from __future__ import annotations

import numpy as np
import torch

from pipeline import analysis, evidence, machine, saliency, web_model
from pipeline.checkpoint import Checkpoint
from pipeline.embedding import embedding_record
from pipeline.evaluation import Confusion, Evaluation, WeightHistogram
from pipeline.forward import batched_logits
from pipeline.models import count_params
from pipeline.splits import Split

HISTOGRAM_BINS = 40
TRAINING_KEYS = ("optimizer", "lr", "schedule", "batch_size", "epochs", "weight_decay",
                 "momentum", "bf16", "early_stopping", "stopped", "augment")


def evaluate(checkpoint: Checkpoint, test: Split, threads: int) -> Evaluation:
    """Run every seed copy of a checkpoint on the test split and compute what the report draws.

    Always on the CPU, at the precision and memory format the checkpoint was trained with (bf16
    autocast when it trained in bf16, emulated on a CPU without native bf16): the record depends
    on the checkpoint and the kind of CPU, never on which GPUs this machine has; `made_on`
    records where it ran."""
    bf16 = bool(checkpoint.run.get("bf16", False))
    logits = list(seed_logits(checkpoint, test.images))
    model = checkpoint.build()
    predicted = logits[0].argmax(1)
    confusion = analysis.confusion_matrix(test.labels, predicted, len(checkpoint.classes))
    conv = analysis.first_conv(model)
    maps = None if conv is None else analysis.first_block_maps(model, test.images[0])
    initial = checkpoint.build(checkpoint.initial_state_dict)
    seeds = list(checkpoint.run.get("seeds") or range(len(logits)))
    web_layers = web_model.export(model)
    return Evaluation(
        arch=checkpoint.architecture.arch,
        convolutional=checkpoint.architecture.convolutional,
        params=count_params(model),
        seeds=[int(s) for s in seeds],
        logits=np.stack(logits).astype(np.float32),
        labels=test.labels.astype(np.int64),
        confusion=confusion,
        scores=analysis.per_class_scores(test.labels, predicted, checkpoint.classes),
        confused=[Confusion(*pair) for pair in analysis.most_confused(confusion,
                                                                      checkpoint.classes)],
        layers=analysis.layer_summary(model, checkpoint.input_shape),
        filters=None if conv is None else
        conv.weight.detach().float().mean(dim=1).numpy().astype(np.float32),
        feature_maps=None if maps is None else maps.astype(np.float32),
        weight_histograms=weight_histograms(
            {k: v.detach().float().numpy() for k, v in initial.named_parameters()},
            {k: v.detach().float().numpy() for k, v in model.named_parameters()}),
        training={key: checkpoint.run[key] for key in TRAINING_KEYS if key in checkpoint.run},
        **model_evidence(np.stack(logits), test.labels),  # type: ignore[arg-type]
        web_layers=web_layers,
        selftest_probabilities=web_model.reference_probabilities(
            model, test.images[: web_model.SELFTEST_IMAGES]),
        made_on={"evaluated": machine.record("cpu", bf16, threads),
                 "trained": checkpoint.run.get("machine")},
        # last: these put the model in eval mode
        embedding=embedding_record(model, test.images, test.labels, bf16, channels_last=False),
        saliency=saliency.gallery(model, checkpoint.architecture.convolutional, test.images,
                                  logits[0], test.labels),
        selftest_saliency=None if web_layers is None else np.stack(
            [saliency.occlusion(model, image)
             for image in test.images[: saliency.SELFTEST_IMAGES]]).astype(np.float32),
    )


def seed_logits(checkpoint: Checkpoint, images: np.ndarray) -> np.ndarray:
    """Every seed copy's logits on the images (seeds x images x classes), on the CPU at the
    precision and memory format the checkpoint was trained with."""
    bf16 = bool(checkpoint.run.get("bf16", False))
    channels_last = bool(checkpoint.run.get("channels_last", False))
    inputs = torch.from_numpy(images)
    logits = []
    for model in checkpoint.seed_models():
        model.eval()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        logits.append(batched_logits(model, inputs, "cpu", bf16, channels_last).numpy())
    return np.stack(logits)


def model_evidence(logits: np.ndarray, labels: np.ndarray) -> dict:
    """The per-model evidence, by Evaluation field: accuracy intervals, calibration, and each
    class's ROC and precision-recall curves."""
    probabilities = analysis.softmax(logits[0])
    return {
        "interval": evidence.bootstrap_accuracy(logits[0].argmax(1) == labels),
        "seed_interval": evidence.bootstrap_accuracy(logits.mean(axis=0).argmax(1) == labels)
        if len(logits) > 1 else None,
        "calibration": evidence.calibration(probabilities, labels),
        "class_curves": evidence.class_curves(probabilities, labels),
    }


def weight_histograms(initial: dict[str, np.ndarray], trained: dict[str, np.ndarray]
                      ) -> dict[str, WeightHistogram]:
    """Per weight tensor (biases left out): shared bin edges and both distributions' counts."""
    histograms = {}
    for name, values in trained.items():
        if not name.endswith("weight"):
            continue
        edges = np.histogram_bin_edges(np.concatenate([initial[name].ravel(), values.ravel()]),
                                       bins=HISTOGRAM_BINS)
        histograms[name] = WeightHistogram(
            edges=edges.astype(np.float64),
            initial=np.histogram(initial[name], bins=edges)[0].astype(np.int64),
            trained=np.histogram(values, bins=edges)[0].astype(np.int64),
            size=int(values.size),
        )
    return histograms
