"""A paper preset rehearsed at its true sizes: the real DVC pipeline on a small raw dataset in the preset's
download layout, with the preset's model, crop, batch, accumulation, MSC scales, precision and evaluation
sizes untouched, and only the counts shortened.

    python -m scaleprotoseg.tools.rehearse --preset pascal        (make rehearse PRESET=pascal; PRESET=all)

For each preset, under `rehearsal/<preset>/` (git-ignored; replaced by the next rehearsal of that preset):

1. `repo/`: a copy of the repository (its tracked files), a git repository of its own;
2. `repo/data/<preset>/`: `--train` / `--val` images in the real layout at the real size (`raw_layouts.py`);
3. `repo/params.yaml`: `experiment.dataset: <preset>`, every method and the groups, one seed, and the counts
   of `COUNTS` (each training phase one optimiser update: `accumulation` mini-batches; validation, evaluation
   and the interpretability figures on a couple of images); the ResNet-101 trunk loads ImageNet-layout
   weights from a file, random ones written by the rehearsal (no network), through `model.pretrained_path`;
4. every DVC stage, one `dvc repro --single-item <stage>` at a time in the pipeline's order (so a measurement is
   of that stage alone, also when a resumed copy holds stale upstream outputs), each measured: wall time,
   peak resident memory of its largest process (the kernel, torchrun's workers: `wait4`'s `ru_maxrss`),
   peak memory of all its processes together (proportional set size, sampled every second, so shared pages
   count once), peak GPU memory (`torch.cuda.max_memory_allocated` of each process, on a GPU), and the size
   of its outputs on disk and its largest file.

The table goes to `rehearsal/<preset>.md` and `.json` (written atomically) and to the console. On a machine
with CUDA the same command runs on the GPU (`experiment.device: auto`), in bf16 where the GPU has it.
`tools/scaling.py` measures how the per-image stages grow with the number of images.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from ..config import set_key
from ..paths import repo_root
from .measure import disk, measured
from .raw_layouts import SIZES, write
from .rehearsal_record import README_MARKERS, Rehearsal, StageRun, fill_readme, load, overview, save, table  # noqa: F401

PRESETS = ("pascal", "cityscapes", "ade20k", "coco_stuff", "em")
METHODS = ("deeplab", "protoseg", "scaleprotoseg")
PHASE_KEYS = {"deeplab": ("steps",), "protoseg": ("warmup_steps", "joint_steps"),
              "scaleprotoseg": ("warmup_steps", "joint_steps"),
              "scaleprotoseg_groups": ("warmup_steps", "joint_steps")}
# What the rehearsal shortens (per preset section), besides the phases' steps and the fine-tuning.
COUNTS = {
    "runtime": {"log_every": 1, "val_every": 0, "val_images": 2},
    "eval": {"max_images": 2, "n_examples": 2, "explorer_images": 2, "faithfulness_images": 1},
    # After one update no prototype's nearest patches are of its own class, and ProtoSeg's pruning would remove
    # them all (the stage refuses that): threshold 0 keeps them, so the pruning pass over the projection split
    # and the second fine-tuning run at their full cost; what pruning removes is not rehearsed.
    "project_protoseg": {"prune_threshold": 0},
}
GPU_HOOK = '''"""Written by the rehearsal into its copy's src/ (never the repository's): each Python process that used
CUDA appends its peak allocated GPU memory to the file the rehearsal names."""
import atexit
import os
import sys


def _peak():
    torch = sys.modules.get("torch")
    where = os.environ.get("SCALEPROTOSEG_GPU_PEAKS")
    if where and torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        with open(where, "a") as f:
            f.write(f"{os.getpid()} {torch.cuda.max_memory_allocated()}\\n")


atexit.register(_peak)
'''


def copy_repository(src: Path, dst: Path) -> Path:
    """The tracked and not-ignored files of the repository at `src`, copied to `dst`."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=src,
                           capture_output=True, check=True).stdout.split(b"\0")
    for f in (x.decode() for x in files if x):
        if (src / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / f, dst / f)
    return dst


