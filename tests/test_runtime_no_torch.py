"""The runtime must import and work on a device without PyTorch (and without the onnx package)."""

import subprocess
import sys
import textwrap

from conftest import blocked_imports

SCRIPT = blocked_imports("torch", "onnx") + textwrap.dedent(
    """
    import importlib, pkgutil
    import edgepure
    import edgepure.runtime as r
    names = [m.name for m in pkgutil.walk_packages(r.__path__, r.__name__ + ".")]
    for name in names:
        importlib.import_module(name)
    from edgepure.runtime.synth import render_dataset
    images, labels = render_dataset(4, seed=0)
    assert images.shape == (4, 32, 32, 3)
    assert not any(m in ("torch", "onnx") or m.startswith(("torch.", "onnx.")) for m in sys.modules), "torch or onnx got imported"
    print("ok", len(names))
    """
)


def test_runtime_imports_without_torch() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok ")
    assert int(out.stdout.split()[1]) >= 6  # every runtime module was walked
