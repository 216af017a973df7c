"""The tiny study the robustness tests record (seconds on 2 cores), shared by their modules."""

from pathlib import Path

DATA_ROOT = Path(__file__).resolve().parents[2] / "datasets" / "cache"
TINY = [
    "training.steps='40it'", "study.rewinds=['0it','10it']", "study.replicas=2",
    "pruning.levels=1", "data.num_samples=500", "model.channels=4",
    "training.eval_every='20it'", "training.log_every='5it'", "study.record='every:5'",
    f"data.root='{DATA_ROOT}'",
]