def rehearsal_params(params: dict, preset: str, seed: int) -> dict:
    """`params` set to run `preset` with every method, one seed and the rehearsal's counts."""
    p = f"presets.{preset}"
    sections = params["presets"][preset]
    set_key(params, "experiment.dataset", preset)
    set_key(params, "experiment.methods", list(METHODS))
    set_key(params, "experiment.groups", ["scaleprotoseg_groups"])
    set_key(params, "experiment.seeds", [seed])
    set_key(params, "experiment.export", [])
    for section, values in COUNTS.items():
        for k, v in values.items():
            set_key(params, f"{p}.{section}.{k}", v)
    defaults = params["defaults"]
    for method, keys in PHASE_KEYS.items():
        merged = {**defaults[method], **(sections.get(method) or {})}
        update = max(int(merged.get("accumulation", 1)), 1)  # one optimiser update per phase
        for k in keys:
            if int(merged[k]) > 0:  # a phase the preset skips (EM's warm-ups) stays skipped
                set_key(params, f"{p}.{method}.{k}", update)
        if method in ("protoseg", "scaleprotoseg"):
            set_key(params, f"{p}.project_{method}.finetune_steps", update)
    return params


def random_resnet101(path: Path) -> Path:
    """torchvision's ResNet-101 layout with random weights: what `model.pretrained_path` loads (no network).
    Written by a child process: this one never imports torch, so the stages it forks do not start with torch's
    pages counted in their peak memory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    code = ("import sys, torch\nfrom torchvision.models import resnet101\ntorch.manual_seed(0)\n"
            "torch.save(resnet101(weights=None).state_dict(), sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    return path


def device_name() -> str:
    code = ("import os, torch\nprint(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "
            "f'CPU ({os.cpu_count()} cores)')")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def stage_order(repo: Path, env: dict) -> list[tuple[str, list[str]]]:
    """(stage, its outputs) of dvc.yaml in the pipeline's order: DVC's own graph sorted topologically, ties in
    dvc.yaml's order (so each method's train → project → … in turn). `data.dvc` is not a stage."""
    code = ("import json, networkx as nx\nfrom dvc.repo import Repo\nr = Repo('.')\n"
            "pos = {s: i for i, s in enumerate(r.index.stages)}\n"
            "order = nx.lexicographical_topological_sort(r.index.graph.reverse(), key=lambda s: pos[s])\n"
            "print(json.dumps([[s.addressing, [str(o) for o in s.outs]] for s in order "
            "if not s.addressing.endswith('.dvc')]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, env=env, check=True)
    return [(name, outs) for name, outs in json.loads(out.stdout.strip().splitlines()[-1])]


def units(stage: str, params: dict, preset: str) -> tuple[int, str]:
    """What a stage's time divides by: mini-batches for training (all phases), images otherwise."""
    name, _, item = stage.partition("@")
    method = item.rsplit("-", 1)[0]
    sec = {**params["defaults"].get(method, {}), **(params["presets"][preset].get(method) or {})}
    if name in ("train", "groups"):
        return sum(int(sec[k]) for k in PHASE_KEYS[method]), "step"
    if name in ("project", "project_groups") and method in ("protoseg", "scaleprotoseg"):
        return int(params["presets"][preset][f"project_{method}"]["finetune_steps"]), "step"
    if name in ("evaluate", "evaluate_groups", "interpret", "interpret_groups"):
        return int(params["presets"][preset]["eval"]["max_images"]), "image"
    return 0, ""


def details(repo: Path, stage: str, dataset: str, faithfulness_images: int = 1) -> str:
    """What the stage itself measured, per unit, read from its records: each training phase's seconds per
    step (validation and checkpoint included), the projection pass per image and the fine-tuning per step,
    the interpretability pass and the faithfulness curves per image. Start-up and writing are left out."""
    from ..stages.layout import layout

    name, _, item = stage.partition("@")
    if not item:
        return ""
    method, seed = item.rsplit("-", 1)

    def read(key, file):
        f = repo / layout(key, dataset, method, int(seed)) / file
        return json.loads(f.read_text()) if f.is_file() else {}

    out = []
    if name in ("train", "groups"):
        for ph in read("train", "train_summary.json").get("phases", []):
            if ph.get("steps"):
                out.append(f"{ph['phase']} {ph['seconds'] / ph['steps']:.1f} s/step")
    elif name == "project":
        proj = read("project", "projection.json")
        if proj.get("images"):
            out.append(f"pass {proj['projection_pass_seconds'] / proj['images']:.1f} s/image")
        for ph in proj.get("phases", []):
            if ph.get("steps"):
                out.append(f"{ph['phase']} {ph['seconds'] / ph['steps']:.1f} s/step")
    elif name in ("interpret", "interpret_groups"):
        summ = read("interpret_reports", "summary.json")
        if summ.get("images") and summ.get("seconds") is not None:
            out.append(f"metrics {summ['seconds'] / summ['images']:.1f} s/image")
        if summ.get("faithfulness_seconds") is not None and faithfulness_images:
            out.append(f"faithfulness {summ['faithfulness_seconds'] / faithfulness_images:.0f} s/image")
    return ", ".join(out)


