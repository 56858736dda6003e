"""Pallas kernels with the signatures of scaling.ops (issue 5: chunked power retention and SSD).

Nothing is exported yet: ``backend="pallas"`` on the ops raises NotImplementedError until the kernels land.
"""
