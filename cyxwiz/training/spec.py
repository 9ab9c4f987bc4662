"""The training part of a job spec: job type, model definition, dataset, hyper-parameters (SPEC G1, G2).

The coordinator validates these at submission (nothing is created for an invalid spec) and signs the
result; the runtime in the sandbox reads the same document from ``/input/job.json`` and the verifier
replays training from it, so a node can never choose the seed, data order or hyper-parameters itself.

Use :func:`parse_training_job` / :func:`parse_model_definition` on untrusted input: every refusal is a
:class:`cyxwiz.errors.ValidationError` whose ``field`` is the path of the offending value
(``model.layers[2].p``) and whose ``rule`` is the SPEC id.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from cyxwiz.errors import ValidationError
from cyxwiz.training.graph import ModelLimits, ModelSummary, analyse
from cyxwiz.training.layers import LAYER_TYPES, Layer
from cyxwiz.verification.canonical import canonical_sha256

__all__ = [
    "JOB_TYPES",
    "DatasetRef",
    "Hyperparameters",
    "JobType",
    "ModelDefinition",
    "ModelLimits",
    "ModelSummary",
    "ScriptRef",
    "Task",
    "TrainingConfig",
    "TrainingJob",
    "VerificationSpec",
    "check_job_type",
    "parse_model_definition",
    "parse_training_job",
]

JobType = Literal["model", "script"]
JOB_TYPES: tuple[str, ...] = ("model", "script")
_SHA256 = r"^[0-9a-f]{64}$"
_JOB_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_S3 = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/([^\x00-\x1f]{1,1024})$")
# CIDv0 (base58btc sha2-256 multihash) or CIDv1 in base32, optionally followed by a path.
_IPFS = re.compile(r"^ipfs://(Qm[1-9A-HJ-NP-Za-km-z]{44}|b[a-z2-7]{58,})(/[^\x00-\x1f]*)?$")
_FILE = re.compile(r"^file:///[^\x00-\x1f]+$")


def check_job_type(value: object, *, field: str = "job_type") -> JobType:
    """The job type, or ValidationError (G1) for anything but ``model`` and ``script``."""
    if value == "model":
        return "model"
    if value == "script":
        return "script"
    raise ValidationError(
        f"unknown job type {value!r}; allowed: {', '.join(JOB_TYPES)}", field=field, rule="G1"
    )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelDefinition(_Strict):
    """A model as a DAG of allow-listed layers connected by named inputs (G2).

    Validation also runs the graph checks (cycles, dangling inputs, shapes, parameter budget) with the
    ``model_limits`` from the validation context (default :class:`ModelLimits`), so an instance is valid.
    """

    #: Per-sample input shape, e.g. ``[64]`` for flat digits or ``[1, 8, 8]`` as an image.
    input_shape: tuple[int, ...] = Field(min_length=1, max_length=4)
    input_dtype: Literal["float32", "int64"] = "float32"
    layers: tuple[Layer, ...] = Field(min_length=1)
    #: The layer whose output is the model output; the last layer when omitted.
    output: str | None = None

    @field_validator("input_shape")
    @classmethod
    def _dims(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        for dim in value:
            if not 1 <= dim <= 65_536:
                raise ValueError("every dimension must be between 1 and 65536")
        return value

    @model_validator(mode="after")
    def _graph(self, info: ValidationInfo) -> ModelDefinition:
        self.summary(_limits_from(info))
        return self

    def summary(self, limits: ModelLimits | None = None) -> ModelSummary:
        """Shapes and parameter count; raises ValidationError if the graph breaks a rule or ``limits``."""
        return analyse(
            self.layers,
            input_shape=self.input_shape,
            input_dtype=self.input_dtype,
            output=self.output,
            limits=limits or ModelLimits(),
        )


def _limits_from(info: ValidationInfo) -> ModelLimits:
    context = info.context if isinstance(info.context, Mapping) else {}
    limits = context.get("model_limits")
    return limits if isinstance(limits, ModelLimits) else ModelLimits()


class DatasetRef(_Strict):
    """Where the training data lives and its content hash (G1, D3). ``file://`` only in development."""

    uri: str = Field(max_length=2048)
    sha256: str = Field(pattern=_SHA256)

    @field_validator("uri")
    @classmethod
    def _scheme(cls, value: str, info: ValidationInfo) -> str:
        if _S3.match(value) or _IPFS.match(value):
            return value
        if value.startswith("file://"):
            context = info.context if isinstance(info.context, Mapping) else {}
            if not context.get("allow_file_uris"):
                raise ValueError("file:// datasets are allowed only in development")
            if _FILE.match(value) and "/../" not in value + "/":
                return value
        raise ValueError("expected s3://bucket/key, ipfs://CID or (development) file:///absolute/path")


