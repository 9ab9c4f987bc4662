"""cyxwiz.datasets: the data a user brings to a job — named, fetched, checked, split (SPEC G1, D3, F1).

Public API::

    parse_dataset(value, job_type=)    the job spec's ``dataset`` -> DatasetSpec (syntax only)
    DatasetSources.from_env(store=)    where the trusted side may read datasets (policy + clients)
    validate_dataset(...)              the one validator (coordinator and lifecycle); creates nothing
    prepare_dataset(...)               node training file + trusted holdout (secret per-job split)
    resolve_threshold(task)            a model job's holdout threshold, never a silent no-op
    hash_file / upload_dataset         the user's side of ``cyxwiz job submit --dataset``
"""

from cyxwiz.datasets.checks import DatasetLimits, ModelShape, default_threshold, resolve_threshold
from cyxwiz.datasets.prepare import HoldoutRecord, PreparedData, prepare_dataset, validate_dataset
from cyxwiz.datasets.refs import DIGITS, DatasetRef, DatasetSpec, parse_dataset, parse_uri
from cyxwiz.datasets.sources import DatasetSources, dataset_key, user_area

__all__ = [
    "DIGITS",
    "DatasetLimits",
    "DatasetRef",
    "DatasetSources",
    "DatasetSpec",
    "HoldoutRecord",
    "ModelShape",
    "PreparedData",
    "dataset_key",
    "default_threshold",
    "parse_dataset",
    "parse_uri",
    "prepare_dataset",
    "resolve_threshold",
    "user_area",
    "validate_dataset",
]
