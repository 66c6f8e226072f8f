"""The tiny settings, with no import beyond the standard library (so a measuring process can use them
without importing torch, `tools/measure.py`): the one place where sizes other than params.yaml's are written.
`smoke` re-exports them; see its docstring for what each is for."""

from __future__ import annotations

SMOKE = {
    "experiment.dataset": "embedded",
    "embedded.image_size": 48,
    "embedded.n_train": 6,
    "embedded.n_val": 3,
    "embedded.max_objects": 2,
    "presets.embedded.data.crop": 40,
    "presets.embedded.model.width": 8,
    "presets.embedded.runtime.log_every": 1,
    "presets.embedded.runtime.checkpoint_every": 1,
    "presets.embedded.runtime.val_every": 0,
    "presets.embedded.runtime.val_images": 2,
    "presets.embedded.deeplab.steps": 2,
    "presets.embedded.deeplab.batch_size": 2,
    "presets.embedded.eval.n_examples": 2,
    "presets.embedded.eval.explorer_images": 2,
    "presets.embedded.eval.faithfulness_images": 1,
    "presets.embedded.scaleprotoseg_groups.batch_size": 2,
    "presets.embedded.scaleprotoseg_groups.warmup_steps": 1,
    "presets.embedded.scaleprotoseg_groups.joint_steps": 2,
}
for _m in ("protoseg", "scaleprotoseg"):
    SMOKE.update({f"presets.embedded.{_m}.{k}": v for k, v in {
        "features": 8, "batch_size": 2, "warmup_steps": 1, "joint_steps": 2}.items()})
    SMOKE[f"presets.embedded.project_{_m}.finetune_steps"] = 1

TINY = {
    "presets.embedded.data.crop": 32,
    "presets.embedded.model.width": 8,
    "presets.embedded.deeplab.steps": 6,
    "presets.embedded.deeplab.batch_size": 2,
    "presets.embedded.runtime.log_every": 1,
    "presets.embedded.runtime.checkpoint_every": 2,
    "presets.embedded.runtime.val_every": 0,
    "presets.embedded.eval.n_examples": 1,
    "experiment.device": "cpu",
}


# The tests that run DVC itself on a copy of the repository (tests/repo/): the embedded dataset and preset at their
# smallest, one step per phase.
DVC_TINY = {
    "embedded.image_size": 40, "embedded.n_train": 4, "embedded.n_val": 2, "embedded.max_objects": 2,
    "presets.embedded.data.crop": 32, "presets.embedded.model.width": 4,
    "presets.embedded.runtime.log_every": 1, "presets.embedded.runtime.checkpoint_every": 1,
    "presets.embedded.runtime.val_every": 0, "presets.embedded.runtime.val_images": 1,
    "presets.embedded.deeplab.steps": 1, "presets.embedded.deeplab.batch_size": 2,
    **{f"presets.embedded.scaleprotoseg.{k}": v for k, v in {
        "features": 4, "batch_size": 2, "warmup_steps": 1, "joint_steps": 1}.items()},
    **{f"presets.embedded.scaleprotoseg_groups.{k}": v for k, v in {
        "batch_size": 2, "warmup_steps": 1, "joint_steps": 1}.items()},
    "presets.embedded.project_scaleprotoseg.finetune_steps": 1,
    "presets.embedded.eval.n_examples": 1,
}

def shrink(dataset: str, methods=("scaleprotoseg",)) -> dict:
    """Overrides that shrink preset `dataset` to seconds on a CPU (EM keeps its U-Net, at width 4)."""
    p = f"presets.{dataset}"
    out = {f"{p}.data.crop": 32, f"{p}.data.eval_size": None, f"{p}.data.eval_short_side": None,
           f"{p}.runtime.num_workers": 0, f"{p}.model.width": 4, f"{p}.model.pretrained": False,
           f"{p}.model.msc_scales": [], f"{p}.model.aspp_rates": [1, 2, 3, 4], f"{p}.eval.n_examples": 1,
           "experiment.device": "cpu"}
    if dataset != "em":
        out[f"{p}.model.backbone"] = "small"
    out.update({f"{p}.runtime.{k}": v for k, v in {"log_every": 1, "checkpoint_every": 1, "val_every": 0,
                                                    "val_images": 2}.items()})
    for m in methods:
        steps = ({"steps": 2} if m == "deeplab" else
                 {"warmup_steps": 1, "joint_steps": 2} if m == "scaleprotoseg_groups" else
                 {"features": 4, "warmup_steps": 1, "joint_steps": 2})
        for k, v in {**steps, "batch_size": 2, "accumulation": 1}.items():
            out[f"{p}.{m}.{k}"] = v
        if m in ("protoseg", "scaleprotoseg"):
            out[f"{p}.project_{m}.finetune_steps"] = 1
    return out