class Hyperparameters(_Strict):
    optimizer: Literal["sgd", "adam"] = "adam"
    learning_rate: float = Field(default=1e-3, gt=0, le=10)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    batch_size: int = Field(default=32, ge=1, le=65_536)
    epochs: int = Field(default=1, ge=1, le=10_000)


class TrainingConfig(_Strict):
    """Everything that fixes the training trajectory; part of the signed spec."""

    seed: int = Field(ge=0, le=2**32 - 1)
    #: Per-job secret (32 random bytes, hex) the control plane adds after it assigned a node and mixes
    #: into every seed (init, split, data order, dropout): two jobs with the same public spec train
    #: different trajectories, and no trace can be computed before the assignment (issue 20, F1).
    job_secret: str | None = Field(default=None, pattern=_SHA256)
    hyperparameters: Hyperparameters = Hyperparameters()
    #: A checkpoint and a commitment every this many optimizer steps (the replay segment length);
    #: ``"auto"``: the longest segments for which the verification target fits its budget.
    checkpoint_every: int | Literal["auto"] = Field(default="auto")
    #: Share of the training data the runtime keeps aside to report the claimed metric on.
    validation_fraction: float = Field(default=0.1, ge=0.0, le=0.5)
    loss: Literal["cross_entropy"] = "cross_entropy"


