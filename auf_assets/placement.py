"""Where model steps run: the Dagster concurrency pool and the tag of the assets that need a GPU.

A deployment caps the pool at its GPU count (`dagster instance concurrency set gpu 1`).
"""

GPU_POOL = "gpu"
GPU_TAGS = {"auf/resources": "gpu"}
