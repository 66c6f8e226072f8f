"""Reading the authors' released checkpoints as data: `unpickle` (a restricted unpickler for both PyTorch
file formats that never runs code from the file) ← `mapping` (released names and layouts → this repository's
model). `scaleprotoseg.import_official` puts them together and writes an ordinary checkpoint."""
