"""pytest, for the unit tests and for nbval over the notebooks: notebooks run in smoke mode (tiny sizes in a
temporary folder). A person opening a notebook gets the pipeline's real artifacts instead (see
`scaleprotoseg.stages.context.smoke_default`); the notebooks' kernels inherit these variables.

`SCALEPROTOSEG_SMOKE_ROOT`: one temporary folder for the whole test session, where smoke mode builds the
upstream artifacts once (the tiny models every notebook reads) and each notebook writes its own outputs in a
fresh subfolder (`context.smoke_roots`). Removed at the end of the session unless it was set beforehand."""

import os
import shutil
import tempfile

os.environ["SCALEPROTOSEG_SMOKE"] = "1"
_OWN_ROOT = None
if not os.environ.get("SCALEPROTOSEG_SMOKE_ROOT"):
    _OWN_ROOT = tempfile.mkdtemp(prefix="scaleprotoseg-smoke-session-")
    os.environ["SCALEPROTOSEG_SMOKE_ROOT"] = _OWN_ROOT


def pytest_unconfigure(config):
    if _OWN_ROOT is not None:
        shutil.rmtree(_OWN_ROOT, ignore_errors=True)
