"""Ensembles: several trained models of one registry name, averaged in logit space as one flat model.

An ensemble is a registry model like any other (``ModelSpec.ensemble_of`` names what it averages). It
is assembled, not trained: ``train --model cnn_ensemble --members DIR DIR ...`` loads the verified
member directories, fuses their weights into the ensemble's graph (:func:`pneumo_core.models.fuse_cnn_members`),
and then runs the same pipeline as any training run: Platt calibration and the threshold on the
validation split, the test metrics, the gate, the subtype head, the sealed directory and its card.
The members must share the ensemble's framing and architecture, and its data split (a member trained on
another split could have seen the ensemble's validation or test images).

Usage:
    python -m pneumo_core train --model cnn_ensemble --members models/cnn_robust runs/seed7/cnn_robust
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import keras

from pneumo_core import artifacts, data
from pneumo_core.artifacts import EnsembleMember, LoadedModel, TrainArgs
from pneumo_core.models import fuse_cnn_members
from pneumo_core.registry import ModelSpec

LOGGER = logging.getLogger(__name__)


def assemble(spec: ModelSpec, args: TrainArgs, member_dirs: Sequence[str]) -> tuple[keras.Model, TrainArgs]:
    """The ensemble ``spec`` holding the trained models in ``member_dirs``, and ``args`` recording them.

    Raises:
        ValueError: With fewer than two members, or a member of another model, framing, architecture or split.
        ModelRefused: If a member directory does not verify.
    """
    if len(member_dirs) < 2:
        raise ValueError(f"{spec.name} averages trained {spec.ensemble_of} models: give at least two with --members.")
    split_hash = data.split_hash(Path(args.split_file))
    members = [artifacts.load_model_dir(Path(directory)) for directory in member_dirs]
    for directory, member in zip(member_dirs, members, strict=True):
        check_member(spec, args, directory, member, split_hash)
    params = members[0].config.args.model_params
    if any(member.config.args.model_params != params for member in members):
        raise ValueError("The members were built with different --params; an ensemble needs one architecture.")
    model_params = {**params, "members": len(members)}
    model = spec.builder(input_size=spec.input_size, channels=spec.channels, **model_params)
    fuse_cnn_members(model, [member.model for member in members])
    LOGGER.info("Assembled %s from %s", spec.name, ", ".join(member_dirs))
    records = tuple(member_record(directory, member) for directory, member in zip(member_dirs, members, strict=True))
    return model, replace(args, epochs=0, model_params=model_params, members=records)


def check_member(spec: ModelSpec, args: TrainArgs, directory: str, member: LoadedModel, split_hash: str) -> None:
    """Refuse a member that is not a ``spec.ensemble_of`` model framed and split like the ensemble."""
    if member.spec.name != spec.ensemble_of:
        raise ValueError(f"{directory} holds a {member.spec.name} model; {spec.name} averages {spec.ensemble_of}.")
    if member.framing != args.framing:
        raise ValueError(f"{directory} used framing {member.framing!r}; the ensemble uses {args.framing!r}.")
    if member.config.data.split_hash != split_hash:
        raise ValueError(
            f"{directory} was trained on another split than {args.split_file}: its validation or test images could"
            " be another member's training images."
        )


def member_record(directory: str, member: LoadedModel) -> EnsembleMember:
    """What ``config.json`` keeps of one member: where it was, its checksum and its training recipe."""
    trained = member.config.args
    return EnsembleMember(
        path=artifacts.repo_relative(directory),
        model_sha256=member.config.checksums[artifacts.MODEL_FILE],  # verified when the member loaded
        seed=trained.seed,
        augment=trained.augment,
        augment_strength=trained.augment_strength,
        normal_zoom=trained.normal_zoom,
        init_from=trained.init_from,
        init_from_sha256=trained.init_from_sha256,
        epochs_run=member.config.provenance.epochs_run,
        training_seconds=member.config.provenance.training_seconds,
        aspect_swap=trained.aspect_swap,
    )
