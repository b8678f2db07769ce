"""Training with PyTorch Lightning: config, LightningModule, LightningDataModule, and the run itself."""
from .config import DataConfig, OptimConfig, TrainConfig, TrainerConfig, config_from_dict, load_config
from .datamodule import DetectionDataModule
from .module import DetectionModule, NonFiniteLossError
from .run import ResumePoint, TrainResult, find_resume_checkpoint, train

__all__ = [
    "DataConfig", "OptimConfig", "TrainConfig", "TrainerConfig", "config_from_dict", "load_config",
    "DetectionDataModule", "DetectionModule", "NonFiniteLossError", "ResumePoint", "TrainResult", "find_resume_checkpoint", "train",
]
