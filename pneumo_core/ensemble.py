"""Ensembles: trained models averaged in logit space as one flat model.

An ensemble is a registry model like any other (``ModelSpec.ensemble_of`` names the model it averages several
of; ``ModelSpec.combines`` the models a mixed ensemble averages one of each). It is assembled, not trained:
``train --model NAME --members DIR DIR ...`` loads the verified member directories, fuses their weights into
the ensemble's graph (:func:`pneumo_core.models.fuse_cnn_members`, :func:`pneumo_core.models.fuse_xception_cnn`),
and then runs the same pipeline as any training run: Platt calibration and the threshold on the
validation split, the test metrics, the gate, the subtype head, the sealed directory and its card.
The members must share the ensemble's data split (a member trained on another split could have seen the
ensemble's validation or test images). Members of one model must also share its framing and architecture; a
mixed ensemble's members read its framing (xception, trained on squashed squares, reads border-trimmed ones,
which are the same pixels unless the X-ray has uniform borders).

Usage:
    python -m pneumo_core train --model cnn_ensemble --members models/cnn_robust runs/seed7/cnn_robust
    python -m pneumo_core train --model xception_cnn_ensemble --members models/xception models/cnn_ensemble
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import keras

from pneumo_core import artifacts, data
from pneumo_core.artifacts import EnsembleMember, LoadedModel, TrainArgs
from pneumo_core.models import fuse_cnn_members, fuse_xception_cnn
from pneumo_core.registry import ModelSpec

LOGGER = logging.getLogger(__name__)


def assemble(spec: ModelSpec, args: TrainArgs, member_dirs: Sequence[str]) -> tuple[keras.Model, TrainArgs]:
    """The ensemble ``spec`` holding the trained models in ``member_dirs``, and ``args`` recording them.

    Raises:
        ValueError: With fewer than two members (a mixed ensemble: not one of each model it combines, in order),
            or a member of another model, framing, architecture or split.
        ModelRefused: If a member directory does not verify.
    """
    if spec.combines:
        wanted = f"one trained model of each of {', '.join(spec.combines)}, in this order"
        if len(member_dirs) != len(spec.combines):
            raise ValueError(f"{spec.name} averages {wanted}: give {len(spec.combines)} folders with --members.")
    elif len(member_dirs) < 2:
        raise ValueError(f"{spec.name} averages trained {spec.ensemble_of} models: give at least two with --members.")
    split_hash = data.split_hash(Path(args.split_file))
    members = [artifacts.load_model_dir(Path(directory)) for directory in member_dirs]
    for index, (directory, member) in enumerate(zip(member_dirs, members, strict=True)):
        check_member(spec, args, directory, member, split_hash, index)
    model, model_params = (fuse_mixed if spec.combines else fuse_same)(spec, members)
    LOGGER.info("Assembled %s from %s", spec.name, ", ".join(member_dirs))
    records = tuple(member_record(directory, member) for directory, member in zip(member_dirs, members, strict=True))
    return model, replace(args, epochs=0, model_params=model_params, members=records)


def fuse_same(spec: ModelSpec, members: Sequence[LoadedModel]) -> tuple[keras.Model, dict]:
    """Several trained models of one architecture in ``spec``'s graph, and its builder parameters.

    Raises:
        ValueError: If the members were built with different parameters.
    """
    params = members[0].config.args.model_params
    if any(member.config.args.model_params != params for member in members):
        raise ValueError("The members were built with different --params; an ensemble needs one architecture.")
    model_params = {**params, "members": len(members)}
    model = spec.builder(input_size=spec.input_size, channels=spec.channels, **model_params)
    fuse_cnn_members(model, [member.model for member in members])
    return model, model_params


def fuse_mixed(spec: ModelSpec, members: Sequence[LoadedModel]) -> tuple[keras.Model, dict]:
    """A trained xception and cnn_ensemble in ``spec``'s graph, and its builder parameters (the cnns')."""
    xception, cnn_ensemble = members
    model_params = dict(cnn_ensemble.config.args.model_params)
    model = spec.builder(input_size=spec.input_size, channels=spec.channels, **model_params)
    fuse_xception_cnn(model, xception.model, cnn_ensemble.model)
    return model, model_params


def check_member(
    spec: ModelSpec, args: TrainArgs, directory: str, member: LoadedModel, split_hash: str, index: int
) -> None:
    """Refuse a member that is not the model ``spec`` expects at ``index``, framed and split like the ensemble."""
    expected = spec.combines[index] if spec.combines else spec.ensemble_of
    if member.spec.name != expected:
        raise ValueError(f"{directory} holds a {member.spec.name} model; {spec.name} expects {expected} there.")
    if not spec.combines and member.framing != args.framing:
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
        model=member.spec.name,
    )
