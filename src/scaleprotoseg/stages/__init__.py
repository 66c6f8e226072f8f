"""The pipeline's stages, one module per stage notebook (dvc.yaml runs the notebooks). `table.STAGES` is the
one list of them: per stage, its notebook, the function it runs and the folders it reads and writes.

| module | notebook | does |
|---|---|---|
| `prepare` | 10_prepare_data | prepared dataset (embedded, raw layouts) |
| `train` | 20_train, 35_groups | a method's training phases (the groups: ScaleProtoSeg's stage 2) |
| `project` | 30_project_prototypes | projection, fine-tuning, pruning; the groups' thresholding |
| `evaluate` | 40_evaluate | mIoU, confusion, predictions |
| `interpret` | 50_interpret | interpretability metrics and figures |
| `report` | 60_report | the results table and figures |
| `export` | 70_export | test-set predictions for the servers |

What they share, one job a module: `table` (the stage table), `layout` (where each artifact lives),
`context` (a notebook's resolved configuration and folders), `smoke` (smoke mode), `sizes` (the tiny settings
of smoke mode and the tests, importable without torch), `views` (showing saved figures and tables), `seeding` (a stage's random state),
`launch` (the train and project stages again under `torchrun` when several processes are asked for). Each stage module
imports only what its stage runs, so dvc.yaml lists exactly those files as the stage's code dependencies.
"""
