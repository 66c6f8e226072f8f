"""The pipeline's stages, one module per stage notebook (dvc.yaml runs the notebooks):

| module | notebook | does |
|---|---|---|
| `prepare` | 10_prepare_data | prepared dataset (embedded, raw layouts) |
| `train` | 20_train, 35_groups | a method's training phases (the groups: ScaleProtoSeg's stage 2) |
| `project` | 30_project_prototypes | projection, fine-tuning, pruning; the groups' thresholding |
| `evaluate` | 40_evaluate | mIoU, confusion, predictions |
| `interpret` | 50_interpret | interpretability metrics and figures |
| `report` | 60_report | the results table and figures |
| `export` | 70_export | test-set predictions for the servers |

`context` holds what a stage notebook uses (configuration and folders of a stage, smoke mode, display
helpers), `common` what the stage modules share with it (layout, seeding);
`launch` starts the train and project stages again under `torchrun` when several processes are asked for.
Each stage module imports only what its stage runs, so dvc.yaml can list exactly those files as the
stage's code dependencies.
"""