def up_to_date(repo: Path, stage: str, env: dict) -> bool:
    """DVC has the stage's outputs for its current dependencies (`dvc status <stage>` reports nothing)."""
    out = subprocess.run([str(Path(sys.executable).parent / "dvc"), "status", "--json", stage], cwd=repo, env=env,
                         capture_output=True, text=True)
    return out.returncode == 0 and json.loads(out.stdout.strip().splitlines()[-1] or "{}") == {}


def rehearse(preset: str, work: Path, n_train: int = 8, n_val: int = 2, seed: int = 20220227,
             source: Path | None = None, size: tuple | None = None, extra: dict | None = None,
             faithfulness: int | None = None, resume: bool = False) -> Rehearsal:
    """Rehearse `preset` under `work/<preset>/` (see the module's docstring); the record is saved after each
    stage. `resume`: go on in the copy an interrupted rehearsal left (a full disk, a stopped machine): the
    stages it recorded are kept, the others run; a stage that finished without a record (DVC has it up to date)
    keeps its outputs, its own timings and sizes, with its wall time and memory unknown. `size` and `extra`
    (overrides applied last) exist for the tests, which rehearse the mechanism at tiny sizes."""
    source = source or repo_root()
    base = work / preset
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "MPLBACKEND": "Agg",
           "SCALEPROTOSEG_GPU_PEAKS": str(base / "gpu_peaks.txt")}
    env.pop("PYTHONPATH", None)

    def new():
        return Rehearsal(preset, device_name(), tuple(size or SIZES[preset]), n_train, n_val if preset != "em" else 10)

    if resume:
        if not (base / "repo" / "params.yaml").is_file():
            raise SystemExit(f"--resume: no rehearsal of {preset} to go on with under {base}; run without --resume")
        record = work / f"{preset}.json"
        return _run_stages(base, preset, load(record) if record.is_file() else new(), work, env, resumed=True)
    if base.exists():
        shutil.rmtree(base)
    repo = copy_repository(source, base / "repo")
    (repo / "src" / "sitecustomize.py").write_text(GPU_HOOK)
    write(preset, repo / "data" / preset, n_train, n_val, size)
    params = rehearsal_params(yaml.safe_load((repo / "params.yaml").read_text()), preset, seed)
    if faithfulness is not None:
        set_key(params, f"presets.{preset}.eval.faithfulness_images", faithfulness)
    for k, v in (extra or {}).items():
        set_key(params, k, v)
    if params["presets"][preset]["model"].get("backbone") == "resnet101":
        random_resnet101(repo / "weights" / "resnet101-random.pth")
        set_key(params, f"presets.{preset}.model.pretrained_path", "weights/resnet101-random.pth")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.email=r@r", "-c", "user.name=r", "commit", "-qm", "rehearsal"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True, capture_output=True)
    (work / f"{preset}.json").unlink(missing_ok=True)
    return _run_stages(base, preset, new(), work, env)


