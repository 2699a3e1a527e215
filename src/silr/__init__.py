"""silr: segmentation-informed landmark regression for hip fluoroscopy."""

__version__ = "0.1.0"
