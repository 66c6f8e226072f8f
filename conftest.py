"""pytest, for the unit tests and for nbval over the notebooks: notebooks run in smoke mode (tiny sizes in a
temporary folder). A person opening a notebook gets the pipeline's real artifacts instead (see
`scaleprotoseg.stages.context.smoke_default`); the notebooks' kernels inherit this variable."""

import os

os.environ["SCALEPROTOSEG_SMOKE"] = "1"