def _run_stages(base: Path, preset: str, result: Rehearsal, work: Path, env: dict, resumed: bool = False) -> Rehearsal:
    """Each stage of the copy under `base` not yet in `result`, measured; `result` saved after each."""
    repo, bin_dir = base / "repo", Path(sys.executable).parent
    params = yaml.safe_load((repo / "params.yaml").read_text())
    faith = int(params["presets"][preset]["eval"]["faithfulness_images"])
    recorded = {s.stage for s in result.stages}
    log_path = base / "dvc.log"
    with open(log_path, "a") as log:
        for stage, outs in stage_order(repo, env):
            if stage in recorded:
                continue
            n, unit = units(stage, params, preset)
            if resumed and up_to_date(repo, stage, env):  # resumed: finished before, without a record
                size, big, big_mb = disk(repo, outs)
                result.stages.append(StageRun(stage, None, None, None, None, round(size, 1), big, round(big_mb, 1),
                                              n, unit, details(repo, stage, preset, faith)))
                print(f"[rehearse {preset}] {stage}: finished before the resume (time and memory unknown)", flush=True)
                save(result, work)
                continue
            recorded.add(stage)
            peaks = base / "gpu_peaks.txt"
            peaks.unlink(missing_ok=True)
            print(f"[rehearse {preset}] {stage} …", flush=True)
            log.write(f"\n===== {stage}\n")
            log.flush()
            seconds, rss, pss, code = measured([str(bin_dir / "dvc"), "repro", "--single-item", stage], repo, env, log)
            if code != 0:
                tail = log_path.read_text()[-4000:]
                raise SystemExit(f"rehearsal of {preset}: stage {stage} failed (exit {code}); the end of {log_path}:\n{tail}")
            gpu = None
            if peaks.is_file():
                gpu = max(int(line.split()[1]) for line in peaks.read_text().split("\n") if line.strip()) / 2**20
            size, big, big_mb = disk(repo, outs)
            run = StageRun(stage, round(seconds, 1), round(rss), round(pss), None if gpu is None else round(gpu),
                           round(size, 1), big, round(big_mb, 1), n, unit, details(repo, stage, preset, faith))
            result.stages.append(run)
            save(result, work)
            print(f"  {run.seconds:.0f} s, max RSS {run.max_rss_mb:.0f} MB, all processes {run.peak_pss_mb:.0f} MB, "
                  f"outputs {run.output_mb:.1f} MB", flush=True)
    result.complete = True
    save(result, work)
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", help=f"one of {', '.join(PRESETS)}, or all")
    ap.add_argument("--overview", action="store_true", help="print one table of the presets already rehearsed "
                    "(rehearsal/<preset>.json) and exit")
    ap.add_argument("--work", default="rehearsal", help="folder for the copies and the tables (relative to the repository)")
    ap.add_argument("--train", type=int, default=8, help="training images (EM: slices besides the 10 of validation); "
                    "at least ProtoSeg's prune_k (6): pruning ranks one patch per image")
    ap.add_argument("--readme", action="store_true", help="--overview, and the README's rehearsal tables (between "
                    f"{README_MARKERS[0]} and {README_MARKERS[1]}) replaced by it and each preset's full table")
    ap.add_argument("--resume", action="store_true",
                    help="go on with the rehearsal of the preset left under --work (its recorded stages kept)")
    ap.add_argument("--val", type=int, default=2, help="validation images (EM: always 10; 2 are evaluated)")
    ap.add_argument("--faithfulness", type=int, default=None,
                    help="images of the faithfulness curves in the interpret stages (default 1); each costs about "
                         "120 forward passes at the evaluation size, an hour per stage on 2 CPU cores at Cityscapes' "
                         "1024 × 2048, so 0 leaves them out of a CPU rehearsal")
    a = ap.parse_args(argv)
    root = repo_root()
    work = Path(a.work) if Path(a.work).is_absolute() else root / a.work
    if a.overview or a.readme:
        done = [load(work / f"{p}.json") for p in PRESETS if (work / f"{p}.json").is_file()]
        if not done:
            raise SystemExit(f"no rehearsal under {work}: run --preset first")
        print(overview(done))
        if a.readme:
            fill_readme(root / "README.md", done)
        return
    if not a.preset:
        ap.error("--preset is required (or --overview)")
    presets = PRESETS if a.preset == "all" else (a.preset,)
    if any(p not in PRESETS for p in presets):
        ap.error(f"--preset {a.preset!r}: choose one of {', '.join(PRESETS)}, or all")
    work.mkdir(parents=True, exist_ok=True)
    def stop(signum, frame):
        raise SystemExit(f"rehearsal stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    for p in presets:
        r = rehearse(p, work, a.train, a.val, source=root, faithfulness=a.faithfulness, resume=a.resume)
        print(table(r), flush=True)


if __name__ == "__main__":
    main()
