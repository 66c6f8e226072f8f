"""Entry points run by hand, not by the pipeline: `python -m scaleprotoseg.tools.bench` (the methods' cost
relative to DeepLab), `...tools.cost` (each dataset's paper schedule, FLOP counted per phase) and
`...tools.gpu_check` (a CUDA machine with only PyTorch and NumPy). Imports nothing, so `gpu_check` runs with
nothing but PyTorch and NumPy importable."""
