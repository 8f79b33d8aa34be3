"""Training, evaluation and export of MIML models (extra `train`: torch).

Importing this package never needs torch: data import (:mod:`.data`) and ONNX evaluation
(:mod:`.evaluate`) work without it. The names below are resolved on first use; those that need
torch (training, export, the torch models) raise
:class:`mimlsort.errors.BackendUnavailable` naming the extra (``pip install mimlsort[train]``).
"""

from __future__ import annotations

from mimlsort.lazy import lazy_exports

_LAZY = {
    # torch-free
    "Dataset": "data",
    "ImportReport": "data",
    "dataset_from_events": "data",
    "dataset_from_runs": "data",
    "dataset_from_csv": "data",
    "dataset_from_miml_csv": "data",
    "dataset_from_miml_dir": "data",
    "dataset_from_rtdc": "data",
    "dataset_from_path": "data",
    "dataset_from_paths": "data",
    "spec_for_training": "data",
    "preprocess_dataset": "data",
    "grouped_split": "data",
    "kfold_splits": "data",
    "evaluate": "evaluate",
    "compute_metrics": "evaluate",
    "Metrics": "evaluate",
    # need torch
    "ARCHITECTURES": "models",
    "build_model": "models",
    "train_model": "train",
    "TrainResult": "train",
    "load_checkpoint": "train",
    "export_onnx": "export",
    "update_spec": "export",
    "compare_architectures": "experiments",
    "transfer_experiment": "experiments",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
