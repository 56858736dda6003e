"""``python -m pallas_kernels``: each kernel file's reference check against the XLA chunked forms."""

import importlib

import jax

if __name__ == "__main__":
    print(f"JAX {jax.__version__} on {jax.default_backend()} (interpret mode: {jax.default_backend() == 'cpu'})")
    # importlib: the package re-exports the functions under the modules' names.
    for name in ("pallas_kernels.power_retention", "pallas_kernels.ssd"):
        for case, err in importlib.import_module(name).reference_check().items():
            print(f"{case}: relative error vs XLA chunked form {err:.2e}")
