"""Storage: how a compressed model is written to disk, and its exact size in bytes.

Every result row carries (see :func:`harness.encoding.storage.size_columns`):

- ``size_bytes_dense`` = 4 · ``params_total``: every parameter as float32. BatchNorm running
  statistics are buffers, not parameters; they fold into the affine transform at export.
- ``size_bytes`` = the length of the real byte strings the model is encoded into: the sum over
  every parameter tensor of its parts. Biases, BatchNorm and any parameter that is not a Conv/Linear
  weight are float32. Each Conv/Linear weight (classifier included) is stored in the row's
  ``storage_format``; its values are float32 (4 bytes each) or, once a quantiser has run, codes of
  ``b`` bits packed end to end plus the code table (float32 scales, or scales and one-byte zero
  points, or float32 centroids), after a two-byte header naming its layout, its bit width and
  what its code table holds (:func:`harness.encoding.storage.layout_header`), so that
  :mod:`harness.encoding.decoding` reads every weight back from its bytes and shape. The
  architecture (shapes, layer order) is code, not data: not counted; nor are PTQ's activation
  ranges (one scale and zero point per layer).
- ``bits_per_weight`` = 8 · ``size_bytes`` / ``params_total``.

Formats of a Conv/Linear weight with ``n`` entries, ``z`` of them nonzero:

- ``auto`` (the default for every method that sets none): the smaller of dense (``4n`` bytes, or
  ``ceil(n·b/8)`` + table) and ``bitmask``.
- ``bitmask``: ``ceil(n/8)`` + the ``z`` values (``4z``, or ``ceil(z·b/8)`` + table).
- ``relative_index`` (Deep Compression): the index width ``i`` (1 byte) + 4-byte entry count +
  ``ceil(e·i/8)`` for ``e`` ≥ ``z`` index codes of ``i`` bits (fillers included) + the ``z`` values.
- ``huffman``: the index width (1 byte), then the relative-index codes and the weight codes each
  Huffman-coded, each stream with its
  4-byte count and its codebook (one length byte per alphabet symbol, or the present symbols with
  their lengths where that is smaller: :mod:`harness.encoding.huffman`); float values stay float32.
- ``sz`` (DeepSZ): zlib-compressed bitmask + SZ3 stream of the nonzero values at the layer's bound
  (float32 values where the layer's bound is 0).
- ``bloomier`` (Weightless): filter header + ``ceil(m·t/8)`` for ``m ≈ 1.23·z`` cells of ``t`` bits +
  float32 centroids.
"""

from harness.encoding.codes import QuantizedWeight, SharedCodes, UniformCodes
from harness.encoding.storage import Encoded, Storage, encode_model, size_columns

__all__ = [
    "Encoded",
    "QuantizedWeight",
    "SharedCodes",
    "Storage",
    "UniformCodes",
    "encode_model",
    "size_columns",
]
