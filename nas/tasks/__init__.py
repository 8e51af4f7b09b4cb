"""What differs per task (data, metrics), one package per task; ``seg``: semantic segmentation."""
