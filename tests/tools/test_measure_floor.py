"""The measuring process stays free of torch (tools/measure.py: a child's peak RSS reads at least its parent's)."""

from __future__ import annotations


def test_small_trunk_keeps_the_measuring_process_free_of_torch():
    """A child's peak RSS reads at least its parent's (tools/measure.py): the small-trunk overrides must not
    import torch into the process that measures, and they keep the preset's loader workers and image sizes."""
    import json
    import subprocess
    import sys

    code = ("import json, sys; from scaleprotoseg.tools.scaling import small_trunk; "
            "print(json.dumps([small_trunk('pascal'), 'torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    extra, torch_imported = json.loads(out.stdout)
    assert not torch_imported
    assert extra["presets.pascal.model.backbone"] == "small"
    assert not any(k.endswith(("num_workers", "_steps", "n_examples")) for k in extra)
