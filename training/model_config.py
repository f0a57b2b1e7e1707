"""The network's shape as configuration: no torch here, so configs and the CLI load fast."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.options import at_least_each, option, raise_failed
from pipeline.vocabulary import FACE_SIZE, OPENFACE_AUS

#: Conv channels per block at width 1.0 (Table I): 64-64 / 128-128 / 256-256-256 / 256-256-256.
CONV_BLOCKS: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (256, 256, 256))
#: Units of each of the two hidden fully connected layers at width 1.0.
FC_UNITS: int = 1024
#: Each block ends in a 2x2 max-pool, so the input side must be a multiple of this.
DOWNSAMPLING: int = 2 ** len(CONV_BLOCKS)


@dataclass
class ModelConfig:
    """Everything that decides the network's shape; the training config embeds one."""

    width: float = option(
        1.0, "Multiplier on every conv and FC width (1.0 = the paper; <1 for CPU tests)."
    )
    in_channels: int = option(
        1, "Input channels: 1 for the grayscale corpus (the paper's Table I says 3)."
    )
    num_outputs: int = option(
        len(OPENFACE_AUS),
        "Logits in the head: 17 OpenFace AUs to pre-train, 12 DISFA AUs to fine-tune.",
    )
    input_size: int = option(
        FACE_SIZE, f"Side of the square input in pixels; a multiple of {DOWNSAMPLING}."
    )
    dropout_conv: float = option(0.25, "Dropout after each conv block's max-pool.")
    dropout_fc: float = option(0.5, "Dropout after each hidden fully connected layer.")
    batch_norm: bool = option(
        True,
        "BatchNorm after each conv (not in the paper, whose net collapses to a "
        "constant output at these sizes; see README: departures).",
    )

    def __post_init__(self) -> None:
        checks = [
            (self.width > 0, f"width > 0, got {self.width}"),
            *at_least_each(self, in_channels=1, num_outputs=1),
            (
                self.input_size > 0 and self.input_size % DOWNSAMPLING == 0,
                f"input_size a positive multiple of {DOWNSAMPLING}, got {self.input_size}",
            ),
            (0 <= self.dropout_conv < 1, f"dropout_conv in [0, 1), got {self.dropout_conv}"),
            (0 <= self.dropout_fc < 1, f"dropout_fc in [0, 1), got {self.dropout_fc}"),
        ]
        raise_failed(checks, "ModelConfig")
