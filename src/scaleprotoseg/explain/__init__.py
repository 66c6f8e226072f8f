"""Explaining a saved prototype model's predictions (never retraining it):

| module | does |
|---|---|
| `maps` | per predicted class, the groups' / prototypes' activation maps, the winner per pixel, the deciding prototypes; nearest prototypes per scale; failure cases |
| `figures` | the figures of those explanations |
| `gradcam` | Grad-CAM of the DeepLab baseline (captum) and reading that baseline's checkpoint |
| `faithfulness` | deletion / insertion curves, relevance mass and pointing game of each explanation |
| `explorer`, `page` | the clickable self-contained HTML explorer and its HTML/JavaScript |
| `image` | explaining any image file from a checkpoint alone |
| `__main__` | its command line: `python -m scaleprotoseg.explain --checkpoint … --image … --out …` |

This file imports none of them: a stage that uses one module then depends on that module alone (its
dvc.yaml code dependencies are the import closure, which counts this file's imports too).
"""