class Task(_Strict):
    kind: Literal["classification"] = "classification"
    num_classes: int = Field(ge=2, le=100_000)
    metric: Literal["accuracy"] = "accuracy"
    #: The verifier's holdout metric must reach this for the job to pass: above chance, or the holdout
    #: check would pass any model (F1). Missing: halfway between chance and 1 (``default_threshold``).
    threshold: float = Field(ge=0, le=1)
    #: How far the holdout metric may fall below the claimed one, at least: the verifier widens it to what
    #: the sampling noise of the validation and holdout sets explains (replay.holdout_gap_bound).
    tolerance: float = Field(default=0.05, ge=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _default_threshold(cls, data: Any) -> Any:
        from cyxwiz.datasets.checks import default_threshold

        classes = data.get("num_classes") if isinstance(data, Mapping) else None
        if isinstance(classes, int) and classes >= 2 and data.get("threshold") is None:
            return {**data, "threshold": default_threshold(classes)}
        return data

    @model_validator(mode="after")
    def _above_chance(self) -> Task:
        if self.threshold <= 1.0 / self.num_classes:
            raise ValidationError(
                f"must be above chance ({1.0 / self.num_classes:.4g} for {self.num_classes} classes): a "
                "threshold at or below chance makes the holdout check pass any model",
                field="task.threshold",
                rule="F1",
            )
        return self


class VerificationSpec(_Strict):
    """How the control plane checks the training (issue 20): the detection target and its budget."""

    #: ``sampled``: replay random segments; ``redundant``: two nodes, compare chains, referee the first
    #: differing segment.
    mode: Literal["sampled", "redundant"] = "sampled"
    #: Catch a node that faked at least this fraction of its segments …
    target_fraction: float = Field(default=0.01, gt=0, le=1)
    #: … with at least this probability …
    confidence: float = Field(default=0.99, gt=0, lt=1)
    #: … replaying at most this fraction of the training work.
    budget: float = Field(default=0.10, gt=0, le=1)
    #: Refuse the job when the target does not fit the budget (otherwise the report states what it got).
    strict: bool = False
    #: Seconds after verification during which the user may open a dispute before the escrow is released.
    dispute_window_s: int = Field(default=0, ge=0, le=30 * 86_400)


class ScriptRef(_Strict):
    """The user's own ``train.py`` (job type ``script``), shipped as an input file with its hash."""

    entry: str = Field(default="train.py", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\.py$")
    sha256: str = Field(pattern=_SHA256)


class TrainingJob(_Strict):
    """The training document of a job (``/input/job.json``); its canonical hash goes into the proof."""

    v: Literal[1] = 1
    job_id: str = Field(pattern=_JOB_ID)
    job_type: JobType
    model: ModelDefinition | None = None
    script: ScriptRef | None = None
    dataset: DatasetRef
    training: TrainingConfig
    task: Task
    verification: VerificationSpec = VerificationSpec()

    @field_validator("job_type", mode="before")
    @classmethod
    def _known_type(cls, value: object) -> object:
        return check_job_type(value)

    @field_validator("model", mode="wrap")
    @classmethod
    def _prefix_model_errors(cls, value: Any, handler: pydantic.ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:  # graph errors carry a path relative to the model: anchor it
            raise ValidationError(
                exc.message, field=f"model.{exc.field or ''}".rstrip("."), rule=exc.rule, hint=exc.hint
            ) from None

    @model_validator(mode="after")
    def _consistent(self) -> TrainingJob:
        if self.job_type == "model":
            if self.model is None:
                raise ValidationError("a model job needs a model definition", field="model", rule="G1")
            if self.script is not None:
                raise ValidationError("a model job takes no script", field="script", rule="G1")
            shape = self.model.summary(ModelLimits(max_parameters=2**62)).output_shape
            if shape != (self.task.num_classes,):
                raise ValidationError(
                    f"the output shape {list(shape)} must be [{self.task.num_classes}] "
                    f"(task.num_classes) for classification",
                    field="model.output",
                    rule="G2",
                )
        else:
            if self.script is None:
                raise ValidationError("a script job needs a script", field="script", rule="G1")
            if self.model is not None:
                raise ValidationError("a script job takes no model definition", field="model", rule="G1")
        return self

    def sha256(self) -> str:
        """Canonical hash of this document (what the completion proof binds to)."""
        return canonical_sha256(self.model_dump(mode="json"))


def _field_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    previous: int | str | None = None
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in LAYER_TYPES and isinstance(previous, int):
            pass  # the discriminated-union tag pydantic inserts after a layer's index
        else:
            parts.append(f".{item}" if parts else item)
        previous = item
    return "".join(parts)


def _convert(exc: pydantic.ValidationError, *, prefix: str, rule: str) -> ValidationError:
    error = exc.errors(include_url=False)[0]
    where = _field_path(tuple(error["loc"]))
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "union_tag_invalid":
        where = f"{where}.type" if where else "type"
        ctx = error.get("ctx") or {}
        message = f"layer type {ctx.get('tag')!r} is not allowed; allowed: {', '.join(LAYER_TYPES)}"
        rule = "G2"
    elif error["type"] == "union_tag_not_found":
        where = f"{where}.type" if where else "type"
        message = "every layer needs a 'type'"
    if where.startswith("model"):
        rule = "G2"
    field = f"{prefix}{where}" if where else (prefix.rstrip(".") or None)
    extra = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
    return ValidationError(message + extra, field=field, rule=rule)


def parse_model_definition(data: object, *, limits: ModelLimits | None = None) -> ModelDefinition:
    """Validate an untrusted model definition (a dict or JSON text) under ``limits`` (G2)."""
    try:
        if isinstance(data, str | bytes):
            return ModelDefinition.model_validate_json(data, context={"model_limits": limits})
        return ModelDefinition.model_validate(data, context={"model_limits": limits})
    except pydantic.ValidationError as exc:
        raise _convert(exc, prefix="", rule="G2") from None


def parse_training_job(
    data: object, *, limits: ModelLimits | None = None, allow_file_uris: bool = False
) -> TrainingJob:
    """Validate an untrusted training document (a dict or JSON text) (G1, G2)."""
    context = {"model_limits": limits, "allow_file_uris": allow_file_uris}
    try:
        if isinstance(data, str | bytes):
            return TrainingJob.model_validate_json(data, context=context)
        return TrainingJob.model_validate(data, context=context)
    except pydantic.ValidationError as exc:
        raise _convert(exc, prefix="", rule="G1") from None
