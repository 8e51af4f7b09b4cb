"""Device latency lookup tables: measure ops once per device, predict networks from the rows.

    nas lut build --device cpu          # results/lut/<device>/<space>-<H>x<W>-b1-fp32.parquet
    nas lut validate TABLE              # random networks: predicted vs measured, vs FLOPs

Python::

    table = LatencyTable.load(default_table_path(space, "cpu"))
    predictor = LatencyPredictor(table)
    predictor.latency(spec)                     # calibrated ms
    predictor.expected_latency(space, probs)    # differentiable, for the search
    predictor.bounds(space)                     # fastest and slowest networks of the space
"""

from lut.build import build_table, calibrate, default_table_path, measure_network, measure_networks
from lut.keys import RowShape, parse_row_key, row_key, space_rows, spec_rows
from lut.predictor import LatencyPredictor
from lut.table import SCHEMA, Calibration, LatencyTable
from lut.timing import Timing, TimingConfig
from lut.validate import ValidationReport, error_metrics, validate_table

__all__ = [
    "SCHEMA", "Calibration", "LatencyPredictor", "LatencyTable", "RowShape", "Timing",
    "TimingConfig", "ValidationReport", "build_table", "calibrate", "default_table_path",
    "error_metrics", "measure_network", "measure_networks", "parse_row_key", "row_key",
    "space_rows", "spec_rows", "validate_table",
]
